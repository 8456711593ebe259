"""Dense-scene options (issue 13): anchors=auto, sliced inference, Soft-NMS, and the INFER= overrides
that serving, ``make predict`` and ``make evaluate`` apply to a trained model."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

STATS = ("AP", "AP50", "AP75", "AR", "count_mae", "count_rel_error", "count_threshold")
PLAIN = {"nms": "hard", "tile-size": "0"}  # the model's own output, whatever it was trained with


# ---- anchors ------------------------------------------------------------------

def test_kmeans_1d_finds_separated_clusters_deterministically():
    from shelfdet.core import anchors

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(c, 0.05, 300) for c in (-1.0, 0.2, 1.5)])
    centres = anchors.kmeans_1d(values, 3)
    assert np.allclose(centres, [-1.0, 0.2, 1.5], atol=0.02)
    assert np.array_equal(centres, anchors.kmeans_1d(values[::-1], 3))


def test_fit_scales_the_zoo_ladder_to_the_boxes_and_clusters_aspect_ratios():
    from shelfdet.core import anchors

    fpn = [[32], [64], [128], [256], [512]]
    strides = [4, 8, 16, 32, 64]
    rng = np.random.default_rng(1)
    side = 20.0 * np.exp(rng.normal(0, 0.05, 900))
    ratio = np.repeat([0.4, 1.0, 3.0], 300) * np.exp(rng.normal(0, 0.02, 900))  # h / w
    shapes = np.stack([side / np.sqrt(ratio), side * np.sqrt(ratio)], axis=1)  # (w, h), sqrt(w*h) = side
    fitted = anchors.fit(shapes, fpn, strides, 3)
    ladder = np.log2([s[0] for s in fitted.sizes])
    assert np.allclose(np.diff(ladder), 1.0, atol=0.01), "one octave per level, as the zoo's (sizes rounded to 0.1 px)"
    assert np.min(np.abs(ladder - math.log2(20.0))) <= 1 / 24 + 1e-9, fitted.sizes
    assert np.allclose(fitted.aspect_ratios, [0.4, 1.0, 3.0], rtol=0.05)
    # Tiny boxes: no anchor below twice its level's stride (8 px on P2).
    tiny = anchors.fit(np.full((50, 2), 3.0), fpn, strides, 3)
    assert tiny.sizes[0] == [8.0] and tiny.factor == 0.25
    # One size range fits ladders an octave apart equally: the factor nearest the zoo's wins,
    # so 31 px products sit on P2 with 31 px anchors, not on P4 with a ladder at 0.24x.
    products = anchors.fit(np.full((60, 2), 31.0) * np.exp(rng.normal(0, 0.2, (60, 1))), fpn, strides, 3)
    assert abs(math.log2(products.factor / (31.0 / 32.0))) <= 1 / 12, products.factor
    # RetinaNet's three scales per level keep their ratios.
    retina = [[s, s * 2 ** (1 / 3), s * 2 ** (2 / 3)] for s in (32, 64, 128, 256, 512)]
    r = anchors.fit(shapes, retina, [8, 16, 32, 64, 128], 3)
    assert np.allclose(np.array(r.sizes) / np.array(retina), r.factor, rtol=0.01)


def test_fit_without_boxes_names_the_problem():
    from shelfdet.core import anchors

    with pytest.raises(ValueError, match="no boxes"):
        anchors.fit(np.zeros((0, 2)), [[32]], [16], 3)


# ---- Soft-NMS and tiles, on tensors ---------------------------------------------

def test_soft_nms_decays_overlapping_scores_per_class():
    import torch

    from shelfdet.core import postprocess

    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 8], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    classes = torch.tensor([0, 0, 1, 0])
    keep, kept = postprocess.soft_nms(boxes, scores, classes, sigma=0.5, min_score=0.05, max_keep=10)
    assert keep.tolist() == [0, 2, 3, 1]  # box 1 (IoU 0.8 with box 0) drops behind the others
    assert kept[:3].tolist() == pytest.approx([0.9, 0.7, 0.6])  # other class, no overlap: untouched
    assert float(kept[3]) == pytest.approx(0.8 * math.exp(-0.8 ** 2 / 0.5), rel=1e-5)
    keep, _ = postprocess.soft_nms(boxes, scores, classes, sigma=0.5, min_score=0.5, max_keep=10)
    assert keep.tolist() == [0, 2, 3], "a box decayed below min_score is dropped"
    keep, _ = postprocess.soft_nms(boxes, scores, classes, sigma=0.5, min_score=0.0, max_keep=2)
    assert keep.tolist() == [0, 2]
    hard, hard_scores = postprocess.merge(boxes, scores, classes, "hard", 0.5, 0.5, 0.05, 10)
    assert hard.tolist() == [0, 2, 3] and hard_scores.tolist() == pytest.approx([0.9, 0.7, 0.6])


@pytest.mark.parametrize("height,width,size,overlap", [(750, 1000, 500, 0.25), (1000, 750, 400, 0.5),
                                                       (300, 200, 500, 0.25), (256, 256, 128, 0.0)])
def test_windows_cover_the_image_with_equal_overlapping_tiles(height, width, size, overlap):
    from shelfdet.core import postprocess

    tiles = postprocess.windows(height, width, size, overlap)
    covered = np.zeros((height, width), dtype=bool)
    shapes = {(y1 - y0, x1 - x0) for x0, y0, x1, y1 in tiles}
    assert shapes == {(min(size, height), min(size, width))}
    for x0, y0, x1, y1 in tiles:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    xs = sorted({t[0] for t in tiles})
    if len(xs) > 1:
        assert min(min(size, width) - (b - a) for a, b in zip(xs, xs[1:])) >= int(size * overlap)


def test_boxes_cut_by_an_inner_tile_edge_are_dropped_image_borders_kept():
    import torch

    from shelfdet.core import postprocess

    tile = (100, 0, 200, 100)  # inner left and right edges, image border on top, inner bottom
    boxes = torch.tensor([[100, 10, 130, 40],    # cut by the left edge
                          [150, 0, 180, 30],     # on the image's top border: whole
                          [120, 20, 160, 60],    # inside
                          [170, 70, 200, 90],    # cut by the right edge
                          [120, 80, 140, 100]],  # cut by the bottom edge
                         dtype=torch.float32)
    assert postprocess.uncut(boxes, tile, height=300, width=400).tolist() == [False, True, True, False, False]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from _serving_support import make_tiny_model

    return make_tiny_model(tmp_path_factory.getbasetemp())


@pytest.mark.parametrize("nms", ["hard", "soft"])
def test_the_tiled_merge_drops_boxes_cut_by_an_inner_tile_edge(tiny_model_dir, nms):
    """Through Detector: the model's own per-tile boxes, recorded as it returns them, against the merged set."""
    import torch

    from _serving_support import shelf_image
    from shelfdet.core import postprocess
    from shelfdet.core.inference import Detector

    size, overlap = 64, 0.25
    det = Detector.from_model_dir(tiny_model_dir, "cpu", {"nms": nms, "tile-size": str(size),
                                                          "tile-overlap": str(overlap)})
    image = np.ascontiguousarray(shelf_image(3, 160, 120)[:, :, ::-1])
    height, width = image.shape[:2]
    tiles = postprocess.windows(height, width, size, overlap)
    outputs = []
    hook = det.model.register_forward_hook(lambda module, inputs, out: outputs.append(
        [o["instances"].to("cpu") for o in out]))
    try:
        merged = det.raw([image])[0]
    finally:
        hook.remove()
    (full,), per_tile = outputs
    assert len(per_tile) == len(tiles) > 1
    candidates = [(full.pred_boxes.tensor, full.scores, full.pred_classes, torch.ones(len(full), dtype=torch.bool))]
    for tile, inst in zip(tiles, per_tile):
        boxes = inst.pred_boxes.tensor + torch.tensor([tile[0], tile[1], tile[0], tile[1]], dtype=torch.float32)
        candidates.append((boxes, inst.scores, inst.pred_classes, postprocess.uncut(boxes, tile, height, width)))
    boxes, scores, classes, is_whole = (torch.cat(c) for c in zip(*candidates))
    fragments = boxes[~is_whole]
    from_tiles = boxes[len(full):][is_whole[len(full):]]

    def among(rows, pool):
        return [bool((pool == row).all(1).any()) for row in rows]

    out = merged.pred_boxes.tensor
    assert len(out) > 0
    cut = sum(among(out, fragments))
    assert not cut, "{} box(es) cut by an inner tile edge survived the merge".format(cut)
    assert any(among(out, from_tiles)), "no whole box from a tile in the merge: the tiles are not merged at all"
    # Not vacuous: merged unfiltered, these candidates keep some fragment.
    keep, _ = postprocess.merge(boxes, scores, classes, nms, det.nms_thresh, det.options.soft_nms_sigma,
                                det.min_score, det.max_detections)
    assert not is_whole[keep].all()


# ---- on a trained model ---------------------------------------------------------

@pytest.fixture(scope="module")
def auto_model(tiny_dataset, tmp_path_factory):
    """A real short training with anchors=auto, Soft-NMS and tiles (so its validation and final
    evaluation run them); its model folder and training log."""
    from conftest import make_ml_root, run_train

    root = make_ml_root(tmp_path_factory.mktemp("dense") / "job", tiny_dataset, num_iter="6", eval_period="0",
                        anchors="auto", nms="soft", tile_size="96")
    proc = run_train(root, env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "model", proc.stdout + proc.stderr


def test_anchors_auto_are_fitted_at_training_start_and_saved_with_the_model(auto_model, tiny_dataset):
    import yaml

    from shelfdet.core import anchors, catalog

    model_dir, log = auto_model
    cfg = yaml.safe_load((model_dir / "config.yaml").read_text())
    dicts, _ = catalog.load_manifest(str(tiny_dataset / "annotations" / "training.manifest"),
                                     str(tiny_dataset / "training"))
    hp = json.loads((model_dir / "hyperparameters.json").read_text())
    assert hp["anchors"] == "auto" and hp["nms"] == "soft" and hp["tile-size"] == "96"
    shapes = anchors.box_shapes(dicts, int(hp["min-size"]), int(hp["max-size"]))
    expected = anchors.fit(shapes, [[32], [64], [128], [256], [512]], [4, 8, 16, 32, 64], 3)
    gen = cfg["MODEL"]["ANCHOR_GENERATOR"]
    assert gen["SIZES"] == expected.sizes and gen["ASPECT_RATIOS"] == [expected.aspect_ratios]
    assert gen["SIZES"] != [[32], [64], [128], [256], [512]]
    assert "anchors=auto: sizes {}".format(expected.sizes) in log


def test_make_evaluate_on_the_model_reproduces_the_training_runs_evaluation(auto_model, tiny_dataset, tmp_path):
    """Both run the model's own Soft-NMS and tiles; the count threshold is fit on validation in both."""
    model_dir, _ = auto_model
    reference = json.loads((model_dir / "metrics.json").read_text())
    proc = subprocess.run(["make", "-s", "evaluate", "MODEL_DIR=" + str(model_dir),
                           "DATA_DIR=" + str(tiny_dataset), "EVAL_OUT=" + str(tmp_path / "ev")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "threshold fit on validation" in proc.stdout
    got = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for k in STATS:
        assert got[k] == pytest.approx(reference[k], abs=1e-6), k
    assert len(list((tmp_path / "ev").glob("*.jpg.json"))) == reference["eval_images"]


def _readable(folder: Path) -> list:
    """(name, BGR image) of the folder's JPEGs that decode (the synthetic test split has a truncated one)."""
    from shelfdet.core import photos

    out = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".jpg"):
            try:
                out.append((name, photos.read(str(folder / name))))
            except photos.ImageDecodeError:
                pass
    assert out
    return out


def _test_images(tiny_dataset) -> list:
    return [image for _, image in _readable(tiny_dataset / "test")]


def test_a_tile_larger_than_the_image_is_the_plain_model(auto_model, tiny_dataset):
    from shelfdet.core.inference import Detector

    model_dir, _ = auto_model
    plain = Detector.from_model_dir(str(model_dir), "cpu", PLAIN)
    tiled = Detector.from_model_dir(str(model_dir), "cpu", dict(PLAIN, **{"tile-size": "4096"}))
    assert not tiled.options.plain
    for image in _test_images(tiny_dataset):
        a, b = plain.predict([image])[0], tiled.predict([image])[0]
        assert a["scores"] and a == b


def test_tiles_find_each_copy_of_a_mosaic_where_the_copy_is_a_tile(auto_model, tiny_dataset):
    """A 2x2 mosaic of one square crop, tiles exactly the copies: each copy's best whole boxes come back
    at its place (the tile's input is the crop's, pixel for pixel)."""
    from shelfdet.core.inference import Detector

    model_dir, _ = auto_model
    crop = np.ascontiguousarray(_test_images(tiny_dataset)[0][:128, :128])
    mosaic = np.concatenate([np.concatenate([crop, crop], 1)] * 2, 0)
    plain = Detector.from_model_dir(str(model_dir), "cpu", PLAIN).predict([crop])[0]
    tiles = dict(PLAIN, **{"tile-size": "128", "tile-overlap": "0"})
    tiled = Detector.from_model_dir(str(model_dir), "cpu", tiles).predict([mosaic])[0]
    inner = [b for b in plain["pred_boxes"] if min(b[0], b[1]) > 3 and max(b[2], b[3]) < 125][:5]
    assert inner, "the model finds no box away from the crop's edges: the test would be vacuous"
    got = np.array(tiled["pred_boxes"])
    assert len(got) <= tiled_max(model_dir)
    for dx in (0, 128):
        for dy in (0, 128):
            for b in inner:
                shifted = np.array(b) + [dx, dy, dx, dy]
                assert _best_iou(shifted, got) >= 0.5, (b, dx, dy)


def tiled_max(model_dir: Path) -> int:
    return int(json.loads((model_dir / "hyperparameters.json").read_text())["det-per-img"])


def _max_pair_iou(boxes: list) -> float:
    b = np.array(boxes)
    return max(np.max(np.delete(_ious(b[i], b), i)) for i in range(len(b)))


def _ious(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def _best_iou(box: np.ndarray, boxes: np.ndarray) -> float:
    return float(np.max(_ious(box, boxes)))


def test_soft_nms_keeps_the_best_box_and_orders_by_decayed_score(auto_model, tiny_dataset):
    from shelfdet.core.inference import Detector, Options

    model_dir, _ = auto_model
    hard = Detector.from_model_dir(str(model_dir), "cpu", PLAIN)
    capped = Detector.from_model_dir(str(model_dir), "cpu", {"nms": "soft", "tile-size": "0", "det-per-img": "40"})
    assert capped.max_detections == 40
    # The same model object as `hard`: Soft-NMS turns its NMS off for a call, then back on.
    soft = Detector.from_model(hard.cfg, hard.model, hard.class_names, Options(nms="soft"))
    for image in _test_images(tiny_dataset):
        h = hard.predict([image])[0]
        s, c = soft.predict([image])[0], capped.predict([image])[0]
        assert s["pred_boxes"][0] == h["pred_boxes"][0] and s["scores"][0] == pytest.approx(h["scores"][0])
        assert s["scores"] == sorted(s["scores"], reverse=True) and min(s["scores"]) >= soft.min_score
        # Hard NMS leaves no pair above its IoU threshold; Soft-NMS keeps such boxes, with decayed scores.
        assert _max_pair_iou(h["pred_boxes"]) <= hard.nms_thresh + 1e-6 < _max_pair_iou(s["pred_boxes"])
        assert c["scores"] == s["scores"][:40] and c["pred_boxes"] == s["pred_boxes"][:40]
        assert hard.predict([image])[0] == h, "the model's own NMS is back after a Soft-NMS call"


def test_served_model_applies_shelfdet_infer(auto_model, tiny_dataset, tmp_path):
    import httpx

    from _serving_support import ServerProcess
    from shelfdet.core.inference import Detector

    model_dir, _ = auto_model
    infer = "--tile-size 64 --det-per-img 50"  # over the model's own soft NMS and 96 px tiles
    name = _readable(tiny_dataset / "test")[0][0]
    data = (tiny_dataset / "test" / name).read_bytes()
    server = ServerProcess(str(model_dir), tmp_path / "server.log", env={"OMP_NUM_THREADS": "1",
                                                                          "SHELFDET_INFER": infer})
    try:
        server.wait_ready()
        r = httpx.post(server.url + "/invocations", content=data, headers={"Content-Type": "image/jpeg"}, timeout=120)
        assert r.status_code == 200, r.text
        assert "max 50 detections, nms soft, tiles 64 px, overlap 0.25" in server.log()
    finally:
        assert server.stop() == 0
    import torch

    from shelfdet.core import photos

    torch.set_num_threads(1)
    direct = Detector.from_model_dir(str(model_dir), "cpu", {"tile-size": "64", "det-per-img": "50"})
    expected = direct.predict([photos.decode(data, name)])[0]
    served = r.json()
    served = served[0] if isinstance(served, list) else served
    assert len(served["scores"]) == len(expected["scores"]) > 0
    assert np.allclose(served["pred_boxes"], expected["pred_boxes"], atol=1e-3)


@pytest.mark.parametrize("text,needle", [("--lr 0.1", "'lr' is a training hyperparameter"),
                                         ("--tile-size big", "'tile-size': 'big' is not an integer"),
                                         ("--nms fuzzy", "'nms': 'fuzzy' is not one of hard, soft"),
                                         ("tile-size", "cannot read 'tile-size'")])
def test_bad_infer_is_refused_where_it_is_given(text, needle):
    from shelfdet.core.hyperparameters import HyperparameterError, parse_inference
    from shelfdet.launch import aws, deploy
    from shelfdet.serving import limits

    with pytest.raises(HyperparameterError, match="INFER: "):
        parse_inference(text)
    with pytest.raises(limits.LimitError) as err:
        limits.settings_from_env({"SHELFDET_INFER": text})
    assert "SHELFDET_INFER" in str(err.value) and needle in str(err.value)
    with pytest.raises(aws.LaunchError) as err:
        deploy.environment(["SHELFDET_INFER=" + text])
    assert needle in str(err.value)


def test_predict_refuses_infer_with_an_endpoint(tmp_path):
    image = tmp_path / "x.jpg"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    proc = subprocess.run([sys.executable, "-m", "shelfdet", "predict", "--image", str(image), "--endpoint", "e",
                           "--infer=--nms soft"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "shared")))
    assert proc.returncode == 2 and "INFER applies to a local model" in proc.stderr
