"""Error pictures: greedy matching at IoU 0.5 and the PNGs that show TP, FP and FN boxes."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from shelfdet import evaluation, visualize

GT = [
    [0, 0, 10, 10],  # g0
    [20, 0, 30, 10],  # g1: only a prediction below the score threshold
    [40, 0, 50, 10],  # g2
    [60, 0, 70, 10],  # g3
    [80, 0, 90, 10],  # g4
    [82, 0, 92, 10],  # g5: p7 prefers g4 (IoU 1 over 0.67), so g5 is missed
    [100, 0, 120, 10],  # g6: p8 inside it covers exactly half (IoU 0.5)
]
PRED = [
    ([0, 0, 10, 10], 0.9),  # p0 TP g0
    ([1, 0, 11, 10], 0.8),  # p1 FP: a duplicate of g0, already taken
    ([20, 0, 30, 10], 0.4),  # p2 below 0.5: neither
    ([45, 0, 55, 10], 0.7),  # p3 FP: IoU 1/3 with g2
    ([40, 0, 50, 10], 0.6),  # p4 TP g2
    ([60, 0, 70, 10], 0.55),  # p5 FP: the exact box, but p6 scores higher and takes g3
    ([61, 0, 71, 10], 0.95),  # p6 TP g3 (IoU 0.82)
    ([80, 0, 90, 10], 0.85),  # p7 TP g4
    ([100, 0, 110, 10], 0.65),  # p8 TP g6 at IoU exactly 0.5
]


def _match(score_threshold):
    return evaluation.match_boxes(GT, [b for b, _ in PRED], [s for _, s in PRED], score_threshold)


def test_greedy_matching_on_hand_made_boxes():
    m = _match(0.5)
    assert m.tp.tolist() == [0, 4, 6, 7, 8]
    assert m.fp.tolist() == [1, 3, 5]
    assert m.fn.tolist() == [1, 5]
    m = _match(0.3)  # p2 now counts and finds g1
    assert m.tp.tolist() == [0, 2, 4, 6, 7, 8] and m.fp.tolist() == [1, 3, 5] and m.fn.tolist() == [5]


def test_matching_with_nothing_on_one_side():
    m = evaluation.match_boxes([], [[0, 0, 5, 5]], [0.9])
    assert (m.tp.tolist(), m.fp.tolist(), m.fn.tolist()) == ([], [0], [])
    m = evaluation.match_boxes([[0, 0, 5, 5]], [], [])
    assert (m.tp.tolist(), m.fp.tolist(), m.fn.tolist()) == ([], [], [0])


def title_counts(png):
    title = Image.open(str(png)).text["Title"]
    m = re.search(r"TP (\d+)  FP (\d+)  FN (\d+)  \(score >= ([0-9.]+)\)", title)
    assert m, title
    return tuple(int(x) for x in m.groups()[:3]), float(m.group(4))


def _near(rgb, colour, tol=45):
    target = 0.9 * np.asarray(colour) * 255  # drawn at alpha 0.9 over black
    return np.all(np.abs(rgb.astype(float) - target) < tol, axis=-1)


def test_png_title_counts_and_colours(tmp_path):
    # Three boxes far apart on a black image: one matched, one false positive, one miss.
    image = np.zeros((256, 320, 3), np.uint8)
    gt = [[20, 40, 100, 120], [200, 150, 290, 230]]
    boxes = [[22, 42, 100, 120], [200, 30, 290, 110]]
    scores = [0.9, 0.8]
    png = tmp_path / "shelf_3.png"
    match, title = visualize.draw_errors(image, gt, boxes, scores, str(png), 0.42, "shelf_3.jpg")
    expected = evaluation.match_boxes(gt, boxes, scores, 0.42)
    counts, thr = title_counts(png)
    assert counts == (len(expected.tp), len(expected.fp), len(expected.fn)) == (1, 1, 1)
    assert thr == 0.42 and title.startswith("shelf_3.jpg  TP 1  FP 1  FN 1")

    rgb = np.asarray(Image.open(str(png)).convert("RGB"))
    band = int(np.argmax(rgb[:, 0].min(axis=1) < 128))  # the white title band ends where the black image starts
    assert band > 0
    scale = rgb.shape[1] / image.shape[1]
    below = rgb[band:]
    for colour, box in ((visualize.TP_COLOUR, boxes[0]), (visualize.FP_COLOUR, boxes[1]),
                        (visualize.FN_COLOUR, gt[1])):
        ys, xs = np.nonzero(_near(below, colour))
        assert len(xs) > 100, "colour {} hardly appears in the picture".format(colour)
        # Drawn where that box is: the outline's pixels centre on the box.
        cx, cy = xs.mean() / scale, ys.mean() / scale
        assert abs(cx - (box[0] + box[2]) / 2) < 3 and abs(cy - (box[1] + box[3]) / 2) < 3, (colour, cx, cy)


def test_visualize_and_training_pngs_use_the_threshold(tmp_path, capsys):
    from _serving_support import shelf_image, write_dataset
    from shelfdet.catalog import load_manifest
    from shelfdet.training import report

    write_dataset(tmp_path / "data", {"shelf.jpg": shelf_image(1, 160, 40)}, {"shelf.jpg": GT})
    preds = tmp_path / "preds"
    preds.mkdir()
    body = {"pred_boxes": [b for b, _ in PRED], "scores": [s for _, s in PRED], "pred_classes": [0] * len(PRED)}
    (preds / "shelf.jpg.json").write_text(json.dumps(body))
    (preds / "metrics.json").write_text(json.dumps({"count_threshold": 0.3}))  # as make evaluate writes it
    args = ["--data-dir", str(tmp_path / "data"), "--channel", "test", "--predictions", str(preds)]

    assert visualize.main(args + ["--out", str(tmp_path / "a")]) == 0
    assert title_counts(tmp_path / "a" / "shelf.png") == ((6, 3, 1), 0.3)  # count_threshold read from metrics.json
    assert "TP 6  FP 3  FN 1" in capsys.readouterr().out
    assert visualize.main(args + ["--out", str(tmp_path / "b"), "--score-threshold", "0.5"]) == 0
    assert title_counts(tmp_path / "b" / "shelf.png") == ((5, 3, 2), 0.5)
    (preds / "metrics.json").unlink()
    assert visualize.main(args + ["--out", str(tmp_path / "c")]) == 0
    assert title_counts(tmp_path / "c" / "shelf.png")[1] == visualize.DEFAULT_SCORE_THRESHOLD

    dicts, _ = load_manifest(str(tmp_path / "data" / "annotations" / "test.manifest"), str(tmp_path / "data" / "test"))
    written = report.prediction_pngs(dicts, {"shelf.jpg": body}, str(tmp_path / "plots"), score_threshold=0.3)
    assert [title_counts(p) for p in written] == [((6, 3, 1), 0.3)]
