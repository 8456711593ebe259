"""Image names, tags and ECR URIs. The tag is tools/images.sh's: <IMAGE_VERSION>-<stack>-<hash of
what goes into the image> (tools/image_hash.py computes it; this module asks tools/images.sh)."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Dict, NamedTuple, Optional

from shelfdet.launch import aws

# The stacks that can be pushed and launched.
STACKS = ("cpu", "cu101", "cu12")
# The design card's stack (CUDA 10.1, torch 1.6, Volta/Turing): what `make push-*` pushes by default.
# The only place that default is set: the Makefile passes STACK only when given.
CARD_STACK = "cu101"
# tools/images.sh also builds these CPU twins of GPU stacks; they exist to test the
# GPU stacks' software where there is no GPU, so nothing pushes or launches them.
TEST_STACKS = ("cu101cpu",)
KINDS = ("training", "serving")
# Stacks of one kind only: cpu-slim serves exported models (no torch, no Detectron2; make deploy SERVERLESS=1).
KIND_STACKS = {"cpu-slim": ("serving",)}


class ImageError(RuntimeError):
    pass


def repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def versions_path() -> Path:
    """SHELFDET_VERSIONS_ENV, else versions.env at the repo root or above the working directory."""
    env = os.environ.get("SHELFDET_VERSIONS_ENV")
    if env:
        return Path(env)
    candidates = [repo_root()] + [Path.cwd()] + list(Path.cwd().parents)
    for folder in candidates:
        if (folder / "versions.env").is_file():
            return folder / "versions.env"
    raise ImageError("versions.env not found (run from the repository or set SHELFDET_VERSIONS_ENV)")


def read_versions(path: Optional[Path] = None) -> Dict[str, str]:
    path = path or versions_path()
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        values[key.strip()] = value.strip()
    return values


def images_sh() -> Path:
    """tools/images.sh of the repository whose versions.env is read (else of this checkout)."""
    for root in (versions_path().resolve().parent, repo_root()):
        if (root / "tools" / "images.sh").is_file():
            return root / "tools" / "images.sh"
    raise ImageError("tools/images.sh not found beside {} (run from the repository, or set SHELFDET_IMAGE_TAG)".format(
        versions_path()))


def local_name(kind: str, stack: str) -> str:
    """``repo:tag`` as tools/images.sh names (and builds) the image: the tag ends with the hash of
    the image's content; SHELFDET_IMAGE_TAG pins that last part (tests)."""
    command = ["bash", str(images_sh()), "name", kind, stack]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as err:
        raise ImageError("{} failed: {}".format(" ".join(command), err)) from None
    if out.returncode != 0 or not out.stdout.strip():
        last = (out.stderr.strip().splitlines() or ["exit {}".format(out.returncode)])[-1]
        raise ImageError("cannot name the {} image of stack {}: {}".format(kind, stack, last.replace("error: ", "")))
    return out.stdout.strip()


def domain(region: str) -> str:
    return "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"


class Image(NamedTuple):
    kind: str
    stack: str
    repo: str
    tag: str

    @property
    def local(self) -> str:
        return "{}:{}".format(self.repo, self.tag)

    def registry(self, account: str, region: str) -> str:
        return "{}.dkr.ecr.{}.{}".format(account, region, domain(region))

    def ecr_uri(self, account: str, region: str) -> str:
        return "{}/{}".format(self.registry(account, region), self.local)


def image(kind: str, stack: str, versions: Optional[Dict[str, str]] = None) -> Image:
    if kind not in KINDS:
        raise ImageError("unknown image '{}' (one of: {})".format(kind, ", ".join(KINDS)))
    if stack in TEST_STACKS:
        raise ImageError("stack '{}' is a CPU twin for tests, never pushed or launched (one of: {})".format(
            stack, ", ".join(STACKS)))
    if stack in KIND_STACKS and kind not in KIND_STACKS[stack]:
        raise ImageError("stack '{}' has no {} image (only: {})".format(stack, kind, ", ".join(KIND_STACKS[stack])))
    if stack not in STACKS and stack not in KIND_STACKS:
        raise ImageError("unknown stack '{}' (one of: {})".format(stack, ", ".join(STACKS)))
    v = versions if versions is not None else read_versions()
    key = "IMAGE_REPO_" + kind.upper()
    if key not in v or "IMAGE_VERSION" not in v:
        raise ImageError("versions.env lacks {} or IMAGE_VERSION".format(key))
    prefix = "{}-{}-".format(v["IMAGE_VERSION"], stack)
    pinned = os.environ.get("SHELFDET_IMAGE_TAG")
    if pinned:
        return Image(kind, stack, v[key], prefix + pinned)
    repo, _, tag = local_name(kind, stack).partition(":")
    if repo != v[key] or not tag.startswith(prefix):
        raise ImageError("tools/images.sh names the image {}:{}, not {}:{}<hash> as {} says".format(
            repo, tag, v[key], prefix, versions_path()))
    return Image(kind, stack, repo, tag)


def parse_ecr_uri(uri: str) -> Optional[Dict[str, str]]:
    """account, region, repo, tag of an ECR image URI; None for other registries."""
    m = re.match(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/([^:@]+)(?::([^@]+))?$", uri)
    if not m:
        return None
    return {"account": m.group(1), "region": m.group(2), "repo": m.group(3), "tag": m.group(4) or "latest"}


# ---- CodeBuild's names: the builder (images.codebuild) and the administrator's role (bootstrap, policy) ----

PROJECT = "shelfdet-image-build"
ROLE_NAME = "shelfdet-codebuild"
DEFAULT_ZIP_PREFIX = "shelfdet/codebuild"
ECR_ACTIONS = ("ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
               "ecr:CompleteLayerUpload", "ecr:PutImage", "ecr:CreateRepository", "ecr:DescribeRepositories",
               "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:TagResource", "ecr:DescribeImages")


def partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    return "aws-us-gov" if region.startswith("us-gov-") else "aws"


def default_bucket(region: str, account: str) -> str:
    return "sagemaker-{}-{}".format(region, account)


def zip_prefix(prefix: Optional[str]) -> str:
    """Where the build zips go: PREFIX when chosen, else their own folder (Make passes the data's prefix by default)."""
    return (prefix if prefix and prefix != aws.DEFAULT_PREFIX else DEFAULT_ZIP_PREFIX).strip("/")
