"""Ground-truth and predicted boxes drawn on photos by Detectron2 (``make visualize``, ``make predict``'s PNG).

Dense scenes have ~150 boxes per photo: boxes are drawn without labels.
Ground truth alone is green. With predictions, the picture shows errors at a
score threshold: matched predictions (true positives) green, false positives
red, missed ground truth (false negatives) blue, with the counts in the title.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np


GT_COLOUR = (0.1, 0.85, 0.1)
PRED_COLOUR = (0.95, 0.15, 0.1)
MAX_SCORE_LABELS = 40  # more labels than this hide the photo
# Error pictures. Blue for misses stays apart from both green and red for red-green colour blindness.
TP_COLOUR = GT_COLOUR
FP_COLOUR = PRED_COLOUR
FN_COLOUR = (0.15, 0.55, 1.0)
DEFAULT_SCORE_THRESHOLD = 0.5


def draw(photo_bgr: np.ndarray, boxes: Sequence[Sequence[float]], out_png: str,
         scores: Optional[Sequence[float]] = None, gt_boxes: Optional[Sequence[Sequence[float]]] = None) -> str:
    """Draws XYXY pixel ``boxes`` (predictions, red) and ``gt_boxes`` (green) on the photo; writes out_png."""
    from detectron2.utils.visualizer import Visualizer

    vis = Visualizer(photo_bgr[:, :, ::-1], scale=max(1.0, 640.0 / max(photo_bgr.shape[:2])))
    width = max(0.5, vis.output.scale * 0.6)
    for b in gt_boxes or []:
        vis.draw_box(list(b), edge_color=GT_COLOUR, line_style="-", alpha=0.9)
    label = scores is not None and len(boxes) <= MAX_SCORE_LABELS
    for k, b in enumerate(boxes):
        vis.draw_box(list(b), edge_color=PRED_COLOUR, alpha=0.9)
        if label and scores is not None:
            vis.draw_text("{:.2f}".format(float(scores[k])), (b[0], b[1]), color=PRED_COLOUR,
                          horizontal_alignment="left", font_size=7 * width)
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    vis.output.save(out_png)
    return out_png


def error_title(name: str, match: Any, score_threshold: float) -> str:
    return "{}  TP {}  FP {}  FN {}  (score >= {:.2f})".format(name, len(match.tp), len(match.fp), len(match.fn),
                                                              score_threshold)


def draw_errors(photo_bgr: np.ndarray, gt_boxes: Sequence[Sequence[float]], boxes: Sequence[Sequence[float]],
                scores: Sequence[float], out_png: str, score_threshold: float, name: str) -> Tuple[Any, str]:
    """Draws true positives, false positives and misses of the predictions scoring >= ``score_threshold``
    (matched as :func:`shelfdet.core.evaluation.match_boxes`), a title with their counts and a legend; writes
    out_png (the title also goes into its PNG ``Title`` text). Returns (match, title).
    """
    from shelfdet.core.evaluation import match_boxes

    match = match_boxes(gt_boxes, boxes, scores, score_threshold)
    title = error_title(name, match, score_threshold)
    from matplotlib.lines import Line2D

    vis, down, row, points = _titled(photo_bgr, title, rows=2)
    # Errors drawn last, on top: a duplicate detection would otherwise hide under its match.
    for k in match.tp:
        vis.draw_box(down(boxes[k]), edge_color=TP_COLOUR, alpha=0.9)
    for j in match.fn:
        vis.draw_box(down(gt_boxes[j]), edge_color=FN_COLOUR, alpha=0.9)
    for k in match.fp:
        vis.draw_box(down(boxes[k]), edge_color=FP_COLOUR, alpha=0.9)
    handles = [Line2D([], [], color=c, linewidth=max(2.0, points / 4)) for c in (TP_COLOUR, FP_COLOUR, FN_COLOUR)]
    # Axes fractions count from the bottom; the second row's centre is 1.5 rows below the top.
    vis.output.ax.legend(handles, ["matched (TP)", "false positive (FP)", "missed (FN)"], loc="center left",
                         bbox_to_anchor=(0.0, 1.0 - 1.5 * row / (photo_bgr.shape[0] + 2 * row)), ncol=3,
                         fontsize=points * 0.85, frameon=False, borderaxespad=0.0, handlelength=1.5, columnspacing=1.2)
    _save_titled(vis, out_png, title)
    return match, title


def _titled(photo_bgr: np.ndarray, title: str, rows: int) -> Tuple[Any, Any, int, float]:
    """A Visualizer on the photo under a white band of ``rows`` text rows, the title in the first, so
    the text hides no box. Returns (visualizer, box shifter into the band's frame, row height, font points)."""
    from detectron2.utils.visualizer import Visualizer

    h, w = photo_bgr.shape[:2]
    scale = max(1.0, 640.0 / max(h, w))
    # Sizes are in photo pixels (the Visualizer scales them).
    row = int(np.ceil(max(20.0, 0.03 * max(h, w) * scale) / scale))
    band = rows * row
    canvas = np.concatenate([np.full((band, w, 3), 255, dtype=np.uint8), photo_bgr[:, :, ::-1]], axis=0)
    vis = Visualizer(canvas, scale=scale)

    def down(b: Sequence[float]) -> List[float]:
        return [float(b[0]), float(b[1]) + band, float(b[2]), float(b[3]) + band]

    points = 0.55 * row * scale * 72.0 / vis.output.dpi  # font size from the row's height in output pixels
    vis.output.ax.text(0.3 * row, 0.5 * row, title, fontsize=points, color="black", va="center", ha="left",
                       family="sans-serif")
    return vis, down, row, points


def _save_titled(vis: Any, out_png: str, title: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    # VisImage.save is fig.savefig(path); saved here to carry the title as PNG text too.
    vis.output.fig.savefig(out_png, metadata={"Title": title})


def draw_counted(photo_bgr: np.ndarray, boxes: Sequence[Sequence[float]], scores: Sequence[float], out_png: str,
                 score_threshold: float, name: str, source: str) -> str:
    """The boxes scoring >= ``score_threshold`` (the count a user reads), the count in the title;
    ``source`` says where the threshold came from. Returns the title."""
    keep = [k for k, s in enumerate(scores) if float(s) >= score_threshold]
    title = "{}  {} boxes at score >= {:.2f} ({}; {} in the JSON)".format(name, len(keep), score_threshold, source,
                                                                          len(scores))
    vis, down, _, _ = _titled(photo_bgr, title, rows=1)
    for k in keep:
        vis.draw_box(down(boxes[k]), edge_color=PRED_COLOUR, alpha=0.9)
    _save_titled(vis, out_png, title)
    return title


def find_prediction(pred_dir: str, photo_name: str) -> Optional[str]:
    """``<photo>.json`` / ``<photo>.out`` (batch transform), with or without the photo's extension."""
    stem = os.path.splitext(photo_name)[0]
    for name in (photo_name + ".json", photo_name + ".out", stem + ".json", stem + ".out"):
        path = os.path.join(pred_dir, name)
        if os.path.isfile(path):
            return path
    return None


def read_prediction(path: str, min_score: float = float("-inf")) -> Dict[str, List[Any]]:
    try:
        with open(path) as f:
            pred = json.load(f)
        boxes, scores = pred["pred_boxes"], pred.get("scores") or [1.0] * len(pred["pred_boxes"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError("{}: not a prediction JSON with pred_boxes ({})".format(path, err)) from None
    keep = [k for k, s in enumerate(scores) if float(s) >= min_score]
    return {"boxes": [boxes[k] for k in keep], "scores": [float(scores[k]) for k in keep]}


def default_score_threshold(pred_dir: str) -> Tuple[float, str]:
    """The count threshold ``make evaluate`` wrote next to the predictions, else the fixed default."""
    path = os.path.join(pred_dir, "metrics.json")
    try:
        with open(path) as f:
            return float(json.load(f)["count_threshold"]), "count_threshold of " + path
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_SCORE_THRESHOLD, "default"


def picture(record: Dict[str, Any], out_dir: str, predictions: Optional[str], score_threshold: Optional[float],
            warn: Callable[[str], None]) -> Tuple[str, str]:
    """One dataset record's PNG: its ground truth, or with a prediction file in ``predictions`` its errors at
    ``score_threshold``. Returns the PNG's path and what it shows; ``warn`` hears of a missing prediction."""
    from shelfdet.core import photos

    name = os.path.basename(record["file_name"])
    try:
        photo = photos.read(record["file_name"])  # JPEG and PNG only, upright, BGR: as training reads it
    except (OSError, photos.ImageDecodeError) as err:
        raise ValueError("{}: cannot read the image ({})".format(record["file_name"], err)) from None
    gt = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in record["annotations"])]
    out = os.path.join(out_dir, os.path.splitext(name)[0] + ".png")
    path = find_prediction(predictions, name) if predictions else None
    if predictions and path is None:
        warn("warning: no prediction for {} in {}".format(name, predictions))
    if path is None:
        return draw(photo, [], out, gt_boxes=gt), "{} ground-truth boxes".format(len(gt))
    pred = read_prediction(path)
    _, title = draw_errors(photo, gt, pred["boxes"], pred["scores"], out,
                           DEFAULT_SCORE_THRESHOLD if score_threshold is None else score_threshold, name)
    return out, title
