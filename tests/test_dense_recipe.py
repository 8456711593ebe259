"""RECIPE=dense with Cascade R-CNN, trained for real on tiny generated data, evaluated by the job,
served over HTTP: the recipe's settings are printed, saved and served without flags."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from _serving_support import ServerProcess, encode, shelf_image
from conftest import TINY_HP, run_train
from shelfdet.core import artefacts, hyperparameters
from shelfdet.commands import train


@pytest.fixture(scope="module")
def cascade(tiny_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade-job")
    raw = {k: v for k, v in TINY_HP.items() if k not in ("min-size", "max-size")}  # the recipe's auto test size
    # Crops smaller than the 160x128 images, so they cut; a low score floor, so 4 iterations give boxes.
    raw.update({"model-type": "cascade_rcnn", "recipe": "dense", "crop-size": "64", "pred-thr": "0.001"})
    hp = hyperparameters.parse(raw, profile="local")
    train.lay_out(str(root), str(tiny_dataset), hyperparameters.as_strings(hp))
    proc = run_train(root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, proc.stdout + proc.stderr


def test_the_recipe_is_printed_and_saved_and_the_test_size_follows_the_crops(cascade):
    root, log = cascade
    model = root / "model"
    assert "recipe dense: crop-size 64, crop-scales 0.5,0.8, min-size auto, max-size auto, anchors auto, " \
           "proposals 3000, det-per-img 400, nms soft" in log
    middle = (0.5 * 0.8) ** 0.5
    size = (round(128 * middle), round(160 * middle))  # the tiny set's 160x128 images at the crops' middle scale
    assert "crop training: 64 px crops" in log and "test size {}/{}".format(*size) in log
    cfg = yaml.safe_load((model / "config.yaml").read_text())
    assert cfg["MODEL"]["ROI_HEADS"]["NAME"] == "CascadeROIHeads"
    assert cfg["MODEL"]["ROI_BOX_HEAD"]["CLS_AGNOSTIC_BBOX_REG"] is True
    assert (cfg["INPUT"]["MIN_SIZE_TEST"], cfg["INPUT"]["MAX_SIZE_TEST"]) == size
    assert cfg["TEST"]["DETECTIONS_PER_IMAGE"] == 400 and cfg["MODEL"]["RPN"]["POST_NMS_TOPK_TEST"] == 3000
    saved = json.loads((model / "hyperparameters.json").read_text())
    assert (saved["recipe"], saved["crop-size"], saved["nms"], saved["anchors"]) == ("dense", "64", "soft", "auto")
    assert artefacts.read(str(model)).model_type == "cascade_rcnn"
    metrics = json.loads((model / "metrics.json").read_text())
    assert metrics["eval_channel"] == "test" and 0.0 <= metrics["AP"] <= 1.0 and metrics["max_dets"] == 400
    # Three box stages trained: their losses are logged by name.
    for stage in range(3):
        assert "loss_box_reg_stage{}".format(stage) in log


def test_the_cascade_model_serves_over_http_with_its_saved_settings(cascade, tmp_path):
    import httpx

    from shelfdet.core import photos
    from shelfdet.core.inference import Detector

    model = str(cascade[0] / "model")
    data = encode(shelf_image(3, 160, 128))
    expected = Detector.from_model_dir(model, "cpu").predict([photos.decode(data)])[0]
    assert expected["scores"], "a 4-iteration model at score >= 0.001 still gives boxes"
    server = ServerProcess(model, tmp_path / "server.log")
    try:
        server.wait_ready()
        r = httpx.post(server.url + "/invocations", content=data, headers={"Content-Type": "image/jpeg"}, timeout=120)
        assert r.status_code == 200, r.text
        served = r.json()
        assert served["pred_class_names"] == ["SKU"] * len(expected["scores"])
        np.testing.assert_allclose(served["scores"], expected["scores"], atol=1e-5)
        np.testing.assert_allclose(np.reshape(served["pred_boxes"], (-1, 4)),
                                   np.reshape(expected["pred_boxes"], (-1, 4)), atol=1e-3)
    finally:
        server.stop()
