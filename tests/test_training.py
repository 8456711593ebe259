"""The SageMaker training program, run for real on tiny generated data."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port, make_ml_root, pause_env, run_train, wait_for_checkpoint
from shelfdet.core import artefacts
from shelfdet.core.metrics import METRIC_DEFINITIONS


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    root = make_ml_root(tmp_path_factory.mktemp("job"), tiny_dataset, val_ap="true")
    proc = run_train(root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc.stdout + proc.stderr


def test_model_folder_is_self_describing(trained):
    root, _ = trained
    model = root / "model"
    art = artefacts.read(str(model))
    assert art.class_names == ["SKU"]
    assert art.model_type == "faster_rcnn"
    manifest = json.loads((model / "artefacts.json").read_text())
    for name in manifest["files"].values():
        assert (model / name).is_file(), name
    metrics = json.loads((model / "metrics.json").read_text())
    for key in ("AP", "AP50", "AP75", "AR"):
        assert 0.0 <= metrics[key] <= 1.0, (key, metrics[key])
    assert metrics["max_dets"] == 300 and metrics["eval_channel"] == "test" and metrics["iterations"] == 4
    # Count error on test at the threshold fit on validation.
    for key in ("count_mae", "count_rel_error", "count_threshold", "validation_count_mae"):
        assert isinstance(metrics[key], float) and metrics[key] >= 0.0, (key, metrics)
    assert metrics["count_threshold_fit"] == "validation"
    _, log = trained
    fit = re.search(r"validation_count_mae: .*\(score >= ([0-9.]+)", log)
    used = re.search(r"test_count_mae: .*\(score >= ([0-9.]+)", log)
    assert fit and used and fit.group(1) == used.group(1) == "{:.4f}".format(metrics["count_threshold"]), log[-3000:]
    assert (model / "plots" / "loss_curve.png").stat().st_size > 1000
    assert list((model / "plots").glob("*_pred.png")), "no prediction PNGs"
    cfg = (model / "config.yaml").read_text()
    assert "DETECTIONS_PER_IMAGE: 300" in cfg
    assert not (root / "output" / "failure").exists()


def test_every_metric_regex_matches_the_real_log(trained):
    _, log = trained
    for d in METRIC_DEFINITIONS:
        values = re.findall(d["Regex"], log)
        assert values, "{} ({}) matches nothing in the training log".format(d["Name"], d["Regex"])
        for v in values:
            float(v)
    # Each regex reads only its own kind of line: a training regex that also matched
    # "val_loss_cls: x" would feed validation values into the training curve.
    kinds = {
        "training": lambda line: "total_loss: " in line and " lr: " in line,  # CommonMetricPrinter
        "validation": lambda line: ("total_val_loss: " in line or "validation_ap: " in line
                                    or "validation_count_mae: " in line),
        "test": lambda line: "test_ap: " in line or "test_count_mae: " in line,
    }
    lines = log.splitlines()
    for d in METRIC_DEFINITIONS:
        kind = kinds[d["Name"].split(":")[0]]
        hits = [line for line in lines if re.search(d["Regex"], line)]
        wrong = [line for line in hits if not kind(line)]
        assert not wrong, "{} also matches {!r}".format(d["Name"], wrong[0])
        if d["Name"].startswith("training:"):
            assert len(hits) == sum(1 for line in lines if kind(line)), d["Name"]


def test_log_starts_with_the_environment(trained):
    _, log = trained
    import torch

    from shelfdet.core import compat

    line = next(line for line in log.splitlines() if "environment: " in line)
    assert "torch " + torch.__version__ in line and "detectron2 " + compat.detectron2_version() in line, line
    assert "hosts algo-1 (this is algo-1)" in line, line
    assert "Detectron2 environment:" in log
    assert log.index("environment: ") < log.index("iter: "), "environment logged after training started"


def test_lr_decays_inside_the_run(trained):
    root, _ = trained
    rows = [json.loads(line) for line in (root / "checkpoints" / "metrics.json").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert lrs[0] > lrs[-1], "the learning rate never decayed"


def test_interrupted_job_resumes_to_the_same_final_iteration(tiny_dataset, tmp_path):
    root = make_ml_root(tmp_path / "job", tiny_dataset, num_iter="8", checkpoint_period="2", eval_period="0",
                        evaluation_type="none")
    cmd = [sys.executable, "-m", "shelfdet", "sm-train", "--ml-root", str(root)]
    log = tmp_path / "first.log"
    with open(str(log), "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1", **pause_env(3)))
        try:
            wait_for_checkpoint(root / "checkpoints", 3, proc, output=log.read_text)
        finally:
            proc.send_signal(signal.SIGKILL)  # a spot interruption gives no chance to clean up
            proc.wait()
    assert not (root / "model" / "artefacts.json").exists()
    second = run_train(root)
    assert second.returncode == 0, second.stderr[-3000:]
    out = second.stdout + second.stderr
    assert "resuming from iteration 4 of 8" in out, out[-2000:]
    import torch

    final = torch.load(str(root / "checkpoints" / "model_final.pth"), map_location="cpu", weights_only=False)
    assert final["iteration"] == 7
    assert json.loads((root / "model" / "metrics.json").read_text())["iterations"] == 8


def _two_nodes(tmp_path, tiny_dataset, **overrides):
    """Two `sm-train` processes on this machine (gloo), the way two SageMaker hosts run; their roots and logs."""
    port = str(free_port())
    hosts = ["127.0.0.1", "localhost"]
    roots = []
    for i, host in enumerate(hosts):
        root = make_ml_root(tmp_path / "host{}".format(i), tiny_dataset, dist_port=port, **overrides)
        (root / "input" / "config" / "resourceconfig.json").write_text(json.dumps(
            {"current_host": host, "hosts": hosts, "network_interface_name": "lo"}))
        roots.append(root)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = [subprocess.Popen([sys.executable, "-m", "shelfdet", "sm-train", "--ml-root", str(r)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for r in roots]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[1][-2000:] + logs[0][-2000:]
    assert "world size 2, rank 0" in logs[0] and "world size 2, rank 1" in logs[1]
    return roots, logs


def test_two_nodes_on_cpu_train_together_and_only_rank0_writes(tiny_dataset, tmp_path):
    roots, logs = _two_nodes(tmp_path, tiny_dataset, evaluation_type="none")
    assert (roots[0] / "model" / "artefacts.json").is_file()
    assert not any((roots[1] / "model").iterdir()), "rank 1 wrote model artefacts"
    assert not any((roots[1] / "checkpoints").iterdir()), "rank 1 wrote checkpoints"
    assert "total_val_loss" in logs[0] and "total_val_loss" not in logs[1]


def _evaluate_in_one_process(model, manifest, out):
    proc = subprocess.run([sys.executable, "-m", "shelfdet", "evaluate", "--model-dir", str(model), "--manifest",
                           str(manifest), "--device", "cpu", "--out-dir", str(out)], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads((out / "metrics.json").read_text())


def test_two_nodes_share_the_evaluation_and_score_as_one_process(tiny_dataset, tmp_path):
    # From scratch, so BN (no SyncBN on CPU) whose running statistics differ per rank; pred-thr 0, as eight
    # iterations score below the default 0.05 and all-zero metrics would agree whatever was predicted.
    roots, logs = _two_nodes(tmp_path, tiny_dataset, val_ap="true", num_iter="8", eval_period="4", pred_thr="0")
    # Each rank predicted its own share of every pass: validation AP at iterations 4 and 8, then the
    # final evaluation's validation (count threshold) and test passes.
    shares = [[(int(n), int(total)) for n, total in re.findall(
        r"evaluation: rank {} of 2 predicts (\d+) of (\d+) images".format(r), log)] for r, log in enumerate(logs)]
    assert len(shares[0]) == len(shares[1]) == 4, shares
    for (n0, total), (n1, total1) in zip(*shares):
        assert n0 > 0 and n1 > 0 and n0 + n1 == total == total1, shares
    assert "validation_ap: " in logs[0] and "validation_ap: " not in logs[1]
    # 5 validation and test images: the process group keeps the 30-minute floor.
    assert "this is rank 0, timeout 0:30:00" in logs[0] and "this is rank 1, timeout 0:30:00" in logs[1]
    assert not any((roots[1] / "model").iterdir()), "rank 1 wrote model artefacts"
    model = roots[0] / "model"
    metrics = json.loads((model / "metrics.json").read_text())
    annotations = tiny_dataset / "annotations"
    # The saved model in one process: the test channel with the count threshold fit on validation, as finish does.
    alone = _evaluate_in_one_process(model, annotations / "test.manifest", tmp_path / "eval-test")
    assert alone["count_threshold_fit"] == "validation"
    keys = ("AP", "AP50", "AP75", "AR1", "AR10", "AR", "count_mae", "count_rel_error", "count_threshold")
    assert {k: metrics[k] for k in keys} == {k: alone[k] for k in keys}
    assert metrics["AR"] > 0.0 and metrics["count_mae"] > 0.0, metrics  # something was predicted and scored
    # Validation AP of the last iteration (in memory, two ranks) is the saved model's AP in one process.
    val = _evaluate_in_one_process(model, annotations / "validation.manifest", tmp_path / "eval-validation")
    assert metrics["validation_ap"] == val["AP"], (metrics, val)
    assert metrics["validation_count_mae"] == val["count_mae"], (metrics, val)
    assert metrics["validation_count_rel_error"] == val["count_rel_error"], (metrics, val)


def test_process_group_timeout_is_sized_from_the_evaluation_images():
    from shelfdet.training.distributed import TIMEOUT, timeout_for

    assert timeout_for(0) == timeout_for(5) == TIMEOUT  # small sets keep Detectron2's 30 minutes
    sku110k = timeout_for(588 + 2941)  # its validation and test images
    assert sku110k > TIMEOUT and timeout_for(2 * (588 + 2941)) > sku110k


BAD_HP = {"unknown backbone": ("backbone", "R_42_FPN"), "non-numeric lr": ("lr", "fast"), "num-iter 0": ("num-iter", "0")}


def _broken(tmp_path, tiny_dataset, what):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data, symlinks=False)
    root = make_ml_root(tmp_path / "job", data)
    if what in BAD_HP:
        # Written raw, the way SageMaker passes hyperparameters.json.
        hp_file = root / "input" / "config" / "hyperparameters.json"
        hps = json.loads(hp_file.read_text())
        key, value = BAD_HP[what]
        hps[key] = value
        hp_file.write_text(json.dumps(hps))
    elif what == "missing channel":
        os.unlink(root / "input" / "data" / "validation")
    elif what == "empty manifest":
        (data / "annotations" / "training.manifest").write_text("")
    elif what == "missing image":
        first = json.loads((data / "annotations" / "validation.manifest").read_text().splitlines()[0])
        os.unlink(data / "validation" / os.path.basename(first["source-ref"]))
    return root


@pytest.mark.parametrize("what,expected", [
    ("missing channel", "missing channel 'validation'"),
    ("empty manifest", "manifest is empty"),
    ("unknown backbone", "'backbone': 'R_42_FPN' is not one of"),
    ("non-numeric lr", "'lr': 'fast' is not a number"),
    ("num-iter 0", "'num-iter': 0 is below its minimum 1"),
    ("missing image", "not found in"),
])
def test_bad_input_fails_in_one_clear_line(tmp_path, tiny_dataset, what, expected):
    root = _broken(tmp_path, tiny_dataset, what)
    proc = run_train(root)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    failure = (root / "output" / "failure").read_text()
    assert expected in failure


def test_tensorboard_event_files_hold_every_logged_iteration(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, log = trained
    board = root / "output" / "tensorboard"
    assert "TensorBoard event files in {}".format(board) in log
    train, validation = (EventAccumulator(str(board / name), size_guidance={"scalars": 0}) for name in ("train", "validation"))
    train.Reload()
    validation.Reload()
    tags = set(train.Tags()["scalars"])
    for tag in ("total_loss", "loss_cls", "loss_box_reg", "loss_rpn_cls", "lr", "data_time", "time", "images_per_second"):
        assert tag in tags, (tag, sorted(tags))
    # The same tags for validation: TensorBoard draws both losses on one chart.
    assert {"total_loss", "loss_cls", "loss_box_reg", "AP", "AP50"} <= set(validation.Tags()["scalars"])
    # One value per iteration the JSON writer logged (log-period 1), at the same steps and values.
    logged = [json.loads(line) for line in (root / "checkpoints" / "metrics.json").read_text().splitlines()]
    steps = [e["iteration"] for e in logged if "total_loss" in e]
    assert [s.step for s in train.Scalars("total_loss")] == steps == [0, 1, 2, 3]
    assert [round(s.value, 4) for s in train.Scalars("lr")] == [round(e["lr"], 4) for e in logged if "lr" in e]
    # Validation (eval-period 2): after iterations 2 and 4, at the storage's 0-based steps.
    assert [s.step for s in validation.Scalars("total_loss")] == [1, 3]
    assert [s.step for s in validation.Scalars("AP")] == [1, 3]
    assert all(0.0 <= s.value <= 1.0 for s in validation.Scalars("AP"))
    assert all(s.value > 0 for s in train.Scalars("images_per_second"))
