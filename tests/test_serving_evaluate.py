"""``make evaluate`` on predictions fetched from the real server equals scoring the model directly.

Two models: one from a real short training run (its own end-of-training
evaluation in metrics.json is the reference), and the tiny random model with
ground truth built around its detections, so AP sits strictly between 0 and 1
and a single changed box would show.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from _serving_support import ROOT, ServerProcess, make_tiny_model, shelf_image, write_dataset

STATS = ("AP", "AP50", "AP75", "AR1", "AR10", "AR")


def fetch_predictions(server: ServerProcess, image_paths, out_dir: Path, as_json_every: int = 0) -> None:
    """Writes ``<image>.out`` like batch transform: the response body as stored by SageMaker.

    With ``as_json_every=k`` every k-th image goes as an application/json batch of one
    (its .out then holds a one-element list, which evaluate also reads).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for i, path in enumerate(image_paths):
            data = Path(path).read_bytes()
            if as_json_every and i % as_json_every == 0:
                r = client.post("/invocations", json={"instances": [base64.b64encode(data).decode()]})
            else:
                r = client.post("/invocations", content=data, headers={"Content-Type": "application/x-image"})
            assert r.status_code == 200, r.text
            (out_dir / (os.path.basename(path) + ".out")).write_bytes(r.content)


def run_evaluate(predictions: Path, manifest: Path, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "shared"))
    proc = subprocess.run([sys.executable, "-m", "shelfdet", "evaluate", "--predictions", str(predictions),
                           "--manifest", str(manifest), "--out", str(out)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "AP:" in proc.stdout
    return json.loads(out.read_text())


def evaluation_body(path: Path) -> dict:
    body = json.loads(path.read_text())
    return body[0] if isinstance(body, list) else body


def assert_metrics_equal(got: dict, expected: dict) -> None:
    for k in STATS:
        assert abs(got[k] - expected[k]) <= 1e-6, "{}: make evaluate {} vs reference {}".format(k, got[k], expected[k])


def test_served_predictions_score_like_the_training_runs_own_evaluation(tiny_dataset, tmp_path):
    from conftest import make_ml_root, run_train

    root = make_ml_root(tmp_path / "job", tiny_dataset, num_iter="6", eval_period="0")
    proc = run_train(root, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_dir = root / "model"
    reference = json.loads((model_dir / "metrics.json").read_text())
    assert reference["eval_channel"] == "test"
    manifest = Path(tiny_dataset) / "annotations" / "test.manifest"
    names = [os.path.basename(json.loads(line)["source-ref"]) for line in manifest.read_text().splitlines() if line]
    server = ServerProcess(str(model_dir), tmp_path / "server.log", env={"OMP_NUM_THREADS": "1"})
    try:
        server.wait_ready()
        fetch_predictions(server, [Path(tiny_dataset) / "test" / n for n in names], tmp_path / "out", as_json_every=2)
    finally:
        assert server.stop() == 0
    boxes = sum(len(evaluation_body(p)["scores"]) for p in (tmp_path / "out").glob("*.out"))
    assert boxes > 0, "the trained model predicts nothing: the comparison would be vacuous"
    got = run_evaluate(tmp_path / "out", manifest, tmp_path / "metrics.json")
    print("training run's own evaluation:", {k: reference[k] for k in STATS}, "boxes served:", boxes)
    assert got["images"] == len(names) == reference["eval_images"]
    assert_metrics_equal(got, reference)


def test_served_predictions_score_like_direct_detector_predictions(tmp_path_factory, tmp_path):
    import torch

    from shelfdet.core import catalog, evaluation, photos
    from shelfdet.core.inference import Detector

    torch.set_num_threads(1)  # as the server below: same kernels, same floats
    model_dir = make_tiny_model(tmp_path_factory.getbasetemp())
    detector = Detector.from_model_dir(model_dir, "cpu")
    rng = np.random.default_rng(3)
    images, boxes = {}, {}
    for i in range(6):
        name = "test_{}.jpg".format(i)
        rgb = shelf_image(100 + i, 160, 120)
        # Ground truth: some detections, nudged, plus boxes nothing predicts.
        pred = detector.predict([rgb[:, :, ::-1].copy()])[0]
        picked = [list(np.asarray(b) + rng.normal(0, 2, 4)) for b in pred["pred_boxes"][:: 4][:6]]
        boxes[name] = picked + [[5.0, 5.0, 40.0, 30.0], [100.0, 60.0, 150.0, 110.0]]
        images[name] = rgb
    manifest = write_dataset(tmp_path / "data", images, boxes)
    gt, class_names = catalog.load_manifest(str(manifest), str(tmp_path / "data" / "test"))
    direct = {os.path.basename(d["file_name"]): detector.predict([photos.read(d["file_name"])])[0] for d in gt}
    expected = evaluation.score(gt, direct, class_names, 300)
    assert 0.05 < expected["AP"] < 0.95, expected

    server = ServerProcess(model_dir, tmp_path / "server.log", env={"OMP_NUM_THREADS": "1"})
    try:
        server.wait_ready()
        fetch_predictions(server, [d["file_name"] for d in gt], tmp_path / "out", as_json_every=3)
    finally:
        assert server.stop() == 0
    got = run_evaluate(tmp_path / "out", manifest, tmp_path / "metrics.json")
    assert_metrics_equal(got, expected)
