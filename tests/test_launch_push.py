"""`make push-*`: ECR against a moto server, Docker observed through a recording `docker` on PATH.
(BUILDER=codebuild: tests/test_launch_codebuild.py.)"""
from __future__ import annotations

import os
import shlex
import stat
import subprocess

import pytest

from shelfdet.launch import image_names
from shelfdet.images import push as push_module
from test_launch_support import (ACCOUNT, IMAGE_TAG, REGION, cli, client, fast_sessions, json_docs,  # noqa: F401
                                 make, one_error_line)

RECORDER = r"""#!/usr/bin/env bash
# A stand-in for docker: records each command line (and login's stdin), plays a daemon
# whose image store is the file $FAKE_STATE/image_names.
log="$FAKE_STATE/docker.log"
printf '%q ' "$@" >>"$log"; echo >>"$log"
case "$1" in
  login) printf '#stdin %s\n' "$(cat)" >>"$log"; echo "Login Succeeded" ;;
  image) grep -qxF "${@: -1}" "$FAKE_STATE/images" 2>/dev/null || { echo "Error: No such image: ${@: -1}" >&2; exit 1; }
         echo sha256:0123 ;;
  push) [ -z "$FAKE_PUSH_FAIL" ] || { echo "denied: not authorized" >&2; exit 1; } ;;
esac
"""
BUILDER = r"""#!/usr/bin/env bash
# Stand-in for tools/images.sh: records its arguments, "builds" the image it is asked for.
printf '%q ' "$@" >>"$FAKE_STATE/images.log"; echo >>"$FAKE_STATE/images.log"
printf '#build %s\n' "$*" >>"$FAKE_STATE/docker.log"
echo "$FAKE_BUILT" >>"$FAKE_STATE/images"
"""
REGISTRY = "{}.dkr.ecr.{}.amazonaws.com".format(ACCOUNT, REGION)
TAG = "0.1.0-cpu-" + IMAGE_TAG


def executable(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.fixture
def fake_docker(aws_env, monkeypatch, tmp_path):
    """A `docker` on PATH that records; returns a reader of the calls (argv lists, '#stdin'/'#build' lines)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "docker", RECORDER)
    builder = executable(tmp_path / "images.sh", BUILDER)
    monkeypatch.setenv("PATH", "{}:{}".format(bin_dir, os.environ["PATH"]))
    monkeypatch.delenv("DOCKER", raising=False)
    monkeypatch.setenv("FAKE_STATE", str(tmp_path))
    monkeypatch.setenv("SHELFDET_IMAGES_SH", str(builder))
    monkeypatch.setenv("SHELFDET_IMAGE_TAG", IMAGE_TAG)

    def calls(name="docker.log"):
        path = tmp_path / name
        if not path.exists():
            return []
        return [line if line.startswith("#") else shlex.split(line) for line in path.read_text().splitlines()]

    return calls


def test_push_builds_missing_image_creates_repo_logs_in_and_pushes(fake_docker, monkeypatch, capsys):
    local = "shelfdet-training:" + TAG
    monkeypatch.setenv("FAKE_BUILT", local)
    rc, out, err = cli(capsys, "push", "training", "--stack", "cpu", "--region", REGION, "--prefix", "detectron2/data")
    assert rc == 0, err
    uri = "{}/{}".format(REGISTRY, local)
    assert out.strip() == uri
    assert fake_docker("images.log") == [["build", "training", "cpu"]]
    assert fake_docker() == [
        ["image", "inspect", "--format", "{{.Id}}", local],
        "#build build training cpu",
        ["image", "inspect", "--format", "{{.Id}}", local],
        ["login", "--username", "AWS", "--password-stdin", "https://" + REGISTRY],
        "#stdin {}-auth-token".format(ACCOUNT),  # moto's password, through stdin only
        ["tag", local, uri],
        ["push", uri],
    ]
    (repo,) = client("ecr").describe_repositories(repositoryNames=["shelfdet-training"])["repositories"]
    assert repo["imageScanningConfiguration"] == {"scanOnPush": True}


def test_push_builds_after_an_edit_and_not_after_a_revert(fake_docker, monkeypatch, capsys, tmp_path):
    """No tag pin: the tag is the hash of what goes into the image (in a copy of the repo's image
    inputs here). An edit makes a tag Docker does not have, so push builds; a revert or a README
    edit gives back a tag that is there, so push pushes it as it is."""
    from test_images_static import copy_of_image_inputs

    repo = copy_of_image_inputs(tmp_path / "repo")
    for pin in ("SHELFDET_IMAGE_TAG", "SHELFDET_IMAGE_NAMES", "PARENT"):
        monkeypatch.delenv(pin, raising=False)
    monkeypatch.setenv("SHELFDET_VERSIONS_ENV", str(repo / "versions.env"))

    def name():
        return subprocess.run(["bash", str(repo / "tools" / "images.sh"), "name", "training", "cpu"],
                              capture_output=True, text=True, check=True).stdout.strip()

    def push():
        rc, out, err = cli(capsys, "push", "training", "--stack", "cpu", "--region", REGION)
        assert rc == 0, err
        return out.strip()

    first = name()
    assert image_names.image("training", "cpu").local == first, "the launcher's tag is tools/images.sh's"
    (tmp_path / "images").write_text(first + "\n")  # built
    assert push() == "{}/{}".format(REGISTRY, first)
    assert fake_docker("images.log") == []
    module = repo / "shared" / "shelfdet" / "__init__.py"
    text = module.read_text()
    module.write_text(text + "# an edit not committed anywhere\n")
    edited = name()
    assert edited != first
    monkeypatch.setenv("FAKE_BUILT", edited)
    assert push() == "{}/{}".format(REGISTRY, edited)
    assert fake_docker("images.log") == [["build", "training", "cpu"]]
    module.write_text(text)
    readme = repo / "README.md"
    readme.write_text(readme.read_text() + "\nMore words.\n")
    assert push() == "{}/{}".format(REGISTRY, first)
    assert fake_docker("images.log") == [["build", "training", "cpu"]], "nothing built again"


def test_make_push_serving_existing_image_and_repo(fake_docker, tmp_path):
    local = "shelfdet-serving:" + TAG
    (tmp_path / "images").write_text(local + "\n")
    client("ecr").create_repository(repositoryName="shelfdet-serving")
    out = make("push-serving", "REGION=" + REGION, "STACK=cpu")
    assert out.returncode == 0, out.stderr
    calls = fake_docker()
    assert [c[0] for c in calls if isinstance(c, list)] == ["image", "login", "tag", "push"]
    assert fake_docker("images.log") == []  # nothing built
    (repo,) = client("ecr").describe_repositories(repositoryNames=["shelfdet-serving"])["repositories"]
    assert repo["imageScanningConfiguration"] == {"scanOnPush": False}  # existing repository left as it was


def test_dry_run_runs_no_docker_and_prints_the_request(fake_docker, monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    rc, out, err = cli(capsys, "push", "serving", "--region", REGION, "--dry-run")
    assert rc == 0, err
    assert json_docs(out) == [{"repositoryName": "shelfdet-serving", "imageScanningConfiguration": {"scanOnPush": True},
                               "tags": [{"Key": "project", "Value": "shelfdet"}]}]
    assert fake_docker() == [] and fake_docker("images.log") == []
    assert "<account>.dkr.ecr.us-east-2.amazonaws.com/shelfdet-serving:0.1.0-cu101-" + IMAGE_TAG in err


def test_push_failure_is_one_line(fake_docker, monkeypatch, capsys, tmp_path):
    (tmp_path / "images").write_text("shelfdet-training:{}\n".format(TAG))
    monkeypatch.setenv("FAKE_PUSH_FAIL", "1")
    rc, _, err = cli(capsys, "push", "training", "--stack", "cpu", "--region", REGION)
    assert rc != 0 and "docker push failed" in one_error_line(err)
    monkeypatch.setenv("DOCKER", str(tmp_path / "no-docker-here"))
    rc, _, err = cli(capsys, "push", "training", "--region", REGION)
    assert rc != 0 and "docker not found" in one_error_line(err)


@pytest.mark.parametrize("kind", ["training", "serving", "base"])
def test_card_command_pushes_the_card_stack(fake_docker, monkeypatch, kind):
    """`make push-training REGION=us-east-2` with no STACK: the design card's cu101 image, built if missing.
    The base too: a team that pushed it once builds training and serving on it (BASE_IMAGE=<its URI>)."""
    local = "shelfdet-{}:0.1.0-cu101-{}".format(kind, IMAGE_TAG)
    monkeypatch.setenv("FAKE_BUILT", local)
    out = make("push-" + kind, "REGION=" + REGION)
    assert out.returncode == 0, out.stderr
    uri = "{}/{}".format(REGISTRY, local)
    assert fake_docker("images.log") == [["build", kind, "cu101"]]
    assert fake_docker() == [["image", "inspect", "--format", "{{.Id}}", local]] + [
        "#build build {} cu101".format(kind),
        ["image", "inspect", "--format", "{{.Id}}", local],
        ["login", "--username", "AWS", "--password-stdin", "https://" + REGISTRY],
        "#stdin {}-auth-token".format(ACCOUNT),  # get-login-password's token, on stdin only
        ["tag", local, uri],
        ["push", uri],
    ]
    assert out.stdout.strip().splitlines()[-1] == uri
    assert "STACK not given: the design card's cu101" in out.stderr
    (repo,) = client("ecr").describe_repositories(repositoryNames=["shelfdet-" + kind])["repositories"]
    assert repo["imageScanningConfiguration"] == {"scanOnPush": True}


def test_make_help_names_the_push_default():
    out = make("help")
    assert out.returncode == 0, out.stderr
    assert "{} to push".format(image_names.CARD_STACK) in out.stdout


@pytest.mark.parametrize("target", ["push-training", "push-base"])
def test_the_test_only_twin_is_not_pushed(fake_docker, target):
    out = make(target, "REGION=" + REGION, "STACK=cu101cpu")
    assert out.returncode != 0
    errors = [l for l in out.stderr.splitlines() if l.startswith("error: ")]
    assert errors == ["error: stack 'cu101cpu' is a CPU twin for tests, never pushed or launched (one of: cpu, cu101, cu12)"]
    assert fake_docker() == [] and fake_docker("images.log") == []


def test_the_base_is_named_as_tools_images_sh_names_it(tmp_path, monkeypatch):
    """No tag pin: push-base pushes the base that `make build-base` builds, whatever its content hash."""
    from test_images_static import copy_of_image_inputs

    repo = copy_of_image_inputs(tmp_path / "repo")
    for pin in ("SHELFDET_IMAGE_TAG", "SHELFDET_IMAGE_NAMES", "PARENT", "BASE_IMAGE"):
        monkeypatch.delenv(pin, raising=False)
    monkeypatch.setenv("SHELFDET_VERSIONS_ENV", str(repo / "versions.env"))
    name = subprocess.run(["bash", str(repo / "tools" / "images.sh"), "name", "base", "cu101"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert push_module.image_of("base", "cu101").local == name
    assert name.startswith("shelfdet-base:0.1.0-cu101-")


def test_building_on_a_pushed_base_logs_in_to_its_registry_first(fake_docker, monkeypatch, capsys):
    """tools/images.sh pulls BASE_IMAGE when it builds; ECR wants the login before that pull (once: same registry)."""
    local = "shelfdet-training:" + TAG
    monkeypatch.setenv("FAKE_BUILT", local)
    monkeypatch.setenv("BASE_IMAGE", "{}/shelfdet-base:{}".format(REGISTRY, TAG))
    rc, out, err = cli(capsys, "push", "training", "--stack", "cpu", "--region", REGION)
    assert rc == 0, err
    uri = "{}/{}".format(REGISTRY, local)
    assert fake_docker() == [
        ["image", "inspect", "--format", "{{.Id}}", local],
        ["login", "--username", "AWS", "--password-stdin", "https://" + REGISTRY],
        "#stdin {}-auth-token".format(ACCOUNT),
        "#build build training cpu",
        ["image", "inspect", "--format", "{{.Id}}", local],
        ["tag", local, uri],
        ["push", uri],
    ]
