"""Each GPU stack's CPU twin runs the container contracts with the stack's own Detectron2.

A twin differs from its GPU stack only where the GPU is involved (docs/images.md):
- ``cu101cpu`` for cu101: Detectron2 v0.4.1 with its C++ ops compiled for the CPU, the
  stack's requirement pins, on Python 3.9 / torch 1.8.1 (3.8 / 1.6 cannot be had here);
- ``cu12`` is its own twin: the very image, CUDA ops compiled, run on the CPU.

On each: the three algorithms train a few iterations (Cascade R-CNN with RECIPE=dense: crop
training in the fast mapper, the test size from the crops) with validation loss and AP, a killed
run resumes from its checkpoint, the final evaluation runs, the serving image answers
/ping and /invocations, and batch-transform-shaped outputs score with ``shelfdet
evaluate`` exactly as the run scored itself, and evaluation-type=fast is the stack's pinned
faster-coco-eval, scoring as pycocotools does. A twin whose pinned Detectron2 source is
absent (a clean CI machine) skips, saying how to obtain it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from _container_support import (NO_DOCKER, ROOT, TINY, docker_answers, docker_run, docker_start, http, image,
                                 lay_out_opt_ml, serving_container)
from conftest import pause_env

pytestmark = pytest.mark.skipif(not docker_answers(), reason=NO_DOCKER)

# twin stack -> (the GPU stack whose Detectron2 source it pins, Detectron2's __version__ there)
TWINS = {"cu101cpu": ("cu101", "0.4.1"), "cu12": ("cu12", "0.6")}
TWINS_PYTHON = {"cu101cpu": "3.9", "cu12": "3.11"}  # Debian bullseye and bookworm (versions.env says why)
ALGOS = ("faster_rcnn", "retinanet", "cascade_rcnn")
STATS = ("AP", "AP50", "AP75", "AR")
DENSE = {"faster_rcnn": {"anchors": "auto", "nms": "soft"}, "retinanet": {"nms": "hard", "tile-size": 96},
         # The recipe, with crops smaller than the 160x128 images and its own test size (TINY gives one).
         "cascade_rcnn": {"recipe": "dense", "crop-size": 64, "crop-scales": "0.5,0.8", "min-size": "auto",
                          "max-size": "auto", "augment": "flip"}}


def _twin_images(stack: str):
    pin, _ = TWINS[stack]
    check = subprocess.run(["bash", str(ROOT / "tools" / "d2_source.sh"), "check", pin],
                           capture_output=True, text=True)
    if check.returncode != 0:
        pytest.skip("twin {} not tested: Detectron2 source {}".format(stack, check.stdout.strip()))
    return image("training", stack), image("serving", stack)


# MLflow's file store inside the job's folder: the stack's own mlflow-skinny writes it, the host's reads it.
TRACKED = {"MLFLOW_TRACKING_URI": "/opt/ml/output/mlruns", "MLFLOW_EXPERIMENT_NAME": "twins"}


def _train_killed_then_resumed(training: str, ml: Path, name: str) -> str:
    """Starts training, kills the container where it paused after its iteration-1 checkpoint, runs it again."""
    started = docker_start(training, ml, "train", name=name, env=dict(pause_env(1), **TRACKED))
    assert started.returncode == 0, started.stderr
    try:
        last = ml / "checkpoints" / "last_checkpoint"
        deadline = time.time() + 900
        while not (last.is_file() and last.read_text().strip() == "model_0000001.pth"):
            running = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", name],
                                     capture_output=True, text=True).stdout.strip()
            logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
            assert running == "true", "training ended before its first checkpoint:\n" + logs.stderr[-4000:]
            assert time.time() < deadline, "no checkpoint after 15 minutes"
            time.sleep(0.2)
        subprocess.run(["docker", "kill", name], capture_output=True, check=True)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    assert not (ml / "model" / "artefacts.json").exists(), "the run finished before it was killed"
    out = docker_run(training, ml, "train", env=TRACKED)
    log = out.stdout + out.stderr
    assert out.returncode == 0, "resumed run failed:\n" + log[-4000:]
    return log


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(stack, algo) -> the /opt/ml folder of a finished, once-killed run; trained on first use."""
    done = {}

    def get(stack: str, algo: str) -> Path:
        if (stack, algo) not in done:
            training, _ = _twin_images(stack)
            ml = tmp_path_factory.mktemp("{}-{}".format(stack, algo))
            # The dense-scene options: Faster R-CNN fits its anchors at start; RetinaNet runs validation
            # AP, the final evaluation and serving with tiles and hard NMS (Soft-NMS is served below).
            dense = DENSE[algo]
            lay_out_opt_ml(ml, dict(TINY, **{"model-type": algo, "num-iter": 24, "checkpoint-period": 2,
                                             "eval-period": 12, "val-ap": "true", "log-period": 4}, **dense))
            log = _train_killed_then_resumed(training, ml, "shelfdet-twin-{}-{}-{}".format(stack, algo, os.getpid()))
            (ml / "train.log").write_text(log)
            done[stack, algo] = ml
        return done[stack, algo]

    return get


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("stack", sorted(TWINS))
def test_twin_trains_resumes_and_evaluates(runs, stack, algo):
    ml = runs(stack, algo)
    log = (ml / "train.log").read_text()
    assert "resuming from iteration 2 of 24" in log, log[-3000:]
    assert "total_val_loss:" in log and "validation_ap:" in log, log[-3000:]
    manifest = json.loads((ml / "model" / "artefacts.json").read_text())
    assert manifest["detectron2"]["version"] == TWINS[stack][1], manifest["detectron2"]
    for name in manifest["files"].values():
        assert (ml / "model" / name).is_file(), name
    # Written by this stack's safetensors (numpy writer, no pickle); the cpu stack serves it below.
    assert manifest["files"]["weights"] == "model_final.safetensors", manifest["files"]
    assert not list((ml / "model").glob("*.pth")), sorted(p.name for p in (ml / "model").iterdir())
    metrics = json.loads((ml / "model" / manifest["files"]["metrics"]).read_text())
    assert metrics["iterations"] == 24 and metrics["eval_channel"] == "test"
    assert all(0.0 <= metrics[k] <= 1.0 for k in STATS), metrics
    config = (ml / "model" / manifest["files"]["config"]).read_text()
    for key, value in DENSE[algo].items():
        assert manifest["hyperparameters"][key] == str(value), key
    if algo == "retinanet":
        assert "META_ARCHITECTURE: LevelNormRetinaNet" in config
    elif algo == "cascade_rcnn":
        cfg = yaml.safe_load(config)
        assert cfg["MODEL"]["ROI_HEADS"]["NAME"] == "CascadeROIHeads"
        from PIL import Image

        sides = [sorted(Image.open(p).size) for p in (ml / "input" / "data" / "training").glob("*.jpg")]
        middle = 0.4 ** 0.5  # the crops' middle scale (0.5-0.8)
        size = tuple(round(float(np.median([s[k] for s in sides])) * middle) for k in (0, 1))
        assert (cfg["INPUT"]["MIN_SIZE_TEST"], cfg["INPUT"]["MAX_SIZE_TEST"]) == size
        assert "test size {}/{}".format(*size) in log
        assert "recipe dense: crop-size 64" in log and "crop training: 64 px crops" in log, log[-3000:]
        assert "loss_box_reg_stage2" in log
    else:
        sizes = yaml.safe_load(config)["MODEL"]["ANCHOR_GENERATOR"]["SIZES"]
        assert "anchors=auto: sizes {}".format(sizes) in log and sizes[0][0] != 32, sizes


@pytest.mark.parametrize("stack", sorted(TWINS))
def test_twin_writes_tensorboard_event_files_across_the_resume(runs, stack):
    """Detectron2's TensorboardXWriter on the stack's release and its pinned tensorboard (issue 23)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ml = runs(stack, "faster_rcnn")
    assert "TensorBoard event files in /opt/ml/output/tensorboard" in (ml / "train.log").read_text()
    board = ml / "output" / "tensorboard"
    train, validation = (EventAccumulator(str(board / name), size_guidance={"scalars": 0}) for name in ("train", "validation"))
    train.Reload()
    validation.Reload()
    assert {"total_loss", "lr", "data_time", "images_per_second"} <= set(train.Tags()["scalars"])
    # log-period 4 over 24 iterations, resumed at 2: the resumed run writes on from where the first stopped.
    assert [s.step for s in train.Scalars("total_loss")][-5:] == [7, 11, 15, 19, 23]
    assert [s.step for s in validation.Scalars("AP")] == [11, 23]  # eval-period 12
    assert "total_loss" in validation.Tags()["scalars"]


@pytest.mark.parametrize("stack", sorted(TWINS))
def test_twin_tracks_the_killed_and_resumed_run_in_one_mlflow_run(runs, stack, monkeypatch):
    """The stack's pinned mlflow-skinny (2.17.2 on Python 3.8/3.9 stacks) logs one run across the kill."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the host's MLflow 3 reads the file store too
    ml = runs(stack, "faster_rcnn")
    log = (ml / "train.log").read_text()
    client = MlflowClient(tracking_uri=str(ml / "output" / "mlruns"))
    experiment = client.get_experiment_by_name("twins")
    (run,) = client.search_runs([experiment.experiment_id])
    assert "MLflow: continuing run {}".format(run.info.run_id) in log, log[-3000:]
    assert run.info.status == "FINISHED"
    assert run.data.params["model-type"] == "faster_rcnn"
    assert run.data.params["environment"].startswith("environment: python " + TWINS_PYTHON[stack])
    # The same logged iterations as the TensorBoard files (log-period 4, resumed at 2).
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "total_loss"))
    assert steps[-5:] == [7, 11, 15, 19, 23]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "validation_AP")) == [11, 23]
    metrics = json.loads((ml / "model" / "metrics.json").read_text())
    assert run.data.metrics["AP"] == pytest.approx(metrics["AP"])
    artefacts = ml / "output" / "mlruns" / experiment.experiment_id / run.info.run_id / "artifacts" / "model"
    assert (artefacts / "artefacts.json").read_bytes() == (ml / "model" / "artefacts.json").read_bytes()


@pytest.mark.parametrize("stack", sorted(TWINS))
def test_twin_serves_with_tiles_and_soft_nms_from_shelfdet_infer(runs, stack, tmp_path):
    """The RetinaNet model (trained with tiles and hard NMS) served with other tiles and Soft-NMS
    from SHELFDET_INFER on the twin's release."""
    _, serving = _twin_images(stack)
    ml = runs(stack, "retinanet")
    name = "shelfdet-twin-infer-{}-{}".format(stack, os.getpid())
    env = {"SHELFDET_INFER": "--tile-size 112 --nms soft --det-per-img 50"}
    with serving_container(serving, ml / "model", name, env=env) as base:
        _transform(base, ml / "input" / "data" / "test", tmp_path / "out")
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
    assert "max 50 detections, nms soft, tiles 112 px" in logs.stdout + logs.stderr
    answers = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.out")]
    answers = [a[0] if isinstance(a, list) else a for a in answers]
    assert answers and all(len(a["scores"]) <= 50 for a in answers)
    assert any(a["scores"] for a in answers)
    assert all(a["scores"] == sorted(a["scores"], reverse=True) for a in answers)


def _transform(base: str, images: Path, out: Path) -> None:
    """What batch transform stores: the response body of each image as ``<image>.out``."""
    out.mkdir()
    for path in sorted(images.glob("*.jpg")):
        status, body = http(base + "/invocations", data=path.read_bytes(),
                            headers={"Content-Type": "application/x-image"})
        assert status == 200, body[:500]
        (out / (path.name + ".out")).write_bytes(body)


def _evaluate(predictions: Path, manifest: Path) -> dict:
    out = predictions / "metrics.json"
    proc = subprocess.run([sys.executable, "-m", "shelfdet", "evaluate", "--predictions", str(predictions),
                           "--manifest", str(manifest), "--out", str(out)], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT / "shared")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("algo", ("faster_rcnn", "cascade_rcnn"))
@pytest.mark.parametrize("stack", sorted(TWINS))
def test_twin_serves_and_transform_output_scores_like_the_run(runs, stack, algo, tmp_path):
    _, serving = _twin_images(stack)
    ml = runs(stack, algo)
    with serving_container(serving, ml / "model", "shelfdet-twin-serve-{}-{}-{}".format(stack, algo, os.getpid())) as base:
        status, body = http(base + "/invocations", data=b"not an image",
                            headers={"Content-Type": "application/x-image"})
        assert 400 <= status < 500, body[:300]
        _transform(base, ml / "input" / "data" / "test", tmp_path / "out")
    got = _evaluate(tmp_path / "out", ml / "input" / "data" / "annotation" / "test.manifest")
    expected = json.loads((ml / "model" / "metrics.json").read_text())
    for k in STATS:
        assert abs(got[k] - expected[k]) < 1e-6, (k, got[k], expected[k])


@pytest.mark.parametrize("stack", sorted(TWINS))
def test_a_twin_trained_model_is_served_exactly_by_the_cpu_stack(runs, stack, tmp_path):
    """Detectron2 0.6 (cpu stack) loads what the twin's release trained and finds the same objects.

    Loading is exact or /ping never answers 200 (checkpoint.load_exact). The
    strongest detections agree closely, not bit for bit, and the weaker ones may
    differ (AP by up to 0.05 on this barely trained model): the two images decode
    JPEGs with other Pillow/libjpeg releases, run other torch builds, and v0.4.1's
    RetinaNet filters candidates in another order than 0.6's."""
    cpu_serving = image("serving", "cpu")
    _, serving = _twin_images(stack)
    ml = runs(stack, "retinanet")
    answers = {}
    for label, img in (("twin", serving), ("cpu", cpu_serving)):
        with serving_container(img, ml / "model", "shelfdet-cross-{}-{}-{}".format(label, stack, os.getpid())) as base:
            _transform(base, ml / "input" / "data" / "test", tmp_path / label)
        answers[label] = {p.name: json.loads(p.read_text()) for p in (tmp_path / label).glob("*.out")}
    assert answers["twin"] and answers["twin"].keys() == answers["cpu"].keys()
    for name, twin in answers["twin"].items():
        cpu = answers["cpu"][name]
        assert twin["scores"][:5] == pytest.approx(cpu["scores"][:5], abs=0.01), name
        if twin["scores"]:  # both empty is agreement too (a 24-iteration model, nothing scores 0.05 there)
            best = twin["pred_boxes"][0]
            assert max(_iou(best, box) for box in cpu["pred_boxes"][:5]) > 0.8, (name, best, cpu["pred_boxes"][:5])
    assert sum(len(a["scores"]) > 0 for a in answers["twin"].values()) >= len(answers["twin"]) // 2, \
        "the model finds nothing on most test images: the comparison would be vacuous"


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _pinned(stack: str, package: str) -> str:
    """The version of ``package`` in versions.env's STACK_<STACK>_REQUIREMENTS ('' when it has none)."""
    for line in (ROOT / "versions.env").read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "STACK_{}_REQUIREMENTS".format(stack.upper()):
            return dict(req.partition("==")[::2] for req in value.split()).get(package, "")
    return ""


def _dense_scenes(rng: np.random.Generator, n_images: int = 5, n_boxes: int = 160):
    """Scoring inputs shaped like SKU-110K's: ~160 products an image, detections jittered or missed,
    false positives, one image past maxDets=300 (the cut matters) and one without detections."""
    gt, preds = [], {}
    for i in range(n_images):
        name = "shelf_{}.jpg".format(i)
        boxes, scores, anns = [], [], []
        for _ in range(n_boxes + (250 if i == 0 else 0)):
            x, y = rng.uniform(0, 900, 2)
            w, h = rng.uniform(12, 90, 2)
            anns.append({"bbox": [float(x), float(y), float(w), float(h)], "category_id": 0})
            if rng.random() > 0.15:
                j = rng.normal(0, 0.08 * min(w, h), 4)
                boxes.append([float(v) for v in (x + j[0], y + j[1], x + w + j[2], y + h + j[3])])
                scores.append(float(rng.uniform(0.3, 1.0)))
        for _ in range(n_boxes // 4):
            x, y = rng.uniform(0, 900, 2)
            boxes.append([float(x), float(y), float(x + 40), float(y + 60)])
            scores.append(float(rng.uniform(0.05, 0.7)))
        gt.append({"file_name": "/data/" + name, "width": 1000, "height": 1000, "annotations": anns})
        if i != n_images - 1:
            preds[name] = {"pred_boxes": boxes, "scores": scores, "pred_classes": [0] * len(boxes)}
    return gt, preds


# Runs in the twin: its faster-coco-eval, the backend fast uses there, and both scorers' numbers.
_SCORE_BOTH = """
import json, faster_coco_eval
from shelfdet.core import evaluation
d = json.load(open("/data/scenes.json"))
print(json.dumps({"version": faster_coco_eval.__version__, "backend": evaluation._backend(True)[1].__module__,
                  "fast": evaluation.score(d["gt"], d["preds"], ["SKU"], 300, fast=True),
                  "coco": evaluation.score(d["gt"], d["preds"], ["SKU"], 300, fast=False)}))
"""


@pytest.mark.parametrize("stack", sorted(TWINS))
def test_twin_fast_evaluation_is_faster_coco_eval_and_equals_pycocotools(stack, tmp_path):
    """evaluation-type=fast on the twin's own pins (cu101cpu: faster-coco-eval 1.7.2 on numpy 1.19.5, the
    newest release for cu101's Python 3.8) is faster-coco-eval, and scores as pycocotools does there and here."""
    from shelfdet.core import evaluation

    training, _ = _twin_images(stack)
    version = _pinned(stack, "faster-coco-eval")
    assert version, "versions.env pins no faster-coco-eval for stack {}".format(stack)
    gt, preds = _dense_scenes(np.random.default_rng(7))
    (tmp_path / "scenes.json").write_text(json.dumps({"gt": gt, "preds": preds}))
    proc = subprocess.run(["docker", "run", "--rm", "-v", "{}:/data:ro".format(tmp_path), "-e", "OMP_NUM_THREADS=2",
                           training, "python", "-c", _SCORE_BOTH], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["version"] == version and got["backend"].startswith("faster_coco_eval"), got
    here = evaluation.score(gt, preds, ["SKU"], 300, fast=False)  # this venv's pycocotools
    diff = max(max(abs(got["fast"][k] - got["coco"][k]), abs(got["fast"][k] - here[k]))
               for k in evaluation.STAT_NAMES)
    print("{}: faster-coco-eval {} vs pycocotools, max abs difference {:.3g}".format(stack, version, diff))
    assert diff <= 1e-6, (got, here)
    assert 0.3 < got["fast"]["AP"] < 0.95, got  # neither nothing nor everything matched: a real comparison
