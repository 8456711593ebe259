"""make export: each algorithm's graph in each format gives the eager model's boxes, at sizes other than
the traced one, through numpy post-processing (core.exported); the runtime choice; a real training
with export=onnx."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_ml_root, run_train

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

# Photo sizes unlike the traced example (the model's test size, 4:3), portrait and landscape.
SIZES = [(150, 230), (200, 130), (97, 301)]


def photo(seed: int, height: int, width: int) -> np.ndarray:
    """A 'shelf' photo: coloured boxes on grey, so a random model's features vary across it."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 190, np.uint8)
    for _ in range(12):
        w, h = int(rng.integers(8, width // 3)), int(rng.integers(10, height // 2))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        img[y:y + h, x:x + w] = rng.integers(0, 256, 3)
    return img


def random_model(root: Path, algo: str) -> str:
    """A random-init model folder of our own config for ``algo`` (R-18-FPN, small test size); its
    score threshold low enough that a random RetinaNet keeps boxes."""
    from detectron2.modeling import build_model

    from shelfdet.core import artefacts, hyperparameters, safeweights
    from shelfdet.core.config import build_config

    import torch

    folder = root / algo
    if (folder / artefacts.MANIFEST).is_file():
        return str(folder)
    raw = {"model-type": algo, "min-size": "128", "max-size": "192", "det-per-img": "100",
           "pred-thr": "0.005" if algo == "retinanet" else "0.3", "nms": "hard"}
    hp = hyperparameters.parse(raw, profile="local")
    cfg = build_config(hp, ["SKU", "other"], "train", None, str(folder / "out"))
    torch.manual_seed(0)
    model = build_model(cfg)
    spread_scores(model, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    safeweights.save(model.state_dict(), str(folder / artefacts.WEIGHTS))
    (folder / artefacts.CONFIG).write_text(cfg.dump())
    artefacts.write_manifest(str(folder), ["SKU", "other"], algo, hyperparameters.as_strings(hp))
    return str(folder)


def spread_scores(model, cfg, target_std: float = 2.0) -> None:
    """Rescales each random classifier so its logits spread (std ``target_std``) on a sample photo: a random
    R-CNN's probabilities are otherwise 0 or 1, and boxes tied at 1.0 have no NMS order to compare."""
    import torch

    from shelfdet.core.inference import Detector

    layers = [m for name, m in model.named_modules() if name.endswith("cls_score")]
    seen = {id(m): [] for m in layers}
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen[id(mod)].append(out.flatten())) for m in layers]
    det = Detector(cfg, "", ["SKU", "other"], model=model)
    det.predict([photo(99, 128, 170)])
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        for m in layers:
            m.weight.mul_(target_std / max(float(torch.cat(seen[id(m)]).std()), 1e-12))
            if m.weight.dim() == 2:  # R-CNN's softmax: no class ahead by its bias alone
                m.bias.zero_()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-models")
    return {algo: random_model(root, algo) for algo in ("faster_rcnn", "retinanet", "cascade_rcnn")}


CASES = [("faster_rcnn", "openvino"), ("faster_rcnn", "torchscript"),  # ONNX: the command-line and Soft-NMS tests
         ("retinanet", "openvino"), ("cascade_rcnn", "openvino")]


@pytest.mark.parametrize("algo,fmt", CASES)
def test_the_export_finds_every_eager_box_at_other_sizes(models, algo, fmt):
    from shelfdet.core import export, exported
    from shelfdet.core.inference import Detector

    folder, agreement = export.export(models[algo], fmt, [photo(0, 160, 200)])
    assert agreement is not None and agreement >= export.MIN_AGREEMENT
    assert sorted(os.listdir(folder)) == sorted(n for n in exported.OWN_FILES if os.path.exists(os.path.join(folder, n)))
    record = json.loads(Path(folder, exported.RECORD).read_text())
    assert record["kind"] == ("retinanet" if algo == "retinanet" else "rcnn")
    assert record["input"]["min_size"] == 128 and record["class_names"] == ["SKU", "other"]
    assert record["weights_sha256"] == export.sha256(os.path.join(models[algo], "model_final.safetensors"))

    eager = Detector.from_model_dir(models[algo], "cpu")
    ours = exported.ExportedDetector.from_folder(folder, fmt)
    assert ours.runtime.startswith({"torchscript": "torchscript", "onnx": "onnx", "openvino": "openvino"}[fmt])
    boxes = 0
    for seed, (height, width) in enumerate(SIZES):
        pixels = photo(seed + 1, height, width)
        want, got = eager.predict([pixels])[0], ours.predict([pixels])[0]
        # TorchScript runs torch's own kernels: every box, exactly. ONNX Runtime and OpenVINO differ in the last
        # float digits, which flips a few NMS decisions between near-equal boxes of a random model.
        share = 1.0 if fmt == "torchscript" else export.MIN_AGREEMENT
        assert exported.matched(want, got) >= share * len(want["scores"]), (height, width)
        assert abs(len(got["scores"]) - len(want["scores"])) <= (1 - share) * len(want["scores"])
        assert set(got) == set(want)
        boxes += len(want["scores"])
    assert boxes > 20, "too few boxes for the comparison to mean anything"


@pytest.mark.parametrize("overrides", [{"nms": "soft"}, {"tile-size": "96", "tile-overlap": "0.25"}])
def test_soft_nms_and_tiles_match_the_eager_model(models, overrides):
    from shelfdet.core import export, exported
    from shelfdet.core.inference import Detector

    model_dir = models["faster_rcnn"]
    if "onnx" not in exported.available(model_dir):
        export.export(model_dir, "onnx")
    eager = Detector.from_model_dir(model_dir, "cpu", overrides)
    ours = exported.ExportedDetector.from_model_dir(model_dir, "onnx", overrides)
    assert ours.options == eager.options and not ours.options.plain
    pixels = photo(7, 210, 260)
    want, got = eager.predict([pixels])[0], ours.predict([pixels])[0]
    assert len(want["scores"]) > 5
    assert exported.matched(want, got) >= export.MIN_AGREEMENT * len(want["scores"])


def reference_soft_nms(boxes, scores, classes, sigma, min_score, max_keep):
    """Gaussian Soft-NMS written plainly with torchvision's box_iou (Bodla et al., 2017)."""
    import torch
    from torchvision.ops import box_iou

    shifted = boxes + (classes.to(boxes) * (boxes.max() + 1))[:, None]
    current, keep, kept = scores.clone(), [], []
    for _ in range(min(max_keep, len(boxes))):
        best = int(torch.argmax(current))
        if float(current[best]) < min_score:
            break
        keep.append(best)
        kept.append(float(current[best]))
        iou = box_iou(shifted[best:best + 1], shifted)[0]
        current = current * torch.exp(-(iou * iou) / sigma)
        current[best] = -1.0
    return keep, kept


def test_numpy_nms_and_soft_nms_are_torchvisions_and_the_papers():
    import torch
    from torchvision.ops import batched_nms

    from shelfdet.core import exported, postprocess

    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 200, (400, 2)).astype(np.float32)
    wh = rng.uniform(5, 60, (400, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], 1)
    scores = rng.uniform(0, 1, 400).astype(np.float32)
    classes = rng.integers(0, 3, 400)
    tb, ts, tc = torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes)
    assert exported.nms(boxes, scores, classes, 0.5).tolist() == batched_nms(tb, ts, tc, 0.5).tolist()
    keep, kept = exported.soft_nms(boxes, scores, classes, 0.5, 0.05, 200)
    ref_keep, ref_kept = reference_soft_nms(tb, ts, tc, 0.5, 0.05, 200)
    assert keep.tolist() == ref_keep and len(keep) > 50
    np.testing.assert_allclose(kept, ref_kept, rtol=1e-5)
    # The eager model's merge runs the same numpy code on tensors.
    t_keep, t_kept = postprocess.soft_nms(tb, ts, tc, 0.5, 0.05, 200)
    assert t_keep.tolist() == ref_keep and t_kept.dtype == torch.float32


def test_the_runtime_choice_and_its_refusals(models, monkeypatch):
    from shelfdet.core import export, exported
    from shelfdet.core.inference import Detector

    model_dir = models["retinanet"]
    if "openvino" not in exported.available(model_dir):
        export.export(model_dir, "openvino")
    monkeypatch.delenv(exported.RUNTIME_ENV, raising=False)
    assert exported.load(model_dir).runtime == "openvino f32"  # auto: OpenVINO, in f32 unless the record allows less
    assert isinstance(exported.load(model_dir, "torch", device="cpu"), Detector)
    import shelfdet

    assert shelfdet.load(model_dir, runtime="auto").runtime == "openvino f32"  # the Python API's way in
    monkeypatch.setenv(exported.RUNTIME_ENV, "torch")
    assert exported.load(model_dir).runtime == "torch"
    with pytest.raises(exported.ExportMissing, match="make export MODEL_DIR=.* FORMAT=onnx"):
        exported.load(model_dir, "onnx")
    with pytest.raises(ValueError, match="SHELFDET_RUNTIME=tensorrt: choose one of auto, openvino, onnx, torch"):
        exported.load(model_dir, "tensorrt")
    # The candidates per photo are part of the graph: a setting that changes them asks for a new export.
    with pytest.raises(exported.ExportMissing, match="keeps 1000 candidates per photo, these settings want 1200"):
        exported.load(model_dir, "openvino", {"det-per-img": "600"})


def test_a_users_file_in_the_export_folder_is_never_removed(models):
    from shelfdet.core import export, exported

    model_dir = models["faster_rcnn"]
    folder = os.path.join(model_dir, exported.EXPORT_DIR, "torchscript")
    if "torchscript" not in exported.available(model_dir):
        export.export(model_dir, "torchscript")
    notes = Path(folder, "notes.txt")
    notes.write_text("mine")
    try:
        with pytest.raises(export.ExportError, match="notes.txt"):
            export.export(model_dir, "torchscript")
        assert notes.read_text() == "mine" and "torchscript" in exported.available(model_dir)
    finally:
        notes.unlink()
    assert not [n for n in os.listdir(os.path.dirname(folder)) if n.startswith(".")], "a work folder was left behind"


def test_make_export_command_line(models, tmp_path):
    model_dir = models["cascade_rcnn"]
    pics = tmp_path / "photos"
    pics.mkdir()
    from PIL import Image

    Image.fromarray(photo(5, 140, 180)).save(pics / "a.jpg")
    (pics / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = subprocess.run([sys.executable, "-m", "shelfdet", "export", "--model-dir", model_dir, "--format", "onnx",
                          "--photos", str(pics)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == os.path.join(model_dir, "export", "onnx")
    assert "skipped {}".format(pics / "broken.jpg") in out.stderr
    assert "of the eager boxes found again" in out.stderr


def test_a_training_with_export_onnx_writes_a_checked_export(tiny_dataset, tmp_path):
    root = make_ml_root(tmp_path / "run", tiny_dataset, export="onnx")
    result = run_train(root, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    model_dir = root / "model"
    from shelfdet.core import exported

    assert exported.available(str(model_dir)) == ["onnx"]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["export"]["format"] == "onnx"
    assert metrics["export"]["agreement"] is None or metrics["export"]["agreement"] >= 0.99
    assert json.loads((model_dir / "hyperparameters.json").read_text())["export"] == "onnx"
