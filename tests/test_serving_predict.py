"""``make predict`` (python -m shelfdet predict) with a local model folder; with an endpoint: tests/test_predict_endpoints.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from _serving_support import ROOT, encode, make_tiny_model, shelf_image


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.getbasetemp())


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "shelf.jpg"
    path.write_bytes(encode(shelf_image(9, 160, 120)))
    return path


def predict(*args, env=None):
    full = dict(os.environ, PYTHONPATH=str(ROOT / "shared"), OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "shelfdet", "predict"] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=300, env=full)


def test_local_model_writes_json_and_png(model_dir, image, tmp_path):
    from shelfdet.core import photos
    from shelfdet.core.inference import Detector

    out = tmp_path / "preds"
    proc = predict("--image", image, "--model-dir", model_dir, "--out", out, "--max-detections", "20")
    assert proc.returncode == 0, proc.stderr
    json_path, png_path = out / "shelf.jpg.json", out / "shelf.jpg.png"
    assert str(json_path) in proc.stdout and str(png_path) in proc.stdout
    pred = json.loads(json_path.read_text())
    assert "20 boxes" in proc.stdout and len(pred["scores"]) == 20
    expected = Detector.from_model_dir(model_dir, "cpu").predict([photos.read(str(image))], max_detections=20)[0]
    np.testing.assert_allclose(pred["pred_boxes"], expected["pred_boxes"], atol=1e-3)
    assert pred["image_width"] == 160 and pred["image_height"] == 120
    with Image.open(str(png_path)) as png:
        # Taller than the image by the title band.
        assert png.format == "PNG" and 160 / 180 < png.size[0] / png.size[1] < 160 / 120
        drawn = sum(1 for s in pred["scores"] if s >= 0.5)
        assert png.text["Title"] == "shelf.jpg  {} boxes at score >= 0.50 (default; 20 in the JSON)".format(drawn)


@pytest.mark.parametrize("how", ["model", "SCORE"])
def test_the_png_draws_what_the_count_threshold_counts(model_dir, image, tmp_path, how):
    """The JSON keeps every box; the picture only those at the model's count threshold (or SCORE=)."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(model_dir, str(model))
    (model / "metrics.json").write_text(json.dumps({"count_threshold": 0.7}))
    out = tmp_path / "preds"
    extra = ["--score", "0.85"] if how == "SCORE" else []
    proc = predict("--image", image, "--model-dir", model, "--out", out, *extra)
    assert proc.returncode == 0, proc.stderr
    scores = json.loads((out / "shelf.jpg.json").read_text())["scores"]
    threshold, why = (0.85, "SCORE") if how == "SCORE" else (0.7, "the model's count threshold")
    drawn = sum(1 for s in scores if s >= threshold)
    assert 0 < drawn < len(scores), "the tiny model's scores must straddle the threshold for this test"
    with Image.open(str(out / "shelf.jpg.png")) as png:
        assert png.text["Title"] == "shelf.jpg  {} boxes at score >= {:.2f} ({}; {} in the JSON)".format(
            drawn, threshold, why, len(scores))
        # The kept boxes are drawn (red edges).
        red = np.asarray(png.convert("RGB"), dtype=np.int16)
    reds = int(((red[..., 0] > 200) & (red[..., 1] < 90) & (red[..., 2] < 90)).sum())
    assert reds > 0


@pytest.mark.parametrize("case,needle", [("missing image", "image not found"), ("no model", "no model"),
                                         ("not a model", "artefacts.json"), ("corrupt image", "not a decodable image"),
                                         ("threshold", "score_threshold"),
                                         ("webp image", "shelf.webp: not a JPEG or PNG image (WebP image)")])
def test_errors_are_one_line(model_dir, image, tmp_path, case, needle):
    args = {"missing image": ["--image", tmp_path / "nope.jpg", "--model-dir", model_dir],
            "no model": ["--image", image],
            "not a model": ["--image", image, "--model-dir", tmp_path],
            "corrupt image": ["--image", tmp_path / "bad.jpg", "--model-dir", model_dir],
            "threshold": ["--image", image, "--model-dir", model_dir, "--score-threshold", "7"],
            "webp image": ["--image", tmp_path / "shelf.webp", "--model-dir", model_dir]}[case]
    (tmp_path / "bad.jpg").write_bytes(image.read_bytes()[:400])
    Image.open(str(image)).save(str(tmp_path / "shelf.webp"), "WEBP")
    proc = predict(*args, "--out", tmp_path / "o")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
