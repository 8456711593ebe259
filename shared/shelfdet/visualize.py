"""``python -m shelfdet visualize``: PNGs of ground-truth (and predicted) boxes, drawn by Detectron2.

Dense scenes have ~150 boxes per image: boxes are drawn without labels,
ground truth in green, predictions in red with their score only when few.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import compat

GT_COLOUR = (0.1, 0.85, 0.1)
PRED_COLOUR = (0.95, 0.15, 0.1)
MAX_SCORE_LABELS = 40  # more labels than this hide the image


def draw(image_bgr: np.ndarray, boxes: Sequence[Sequence[float]], out_png: str,
         scores: Optional[Sequence[float]] = None, gt_boxes: Optional[Sequence[Sequence[float]]] = None) -> str:
    """Draws XYXY pixel ``boxes`` (predictions, red) and ``gt_boxes`` (green) on the image; writes out_png."""
    compat.apply()
    from detectron2.utils.visualizer import Visualizer

    vis = Visualizer(image_bgr[:, :, ::-1], scale=max(1.0, 640.0 / max(image_bgr.shape[:2])))
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


def find_prediction(pred_dir: str, image_name: str) -> Optional[str]:
    """``<image>.json`` / ``<image>.out`` (batch transform), with or without the image's extension."""
    stem = os.path.splitext(image_name)[0]
    for name in (image_name + ".json", image_name + ".out", stem + ".json", stem + ".out"):
        path = os.path.join(pred_dir, name)
        if os.path.isfile(path):
            return path
    return None


def read_prediction(path: str, min_score: float) -> Dict[str, List[Any]]:
    try:
        with open(path) as f:
            pred = json.load(f)
        boxes, scores = pred["pred_boxes"], pred.get("scores") or [1.0] * len(pred["pred_boxes"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError("{}: not a prediction JSON with pred_boxes ({})".format(path, err)) from None
    keep = [k for k, s in enumerate(scores) if float(s) >= min_score]
    return {"boxes": [boxes[k] for k in keep], "scores": [float(scores[k]) for k in keep]}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shelfdet visualize", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--channel", default="validation")
    p.add_argument("-n", type=int, default=4, help="number of images")
    p.add_argument("--predictions", help="folder of SPEC §4 JSON files named <image>.json or <image>.out")
    p.add_argument("--min-score", type=float, default=0.3, help="predictions below are not drawn")
    p.add_argument("--label", default="sku")
    p.add_argument("--out", help="PNG folder (default DATA_DIR/visualize/<channel>)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    from .catalog import ManifestError, load_manifest

    manifest = os.path.join(args.data_dir, "annotations", args.channel + ".manifest")
    image_dir = os.path.join(args.data_dir, args.channel)
    out_dir = args.out or os.path.join(args.data_dir, "visualize", args.channel)
    try:
        dicts, _ = load_manifest(manifest, image_dir, args.label)
    except ManifestError as err:
        print("error: {} (run `make data` first?)".format(err), file=sys.stderr)
        return 2
    if args.predictions and not os.path.isdir(args.predictions):
        print("error: --predictions {}: no such folder".format(args.predictions), file=sys.stderr)
        return 2
    import cv2

    written = []
    for d in dicts[:max(0, args.n)]:
        name = os.path.basename(d["file_name"])
        image = cv2.imread(d["file_name"], cv2.IMREAD_COLOR)
        if image is None:
            print("error: {}: cannot read the image".format(d["file_name"]), file=sys.stderr)
            return 2
        gt = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in d["annotations"])]
        boxes: List[Any] = []
        scores: Optional[List[float]] = None
        if args.predictions:
            path = find_prediction(args.predictions, name)
            if path is None:
                print("warning: no prediction for {} in {}".format(name, args.predictions), file=sys.stderr)
            else:
                try:
                    pred = read_prediction(path, args.min_score)
                except ValueError as err:
                    print("error: {}".format(err), file=sys.stderr)
                    return 2
                boxes, scores = pred["boxes"], pred["scores"]
        out = os.path.join(out_dir, os.path.splitext(name)[0] + ".png")
        written.append(draw(image, boxes, out, scores=scores, gt_boxes=gt))
        print("{}: {} ground-truth boxes{}".format(out, len(gt), ", {} predicted".format(len(boxes)) if args.predictions else ""))
    print("visualize: {} PNGs in {}".format(len(written), out_dir))
    return 0
