"""Fixtures and helpers for the launcher tests (tests/test_launch_*.py); no tests of its own.

An "account" in moto: a bucket with uploaded data, a SageMaker execution role
and both images pushed to ECR, as a user has them before `make train`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
REGION = "us-east-2"
ACCOUNT = "123456789012"  # moto's account
BUCKET = "shelf-test-bucket"
PREFIX = "detectron2/data"
ROLE_NAME = "AmazonSageMaker-ExecutionRole-shelfdet"
ROLE_ARN = "arn:aws:iam::{}:role/{}".format(ACCOUNT, ROLE_NAME)
IMAGE_TAG = "t3st000"  # SHELFDET_IMAGE_TAG: the last part of every image tag (no content hash)
TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]}


_LOADER = None
_CLIENTS = {}  # type: Dict[Tuple[str, str], Any]


def session(region: str = REGION) -> Any:
    """A boto3 session reusing one model loader: parsing the service JSON per client costs seconds here."""
    import boto3
    import botocore.loaders
    import botocore.session

    global _LOADER
    if _LOADER is None:
        _LOADER = botocore.loaders.create_loader()
    core = botocore.session.Session()
    core.register_component("data_loader", _LOADER)
    return boto3.session.Session(botocore_session=core, region_name=region)


def client(service: str) -> Any:
    key = (service, os.environ.get("AWS_ENDPOINT_URL", ""))
    if key not in _CLIENTS:
        _CLIENTS[key] = session().client(service)
    return _CLIENTS[key]


@pytest.fixture(autouse=True)
def fast_sessions(monkeypatch):
    from shelfdet.launch import aws

    monkeypatch.setattr(aws, "make_session", session)


def image_uri(kind: str, stack: str = "cpu") -> str:
    repo = {"training": "shelfdet-training", "serving": "shelfdet-serving"}[kind]
    return "{}.dkr.ecr.{}.amazonaws.com/{}:0.1.0-{}-{}".format(ACCOUNT, REGION, repo, stack, IMAGE_TAG)


def put_image(kind: str, stack: str = "cpu") -> None:
    uri = image_uri(kind, stack)
    put_tag(*uri.split("/", 1)[1].split(":"))


def put_tag(repo: str, tag: str) -> None:
    """An image manifest under ``repo:tag`` in (moto's) ECR, the repository made if missing."""
    ecr = client("ecr")
    try:
        ecr.create_repository(repositoryName=repo)
    except ecr.exceptions.RepositoryAlreadyExistsException:
        pass
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7, "digest": "sha256:" + "a" * 64},
                "layers": []}
    try:
        ecr.put_image(repositoryName=repo, imageManifest=json.dumps(manifest), imageTag=tag)
    except ecr.exceptions.ImageAlreadyExistsException:
        pass


def upload_data(bucket: str = BUCKET, channels=("training", "validation", "test")) -> None:
    s3 = client("s3")
    for channel in channels:
        s3.put_object(Bucket=bucket, Key="{}/{}/{}_1.jpg".format(PREFIX, channel, channel), Body=b"\xff\xd8jpeg")
        s3.put_object(Bucket=bucket, Key="{}/annotations/{}.manifest".format(PREFIX, channel), Body=b"{}\n")


@pytest.fixture
def account(aws_env, monkeypatch):
    """moto holds: bucket with data, execution role, training and serving images (stacks cpu and cu101)."""
    monkeypatch.setenv("SHELFDET_IMAGE_TAG", IMAGE_TAG)
    monkeypatch.setenv("SHELFDET_POLL_SECONDS", "0")
    client("s3").create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    upload_data()
    iam = client("iam")
    iam.create_role(RoleName="unrelated-role", AssumeRolePolicyDocument=json.dumps(TRUST))
    iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(TRUST))
    for stack in ("cpu", "cu101"):  # cu101: the default for p3/g4dn; cu12 stays missing
        put_image("training", stack)
        put_image("serving", stack)
    return aws_env


@pytest.fixture
def wire(monkeypatch, fast_sessions) -> List[Tuple[str, Dict[str, Any]]]:
    """Every request the launchers send, as (operation, JSON body) taken off the wire (JSON protocols)."""
    from shelfdet.launch import aws

    sent = []  # type: List[Tuple[str, Dict[str, Any]]]
    original = aws.make_session

    def record(request, **_):
        target = request.headers.get("X-Amz-Target", b"")
        target = target.decode() if isinstance(target, bytes) else target
        if target:
            body = request.body.decode() if isinstance(request.body, bytes) else (request.body or "{}")
            sent.append((target.split(".")[-1], json.loads(body or "{}")))

    def session(region):
        s = original(region)
        s.events.register("before-send", record)
        return s

    monkeypatch.setattr(aws, "make_session", session)
    return sent


DESCRIBES = ("DescribeTrainingJob", "DescribeTransformJob", "DescribeHyperParameterTuningJob", "DescribeEndpoint")


class Describes:
    """What the launchers' SageMaker describes answer, scripted ahead of moto's own answer.

    moto ends every job the moment it is created. ``script(op, [changes, ...])``
    makes the next describes of ``op`` (e.g. DescribeTrainingJob) answer moto's
    description updated with each change in turn, so a wait sees a job run,
    then end; past the script, moto's own answer. ``seen[op]`` holds every
    answer as the launcher (and its waiter) read it.
    """

    def __init__(self) -> None:
        self.scripts = {}  # type: Dict[str, List[Dict[str, Any]]]
        self.seen = {}  # type: Dict[str, List[Dict[str, Any]]]
        self.naps = []  # type: List[float]

    def script(self, operation: str, changes: List[Dict[str, Any]]) -> None:
        self.scripts[operation] = list(changes)

    def __call__(self, parsed, model, **_) -> None:
        script = self.scripts.get(model.name)
        if script and "Error" not in parsed:
            parsed.update(script.pop(0))
        self.seen.setdefault(model.name, []).append(dict(parsed))


@pytest.fixture
def describes(monkeypatch, fast_sessions) -> Describes:
    """Scripted SageMaker describes (see :class:`Describes`); waiters' sleeps recorded in ``naps``, not slept."""
    import time

    from shelfdet.launch import aws

    answers = Describes()
    original = aws.make_session

    def session(region):
        s = original(region)
        # Registered on the session, so it runs before any handler a launcher adds to its client
        # for the same event (botocore runs a more specific event's handlers first: hence each name).
        for operation in DESCRIBES:
            s.events.register("after-call.sagemaker." + operation, answers)
        return s

    monkeypatch.setattr(aws, "make_session", session)
    monkeypatch.setattr(time, "sleep", answers.naps.append)
    return answers


def sent(wire, operation: str) -> List[Dict[str, Any]]:
    return [body for op, body in wire if op == operation]


def json_docs(text: str) -> List[Any]:
    """The JSON documents a dry run printed, one after the other."""
    decoder = json.JSONDecoder()
    docs, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return docs
        doc, i = decoder.raw_decode(text, i)
        docs.append(doc)


def cli(capsys, *argv: str) -> Tuple[int, str, str]:
    """``python -m shelfdet ARGV`` in this process (so the wire fixture sees its requests)."""
    from shelfdet.commands.cli import main

    capsys.readouterr()
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def no_network(monkeypatch) -> None:
    """No credentials and an endpoint where nothing listens: any AWS call would fail."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")


def make(*args: str, env: Dict[str, str] = None) -> "subprocess.CompletedProcess[str]":
    """A Make target for real; -o keeps Make from (re)building .venv, -s keeps the recipe off stdout."""
    full = dict(os.environ, **(env or {}))
    return subprocess.run(["make", "-s", "--no-print-directory", "-o", ".venv/.stamp"] + list(args), cwd=str(ROOT),
                          capture_output=True, text=True, env=full, timeout=120)


def python_m(*args: str, env: Dict[str, str] = None) -> "subprocess.CompletedProcess[str]":
    full = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "shelfdet"] + list(args), cwd=str(ROOT),
                          capture_output=True, text=True, env=full, timeout=120)


def one_error_line(err: str) -> str:
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert lines, "no error printed"
    assert "Traceback" not in err, err
    assert lines[-1].startswith("error: "), err
    return lines[-1]
