"""The build preflight and `make doctor` (issue 19, point 4), never on the internet.

Every URL of a copy of versions.env points at an HTTP server on 127.0.0.1 (the original
host becomes the first path segment), `docker` is a script on PATH that answers `image
inspect` / `manifest inspect` from a table and records its calls, and AWS is the moto
server. The preflight runs as `make build-base` runs it: a fresh `python -S` (no
site-packages: the standard library only) with PYTHONPATH=shared.
"""
from __future__ import annotations

import http.server
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
IMAGE_TAG = "t3st000"
ROLE_NAME = "AmazonSageMaker-ExecutionRole-shelfdet"
TRUST = ('{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": '
         '{"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]}')

DOCKER = r"""#!/usr/bin/env bash
# Stand-in for docker: an image is present, pullable or (not in $FAKE_STATE/images) missing.
printf '%s\n' "$*" >>"$FAKE_STATE/docker.log"
state() { awk -v i="$1" '$1 == i { print $2 }' "$FAKE_STATE/images"; }
case "$1 $2" in
  "image inspect") [ "$(state "${@: -1}")" = present ] && { echo sha256:0123; exit 0; }
                   echo "Error: No such image: ${@: -1}" >&2; exit 1 ;;
  "manifest inspect") case "$(state "$3")" in present|pullable) echo '{}' ;;
                      *) echo "manifest unknown" >&2; exit 1 ;; esac ;;
  "info --format") case "$3" in *Mirrors*) echo null ;; *) echo 20.10.24 ;; esac ;;
  "buildx version") echo "docker: 'buildx' is not a docker command." >&2; exit 1 ;;
  "version --format") echo amd64 ;;
  *) echo "unexpected: $*" >&2; exit 1 ;;
esac
"""


class Site(http.server.ThreadingHTTPServer):
    """200 for every path except those in ``missing`` (404); records (method, path)."""
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.missing = set()  # type: Set[str]
        self.seen = []  # type: List[Tuple[str, str]]

    @property
    def url(self) -> str:
        return "http://127.0.0.1:{}".format(self.server_address[1])


class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self) -> None:
        self.server.seen.append((self.command, self.path))
        self.send_response(404 if self.path in self.server.missing else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET = answer

    def log_message(self, *args) -> None:
        pass


class Env:
    """A tmp versions.env on the local site, a fake docker, and the preflight run as make runs it."""

    def __init__(self, tmp: Path, site: Site) -> None:
        self.tmp, self.site = tmp, site
        text = (ROOT / "versions.env").read_text()
        self.versions_file = tmp / "versions.env"
        self.write(re.sub(r"https?://([^/\s]+)", lambda m: "{}/{}".format(site.url, m.group(1)), text))
        (tmp / "images").write_text("")
        (tmp / "sources").mkdir()
        bin_dir = tmp / "bin"
        bin_dir.mkdir()
        for name, body in (("docker", DOCKER), ("debootstrap", "#!/bin/sh\nexit 0\n")):
            (bin_dir / name).write_text(body)
            (bin_dir / name).chmod(0o755 | stat.S_IEXEC)
        self.env = dict(os.environ, PATH="{}:{}".format(bin_dir, os.environ["PATH"]),
                        PYTHONPATH=str(ROOT / "shared"), SHELFDET_VERSIONS_ENV=str(self.versions_file),
                        SHELFDET_IMAGE_TAG=IMAGE_TAG, SHELFDET_SOURCES=str(tmp / "sources"), FAKE_STATE=str(tmp),
                        PIP_INDEX_URL=site.url + "/pypi/simple", NO_PROXY="127.0.0.1,localhost",
                        no_proxy="127.0.0.1,localhost")
        for key in ("PARENT", "SHELFDET_PREFLIGHT", "SHELFDET_PREFLIGHT_TIMEOUT", "HTTP_PROXY", "HTTPS_PROXY",
                    "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
            self.env.pop(key, None)

    def write(self, text: str) -> None:
        self.versions_file.write_text(text)
        self.versions = {}  # type: Dict[str, str]
        for line in text.splitlines():
            if "=" in line and not line.startswith("#"):
                key, value = line.split("=", 1)
                self.versions[key.strip()] = value.strip()

    def images(self, **states: str) -> None:
        """image=state for every parent of every stack (default pullable), then the given ones."""
        table = {v: "pullable" for k, v in self.versions.items() if re.match(r"^STACK_\w+_(BUILDER|RUNTIME)_IMAGE$", k)}
        for image, state in states.items():
            table[image] = state
        (self.tmp / "images").write_text("".join("{} {}\n".format(i, s) for i, s in table.items()))

    def path(self, url: str) -> str:
        return url[len(self.site.url):]

    def docker_calls(self) -> List[str]:
        log = self.tmp / "docker.log"
        return log.read_text().splitlines() if log.exists() else []

    def preflight(self, *args: str, **env: str) -> "subprocess.CompletedProcess[str]":
        return subprocess.run([sys.executable, "-S", "-m", "shelfdet.commands.preflight"] + list(args),
                              cwd=str(self.tmp), env=dict(self.env, **env), capture_output=True, text=True,
                              timeout=120)


def lines(text: str) -> List[str]:
    return [l for l in text.splitlines() if l.strip()]


def one_error(out: "subprocess.CompletedProcess[str]") -> str:
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    got = lines(out.stderr)
    assert len(got) == 1 and got[0].startswith("error: preflight: "), out.stderr
    return got[0]


@pytest.fixture
def site():
    server = Site()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent():
    """Accepts connections (the kernel's backlog) and never answers: a part that hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield "http://127.0.0.1:{}".format(sock.getsockname()[1])
    sock.close()


@pytest.fixture
def env(tmp_path, site):
    return Env(tmp_path, site)


# ---- the preflight -------------------------------------------------------------------

@pytest.mark.parametrize("stack", ["cpu", "cu101", "cu12"])
def test_everything_reachable_passes(env, stack):
    env.images()
    out = env.preflight(stack)
    assert out.returncode == 0, out.stderr
    assert re.match(r"^preflight: stack {}: \d+ external parts reachable".format(stack), lines(out.stderr)[-1])
    v = env.versions
    up = stack.upper()
    heads = {path for method, path in env.site.seen if method == "HEAD"}
    want = [env.path(v["PARENT_BOOKWORM_APT_RELEASE"] if stack != "cu101" else v["PARENT_BIONIC_APT_RELEASE"])]
    want += [env.path(u) for u in v["STACK_{}_TORCH_PIP".format(up)].split() if "://" in u]
    if stack == "cu101":
        repo, keyring = v["STACK_CU101_CUDA_APT"].split()[:2]
        want += [env.path(repo) + "/Release", env.path(repo) + "/" + keyring, env.path(v["STACK_CU101_CUDA_RUNFILE"])]
        commit = v["STACK_CU101_DETECTRON2"].rsplit("@", 1)[1]
        want.append("/github.com/facebookresearch/detectron2/archive/{}.tar.gz".format(commit))
        want.append("/pypi/simple/numpy/")
    if stack == "cu12":
        want.append("/deb.debian.org/debian/dists/{}/Release".format(v["STACK_CU12_CUDA_DEB"].split("/")[0]))
        want.append("/pypi/simple/torch/")
    if stack == "cpu":
        want.append("/pypi/simple/pb1-detectron2/")
    assert set(want) <= heads, sorted(heads)
    parents = {v["STACK_{}_BUILDER_IMAGE".format(up)], v["STACK_{}_RUNTIME_IMAGE".format(up)]}
    assert {"manifest inspect " + p for p in parents} <= set(env.docker_calls())


def test_missing_parent_without_standin_stops_in_one_line_with_alternatives(env):
    image = env.versions["STACK_CU101_BUILDER_IMAGE"]
    name = [k for k, v in env.versions.items() if re.match(r"^PARENT_[A-Z0-9]+$", k) and v == image][0]
    assert env.versions[name + "_ROOTFS_SUITE"] == "", "the test needs a parent without a stand-in"
    env.images(**{image: "missing"})
    line = one_error(env.preflight("cu101"))
    assert line.startswith("error: preflight: stack cu101: parent {} cannot be pulled "
                           "(docker manifest inspect: manifest unknown); alternatives: ".format(image)), line
    # cu12's arch list covers cu101's 7.0 and 7.5 (read from versions.env, not a table)
    assert "STACK=cu12 also runs ml.p3 and ml.g4dn (its arch list has 7.0 and 7.5)" in line
    assert "BUILDER=codebuild" in line
    assert "PARENT=debootstrap" not in line  # ubuntu:18.04 has no stand-in


def test_missing_parent_with_standin_is_ok_with_a_note(env):
    image = env.versions["STACK_CPU_BUILDER_IMAGE"]
    name = [k for k, v in env.versions.items() if re.match(r"^PARENT_[A-Z0-9]+$", k) and v == image][0]
    suite = env.versions[name + "_ROOTFS_SUITE"]
    assert suite
    env.images(**{image: "missing"})
    out = env.preflight("cpu")
    assert out.returncode == 0, out.stderr
    assert ("preflight: note: parent {} cannot be pulled (manifest unknown): images.sh makes a debootstrap {} "
            "stand-in under its name".format(image, suite)) in out.stderr
    assert lines(out.stderr)[-1].startswith("preflight: stack cpu: ")


def test_missing_variant_parent_names_the_stand_in_parents(env):
    image = env.versions["STACK_CU12_NVIDIA_BUILDER_IMAGE"]
    env.images(**{image: "missing", env.versions["STACK_CU12_NVIDIA_RUNTIME_IMAGE"]: "missing"})
    line = one_error(env.preflight("cu12", PARENT="nvidia"))
    assert line.startswith("error: preflight: stack cu12: parent {} cannot be pulled".format(image)), line
    assert "PARENT=debootstrap (the stack's own parents, {}, made with debootstrap)".format(
        env.versions["STACK_CU12_BUILDER_IMAGE"]) in line
    assert "STACK=cu101" not in line  # cu101 lacks cu12's 8.x and 9.0


def test_unreachable_wheel_is_named(env):
    env.images()
    wheel = env.versions["STACK_CU101_TORCH_PIP"].split()[0]
    env.site.missing.add(env.path(wheel))
    line = one_error(env.preflight("cu101"))
    assert line.startswith("error: preflight: stack cu101: wheel {} is unreachable (HTTP 404); alternatives: ".format(
        wheel)), line


def test_a_part_that_never_answers_fails_within_the_timeout(env, silent):
    env.images()
    wheel = env.versions["STACK_CU101_TORCH_PIP"].split()[1]
    hanging = silent + "/whl/" + wheel.rsplit("/", 1)[1]
    env.write(env.versions_file.read_text().replace(wheel, hanging))
    t0 = time.monotonic()
    line = one_error(env.preflight("cu101", "--timeout", "1"))
    assert "wheel {} is unreachable (no answer in 1 s)".format(hanging) in line, line
    assert time.monotonic() - t0 < 60


def test_cuda_runfile_stands_in_for_nvidias_apt_repository(env):
    env.images()
    repo = env.versions["STACK_CU101_CUDA_APT"].split()[0]
    env.site.missing.add(env.path(repo) + "/Release")
    out = env.preflight("cu101")
    assert out.returncode == 0, out.stderr
    assert "the build falls back to NVIDIA's CUDA runfile" in out.stderr
    env.site.missing.add(env.path(env.versions["STACK_CU101_CUDA_RUNFILE"]))
    line = one_error(env.preflight("cu101"))
    assert "CUDA apt repository {}/Release is unreachable (HTTP 404) and so is its fallback".format(repo) in line


def test_twin_without_its_source_archive_names_the_fix(env):
    env.images()
    line = one_error(env.preflight("cu101cpu"))
    assert "Detectron2 source of stack cu101cpu: missing: " in line, line
    assert "bash tools/d2_source.sh cu101 /tmp/d2" in line


def test_a_built_base_image_needs_nothing(env):
    v = env.versions
    tag = "{}:{}-cu101-{}".format(v["IMAGE_REPO_BASE"], v["IMAGE_VERSION"], IMAGE_TAG)
    env.images(**{v["STACK_CU101_BUILDER_IMAGE"]: "missing", tag: "present"})
    out = env.preflight("cu101")
    assert out.returncode == 0, out.stderr
    assert lines(out.stderr) == ["preflight: stack cu101: {} is built, its build fetches nothing".format(tag)]


def test_shelfdet_preflight_0_skips(env):
    out = env.preflight("cu101", SHELFDET_PREFLIGHT="0")
    assert out.returncode == 0
    assert lines(out.stderr) == ["preflight: skipped (SHELFDET_PREFLIGHT=0)"]
    assert env.docker_calls() == [] and env.site.seen == []


def test_make_build_base_stops_at_the_preflight(env):
    image = env.versions["STACK_CU101_BUILDER_IMAGE"]
    env.images(**{image: "missing"})
    out = subprocess.run(["make", "-s", "--no-print-directory", "build-base", "STACK=cu101"], cwd=str(ROOT),
                         env=env.env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert lines(out.stderr)[0].startswith("error: preflight: stack cu101: parent {} cannot be pulled".format(image))
    assert not [c for c in env.docker_calls() if c.startswith(("build", "pull"))], env.docker_calls()


# ---- make doctor -----------------------------------------------------------------------

def make_doctor(env: Env, *args: str) -> "subprocess.CompletedProcess[str]":
    full = dict(env.env)
    full.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")})
    return subprocess.run(["make", "-s", "--no-print-directory", "doctor"] + list(args), cwd=str(ROOT), env=full,
                          capture_output=True, text=True, timeout=300)


def table(stdout: str) -> Tuple[List[int], Dict[Tuple[str, str], List[str]]]:
    rows = lines(stdout)
    header = rows[0]
    assert header.split() == ["stack", "part", "what", "status", "detail"], header
    starts = [header.index(c) for c in ("part", "what", "status", "detail")]
    cells = {}
    for row in rows[1:]:
        for s in starts:  # aligned: every column starts after a gap of two spaces
            assert row[s - 2:s] == "  " and row[s] != " ", (row, s)
        bounds = [0] + starts + [len(row)]
        parts = [row[a:b].strip() for a, b in zip(bounds, bounds[1:])]
        cells[(parts[1], parts[2])] = parts
    return starts, cells


def test_make_doctor_prints_the_table(env, aws_env):
    import boto3

    iam = boto3.client("iam", region_name="us-east-2")
    iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=TRUST)
    boto3.client("ecr", region_name="us-east-2").create_repository(repositoryName=env.versions["IMAGE_REPO_TRAINING"])
    env.images()
    out = make_doctor(env, "STACK=cpu", "REGION=us-east-2")
    assert out.returncode == 0, out.stdout + out.stderr
    _, cells = table(out.stdout)
    assert cells[("docker", "daemon")][3:] == ["ok", "daemon 20.10.24 answers"]
    assert cells[("docker", "buildx/BuildKit")][3] == "absent"
    creds = cells[("aws", "credentials (sts get-caller-identity)")]
    assert creds[3] == "ok" and "account 123456789012" in creds[4] and aws_env["AWS_ENDPOINT_URL"] in creds[4]
    assert cells[("aws", "region us-east-2")][3] == "ok"
    assert "{} exists".format(env.versions["IMAGE_REPO_TRAINING"]) in cells[("aws", "ECR access")][4]
    role = cells[("aws", "SageMaker execution role")]
    assert role[3] == "ok" and "arn:aws:iam::123456789012:role/" + ROLE_NAME in role[4], role
    assert cells[("parent", env.versions["STACK_CPU_BUILDER_IMAGE"])][:4] == [
        "cpu", "parent", env.versions["STACK_CPU_BUILDER_IMAGE"], "ok"]
    assert "doctor: every required check passes" in out.stderr

    env.images(**{env.versions["STACK_CU101_BUILDER_IMAGE"]: "missing"})
    out = make_doctor(env, "STACK=cpu cu101", "REGION=us-east-2", "ROLE=no-such-role")
    assert out.returncode == 2, out.stdout + out.stderr  # make's status for a recipe that failed
    _, cells = table(out.stdout)
    assert cells[("aws", "SageMaker execution role")][3] == "FAIL"
    assert "execution role 'no-such-role' not found" in cells[("aws", "SageMaker execution role")][4]
    assert cells[("parent", env.versions["STACK_CU101_BUILDER_IMAGE"])][3] == "FAIL"
    assert "doctor: 2 required checks failed" in out.stderr
    assert "doctor: stack cu101: parent {} cannot be pulled".format(env.versions["STACK_CU101_BUILDER_IMAGE"]) in out.stderr
