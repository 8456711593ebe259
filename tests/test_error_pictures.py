"""Error pictures: greedy matching at IoU 0.5 and the PNGs that show TP, FP and FN boxes."""
from __future__ import annotations

import json
import re

import numpy as np
from PIL import Image

from shelfdet.commands import visualize as visualize_command
from shelfdet.core import evaluation, visualize

GT = [
    [0, 0, 10, 10],  # g0
    [20, 0, 30, 10],  # g1: only a prediction below the score threshold
    [40, 0, 50, 10],  # g2
    [60, 0, 70, 10],  # g3
    [82, 0, 92, 10],  # g4: p7 overlaps it enough (IoU 0.67) but prefers g5 (IoU 1), so g4 is missed
    [80, 0, 90, 10],  # g5
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
    ([80, 0, 90, 10], 0.85),  # p7 TP g5
    ([100, 0, 110, 10], 0.65),  # p8 TP g6 at IoU exactly 0.5
]


def _match(score_threshold):
    return evaluation.match_boxes(GT, [b for b, _ in PRED], [s for _, s in PRED], score_threshold)


def test_greedy_matching_on_hand_made_boxes():
    m = _match(0.5)
    assert m.tp.tolist() == [0, 4, 6, 7, 8]
    assert m.fp.tolist() == [1, 3, 5]
    assert m.fn.tolist() == [1, 4]
    m = _match(0.3)  # p2 now counts and finds g1
    assert m.tp.tolist() == [0, 2, 4, 6, 7, 8] and m.fp.tolist() == [1, 3, 5] and m.fn.tolist() == [4]


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
    # On a black image, apart: 2 matched boxes, 1 false positive, 3 misses (distinct counts, so
    # a title that swaps two of them shows). Boxes of one kind have one size: their outlines'
    # pixels centre on the mean of their centres.
    image = np.zeros((256, 320, 3), np.uint8)
    tp_gt = [[20, 40, 80, 100], [100, 40, 160, 100]]
    fn_gt = [[20, 160, 80, 220], [100, 160, 160, 220], [200, 160, 260, 220]]
    tp_pred = [[22, 42, 80, 100], [102, 42, 160, 100]]
    fp_pred = [[200, 30, 290, 110]]
    gt, boxes, scores = tp_gt + fn_gt, tp_pred + fp_pred, [0.9, 0.8, 0.7]
    png = tmp_path / "shelf_3.png"
    match, title = visualize.draw_errors(image, gt, boxes, scores, str(png), 0.42, "shelf_3.jpg")
    expected = evaluation.match_boxes(gt, boxes, scores, 0.42)
    counts, thr = title_counts(png)
    assert counts == (len(expected.tp), len(expected.fp), len(expected.fn)) == (2, 1, 3)
    assert thr == 0.42 and title.startswith("shelf_3.jpg  TP 2  FP 1  FN 3")

    rgb = np.asarray(Image.open(str(png)).convert("RGB"))
    band = int(np.argmax(rgb[:, 0].min(axis=1) < 128))  # the white title band ends where the black image starts
    assert band > 0
    scale = rgb.shape[1] / image.shape[1]
    below = rgb[band:]
    for colour, kind in ((visualize.TP_COLOUR, tp_pred), (visualize.FP_COLOUR, fp_pred),
                         (visualize.FN_COLOUR, fn_gt)):
        ys, xs = np.nonzero(_near(below, colour))
        assert len(xs) > 100 * len(kind), "colour {} hardly appears in the picture".format(colour)
        # Drawn where those boxes are.
        cx, cy = xs.mean() / scale, ys.mean() / scale
        ex = np.mean([(b[0] + b[2]) / 2 for b in kind])
        ey = np.mean([(b[1] + b[3]) / 2 for b in kind])
        assert abs(cx - ex) < 3 and abs(cy - ey) < 3, (colour, cx, cy, ex, ey)


def test_visualize_and_training_pngs_use_the_threshold(tmp_path, capsys):
    from _serving_support import shelf_image, write_dataset
    from shelfdet.core.catalog import load_manifest
    from shelfdet.training import report

    write_dataset(tmp_path / "data", {"shelf.jpg": shelf_image(1, 160, 40)}, {"shelf.jpg": GT})
    preds = tmp_path / "preds"
    preds.mkdir()
    body = {"pred_boxes": [b for b, _ in PRED], "scores": [s for _, s in PRED], "pred_classes": [0] * len(PRED)}
    (preds / "shelf.jpg.json").write_text(json.dumps(body))
    (preds / "metrics.json").write_text(json.dumps({"count_threshold": 0.3}))  # as make evaluate writes it
    args = ["--data-dir", str(tmp_path / "data"), "--channel", "test", "--predictions", str(preds)]

    assert visualize_command.main(args + ["--out", str(tmp_path / "a")]) == 0
    assert title_counts(tmp_path / "a" / "shelf.png") == ((6, 3, 1), 0.3)  # count_threshold read from metrics.json
    assert "TP 6  FP 3  FN 1" in capsys.readouterr().out
    assert visualize_command.main(args + ["--out", str(tmp_path / "b"), "--score-threshold", "0.5"]) == 0
    assert title_counts(tmp_path / "b" / "shelf.png") == ((5, 3, 2), 0.5)
    (preds / "metrics.json").unlink()
    assert visualize_command.main(args + ["--out", str(tmp_path / "c")]) == 0
    assert title_counts(tmp_path / "c" / "shelf.png")[1] == visualize.DEFAULT_SCORE_THRESHOLD

    dicts, _ = load_manifest(str(tmp_path / "data" / "annotations" / "test.manifest"), str(tmp_path / "data" / "test"))
    written = report.prediction_pngs(dicts, {"shelf.jpg": body}, str(tmp_path / "plots"), score_threshold=0.3)
    assert [title_counts(p) for p in written] == [((6, 3, 1), 0.3)]
