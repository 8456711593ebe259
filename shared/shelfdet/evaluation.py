"""COCO-style scoring with pycocotools, maxDets = detections per image (300 by default).

Used at the end of training (on the model) and by ``make evaluate`` (on
prediction files from the endpoint or batch transform); both paths feed the
same :func:`score` so their numbers agree.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger(__name__)

# Our names, and their index in pycocotools' COCOeval.stats (see its summarize()).
STAT_NAMES = ("AP", "AP50", "AP75", "AR1", "AR10", "AR")
COCO_STATS_INDEX = {"AP": 0, "AP50": 1, "AP75": 2, "AR1": 6, "AR10": 7, "AR": 8}


def _empty_metrics() -> Dict[str, float]:
    return {k: 0.0 for k in STAT_NAMES}


def _backend(fast: bool):
    """faster-coco-eval (C++, same algorithm and numbers) when asked and installed, else pycocotools.

    pycocotools' per-image matching is Python loops: minutes for SKU-110K's
    test set at 300 detections per image; faster-coco-eval needs Python >= 3.10.
    """
    if fast:
        try:
            from faster_coco_eval import COCO as FastCOCO
            from faster_coco_eval import COCOeval_faster

            return FastCOCO, COCOeval_faster
        except ImportError:
            log.warning("faster-coco-eval is not installed here; evaluating with pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def score(gt_dicts: Sequence[Mapping[str, Any]], predictions: Mapping[str, Mapping[str, Any]],
          class_names: Sequence[str], max_dets: int = 300, fast: bool = True) -> Dict[str, float]:
    """COCO bbox metrics (fractions 0-1) of SPEC §4 predictions keyed by image file name.

    ``gt_dicts`` are Detectron2 dataset dicts (``shelfdet.catalog.load_manifest``);
    an image with no prediction entry counts as having no detections.
    """
    images, anns, dets = [], [], []
    for img_id, d in enumerate(gt_dicts, 1):
        name = os.path.basename(d["file_name"])
        images.append({"id": img_id, "file_name": name, "width": d["width"], "height": d["height"]})
        for o in d["annotations"]:
            x, y, w, h = o["bbox"]
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": int(o["category_id"]) + 1,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        pred = predictions.get(name)
        if not pred:
            continue
        for box, s, c in zip(pred["pred_boxes"], pred["scores"], pred["pred_classes"]):
            x1, y1, x2, y2 = box
            dets.append({"image_id": img_id, "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "score": float(s)})
    if not dets or not anns:
        return _empty_metrics()
    dataset = {"images": images, "annotations": anns,
               "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)]}
    coco_cls, eval_cls = _backend(fast)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = coco_cls()
        gt.dataset = dataset
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = eval_cls(gt, dt, "bbox")
        ev.params.maxDets = [1, 10, int(max_dets)]
        # Only the "all" area range: SKU-110K is reported without size buckets, and
        # each extra range repeats the matching (scoring its test split took 33 s, now 27 s).
        ev.params.areaRng = [[0, 1e10]]
        ev.params.areaRngLbl = ["all"]
        ev.evaluate()
        ev.accumulate()
    return summarize(ev)


def _stat(ev: Any, ap: bool, iou: Optional[float] = None, area: str = "all", max_det: Optional[int] = None) -> float:
    """pycocotools' _summarize, with the AP row at maxDets[-1]: its summarize() pins the
    first AP to maxDets=100, which reads -1 when the list is [1, 10, 300]."""
    p = ev.params
    a = p.areaRngLbl.index(area)
    m = p.maxDets.index(max_det if max_det is not None else p.maxDets[-1])
    arr = ev.eval["precision"] if ap else ev.eval["recall"]
    if iou is not None:
        arr = arr[np.where(np.isclose(p.iouThrs, iou))[0]]
    arr = arr[..., a, m]
    vals = arr[arr > -1]
    return float(np.mean(vals)) if vals.size else -1.0


def summarize(ev: Any) -> Dict[str, float]:
    last = ev.params.maxDets[-1]
    return {
        "AP": _stat(ev, True), "AP50": _stat(ev, True, iou=0.5), "AP75": _stat(ev, True, iou=0.75),
        "AR1": _stat(ev, False, max_det=1), "AR10": _stat(ev, False, max_det=10), "AR": _stat(ev, False, max_det=last),
    }


def predict_dataset(detector: Any, gt_dicts: Sequence[Mapping[str, Any]],
                    log_every: int = 20) -> Dict[str, Dict[str, Any]]:
    """Runs the detector over every image of a dataset; returns predictions keyed by file name.

    One image per forward, as the endpoint runs it: in a batch, padding to the
    largest image shifts boxes slightly, and validation AP would then disagree
    with the final evaluation and with serving.
    """
    from . import imageio

    preds: Dict[str, Dict[str, Any]] = {}
    start = time.time()
    total = len(gt_dicts)
    for done, d in enumerate(gt_dicts, 1):
        preds[os.path.basename(d["file_name"])] = detector.predict([imageio.read(d["file_name"])])[0]
        if done == total or done % max(1, log_every) == 0:
            rate = done / max(time.time() - start, 1e-9)
            log.info("evaluation: %d/%d images, %.1f img/s, ETA %.0fs", done, total, rate, (total - done) / rate)
    return preds


def evaluate(detector: Any, gt_dicts: Sequence[Mapping[str, Any]], class_names: Sequence[str], max_dets: int,
             fast: bool, log_every: int = 20) -> Tuple[Dict[str, float], Dict[str, Dict[str, Any]]]:
    """The one model evaluation: validation AP during training and the final evaluation
    both call it, so the tuning objective and the reported score are the same number."""
    preds = predict_dataset(detector, gt_dicts, log_every=log_every)
    return score(gt_dicts, preds, class_names, max_dets, fast=fast), preds


def format_metrics(metrics: Mapping[str, float]) -> str:
    return "  ".join("{}: {:.4f}".format(k, metrics[k]) for k in ("AP", "AP50", "AP75", "AR") if k in metrics)


def load_predictions(folder: str) -> Dict[str, Dict[str, Any]]:
    """Reads ``<image>.out`` (batch transform) or ``<image>.json`` files; key = image file name."""
    if not os.path.isdir(folder):
        raise FileNotFoundError("predictions folder not found: {}".format(folder))
    preds = {}
    for entry in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(entry)
        if ext not in (".out", ".json") or entry == "metrics.json":
            continue
        path = os.path.join(folder, entry)
        try:
            with open(path) as f:
                body = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError("{}: not a prediction JSON ({})".format(path, err)) from None
        if isinstance(body, list):  # a JSON batch of one image
            if len(body) != 1:
                raise ValueError("{}: holds {} predictions, expected one image".format(path, len(body)))
            body = body[0]
        if not isinstance(body, dict) or not all(k in body for k in ("pred_boxes", "scores", "pred_classes")):
            raise ValueError("{}: missing pred_boxes/scores/pred_classes".format(path))
        preds[stem] = body
    if not preds:
        raise ValueError("no .out or .json prediction files in {}".format(folder))
    return preds


def main(argv: Optional[List[str]] = None) -> int:
    from . import catalog

    ap = argparse.ArgumentParser(prog="shelfdet evaluate", description=__doc__)
    ap.add_argument("--predictions", required=True, help="folder of <image>.out / <image>.json prediction files")
    ap.add_argument("--manifest", required=True, help="ground-truth augmented manifest")
    ap.add_argument("--label", default="sku", help="label attribute in the manifest")
    ap.add_argument("--max-dets", type=int, default=300)
    ap.add_argument("--evaluation-type", choices=("fast", "coco"), default="fast",
                    help="fast: faster-coco-eval (C++); coco: pycocotools (same numbers, slower)")
    ap.add_argument("--out", default=None, help="metrics JSON (default: <predictions>/metrics.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        gt, names = catalog.load_manifest(args.manifest, os.path.dirname(args.manifest), args.label, check_images=False)
        preds = load_predictions(args.predictions)
    except (ValueError, FileNotFoundError) as err:
        print("error: {}".format(err), file=sys.stderr)
        return 2
    known = {os.path.basename(d["file_name"]) for d in gt}
    missing = known - set(preds)
    extra = set(preds) - known
    if missing:
        log.warning("%d of %d images have no prediction file (scored as no detections), e.g. %s",
                    len(missing), len(known), sorted(missing)[0])
    if extra:
        log.warning("%d prediction files match no image of the manifest, e.g. %s", len(extra), sorted(extra)[0])
    metrics = score(gt, preds, names, args.max_dets, fast=args.evaluation_type == "fast")
    metrics["images"] = len(gt)
    metrics["max_dets"] = args.max_dets
    out = args.out or os.path.join(args.predictions, "metrics.json")
    with open(out, "w") as f:
        json.dump(metrics, f, indent=2)
    print(format_metrics(metrics))
    print("metrics written to {}".format(out))
    return 0
