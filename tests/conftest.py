"""Shared fixtures: everything is generated or started here, nothing downloaded."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 120.0, proc: "subprocess.Popen | None" = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with {} before listening on {}".format(proc.returncode, port))
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError("nothing listens on 127.0.0.1:{} after {}s".format(port, timeout))


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to a process started with start_new_session=True and its children; SIGKILL after 30 s."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def pause_env(iteration: int) -> dict:
    """Environment for a training run that stops after the checkpoint of ``iteration`` and waits to be killed."""
    from shelfdet.training.hooks import PAUSE_ENV

    return {PAUSE_ENV: str(iteration)}


def wait_for_checkpoint(ckpt_dir: Path, iteration: int, proc: subprocess.Popen, output=lambda: "",
                        timeout: float = 900.0) -> None:
    """Waits until ``last_checkpoint`` names the checkpoint of ``iteration``: Detectron2 writes it after the file."""
    want = "model_{:07d}.pth".format(iteration)
    last = Path(ckpt_dir) / "last_checkpoint"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if last.is_file() and last.read_text().strip() == want:
            return
        if proc.poll() is not None:
            raise AssertionError("training exited with {} before announcing {}:\n{}".format(
                proc.returncode, want, output()[-3000:]))
        time.sleep(0.2)
    raise AssertionError("{} never named {} in {:.0f} s:\n{}".format(last, want, timeout, output()[-3000:]))


@pytest.fixture(scope="session")
def moto_server():
    """A real moto server on 127.0.0.1 (the AWS wire protocol), one per test session.

    Yields its endpoint URL; tests use :func:`aws_env` to point boto3 at it.
    """
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    proc = subprocess.Popen(cmd + ["-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        yield "http://127.0.0.1:{}".format(port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def aws_env(moto_server, monkeypatch):
    """Environment that sends every AWS call to the moto server, with fake credentials."""
    env = {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-2",
        "AWS_REGION": "us-east-2",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # Wipe moto's state between tests so each starts from an empty account.
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(moto_server + "/moto-api/reset", method="POST")).read()
    return env


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A small synthetic SKU-110K built by the real pipeline (make data), shared by the session."""
    from shelfdet.commands import data as data_command

    out = tmp_path_factory.mktemp("tiny-data")
    rc = data_command.main(["--data-dir", str(out), "--train-images", "8", "--val-images", "3", "--test-images", "3",
                     "--image-size", "160x128", "--workers", "2"])
    assert rc == 0
    return out


# Hyperparameters for seconds-long real trainings on tiny images.
TINY_HP = {"num-iter": "4", "batch-size": "2", "min-size": "128", "max-size": "160", "eval-period": "2",
           "val-samples": "2", "log-period": "1", "checkpoint-period": "2", "num-workers": "0", "warmup-iters": "0"}


def make_ml_root(root: Path, data_dir: Path, algo: str = "faster_rcnn", **overrides: str) -> Path:
    """A SageMaker-shaped /opt/ml folder over a built dataset, as `make train` lays it out."""
    from shelfdet.core import hyperparameters
    from shelfdet.commands import train

    raw = dict(TINY_HP, **{k.replace("_", "-"): v for k, v in overrides.items()})
    raw["model-type"] = algo
    hp = hyperparameters.parse(raw, profile="local")
    train.lay_out(str(root), str(data_dir), hyperparameters.as_strings(hp))
    return root


def run_train(root: Path, env: "dict | None" = None, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "shelfdet", "sm-train", "--ml-root", str(root)]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)


# ---- the AWS calls the product makes (docs/iam-policy.json is checked against them) ----------------

AWS_RECORD_DIR = ROOT / "tests" / "awsrecord"
sys.path.insert(0, str(AWS_RECORD_DIR))
import aws_record  # noqa: E402


# Set by tests/test_zz_iam_policy.py for the pytest it runs when run alone: only the tests that talk to
# moto, the only ones whose AWS calls get an answer.
MOTO_TESTS_ONLY = "SHELFDET_MOTO_TESTS_ONLY"


def pytest_configure(config):
    """The tests' process entry: Detectron2's release differences are patched (compat.apply) before
    any test module imports Detectron2 or a shelfdet module that does."""
    from shelfdet.core import compat

    compat.apply()


def pytest_collection_modifyitems(config, items):
    if not os.environ.get(MOTO_TESTS_ONLY):
        return
    kept = [i for i in items if "moto_server" in getattr(i, "fixturenames", ())]
    config.hook.pytest_deselected(items=[i for i in items if i not in kept])
    items[:] = kept


@pytest.fixture(scope="session", autouse=True)
def record_aws_calls(tmp_path_factory):
    """Every AWS API call made from shelfdet's code in this session, in this process and in its Python
    subprocesses (tests/awsrecord), appended to a file: this one's, or the one a parent session named."""
    try:
        import botocore.client  # noqa: F401
    except ImportError:
        yield None
        return
    saved = {k: os.environ.get(k) for k in (aws_record.ENV, "PYTHONPATH")}
    path = os.environ.get(aws_record.ENV) or str(tmp_path_factory.mktemp("aws-calls") / "calls.jsonl")
    os.environ[aws_record.ENV] = path
    os.environ["PYTHONPATH"] = os.pathsep.join([str(AWS_RECORD_DIR)] + ([saved["PYTHONPATH"]] if saved["PYTHONPATH"] else []))
    aws_record.install()
    yield Path(path)
    aws_record.uninstall()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
