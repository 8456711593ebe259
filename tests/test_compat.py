"""Detectron2 0.6 on the local stack: both detectors build, train a step and infer on CPU."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from shelfdet import compat, hyperparameters
from shelfdet.config import build_config

compat.apply()

from detectron2.modeling import build_model  # noqa: E402


def _tiny_cfg(algo: str):
    hp = hyperparameters.parse({"model-type": algo, "min-size": "128", "max-size": "160", "num-rpn": "64"}, profile="local")
    cfg = build_config(hp, ["SKU"], "unused_train", None, "/tmp/unused")
    return cfg


@pytest.mark.parametrize("algo", ["faster_rcnn", "retinanet"])
def test_model_trains_one_step_and_infers(algo):
    torch.manual_seed(0)
    cfg = _tiny_cfg(algo)
    model = build_model(cfg)
    model.train()
    image = torch.randint(0, 255, (3, 128, 160), dtype=torch.uint8)
    from detectron2.structures import Boxes, Instances

    inst = Instances((128, 160), gt_boxes=Boxes(torch.tensor([[10.0, 10.0, 40.0, 50.0], [50.0, 5.0, 90.0, 60.0]])),
                     gt_classes=torch.tensor([0, 0]))
    from detectron2.utils.events import EventStorage

    with EventStorage(0):
        losses = model([{"image": image, "instances": inst, "height": 128, "width": 160}])
    total = sum(losses.values())
    assert torch.isfinite(total)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    total.backward()
    opt.step()
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "no parameter moved"
    model.eval()
    with torch.no_grad():
        out = model([{"image": image, "height": 128, "width": 160}])[0]["instances"]
    assert out.pred_boxes.tensor.shape[1] == 4
    assert len(out) <= cfg.TEST.DETECTIONS_PER_IMAGE


def test_pillow_linear_alias_and_compiled_op_stub():
    from PIL import Image

    assert Image.LINEAR == Image.BILINEAR
    import detectron2.evaluation  # imports detectron2._C at import time  # noqa: F401

    if compat.has_compiled_ops():
        pytest.skip("real compiled Detectron2 ops present")
    stub = sys.modules["detectron2._C"]
    with pytest.raises(compat.CompiledOpsMissing, match="COCOevalAccumulate"):
        stub.COCOevalAccumulate


def test_compiled_op_lookups_at_import_get_named_placeholders():
    # v0.4.1's detectron2.layers.nms looks up torch.ops.detectron2.nms_rotated at import.
    if compat.has_compiled_ops():
        pytest.skip("real compiled Detectron2 ops present")
    op = torch.ops.detectron2.nms_rotated
    with pytest.raises(compat.CompiledOpsMissing, match=r"torch\.ops\.detectron2\.nms_rotated is a compiled"):
        op(torch.zeros(1, 5), torch.zeros(1), 0.5)

