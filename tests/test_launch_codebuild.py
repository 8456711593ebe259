"""`make push-* BUILDER=codebuild`: S3, IAM, CodeBuild, ECR and CloudWatch Logs on a moto server.

moto 5.2.5's CodeBuild answers every BatchGetBuilds with SUCCEEDED (all phases at once), ignores
a build's overrides and has no UpdateProject (HTTP 500). So a build's course is asserted on the
request that started it; a failing build is moto's answer with recorded CodeBuild phases put over
it (after-call, as test_launch_support.Describes does for SageMaker); and an update is emulated
with moto's own delete + create, the request taken off the wire.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from test_launch_support import (ACCOUNT, IMAGE_TAG, REGION, cli, client, fast_sessions,  # noqa: F401
                                 json_docs, make, no_network, one_error_line, put_tag, sent, wire)

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "shelfdet-image-build"
DEFAULT_BUCKET = "sagemaker-{}-{}".format(REGION, ACCOUNT)
TAG = "0.1.0-cu101-" + IMAGE_TAG
KEY = "shelfdet/codebuild/shelfdet-training-{}.zip".format(TAG)
URI = "{}.dkr.ecr.{}.amazonaws.com/shelfdet-training:{}".format(ACCOUNT, REGION, TAG)
PUSH = ["push", "training", "--stack", "cu101", "--region", REGION, "--builder", "codebuild",
        "--prefix", "detectron2/data"]  # Make's default PREFIX: the data's, not the zips'
CODEBUILD_TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "codebuild.amazonaws.com"}, "Action": "sts:AssumeRole"}]}


def env_overrides(kind="training", stack="cu101", **more):
    pairs = [("KIND", kind), ("STACK", stack), ("REGION", REGION)] + list(more.items())
    return [{"name": k, "value": v, "type": "PLAINTEXT"} for k, v in pairs]


@pytest.fixture
def cb_env(aws_env, monkeypatch, capsys):
    """An account where an administrator ran `make bootstrap` (tests/test_launch_permissions.py tests it)."""
    monkeypatch.setenv("SHELFDET_IMAGE_TAG", IMAGE_TAG)
    monkeypatch.setenv("SHELFDET_POLL_SECONDS", "0")
    for name in ("CODEBUILD_BUILD_ID", "PARENT", "BASE_IMAGE", "SHELFDET_VERSIONS_ENV"):
        monkeypatch.delenv(name, raising=False)
    rc, _, err = cli(capsys, "bootstrap", "--region", REGION)
    assert rc == 0, err
    return aws_env


def pushed(repo: str, tag: str) -> None:
    """What the build's own `make push-*` leaves in ECR (moto's builds run nothing)."""
    put_tag(repo, tag)


def hooked(monkeypatch, event: str, handler) -> None:
    """``handler`` on ``event`` in every session the launchers make (over the wire fixture's)."""
    from shelfdet.launch import aws

    original = aws.make_session

    def session(region):
        s = original(region)
        s.events.register(event, handler)
        return s

    monkeypatch.setattr(aws, "make_session", session)


def codebuild_lines(err: str):
    return [l for l in err.splitlines() if l.startswith("[codebuild] ")]


def test_push_uploads_the_context_makes_the_project_with_bootstraps_role_and_follows_the_build(cb_env, wire, capsys):
    pushed("shelfdet-training", TAG)
    rc, out, err = cli(capsys, *PUSH)
    assert rc == 0, err
    assert out.strip() == URI
    (project,) = client("codebuild").batch_get_projects(names=[PROJECT])["projects"]
    assert project["environment"] == {"type": "LINUX_CONTAINER", "image": "aws/codebuild/standard:7.0",
                                      "computeType": "BUILD_GENERAL1_LARGE", "privilegedMode": True,
                                      "imagePullCredentialsType": "CODEBUILD"}
    assert project["source"] == {"type": "S3", "location": DEFAULT_BUCKET + "/" + KEY,
                                 "buildspec": "images/codebuild/buildspec.yml"}
    assert project["artifacts"] == {"type": "NO_ARTIFACTS"}
    assert project["serviceRole"] == client("iam").get_role(RoleName="shelfdet-codebuild")["Role"]["Arn"]
    (start,) = sent(wire, "StartBuild")
    assert start == {"projectName": PROJECT, "sourceTypeOverride": "S3",
                     "sourceLocationOverride": DEFAULT_BUCKET + "/" + KEY, "environmentVariablesOverride": env_overrides()}
    assert client("s3").head_object(Bucket=DEFAULT_BUCKET, Key=KEY)["ContentLength"] > 0
    lines = codebuild_lines(err)
    assert lines[-1].endswith(": SUCCEEDED") and lines[-1].startswith("[codebuild] build {}:".format(PROJECT))
    phases = [l.split()[1] for l in lines[:-1]]
    assert phases == ["SUBMITTED", "QUEUED", "PROVISIONING", "DOWNLOAD_SOURCE", "INSTALL", "PRE_BUILD", "BUILD",
                      "POST_BUILD", "UPLOAD_ARTIFACTS", "FINALIZING"], lines
    assert all(l.split()[2] == "SUCCEEDED" for l in lines[:-1])


def copy_of_repo(dest: Path) -> Path:
    """This checkout's files as a user has them, plus what must never travel."""
    skip = {".git", ".venv", "data", "runs", "sources", ".pytest_cache"}
    for entry in ROOT.iterdir():
        if entry.name in skip:
            continue
        if entry.is_dir():
            shutil.copytree(str(entry), str(dest / entry.name), symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", ".build"))
        else:
            shutil.copy2(str(entry), str(dest / entry.name))
    junk = [".venv/bin/python", ".git/HEAD", "data/training/img_1.jpg", "runs/run-1/model/model_final.pth",
            "shared/shelfdet/__pycache__/cli.cpython-311.pyc", "images/.build/host-ca.crt",
            "sources/detectron2-x.tar", "shared/shelfdet.egg-info/PKG-INFO"]
    for rel in junk:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text("not for the build\n")
    return dest


def images_sh_name(root: Path, kind: str, stack: str) -> str:
    return subprocess.run(["bash", str(root / "tools" / "images.sh"), "name", kind, stack], capture_output=True,
                          text=True, check=True, env=dict(os.environ, SHELFDET_VERSIONS_ENV="")).stdout.strip()


def test_the_uploaded_zip_is_the_docker_context_and_gives_the_same_tag(cb_env, monkeypatch, capsys, tmp_path):
    """The real .dockerignore on a copy of this checkout; the zip, extracted with its modes
    restored (as CodeBuild's source download does), names the image exactly as the checkout."""
    repo = copy_of_repo(tmp_path / "repo")
    monkeypatch.delenv("SHELFDET_IMAGE_TAG")
    monkeypatch.setenv("SHELFDET_VERSIONS_ENV", str(repo / "versions.env"))
    local = images_sh_name(repo, "training", "cpu")
    pushed("shelfdet-training", local.split(":")[1])
    client("s3").create_bucket(Bucket="my-builds", CreateBucketConfiguration={"LocationConstraint": REGION})
    rc, out, err = cli(capsys, "push", "training", "--stack", "cpu", "--region", REGION, "--builder", "codebuild",
                       "--bucket", "my-builds", "--prefix", "team/zips")
    assert rc == 0, err
    assert out.strip() == "{}.dkr.ecr.{}.amazonaws.com/{}".format(ACCOUNT, REGION, local)
    key = "team/zips/{}.zip".format(local.replace(":", "-"))
    body = client("s3").get_object(Bucket="my-builds", Key=key)["Body"].read()
    (tmp_path / "context.zip").write_bytes(body)
    with zipfile.ZipFile(str(tmp_path / "context.zip")) as zf:
        entries = {i.filename: i for i in zf.infolist()}
    names = set(entries)
    for must in ("Makefile", "versions.env", ".dockerignore", "shared/pyproject.toml", "shared/shelfdet/commands/cli.py",
                 "images/base/Dockerfile", "images/codebuild/buildspec.yml", "images/codebuild/run_buildspec.sh",
                 "tools/images.sh", "tools/image_hash.py", "tools/setup_venv.sh"):
        assert must in names, must
    for never in (".venv/", ".git/", "data/", "runs/", "sources/", "images/.build/"):
        assert not [n for n in names if n.startswith(never)], never
    assert not [n for n in names if "__pycache__" in n.split("/") or n.endswith(".pyc") or ".egg-info/" in n]
    assert entries["tools/images.sh"].external_attr >> 16 & 0o111, "the executable bit travels (it is in the tag)"
    assert not entries["versions.env"].external_attr >> 16 & 0o111
    unzipped = tmp_path / "unzipped"
    with zipfile.ZipFile(str(tmp_path / "context.zip")) as zf:
        for info in zf.infolist():  # extracted with each entry's mode, as CodeBuild's source download does
            zf.extract(info, str(unzipped))
            os.chmod(str(unzipped / info.filename), info.external_attr >> 16 & 0o7777 or 0o644)
    assert images_sh_name(unzipped, "training", "cpu") == local
    assert "uploading the build context: {} files".format(len(names)) in err


@pytest.fixture
def moto_update(monkeypatch, wire):
    """UpdateProject answered here (moto has none): moto's project replaced by delete + create with the same body."""
    from botocore.awsrequest import AWSResponse

    updates = []

    def update(params, **_):
        body = json.loads(params["body"])
        updates.append(body)
        cb = client("codebuild")
        cb.delete_project(name=body["name"])
        project = cb.create_project(**body)["project"]
        return AWSResponse(params["url"], 200, {}, None), {"project": project}

    hooked(monkeypatch, "before-call.codebuild.UpdateProject", update)
    return updates


def test_a_second_push_reuses_the_project_and_changed_settings_update_it(cb_env, wire, moto_update, monkeypatch, capsys):
    pushed("shelfdet-training", TAG)
    assert cli(capsys, *PUSH)[0] == 0
    rc, _, err = cli(capsys, *PUSH)
    assert rc == 0, err
    assert "CodeBuild project {} is up to date".format(PROJECT) in err
    assert [op for op, _ in wire if op in ("CreateProject", "UpdateProject")] == ["CreateProject"]
    assert moto_update == []

    iam = client("iam")
    role = iam.create_role(RoleName="team-build-role", AssumeRolePolicyDocument=json.dumps(CODEBUILD_TRUST))["Role"]["Arn"]
    base = "{}.dkr.ecr.{}.amazonaws.com/shelfdet-base:{}".format(ACCOUNT, REGION, TAG)
    monkeypatch.setenv("BASE_IMAGE", base)
    rc, _, err = cli(capsys, *PUSH, "--compute-type", "BUILD_GENERAL1_2XLARGE", "--role", "team-build-role")
    assert rc == 0, err
    assert "updating CodeBuild project {} (environment.computeType, serviceRole)".format(PROJECT) in err
    (update,) = moto_update
    assert update["environment"]["computeType"] == "BUILD_GENERAL1_2XLARGE" and update["serviceRole"] == role
    (project,) = client("codebuild").batch_get_projects(names=[PROJECT])["projects"]
    assert project["environment"]["computeType"] == "BUILD_GENERAL1_2XLARGE" and project["serviceRole"] == role
    starts = sent(wire, "StartBuild")
    assert len(starts) == 3
    assert starts[-1]["environmentVariablesOverride"] == env_overrides(BASE_IMAGE=base)
    assert [op for op, _ in wire].count("CreateProject") == 1


# Recorded CodeBuild answers (the shape of BatchGetBuilds' builds[0]) for a build whose make fails.
DONE = {"phaseStatus": "SUCCEEDED", "contexts": [{"statusCode": "", "message": ""}]}
PHASES_RUNNING = [
    dict(DONE, phaseType="SUBMITTED", durationInSeconds=0),
    dict(DONE, phaseType="QUEUED", durationInSeconds=1),
    dict(DONE, phaseType="PROVISIONING", durationInSeconds=9),
    dict(DONE, phaseType="DOWNLOAD_SOURCE", durationInSeconds=3),
    dict(DONE, phaseType="INSTALL", durationInSeconds=14),
    dict(DONE, phaseType="PRE_BUILD", durationInSeconds=0),
    {"phaseType": "BUILD"},
]
FAILED_CONTEXT = {"statusCode": "COMMAND_EXECUTION_ERROR",
                  "message": "Error while executing command: make push-$KIND STACK=$STACK REGION=$REGION. "
                             "Reason: exit status 2"}
PHASES_FAILED = PHASES_RUNNING[:-1] + [
    {"phaseType": "BUILD", "phaseStatus": "FAILED", "durationInSeconds": 421, "contexts": [FAILED_CONTEXT]},
    dict(DONE, phaseType="POST_BUILD", durationInSeconds=0),
    dict(DONE, phaseType="UPLOAD_ARTIFACTS", durationInSeconds=0),
    dict(DONE, phaseType="FINALIZING", durationInSeconds=2),
    {"phaseType": "COMPLETED"},
]
GROUP = "/aws/codebuild/" + PROJECT
LOG = ["[Container] Running command make push-$KIND STACK=$STACK REGION=$REGION", "[images] building base",
       "make: *** [Makefile:147: push-training] Error 2",
       "[Container] Command did not exit successfully make push-$KIND STACK=$STACK REGION=$REGION exit status 2"]
LINK = "https://console.aws.amazon.com/cloudwatch/home?region={}#logsV2:log-groups/log-group/{}".format(REGION, GROUP)


def test_a_failed_build_streams_phases_and_log_once_and_ends_with_its_own_message(cb_env, wire, monkeypatch, capsys):
    logs = client("logs")
    logs.create_log_group(logGroupName=GROUP)
    stream = {}
    script = [
        ({"currentPhase": "QUEUED", "buildStatus": "IN_PROGRESS", "buildComplete": False,
          "phases": [dict(DONE, phaseType="SUBMITTED", durationInSeconds=0), {"phaseType": "QUEUED"}]}, []),
        ({"currentPhase": "BUILD", "buildStatus": "IN_PROGRESS", "buildComplete": False, "phases": PHASES_RUNNING},
         LOG[:2]),
        ({"currentPhase": "BUILD", "buildStatus": "IN_PROGRESS", "buildComplete": False, "phases": PHASES_RUNNING}, []),
        ({"currentPhase": "COMPLETED", "buildStatus": "FAILED", "buildComplete": True, "phases": PHASES_FAILED},
         LOG[2:]),
    ]

    def answer(parsed, **_):
        change, lines = script.pop(0)
        build = parsed["builds"][0]
        stream.setdefault("name", build["id"].split(":", 1)[1])
        if lines:  # what the build wrote to its log by then
            try:
                logs.create_log_stream(logGroupName=GROUP, logStreamName=stream["name"])
            except logs.exceptions.ResourceAlreadyExistsException:
                pass
            stamp = int(time.time() * 1000)  # CloudWatch refuses events older than 14 days
            logs.put_log_events(logGroupName=GROUP, logStreamName=stream["name"],
                                logEvents=[{"timestamp": stamp + i, "message": m + "\n"} for i, m in enumerate(lines)])
        build.update(change)
        build["logs"] = {"groupName": GROUP, "streamName": stream["name"], "deepLink": LINK}

    hooked(monkeypatch, "after-call.codebuild.BatchGetBuilds", answer)
    rc, out, err = cli(capsys, *PUSH)
    assert rc == 1 and out == ""
    build_id = sent(wire, "BatchGetBuilds")[0]["ids"][0]
    assert one_error_line(err) == ("error: CodeBuild build {} FAILED in phase BUILD: COMMAND_EXECUTION_ERROR: Error while "
                                   "executing command: make push-$KIND STACK=$STACK REGION=$REGION. Reason: exit status 2 "
                                   "(log: {})".format(build_id, LINK))
    assert codebuild_lines(err) == [
        "[codebuild] SUBMITTED        SUCCEEDED (0 s)",
        "[codebuild] QUEUED           IN_PROGRESS",
        "[codebuild] QUEUED           SUCCEEDED (1 s)",
        "[codebuild] PROVISIONING     SUCCEEDED (9 s)",
        "[codebuild] DOWNLOAD_SOURCE  SUCCEEDED (3 s)",
        "[codebuild] INSTALL          SUCCEEDED (14 s)",
        "[codebuild] PRE_BUILD        SUCCEEDED (0 s)",
        "[codebuild] BUILD            IN_PROGRESS",
        "[codebuild] BUILD            FAILED (421 s)",
        "[codebuild] POST_BUILD       SUCCEEDED (0 s)",
        "[codebuild] UPLOAD_ARTIFACTS SUCCEEDED (0 s)",
        "[codebuild] FINALIZING       SUCCEEDED (2 s)",
        "[codebuild] build {}: FAILED".format(build_id),
    ]
    assert [l.strip() for l in err.splitlines() if l.startswith("  ")] == LOG, "each log line once, in order"
    assert script == [] and len(sent(wire, "BatchGetBuilds")) == 4


def test_a_build_that_pushed_another_tag_is_an_error(cb_env, capsys):
    rc, out, err = cli(capsys, *PUSH)
    assert rc == 1 and out == ""
    assert "succeeded, but ECR has no {}: the build computed another tag".format(URI) in one_error_line(err)


def test_a_role_codebuild_cannot_assume_stops_before_anything_is_made(cb_env, wire, capsys):
    """ROLE is SageMaker's execution role for the other targets; here it must be CodeBuild's."""
    from test_launch_support import ROLE_NAME, TRUST

    client("iam").create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(TRUST))
    rc, _, err = cli(capsys, *PUSH, "--role", ROLE_NAME)
    assert rc == 1
    assert "does not let codebuild.amazonaws.com assume it" in one_error_line(err)
    assert client("s3").list_buckets()["Buckets"] == [] and [op for op, _ in wire if op.endswith("Project")] == []


def test_make_dry_run_prints_the_requests_and_calls_nothing(monkeypatch, capsys):
    no_network(monkeypatch)
    monkeypatch.setenv("SHELFDET_IMAGE_TAG", IMAGE_TAG)
    out = make("push-serving", "BUILDER=codebuild", "DRY_RUN=1", "REGION=" + REGION)
    assert out.returncode == 0, out.stderr
    project, start = json_docs(out.stdout)
    location = "sagemaker-{}-<account>/shelfdet/codebuild/shelfdet-serving-{}.zip".format(REGION, TAG)
    assert project["source"] == {"type": "S3", "location": location, "buildspec": "images/codebuild/buildspec.yml"}
    assert project["environment"]["privilegedMode"] is True
    assert project["serviceRole"] == "arn:aws:iam::<account>:role/shelfdet-codebuild"
    assert start == {"projectName": PROJECT, "sourceTypeOverride": "S3", "sourceLocationOverride": location,
                     "environmentVariablesOverride": env_overrides("serving")}
    assert "# would zip " in out.stderr and "STACK not given: the design card's cu101" in out.stderr

    monkeypatch.setenv("CODEBUILD_BUILD_ID", "{}:0000".format(PROJECT))
    rc, _, err = cli(capsys, *PUSH)
    assert rc == 1 and "BUILDER=codebuild inside a CodeBuild build" in one_error_line(err)


STAND_IN = """#!/usr/bin/env bash
printf '%s\\n' "$*" >>"{log}"
"""


def test_run_buildspec_runs_the_buildspec_commands_here(tmp_path):
    """The buildspec's commands, with a recording `make` and a `docker` whose daemon answers."""
    spec = __import__("yaml").safe_load((ROOT / "images/codebuild/buildspec.yml").read_text())
    assert spec["phases"]["build"]["commands"] == ["make push-$KIND STACK=$STACK REGION=$REGION"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("make", "docker"):
        path = bin_dir / tool
        path.write_text(STAND_IN.format(log=tmp_path / (tool + ".log")))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH="{}:{}".format(bin_dir, os.environ["PATH"]), KIND="training", STACK="cu101",
               REGION=REGION)
    out = subprocess.run(["bash", str(ROOT / "images/codebuild/run_buildspec.sh")], cwd=str(tmp_path), env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "make.log").read_text().splitlines() == ["push-training STACK=cu101 REGION={}".format(REGION)]
    assert (tmp_path / "docker.log").read_text().splitlines() == ["info"]
    (bin_dir / "make").write_text("#!/usr/bin/env bash\nexit 2\n")
    out = subprocess.run(["bash", str(ROOT / "images/codebuild/run_buildspec.sh")], cwd=str(tmp_path), env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "error: buildspec phase build failed" in out.stderr
