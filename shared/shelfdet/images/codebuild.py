"""``make push-<kind> BUILDER=codebuild``: the same push, built on AWS CodeBuild instead of here.

For machines that cannot build the images: a Mac on Apple silicon (Detectron2
compiled under amd64 emulation takes hours), a SageMaker notebook, no Docker.
As sagemaker-studio-image-build does from SageMaker Studio, it

1. zips the files ``docker build`` would send (the repository with .dockerignore
   applied) to s3://<BUCKET or sagemaker-<region>-<account>>/<PREFIX or
   shelfdet/codebuild>/<image>-<tag>.zip;
2. creates (or updates) the CodeBuild project shelfdet-image-build: privileged
   (Docker inside), aws/codebuild/standard:7.0, the buildspec
   images/codebuild/buildspec.yml from that zip, the service role ROLE or
   shelfdet-codebuild (made once by ``make bootstrap``: logs, read of the zips, ECR push);
3. starts a build with KIND, STACK and REGION, whose buildspec runs
   ``make push-$KIND STACK=$STACK REGION=$REGION``, the very recipe of a local
   push, so the remote image gets the tag this checkout computes; follows its
   phases and log, and ends with the pushed URI on stdout or one ``error:`` line.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import io
import os
import stat
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from shelfdet.launch import aws, image_names
from shelfdet.launch.aws import LaunchError, note
# Shared with bootstrap and policy, which make the builder's role.
from shelfdet.launch.image_names import ROLE_NAME, default_bucket, partition, zip_prefix

DEFAULT_PREFIX = image_names.DEFAULT_ZIP_PREFIX
BUILD_IMAGE = "aws/codebuild/standard:7.0"
COMPUTE_TYPE = "BUILD_GENERAL1_LARGE"
BUILDSPEC = "images/codebuild/buildspec.yml"
# Compiling Detectron2's CUDA ops for every cu12 architecture is the long part; CodeBuild's cap is 36 h.
TIMEOUT_MINUTES = 480
# Never uploaded, whatever .dockerignore says: local state, not sources.
NEVER = (".venv", ".git", "data", "data-hard", "runs", "images/.build")
# Variables of the caller's shell that change the image's tag (tools/images.sh reads them).
PASSED_THROUGH = ("PARENT", "BASE_IMAGE")
ENDED = ("SUCCEEDED", "FAILED", "FAULT", "TIMED_OUT", "STOPPED")


# ---- the build context -------------------------------------------------------------

def context_root() -> Path:
    """The repository whose versions.env names the image: the tag is computed from its files."""
    try:
        return image_names.images_sh().resolve().parent.parent
    except image_names.ImageError as err:
        raise LaunchError(str(err)) from None


def _image_hash(root: Path) -> Any:
    # tools/image_hash.py holds the one reading of .dockerignore that the image tags use.
    path = root / "tools" / "image_hash.py"
    if not path.is_file():
        raise LaunchError("{} not found: BUILDER=codebuild uploads a checkout of the repository".format(path))
    spec = importlib.util.spec_from_file_location("shelfdet_image_hash", str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def context_files(root: Path) -> List[str]:
    """The files git tracks in ``root`` (.dockerignore applied), minus NEVER: the zip carries the
    repository as committed or staged, never untracked or ignored files (where ``root`` is no git
    work tree, every file: a zip unpacked from an earlier push holds only tracked ones)."""
    hashing = _image_hash(root)
    ignore_file = root / ".dockerignore"
    ignore = hashing.DockerIgnore(ignore_file.read_text() if ignore_file.is_file() else "")
    kept = []
    for rel in hashing.context_files(str(root), ["."], ignore, hashing.tracked_files(str(root))):
        parts = rel.split("/")
        if any(rel == n or rel.startswith(n + "/") for n in NEVER) or "__pycache__" in parts:
            continue
        kept.append(rel)
    return kept


def context_zip(root: Path, files: List[str]) -> bytes:
    """The files as a zip with their Unix modes: the executable bits are part of the image tag."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel in files:
            full = root / rel
            if full.is_symlink():
                info = zipfile.ZipInfo(rel, time.localtime(max(full.lstat().st_mtime, 315619200))[:6])
                info.create_system = 3
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, os.readlink(str(full)))
                continue
            info = zipfile.ZipInfo.from_file(str(full), rel, strict_timestamps=False)
            info.create_system = 3  # unzip restores modes only from a Unix entry
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, full.read_bytes())
    return buf.getvalue()


# ---- requests ------------------------------------------------------------------------

def zip_key(prefix: str, image: image_names.Image) -> str:
    return "{}/{}.zip".format(prefix.strip("/"), image.local.replace(":", "-"))


def project_request(project: str, role_arn: str, location: str, compute_type: str, build_image: str) -> Dict[str, Any]:
    return {
        "name": project,
        "description": "make push-<kind> on CodeBuild (shelfdet: make push-* BUILDER=codebuild)",
        # Each build names its own zip (sourceLocationOverride); the buildspec comes inside it.
        "source": {"type": "S3", "location": location, "buildspec": BUILDSPEC},
        "artifacts": {"type": "NO_ARTIFACTS"},
        "environment": {"type": "LINUX_CONTAINER", "image": build_image, "computeType": compute_type,
                        "privilegedMode": True, "imagePullCredentialsType": "CODEBUILD"},
        "serviceRole": role_arn,
        "timeoutInMinutes": TIMEOUT_MINUTES,
        "tags": [{"key": "project", "value": "shelfdet"}],
    }


def start_request(project: str, location: str, kind: str, stack: str, region: str) -> Dict[str, Any]:
    env = [("KIND", kind), ("STACK", stack), ("REGION", region)]
    env += [(k, os.environ[k]) for k in PASSED_THROUGH if os.environ.get(k)]
    return {"projectName": project, "sourceTypeOverride": "S3", "sourceLocationOverride": location,
            "environmentVariablesOverride": [{"name": k, "value": v, "type": "PLAINTEXT"} for k, v in env]}


def differs(current: Dict[str, Any], wanted: Dict[str, Any]) -> List[str]:
    """What an update would change; the source location is not compared (each build overrides it)."""
    out = []
    for key in ("type", "image", "computeType", "privilegedMode"):
        if (current.get("environment") or {}).get(key) != wanted["environment"][key]:
            out.append("environment." + key)
    for key in ("type", "buildspec"):
        if (current.get("source") or {}).get(key) != wanted["source"][key]:
            out.append("source." + key)
    for key in ("serviceRole", "timeoutInMinutes"):
        if current.get(key) != wanted[key]:
            out.append(key)
    return out


# ---- AWS steps -----------------------------------------------------------------------

def _error_code(err: Any) -> str:
    return err.response.get("Error", {}).get("Code", "")


def ensure_bucket(cloud: aws.Aws, bucket: str, given: bool) -> None:
    from botocore.exceptions import ClientError

    if not given:
        s3 = cloud.client("s3")
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as err:
            if _error_code(err) not in ("404", "NoSuchBucket", "NotFound"):
                raise
            note("creating bucket {} (SageMaker's default bucket name; BUCKET= chooses another)".format(bucket))
            request = {"Bucket": bucket}  # type: Dict[str, Any]
            if cloud.region != "us-east-1":
                request["CreateBucketConfiguration"] = {"LocationConstraint": cloud.region}
            s3.create_bucket(**request)
    # CodeBuild reads an S3 source only from its own region.
    cloud.check_bucket(bucket)


def given_role(cloud: aws.Aws, role: str) -> str:
    m = aws.ROLE_ARN.match(role)
    if cloud.dry_run:
        return role if m else "arn:{}:iam::{}:role/{}".format(partition(cloud.region), cloud.account(), role)
    if m and m.group(1) != cloud.account():
        return role  # another account's role: IAM here cannot see it
    iam = cloud.client("iam")
    try:
        found = iam.get_role(RoleName=m.group(2) if m else role)["Role"]
    except iam.exceptions.NoSuchEntityException:
        raise LaunchError("CodeBuild service role '{}' not found in account {}: pass ROLE=<arn or name> of a role "
                          "codebuild.amazonaws.com can assume, or no ROLE for the {} of `make bootstrap`".format(
                              role, cloud.account(), ROLE_NAME)) from None
    # ROLE is SageMaker's execution role for the other targets: the likely mix-up, caught before anything is made.
    if not aws.trusts(found.get("AssumeRolePolicyDocument"), "codebuild.amazonaws.com"):
        raise LaunchError("role '{}' does not let codebuild.amazonaws.com assume it (with BUILDER=codebuild, ROLE is "
                          "CodeBuild's service role, not SageMaker's): pass such a role, or no ROLE for the {} of `make bootstrap`".format(
                              role, ROLE_NAME))
    return found["Arn"]


def service_role(cloud: aws.Aws, role: Optional[str]) -> str:
    """The project's service role ARN: ROLE, else the one `make bootstrap` made (never made here)."""
    if role:
        return given_role(cloud, role)
    if cloud.dry_run:
        return "arn:{}:iam::{}:role/{}".format(partition(cloud.region), cloud.account(), ROLE_NAME)
    iam = cloud.client("iam")
    try:
        return iam.get_role(RoleName=ROLE_NAME)["Role"]["Arn"]
    except iam.exceptions.NoSuchEntityException:
        raise LaunchError("CodeBuild service role '{}' not found in account {}: an administrator runs `make bootstrap "
                          "REGION={}` once (docs/aws.md), or pass ROLE=<arn or name> of a role "
                          "codebuild.amazonaws.com can assume".format(ROLE_NAME, cloud.account(), cloud.region)) from None


def _role_retry(call: Callable[[], Any], wait: float = 90.0) -> Any:
    """A role made seconds ago (a `make bootstrap` just before) is not yet assumable by CodeBuild: retry
    that one refusal a while."""
    from botocore.exceptions import ClientError

    deadline = time.time() + wait
    while True:
        try:
            return call()
        except ClientError as err:
            text = err.response.get("Error", {}).get("Message", "")
            if not (_error_code(err) == "InvalidInputException" and "AssumeRole" in text
                    and time.time() < deadline):
                raise
            note("waiting for IAM to let CodeBuild assume the new role ...")
            time.sleep(5)


def ensure_project(cloud: aws.Aws, request: Dict[str, Any]) -> None:
    if cloud.dry_run:
        note("# sent as update_project (same fields) when the project exists with other settings; "
             "nothing when it matches")
        cloud.send("codebuild", "create_project", request)
        return
    cb = cloud.client("codebuild")
    found = cb.batch_get_projects(names=[request["name"]]).get("projects") or []
    if not found:
        note("creating CodeBuild project {} ({}, {}, privileged)".format(
            request["name"], request["environment"]["image"], request["environment"]["computeType"]))
        _role_retry(lambda: cb.create_project(**request))
        return
    changes = differs(found[0], request)
    if changes:
        note("updating CodeBuild project {} ({})".format(request["name"], ", ".join(changes)))
        _role_retry(lambda: cb.update_project(**request))
    else:
        note("CodeBuild project {} is up to date".format(request["name"]))


# ---- following a build ---------------------------------------------------------------

def poll_seconds() -> float:
    """Seconds between two looks at a build; tests set SHELFDET_POLL_SECONDS=0."""
    return float(os.environ.get("SHELFDET_POLL_SECONDS", "10"))


def phase_lines(build: Dict[str, Any], shown: Set[Tuple[str, str]]) -> List[str]:
    """One line per phase and status not shown yet: a running phase once, its end once."""
    lines = []
    for phase in build.get("phases") or []:
        kind = phase.get("phaseType", "?")
        if kind == "COMPLETED":
            continue  # a marker, not a step: the build's own status line says how it ended
        status = phase.get("phaseStatus") or "IN_PROGRESS"
        if (kind, status) in shown:
            continue
        shown.add((kind, status))
        took = phase.get("durationInSeconds")
        lines.append("[codebuild] {:<17}{}{}".format(kind, status, " ({} s)".format(took) if took is not None else ""))
    return lines


class LogTail:
    """Prints the build's CloudWatch log lines once each, while it runs (to stderr: stdout is the URI)."""

    def __init__(self, cloud: aws.Aws) -> None:
        self.cloud = cloud
        self.token = None  # type: Optional[str]
        self.off = False

    def __call__(self, build: Dict[str, Any]) -> None:
        where = build.get("logs") or {}
        group, stream = where.get("groupName"), where.get("streamName")
        if self.off or not group or not stream:
            return
        from botocore.exceptions import ClientError

        logs = self.cloud.client("logs")
        while True:
            request = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}  # type: Dict[str, Any]
            if self.token:
                request["nextToken"] = self.token
            try:
                out = logs.get_log_events(**request)
            except ClientError as err:
                if _error_code(err) != "ResourceNotFoundException":
                    note("[codebuild] (not showing the build log: {}; phases only)".format(_error_code(err)))
                    self.off = True
                return
            for event in out.get("events", []):
                note("  " + event.get("message", "").rstrip())
            token = out.get("nextForwardToken")
            if not token or token == self.token:
                return
            self.token = token


def follow(describe: Callable[[str], Dict[str, Any]], build_id: str, logs: Optional[Callable[[Dict[str, Any]], None]] = None,
           poll: Optional[float] = None, sleep: Callable[[float], Any] = time.sleep) -> Dict[str, Any]:
    """Looks at the build until it ends, printing each phase and status once; returns its last description."""
    shown = set()  # type: Set[Tuple[str, str]]
    delay = poll_seconds() if poll is None else poll
    try:
        while True:
            build = describe(build_id)
            if logs is not None:
                logs(build)
            for line in phase_lines(build, shown):
                note(line)
            if build.get("buildStatus") in ENDED:
                note("[codebuild] build {}: {}".format(build_id, build["buildStatus"]))
                return build
            sleep(delay)
    except KeyboardInterrupt:
        raise LaunchError("interrupted: build {} keeps running on CodeBuild (stop it: aws codebuild stop-build --id {})".format(
            build_id, build_id)) from None


def failure(build: Dict[str, Any]) -> str:
    """The one line for a build that did not succeed: its failed phase and that phase's own messages."""
    status = build.get("buildStatus", "?")
    line = "CodeBuild build {} {}".format(build.get("id", "?"), status)
    for phase in build.get("phases") or []:
        if phase.get("phaseStatus") in (None, "SUCCEEDED"):
            continue
        messages = ["{}: {}".format(c["statusCode"], c["message"]) if c.get("statusCode") else c["message"]
                    for c in phase.get("contexts") or [] if c.get("message")]
        line += " in phase {}".format(phase.get("phaseType", "?"))
        if messages:
            line += ": " + "; ".join(messages)
        break
    link = (build.get("logs") or {}).get("deepLink")
    return line + (" (log: {})".format(link) if link else "")


def describer(cloud: aws.Aws) -> Callable[[str], Dict[str, Any]]:
    cb = cloud.client("codebuild")

    def describe(build_id: str) -> Dict[str, Any]:
        builds = cb.batch_get_builds(ids=[build_id]).get("builds") or []
        if not builds:
            raise LaunchError("CodeBuild does not know build {}".format(build_id))
        return builds[0]

    return describe


def check_pushed(cloud: aws.Aws, image: image_names.Image, uri: str, build_id: str) -> None:
    """The build's tag is the one this checkout computes, unless the upload lost something (modes, files)."""
    ecr = cloud.client("ecr")
    try:
        ecr.describe_images(repositoryName=image.repo, imageIds=[{"imageTag": image.tag}])
    except (ecr.exceptions.RepositoryNotFoundException, ecr.exceptions.ImageNotFoundException):
        raise LaunchError("build {} succeeded, but ECR has no {}: the build computed another tag than this "
                          "checkout (its log names the URI it pushed)".format(build_id, uri)) from None


# ---- the command ---------------------------------------------------------------------

@dataclasses.dataclass
class BuildOptions(aws.Options):
    """A push built on CodeBuild: the kind and stack of the image, the project and its machine."""
    kind: str = ""
    project: str = image_names.PROJECT
    compute_type: str = COMPUTE_TYPE
    build_image: str = BUILD_IMAGE


def push(args: BuildOptions, cloud: aws.Aws, image: image_names.Image) -> Optional[str]:
    """``shelfdet push <kind> --builder codebuild`` once the image is named: the pushed URI (None: a dry run)."""
    if os.environ.get("CODEBUILD_BUILD_ID"):
        raise LaunchError("BUILDER=codebuild inside a CodeBuild build: the buildspec builds here (BUILDER=docker)")
    root = context_root()
    files = context_files(root)
    account = cloud.account()
    bucket = args.bucket or default_bucket(cloud.region, account)
    prefix = zip_prefix(args.prefix)
    key = zip_key(prefix, image)
    location = "{}/{}".format(bucket, key)
    uri = image.ecr_uri(account, cloud.region)
    role_arn = service_role(cloud, args.role)
    if cloud.dry_run:
        note("# would zip {} files of {} (.dockerignore applied) to s3://{} (bucket created if missing), then "
             "build {} on CodeBuild".format(len(files), root, location, uri))
    else:
        ensure_bucket(cloud, bucket, given=bool(args.bucket))
        body = context_zip(root, files)
        note("uploading the build context: {} files, {:.1f} MB zipped, to s3://{}".format(
            len(files), len(body) / 1e6, location))
        cloud.client("s3").put_object(Bucket=bucket, Key=key, Body=body)
    ensure_project(cloud, project_request(args.project, role_arn, location, args.compute_type, args.build_image))
    start = start_request(args.project, location, args.kind, args.stack, cloud.region)
    if cloud.dry_run:
        cloud.send("codebuild", "start_build", start)
        return None
    build = _role_retry(lambda: cloud.send("codebuild", "start_build", start))["build"]
    note("started CodeBuild build {}: https://{}.console.aws.amazon.com/codesuite/codebuild/projects/{}/build/{}/?region={}".format(
        build["id"], cloud.region, args.project, build["id"].replace(":", "%3A"), cloud.region))
    final = follow(describer(cloud), build["id"], logs=LogTail(cloud))
    if final.get("buildStatus") != "SUCCEEDED":
        raise LaunchError(failure(final))
    check_pushed(cloud, image, uri, build["id"])
    note("pushed {} (built on CodeBuild)".format(uri))
    return uri

