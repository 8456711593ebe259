"""pycocotools scoring: our summary agrees with pycocotools' own where both are defined."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from shelfdet.core import evaluation


def _scene(rng, n_images=6, n_boxes=40, noise=3.0, misses=0.2):
    gt, preds = [], {}
    for i in range(n_images):
        name = "img_{}.jpg".format(i)
        anns, boxes, scores = [], [], []
        for _ in range(n_boxes):
            x, y = rng.uniform(0, 500, 2)
            w, h = rng.uniform(8, 120, 2)
            anns.append({"bbox": [x, y, w, h], "category_id": 0})
            if rng.random() > misses:
                j = rng.normal(0, noise, 4)
                boxes.append([x + j[0], y + j[1], x + w + j[2], y + h + j[3]])
                scores.append(float(rng.random()))
        for _ in range(n_boxes // 4):  # false positives
            x, y = rng.uniform(0, 500, 2)
            boxes.append([x, y, x + 30, y + 30])
            scores.append(float(rng.random()) * 0.5)
        gt.append({"file_name": "/x/" + name, "width": 640, "height": 640, "annotations": anns})
        preds[name] = {"pred_boxes": boxes, "scores": scores, "pred_classes": [0] * len(boxes)}
    return gt, preds


@pytest.mark.parametrize("fast", [False, True], ids=["pycocotools", "faster-coco-eval"])
def test_summary_matches_pycocotools_at_standard_maxdets(fast):
    gt, preds = _scene(np.random.default_rng(0))
    ours = evaluation.score(gt, preds, ["SKU"], max_dets=100, fast=fast)
    # Reference: pycocotools' own summarize() with its standard [1, 10, 100].
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco = COCO()
    images = [{"id": i + 1, "width": 640, "height": 640} for i in range(len(gt))]
    anns = [{"id": k + 1, "image_id": i + 1, "category_id": 1, "bbox": a["bbox"], "area": a["bbox"][2] * a["bbox"][3],
             "iscrowd": 0} for i, d in enumerate(gt) for k, a in [(1000 * i + j, a) for j, a in enumerate(d["annotations"])]]
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "SKU"}]}
    dets = [{"image_id": i + 1, "category_id": 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s}
            for i, d in enumerate(gt) for b, s in zip(preds["img_{}.jpg".format(i)]["pred_boxes"],
                                                       preds["img_{}.jpg".format(i)]["scores"])]
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ref = {k: ev.stats[i] for k, i in evaluation.COCO_STATS_INDEX.items()}
    for key in evaluation.STAT_NAMES:
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key
    assert 0.2 < ours["AP"] < 0.95


def test_fast_and_reference_agree_at_300():
    gt, preds = _scene(np.random.default_rng(3), n_images=4, n_boxes=150, misses=0.1)
    a = evaluation.score(gt, preds, ["SKU"], max_dets=300, fast=True)
    b = evaluation.score(gt, preds, ["SKU"], max_dets=300, fast=False)
    for key in evaluation.STAT_NAMES:
        assert a[key] == pytest.approx(b[key], abs=1e-9), key


def test_max_dets_300_counts_beyond_100():
    gt, preds = _scene(np.random.default_rng(1), n_images=3, n_boxes=200, misses=0.0, noise=1.0)
    at100 = evaluation.score(gt, preds, ["SKU"], max_dets=100)
    at300 = evaluation.score(gt, preds, ["SKU"], max_dets=300)
    assert at300["AR"] > at100["AR"] + 0.2  # 200 objects per image: a 100 cap hides half
    assert at300["AP"] > at100["AP"]


def test_no_detections_scores_zero():
    gt, _ = _scene(np.random.default_rng(2), n_images=2)
    assert evaluation.score(gt, {}, ["SKU"])["AP"] == 0.0
