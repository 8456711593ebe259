"""MLflow tracking against a real `mlflow server` on 127.0.0.1 (SQLite store, proxied artefacts):
what a training run logs is read back through MLflow's own client."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port, make_ml_root, pause_env, run_train, stop_group, wait_for_checkpoint

mlflow = pytest.importorskip("mlflow", reason="mlflow-skinny is pinned in every stack's requirements")
from mlflow.tracking import MlflowClient  # noqa: E402


def _server_command() -> str:
    # The test image keeps the server in its own venv (SHELFDET_MLFLOW_SERVER); .venv has full mlflow.
    found = os.environ.get("SHELFDET_MLFLOW_SERVER") or shutil.which("mlflow", path=str(Path(sys.executable).parent))
    assert found, "no `mlflow` server here: .venv has it (LOCAL_REQUIREMENTS), the test image at SHELFDET_MLFLOW_SERVER"
    return found


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(str(home / "server.log"), "w")
    proc = subprocess.Popen([_server_command(), "server", "--backend-store-uri", "sqlite:///{}/mlflow.db".format(home),
                             "--artifacts-destination", str(home / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    uri = "http://127.0.0.1:{}".format(port)
    import urllib.request

    deadline = time.time() + 240  # the first start migrates the SQLite schema
    while True:
        assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(uri + "/health", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert time.time() < deadline, (home / "server.log").read_text()[-3000:]
        time.sleep(0.5)
    yield uri
    stop_group(proc)
    log.close()


def _the_run(client: MlflowClient, experiment: str, name: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, "experiment {} not created".format(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.run_name = '{}'".format(name))
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def test_a_run_logs_params_metrics_per_iteration_final_metrics_and_the_model(tiny_dataset, tmp_path, mlflow_server):
    root = make_ml_root(tmp_path / "detectron2-faster-rcnn-tracked", tiny_dataset, val_ap="true")
    arn = "arn:aws:sagemaker:us-east-2:123456789012:training-job/detectron2-faster-rcnn-tracked"
    proc = run_train(root, env={"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": "tracked",
                                "TRAINING_JOB_NAME": "detectron2-faster-rcnn-tracked", "TRAINING_JOB_ARN": arn})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "MLflow tracking off" not in out, out[-3000:]

    client = MlflowClient(tracking_uri=mlflow_server)
    run = _the_run(client, "tracked", "detectron2-faster-rcnn-tracked")
    assert run.info.status == "FINISHED"
    # Params: every hyperparameter as the container resolved it, and the environment line.
    resolved = json.loads((root / "model" / "hyperparameters.json").read_text())
    assert {k: run.data.params[k] for k in resolved} == resolved
    assert run.data.params["environment"].startswith("environment: python ")
    assert run.data.tags["sagemaker.training_job_arn"] == arn
    assert run.data.tags["shelfdet.algorithm"] == "faster_rcnn"

    # Per iteration: log-period 1 over 4 iterations is one value per step 0..3, as metrics.json has them.
    logged = [json.loads(line) for line in (root / "checkpoints" / "metrics.json").read_text().splitlines()]
    expected = {r["iteration"]: r["total_loss"] for r in logged if "total_loss" in r}
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "total_loss")}
    assert history == pytest.approx(expected) and sorted(history) == [0, 1, 2, 3]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "lr")) == [0, 1, 2, 3]
    assert all(m.value > 0 for m in client.get_metric_history(run.info.run_id, "images_per_second"))
    # Validation every eval-period (2): loss and AP at steps 1 and 3 (iterations 2 and 4).
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "validation_total_loss")) == [1, 3]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "validation_AP")) == [1, 3]

    # Final metrics: what model/metrics.json says.
    final = json.loads((root / "model" / "metrics.json").read_text())
    for key in ("AP", "AP50", "count_mae", "train_seconds", "validation_ap"):
        assert run.data.metrics[key] == pytest.approx(final[key]), key

    # The model folder, as artefacts, byte for byte.
    names = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/artefacts.json", "model/model_final.safetensors", "model/config.yaml", "model/metrics.json"} <= names
    got = client.download_artifacts(run.info.run_id, "model/artefacts.json", str(tmp_path / "back"))
    assert Path(got).read_bytes() == (root / "model" / "artefacts.json").read_bytes()


def test_an_interrupted_run_continues_its_mlflow_run_when_resumed(tiny_dataset, tmp_path, mlflow_server):
    root = make_ml_root(tmp_path / "resumed-run", tiny_dataset, num_iter="8", checkpoint_period="2", eval_period="0",
                        evaluation_type="none")
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": "resumed"}
    log = tmp_path / "first.log"
    with open(str(log), "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "shelfdet", "sm-train", "--ml-root", str(root)], stdout=out,
                                stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1", **env, **pause_env(3)))
        try:
            wait_for_checkpoint(root / "checkpoints", 3, proc, output=log.read_text)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    client = MlflowClient(tracking_uri=mlflow_server)
    first = _the_run(client, "resumed", "resumed-run")
    assert first.info.status == "RUNNING"  # killed: nobody ended it
    second = run_train(root, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "MLflow: continuing run {}".format(first.info.run_id) in second.stdout + second.stderr
    run = _the_run(client, "resumed", "resumed-run")
    assert run.info.run_id == first.info.run_id and run.info.status == "FINISHED"
    # Both processes' iterations, as metrics.json logged them (the killed process paused before writing 3).
    logged = {json.loads(line)["iteration"] for line in (root / "checkpoints" / "metrics.json").read_text().splitlines()}
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "total_loss")}
    assert steps == logged and {0, 1, 2, 4, 5, 6, 7} <= steps
    assert run.data.metrics["iterations"] == 8


def test_an_unreachable_server_is_one_warning_and_training_goes_on(tiny_dataset, tmp_path):
    root = make_ml_root(tmp_path / "job", tiny_dataset, evaluation_type="none")
    nobody = "http://127.0.0.1:{}".format(free_port())
    proc = run_train(root, env={"MLFLOW_TRACKING_URI": nobody})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    lines = [line for line in out.splitlines() if "MLflow" in line]
    assert len(lines) == 1 and "MLflow tracking off: {} unreachable".format(nobody) in lines[0], lines
    assert (root / "model" / "artefacts.json").is_file()


def test_a_local_path_is_a_tracking_store_too(tmp_path):
    from shelfdet.training import tracking

    store = tmp_path / "mlruns"
    model = tmp_path / "model"
    model.mkdir()
    (model / "metrics.json").write_text('{"AP": 0.5}')
    tracker = tracking.mlflow_run(str(store), str(tmp_path / "ckpt"), "local-run", {"lr": "0.01"}, {"shelfdet.recipe": "none"})
    assert tracker is not None
    tracker.end({"AP": 0.5, "iterations": 10, "eval_channel": "test"}, str(model))
    run = MlflowClient(tracking_uri=str(store)).get_run(tracker.run_id)
    assert run.data.params == {"lr": "0.01"} and run.data.metrics == {"AP": 0.5, "iterations": 10.0}
    assert run.info.status == "FINISHED" and run.info.run_name == "local-run"
    assert json.loads((tmp_path / "ckpt" / tracking.MLFLOW_STATE).read_text())["run_id"] == tracker.run_id


def test_a_python_without_mlflow_says_so_in_one_line(tmp_path, monkeypatch, caplog):
    from shelfdet.training import tracking

    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)  # what an interpreter without mlflow raises
    with caplog.at_level(logging.WARNING, logger="shelfdet.training"):
        assert tracking.mlflow_run("http://127.0.0.1:1", str(tmp_path), "r", {}, {}) is None
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("MLflow tracking off: Python ") and "cannot import mlflow" in line


def _files_holding(root: Path, secret: bytes):
    return [str(p) for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


def test_credentials_in_the_tracking_uri_reach_no_log_or_file(tiny_dataset, tmp_path, mlflow_server):
    """user:password@ and ?token= go to the server (MLflow's client sends them) and nowhere else: not
    in the log, not in any file of the run folder (mlflow_run.json, metrics, model), not in MLflow's params."""
    root = make_ml_root(tmp_path / "credentialed-run", tiny_dataset, evaluation_type="none", eval_period="0")
    host = mlflow_server.split("://", 1)[1]
    uri = "http://alice:pw-s3cret@{}".format(host)
    proc = run_train(root, env={"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "credentialed"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "MLflow: run " in out and " at {}".format(mlflow_server) in out, out[-3000:]
    assert "s3cret" not in out
    assert _files_holding(root, b"s3cret") == []
    state = json.loads((root / "checkpoints" / "mlflow_run.json").read_text())
    assert state["tracking_uri"] == mlflow_server  # scheme, host and port kept
    run = _the_run(MlflowClient(tracking_uri=mlflow_server), "credentialed", "credentialed-run")
    assert run.info.status == "FINISHED"
    assert "s3cret" not in json.dumps(run.data.params) + json.dumps(run.data.tags)


def test_an_unreachable_server_with_credentials_is_named_without_them(tmp_path, caplog):
    from shelfdet.training import tracking

    port = free_port()
    with caplog.at_level(logging.DEBUG):
        got = tracking.mlflow_run("http://bob:pw-s3cret@127.0.0.1:{}/?access_token=tok-s3cret".format(port),
                                  str(tmp_path / "ckpt"), "r", {}, {})
    assert got is None
    lines = [r.getMessage() for r in caplog.records]  # MLflow's and urllib3's own records too
    assert not [line for line in lines if "s3cret" in line], lines
    ours = [r.getMessage() for r in caplog.records if r.name == "shelfdet.training" and r.levelno >= logging.WARNING]
    assert ours[0].startswith("MLflow: the credential in MLFLOW_TRACKING_URI's query string is not sent"), ours
    assert ours[1].startswith("MLflow tracking off: http://127.0.0.1:{}/ unreachable".format(port)), ours
    assert len(ours) == 2
    assert not (tmp_path / "ckpt").exists() or _files_holding(tmp_path / "ckpt", b"s3cret") == []
