"""Detectron2 0.6 on the local stack: both detectors build, train a step and infer on CPU."""
from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from shelfdet.core import compat, hyperparameters
from shelfdet.core.config import build_config


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



ROOT = Path(__file__).resolve().parent.parent
# Pillow names as Detectron2 writes them: Image.BILINEAR, Image.FLIP_LEFT_RIGHT, ...
PILLOW_NAME = re.compile(r"\bImage\.([A-Z][A-Z0-9_]*)\b")


def _pinned_source(stack: str) -> Path:
    """The pinned Detectron2 archive of a GPU stack (tools/d2_source.sh), or a skip naming what is missing."""
    check = subprocess.run(["bash", str(ROOT / "tools" / "d2_source.sh"), "check", stack], capture_output=True,
                           text=True)
    if check.returncode != 0:
        pytest.skip("Detectron2 source of stack {} not here: {}".format(stack, check.stdout.strip()))
    out = subprocess.run(["bash", str(ROOT / "tools" / "d2_source.sh"), "path", stack], capture_output=True,
                         text=True, check=True)
    return Path(out.stdout.strip())


def _pillow_names_in_archive(tar_path: Path) -> set:
    names = set()
    with tarfile.open(str(tar_path)) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".py") and "/detectron2/" in member.name:
                names |= set(PILLOW_NAME.findall(tar.extractfile(member).read().decode("utf-8", "replace")))
    return names


def _pillow_names_installed() -> set:
    import detectron2

    names = set()
    for path in Path(detectron2.__file__).parent.rglob("*.py"):
        names |= set(PILLOW_NAME.findall(path.read_text(encoding="utf-8", errors="replace")))
    return names


def _assert_pillow_has(names: set) -> None:
    from PIL import Image

    assert names, "no Image.<NAME> found: the scan is broken"
    missing = sorted(n for n in names if not hasattr(Image, n))
    assert not missing, "Detectron2 uses Image.{} and this Pillow lacks it after compat.apply()".format(missing)


def test_every_pillow_name_the_installed_detectron2_uses_exists_after_the_shim():
    _assert_pillow_has(_pillow_names_installed())


@pytest.mark.parametrize("stack", ["cu101", "cu12"])
def test_every_pillow_name_a_pinned_detectron2_uses_exists_after_the_shim(stack):
    names = _pillow_names_in_archive(_pinned_source(stack))
    assert "LINEAR" in names  # ExtentTransform's default: the reason the shim exists
    _assert_pillow_has(names)


# Detectron2 v0.4.1's transforms package, loaded from the pinned archive under another name (the
# local Detectron2 is 0.6), then used: with the shim it imports and resizes; without it, on a
# Pillow that removed Image.LINEAR, its import fails.
_V041_TRANSFORMS = """
import sys
import numpy as np
from PIL import Image
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "shim":
    from shelfdet.core import compat
    print("restored", compat.restore_pillow_names())
import d2v041_transforms as T
image = (np.arange(40 * 60 * 3) % 251).astype(np.uint8).reshape(40, 60, 3)
assert T.ExtentTransform((0, 0, 30, 20), (10, 15)).interp == Image.BILINEAR
assert T.ExtentTransform((0, 0, 30, 20), (10, 15)).apply_image(image).shape == (10, 15, 3)
t = T.ResizeShortestEdge(20, 100).get_transform(image)
assert t.apply_image(image).shape == (20, 30, 3), t.apply_image(image).shape
assert T.ResizeTransform(40, 60, 80, 120).apply_image(image).shape == (80, 120, 3)
print("v0.4.1 transforms ran")
"""


def test_detectron2_v041_transforms_import_and_run_on_this_pillow_with_the_shim(tmp_path):
    tar_path = _pinned_source("cu101")
    package = tmp_path / "d2v041_transforms"
    package.mkdir()
    with tarfile.open(str(tar_path)) as tar:
        for member in tar.getmembers():
            if member.isfile() and "/detectron2/data/transforms/" in member.name and member.name.endswith(".py"):
                (package / Path(member.name).name).write_bytes(tar.extractfile(member).read())
    assert (package / "transform.py").is_file()
    script = tmp_path / "use.py"
    script.write_text(_V041_TRANSFORMS)

    shim = subprocess.run([sys.executable, str(script), str(tmp_path), "shim"], capture_output=True, text=True)
    assert shim.returncode == 0, shim.stderr[-3000:]
    assert "v0.4.1 transforms ran" in shim.stdout

    unshimmed = subprocess.run([sys.executable, str(script), str(tmp_path), "none"], capture_output=True, text=True)
    if "restored []" in shim.stdout:
        assert unshimmed.returncode == 0, unshimmed.stderr[-3000:]  # Pillow < 10: nothing to restore
    else:
        assert "restored ['LINEAR']" in shim.stdout
        assert unshimmed.returncode != 0 and "LINEAR" in unshimmed.stderr, unshimmed.stderr[-3000:]
