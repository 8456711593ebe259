"""evaluation-type=fast is faster-coco-eval or an error at start: never a silent fallback to pycocotools
(483 s instead of 25 s on SKU-110K's test set), never an error after hours of training."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_ml_root, run_train
from shelfdet.core import catalog, evaluation


@pytest.fixture(scope="module")
def no_fast_eval(tmp_path_factory) -> dict:
    """Environment variables under which faster_coco_eval raises ImportError, as where it is not installed."""
    blocker = tmp_path_factory.mktemp("blocker")
    (blocker / "faster_coco_eval").mkdir()
    (blocker / "faster_coco_eval" / "__init__.py").write_text(
        'raise ImportError("No module named \'faster_coco_eval\' (blocked by the test)")\n')
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")]))}


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = errors[0]
    assert "faster-coco-eval" in line and "evaluation-type=coco" in line, line
    return line


def test_every_stack_pins_faster_coco_eval():
    """fast is the default evaluation-type: every stack that trains, and the local venv, install its scorer
    (cpu-slim serves exported models only: no training, no evaluation)."""
    lines = (Path(__file__).resolve().parents[1] / "versions.env").read_text().splitlines()
    requirements = {k: v.split() for k, _, v in (line.partition("=") for line in lines)
                    if k == "LOCAL_REQUIREMENTS" or (k.startswith("STACK_") and k.endswith("_REQUIREMENTS")
                                                     and k != "STACK_CPU_SLIM_REQUIREMENTS")}
    assert len(requirements) >= 5, sorted(requirements)  # local, cpu, cu101, cu101cpu, cu12
    unpinned = [k for k, reqs in requirements.items() if not any(r.startswith("faster-coco-eval==") for r in reqs)]
    assert not unpinned, "no faster-coco-eval==<version> in " + ", ".join(unpinned)


def test_fast_backend_never_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # `import faster_coco_eval` raises ImportError
    with pytest.raises(evaluation.BackendError, match="evaluation-type=coco"):
        evaluation.require_backend(True)
    gt = [{"file_name": "/x/a.jpg", "width": 64, "height": 64,
           "annotations": [{"bbox": [1.0, 1.0, 20.0, 20.0], "category_id": 0}]}]
    preds = {"a.jpg": {"pred_boxes": [[1.0, 1.0, 21.0, 21.0]], "scores": [0.9], "pred_classes": [0]}}
    with pytest.raises(evaluation.BackendError):
        evaluation.score(gt, preds, ["SKU"], fast=True)
    evaluation.require_backend(False)
    assert evaluation.score(gt, preds, ["SKU"], fast=False)["AP"] == pytest.approx(1.0)


def _fails_at_start(root: Path, env: dict) -> None:
    proc = run_train(root, env=env)
    line = _one_error_line(proc)
    assert line[len("error: "):] in (root / "output" / "failure").read_text()
    # Before any process started: nothing trained, nothing written.
    assert "training faster_rcnn" not in proc.stdout + proc.stderr
    assert not list((root / "checkpoints").iterdir()) and not list((root / "model").iterdir())


def test_training_fast_fails_at_start_without_faster_coco_eval_and_coco_trains(tmp_path, tiny_dataset, no_fast_eval):
    root = make_ml_root(tmp_path / "job", tiny_dataset, evaluation_type="fast")
    _fails_at_start(root, no_fast_eval)
    # What the line tells the user to do works: the same job with evaluation-type=coco (pycocotools).
    hp_file = root / "input" / "config" / "hyperparameters.json"
    hp_file.write_text(json.dumps(dict(json.loads(hp_file.read_text()), **{"evaluation-type": "coco"})))
    proc = run_train(root, env=no_fast_eval)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((root / "model" / "metrics.json").read_text())
    assert metrics["eval_channel"] == "test" and 0.0 <= metrics["AP"] <= 1.0, metrics


def test_training_none_with_val_ap_fails_at_start_without_faster_coco_eval(tmp_path, tiny_dataset, no_fast_eval):
    # Validation AP scores like fast unless evaluation-type=coco: it would fail at its first period.
    _fails_at_start(make_ml_root(tmp_path / "job", tiny_dataset, evaluation_type="none", val_ap="true"), no_fast_eval)


def _predictions(tiny_dataset: Path, out: Path) -> Path:
    """Prediction files for the test manifest: its boxes, jittered, as the endpoint answers them."""
    manifest = tiny_dataset / "annotations" / "test.manifest"
    gt, _ = catalog.load_manifest(str(manifest), str(tiny_dataset / "test"))
    rng = np.random.default_rng(0)
    out.mkdir()
    for d in gt:
        boxes = [[x + j[0], y + j[1], x + w + j[2], y + h + j[3]]
                 for (x, y, w, h), j in ((a["bbox"], rng.normal(0, 1.5, 4)) for a in d["annotations"])]
        pred = {"pred_boxes": boxes, "scores": rng.uniform(0.3, 1.0, len(boxes)).tolist(),
                "pred_classes": [0] * len(boxes)}
        (out / (os.path.basename(d["file_name"]) + ".json")).write_text(json.dumps(pred))
    return manifest


def _evaluate(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shelfdet", "evaluate", *args], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, **env))


def test_shelfdet_evaluate_fast_fails_at_start_without_faster_coco_eval_and_coco_scores(tmp_path, tiny_dataset,
                                                                                       no_fast_eval):
    manifest = _predictions(tiny_dataset, tmp_path / "preds")
    out = tmp_path / "metrics.json"
    args = ["--predictions", str(tmp_path / "preds"), "--manifest", str(manifest), "--out", str(out)]
    _one_error_line(_evaluate(no_fast_eval, *args, "--evaluation-type", "fast"))
    assert not out.exists()
    proc = _evaluate(no_fast_eval, *args, "--evaluation-type", "coco")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.read_text())["AP"] > 0.5


def test_shelfdet_evaluate_model_dir_fails_before_loading_the_model(tmp_path, tiny_dataset, no_fast_eval):
    """--model-dir predicts every image before scoring: the check comes first (an empty folder as the
    model, so that anything done before it fails otherwise)."""
    (tmp_path / "model").mkdir()
    proc = _evaluate(no_fast_eval, "--model-dir", str(tmp_path / "model"), "--out-dir", str(tmp_path / "eval"),
                     "--device", "cpu", "--manifest", str(tiny_dataset / "annotations" / "test.manifest"),
                     "--evaluation-type", "fast")
    _one_error_line(proc)
    assert not (tmp_path / "eval").exists()
