"""``make push-base|push-training|push-serving``: build if missing, tag, create the ECR repository, log in, push.

Docker is run as ``$DOCKER`` (default ``docker``). Registry passwords go to
``docker login --password-stdin`` through a pipe, never onto a command line
or into a file of ours (Docker keeps the login in its own credential store).
The base is pushed so that a team builds training and serving on it later
(``BASE_IMAGE=<its URI>``) without the upstream parents. ``--builder codebuild``
(``BUILDER=codebuild``) runs this same push on AWS CodeBuild (images/codebuild.py).
"""
from __future__ import annotations

import base64
import os
import shutil
import subprocess
from typing import List, Optional

from shelfdet.launch import aws, image_names
from shelfdet.launch.aws import LaunchError, note

# image_names.KINDS are the kinds that are launched; the base is only pushed.
KINDS = ("base",) + tuple(image_names.KINDS)


def image_of(kind: str, stack: str) -> image_names.Image:
    """image_names.image(), and the base's Image the same way (image_names.image() names launched kinds only)."""
    if kind != "base":
        return image_names.image(kind, stack)
    if stack in image_names.TEST_STACKS or stack not in image_names.STACKS:
        image_names.image(image_names.KINDS[0], stack)  # raises the one-line refusal of that stack
    v = image_names.read_versions()
    if "IMAGE_REPO_BASE" not in v or "IMAGE_VERSION" not in v:
        raise image_names.ImageError("versions.env lacks IMAGE_REPO_BASE or IMAGE_VERSION")
    prefix = "{}-{}-".format(v["IMAGE_VERSION"], stack)
    pinned = os.environ.get("SHELFDET_IMAGE_TAG")
    if pinned:
        return image_names.Image(kind, stack, v["IMAGE_REPO_BASE"], prefix + pinned)
    repo, _, tag = image_names.local_name(kind, stack).partition(":")
    if repo != v["IMAGE_REPO_BASE"] or not tag.startswith(prefix):
        raise image_names.ImageError("tools/images.sh names the image {}:{}, not {}:{}<hash> as {} says".format(
            repo, tag, v["IMAGE_REPO_BASE"], prefix, image_names.versions_path()))
    return image_names.Image(kind, stack, repo, tag)


def docker_exe() -> str:
    return os.environ.get("DOCKER") or "docker"


def images_script() -> List[str]:
    # The images engineer's build script; SHELFDET_IMAGES_SH swaps it (tests).
    return ["bash", os.environ.get("SHELFDET_IMAGES_SH") or str(image_names.repo_root() / "tools" / "images.sh")]


def docker(args: List[str], stdin: Optional[str] = None, show: bool = True, capture: bool = True) -> "subprocess.CompletedProcess[str]":
    """Runs Docker; ``capture=False`` lets long steps (push) show their progress."""
    command = [docker_exe()] + args
    if show:
        note("+ " + " ".join(command))
    out = subprocess.run(command, input=stdin, stdout=subprocess.PIPE if capture else None,
                         stderr=subprocess.PIPE if capture else None, text=True)
    if "cannot connect to the docker daemon" in (out.stderr or "").lower():
        raise LaunchError("the Docker daemon is not running (start it, or set DOCKER=<docker command>)")
    return out


def exists_locally(local: str) -> bool:
    return docker(["image", "inspect", "--format", "{{.Id}}", local], show=False).returncode == 0


def check(out: "subprocess.CompletedProcess[str]", what: str) -> None:
    if out.returncode != 0:
        last = (out.stderr or out.stdout or "").strip().splitlines()[-1:] or ["exit {} (see the output above)".format(out.returncode)]
        raise LaunchError("{} failed: {}".format(what, last[0]))


def login(cloud: aws.Aws, registry: str) -> None:
    """``aws ecr get-login-password | docker login --password-stdin``, in-process."""
    account, region = registry.split(".")[0], registry.split(".")[3]
    ecr = (cloud if region == cloud.region else aws.Aws(region)).client("ecr")
    data = ecr.get_authorization_token(registryIds=[account])["authorizationData"][0]
    user, password = base64.b64decode(data["authorizationToken"]).decode().split(":", 1)
    endpoint = data.get("proxyEndpoint") or "https://" + registry
    check(docker(["login", "--username", user, "--password-stdin", endpoint], stdin=password), "docker login to " + registry)


def build(image: image_names.Image) -> None:
    command = images_script() + ["build", image.kind, image.stack]
    note("+ " + " ".join(command) + "  ({} is not built yet)".format(image.local))
    if subprocess.call(command) != 0:
        raise LaunchError("building {} failed (see the output above)".format(image.local))
    if not exists_locally(image.local):
        raise LaunchError("the build finished but {} is not in Docker's images".format(image.local))


def repository_request(image: image_names.Image) -> dict:
    return {"repositoryName": image.repo, "imageScanningConfiguration": {"scanOnPush": True},
            "tags": [{"Key": "project", "Value": "shelfdet"}]}


def push(cloud: aws.Aws, image: image_names.Image, no_build: bool = False) -> Optional[str]:
    """Builds the image if missing (unless ``no_build``), creates its ECR repository if missing, logs in and
    pushes: the pushed URI (None: a dry run, whose requests ``cloud`` shows)."""
    if cloud.dry_run:
        uri = image.ecr_uri(cloud.account(), cloud.region)
        note("# would run: {0} image inspect {1} (build it with tools/images.sh if missing); ECR login to {2}; "
             "{0} tag {1} {3}; {0} push {3}".format(docker_exe(), image.local, image.registry(cloud.account(), cloud.region), uri))
        note("# the request below is sent only when the repository is missing")
        cloud.send("ecr", "create_repository", repository_request(image))
        return None
    if shutil.which(docker_exe()) is None:
        raise LaunchError("docker not found (install Docker, or set DOCKER=<docker command>)")
    account = cloud.account()
    uri = image.ecr_uri(account, cloud.region)
    registry = image.registry(account, cloud.region)
    logged_in = set()  # type: set
    if not exists_locally(image.local):
        if no_build:
            raise LaunchError("{} is not built: make build-{} STACK={}".format(image.local, image.kind, image.stack))
        base = image_names.parse_ecr_uri(os.environ.get("BASE_IMAGE") or "") if image.kind != "base" else None
        if base:  # tools/images.sh pulls BASE_IMAGE, and ECR wants a login first
            base_registry = "{}.dkr.ecr.{}.{}".format(base["account"], base["region"], image_names.domain(base["region"]))
            login(cloud, base_registry)
            logged_in.add(base_registry)
        build(image)
    ecr = cloud.client("ecr")
    try:
        ecr.describe_repositories(repositoryNames=[image.repo])
    except ecr.exceptions.RepositoryNotFoundException:
        note("creating ECR repository {} (scan on push)".format(image.repo))
        cloud.send("ecr", "create_repository", repository_request(image))
    if registry not in logged_in:
        login(cloud, registry)
    check(docker(["tag", image.local, uri]), "docker tag")
    check(docker(["push", uri], capture=False), "docker push")
    note("pushed {}".format(uri))
    return uri
