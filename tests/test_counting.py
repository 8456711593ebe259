"""Per-image count error: MAE, relative error and the threshold that minimises the MAE."""
from __future__ import annotations

import json

import numpy as np
import pytest

from shelfdet.commands import evaluate as evaluate_command
from shelfdet.core import evaluation

# Hand-made scene. Image -> (ground-truth boxes, predicted scores; None: no prediction file).
SCENE = {
    "a.jpg": (3, [0.9, 0.8, 0.7, 0.2]),
    "b.jpg": (1, [0.95, 0.6]),
    "c.jpg": (2, [0.85, 0.75, 0.65, 0.55]),
    "d.jpg": (0, None),  # an empty shelf nothing was predicted on: always right
    "e.jpg": (2, [0.3]),  # always wrong by 1 or 2
}
# Counts at 0.7: a 3, b 1, c 2, d 0, e 0 -> errors 0 0 0 0 2: MAE 2/5, relative (2/2)/5.
# Neighbours are worse: 0.75 -> a 2 (errors 1+0+0+0+2 = 3), 0.65 -> c 3 (0+0+1+0+2 = 3).
BEST = 0.7
BEST_MAE = 0.4
BEST_REL = 0.2
# At 0.5: a 3, b 2, c 4, d 0, e 0 -> errors 0 1 2 0 2: MAE 5/5, relative (0/3 + 1/1 + 2/2 + 0/1 + 2/2)/5.
AT_HALF_MAE = 1.0
AT_HALF_REL = 0.6


def scene(spec=SCENE):
    gt, preds = [], {}
    for i, (name, (n_gt, scores)) in enumerate(spec.items()):
        anns = [{"bbox": [10.0 + 30 * k, 10.0, 20.0, 20.0], "category_id": 0} for k in range(n_gt)]
        gt.append({"file_name": "/x/" + name, "width": 400, "height": 100, "annotations": anns})
        if scores is not None:
            boxes = [[10.0 + 30 * k, 50.0, 30.0 + 30 * k, 70.0] for k in range(len(scores))]
            preds[name] = {"pred_boxes": boxes, "scores": scores, "pred_classes": [0] * len(scores)}
    return gt, preds


def test_hand_made_scene_best_threshold_and_errors():
    gt, preds = scene()
    assert evaluation.fit_count_threshold(gt, preds) == BEST
    assert evaluation.count_errors(gt, preds, BEST) == pytest.approx((BEST_MAE, BEST_REL), abs=1e-12)
    assert evaluation.count_errors(gt, preds, 0.5) == pytest.approx((AT_HALF_MAE, AT_HALF_REL), abs=1e-12)


def test_score_reports_counts_fit_or_given():
    gt, preds = scene()
    fit = evaluation.score(gt, preds, ["SKU"], 300, fast=False)
    assert fit["count_threshold"] == BEST
    assert fit["count_mae"] == pytest.approx(BEST_MAE) and fit["count_rel_error"] == pytest.approx(BEST_REL)
    given = evaluation.score(gt, preds, ["SKU"], 300, fast=False, count_threshold=0.5)
    assert given["count_threshold"] == 0.5
    assert given["count_mae"] == pytest.approx(AT_HALF_MAE) and given["count_rel_error"] == pytest.approx(AT_HALF_REL)


def test_predicting_nothing_is_best_when_every_score_overcounts():
    gt, preds = scene({"a.jpg": (0, [0.9, 0.4]), "b.jpg": (1, [0.8, 0.7, 0.6])})
    # Counting nothing: errors 0 + 1; at 0.9 (the best score): 1 + 1.
    t = evaluation.fit_count_threshold(gt, preds)
    assert t > 0.9
    assert evaluation.count_errors(gt, preds, t) == pytest.approx((0.5, 0.5))


@pytest.mark.parametrize("seed", range(5))
def test_fit_equals_brute_force_over_every_threshold(seed):
    # Scores rounded to 0.05 so ties within and across images are common.
    rng = np.random.default_rng(seed)
    spec = {}
    for i in range(12):
        n_gt = int(rng.integers(0, 15))
        n_pred = int(rng.integers(0, 25))
        spec["img_{}.jpg".format(i)] = (n_gt, list(np.round(rng.random(n_pred) * 20) / 20))
    gt, preds = scene(spec)
    every = sorted({s for _, scores in spec.values() for s in scores} | {2.0})
    brute = min(evaluation.count_errors(gt, preds, t)[0] for t in every)
    t = evaluation.fit_count_threshold(gt, preds)
    assert evaluation.count_errors(gt, preds, t)[0] == pytest.approx(brute, abs=1e-12)


def test_make_evaluate_reports_counts_and_says_where_the_threshold_comes_from(tmp_path, capsys):
    from _serving_support import shelf_image, write_dataset

    spec = {k: v for k, v in SCENE.items() if v[0] > 0}  # manifests hold images with boxes
    gt, preds = scene(spec)
    manifest = write_dataset(tmp_path / "data", {n: shelf_image(i, 400, 100) for i, n in enumerate(spec)},
                             {n: [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in d["annotations"])]
                              for n, d in zip(spec, gt)})
    pred_dir = tmp_path / "preds"
    pred_dir.mkdir()
    for name, body in preds.items():
        (pred_dir / (name + ".json")).write_text(json.dumps(body))
    # a, b, c, e without d: at 0.7 errors 0 0 0 2 -> MAE 0.5.
    assert evaluate_command.main(["--predictions", str(pred_dir), "--manifest", str(manifest)]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((pred_dir / "metrics.json").read_text())
    assert metrics["count_threshold"] == BEST and metrics["count_mae"] == pytest.approx(0.5)
    assert metrics["count_threshold_fit"] == "these predictions"
    assert "fit on these same predictions" in out
    assert evaluate_command.main(["--predictions", str(pred_dir), "--manifest", str(manifest),
                            "--count-threshold", "0.5"]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((pred_dir / "metrics.json").read_text())
    # At 0.5 without d: errors 0 1 2 2 -> MAE 5/4.
    assert metrics["count_threshold"] == 0.5 and metrics["count_mae"] == pytest.approx(1.25)
    assert metrics["count_threshold_fit"] == "given" and "threshold given" in out
