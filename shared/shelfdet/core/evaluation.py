"""COCO-style scoring with faster-coco-eval (pycocotools gives the same numbers), maxDets =
detections per photo (300 by default), plus per-photo count error (shelf counting) and the box matching the error pictures draw.

Used at the end of training (on the model) and by ``make evaluate`` (on
prediction files from the endpoint or batch transform); both paths feed the
same :func:`score` so their numbers agree.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger(__name__)

# Our names, and their index in pycocotools' COCOeval.stats (see its summarize()).
STAT_NAMES = ("AP", "AP50", "AP75", "AR1", "AR10", "AR")
COCO_STATS_INDEX = {"AP": 0, "AP50": 1, "AP75": 2, "AR1": 6, "AR10": 7, "AR": 8}


def _empty_metrics() -> Dict[str, float]:
    return {k: 0.0 for k in STAT_NAMES}


class BackendError(RuntimeError):
    """evaluation-type=fast where faster-coco-eval cannot be imported."""


def _backend(fast: bool):
    """faster-coco-eval (C++, same algorithm and numbers) when ``fast``, else pycocotools.

    pycocotools' per-photo matching is Python loops: 483 s for SKU-110K's test set
    at 300 detections per photo, 25 s with faster-coco-eval. Every stack installs
    it (versions.env), so a missing one is an error, never a silent fallback that
    turns a 25 s evaluation into minutes; callers check at start with
    :func:`require_backend`.
    """
    if fast:
        try:
            from faster_coco_eval import COCO as FastCOCO
            from faster_coco_eval import COCOeval_faster
        except ImportError as err:
            raise BackendError(
                "evaluation-type=fast needs faster-coco-eval, which cannot be imported here ({}): install it "
                "(pip install faster-coco-eval) or say evaluation-type=coco (pycocotools: the same numbers, "
                "slower)".format(err)) from None
        return FastCOCO, COCOeval_faster
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def require_backend(fast: bool) -> None:
    """Raises :class:`BackendError` now, before any training or prediction, if scoring with
    ``fast`` would raise it at the end."""
    _backend(fast)


def _count_inputs(gt_dicts: Sequence[Mapping[str, Any]],
                  predictions: Mapping[str, Mapping[str, Any]]) -> Tuple[np.ndarray, List[np.ndarray]]:
    """Ground-truth box count and predicted scores of every photo (no prediction entry: no scores)."""
    gt = np.array([len(d["annotations"]) for d in gt_dicts], dtype=np.int64)
    scores = []
    for d in gt_dicts:
        pred = predictions.get(os.path.basename(d["file_name"]))
        s = pred.get("scores") if pred else None
        scores.append(np.asarray(s if s is not None else [], dtype=np.float64).reshape(-1))
    return gt, scores


def count_errors(gt_dicts: Sequence[Mapping[str, Any]], predictions: Mapping[str, Mapping[str, Any]],
                 threshold: float) -> Tuple[float, float]:
    """(MAE, relative error) of the per-photo count of boxes scoring >= ``threshold``.

    MAE = mean |count - gt|; relative error = mean |count - gt| / max(gt, 1)
    (a photo without products weighs as one with a single product).
    """
    gt, scores = _count_inputs(gt_dicts, predictions)
    if not len(gt):
        return 0.0, 0.0
    counts = np.array([np.count_nonzero(s >= threshold) for s in scores], dtype=np.int64)
    err = np.abs(counts - gt)
    return float(err.mean()), float((err / np.maximum(gt, 1)).mean())


def fit_count_threshold(gt_dicts: Sequence[Mapping[str, Any]], predictions: Mapping[str, Mapping[str, Any]]) -> float:
    """The score threshold with the lowest count MAE on these predictions.

    The count only changes at a predicted score, so the candidates are the
    distinct scores plus one just above them all (count 0 everywhere). Lowering
    the threshold past the k-th best score of a photo with g boxes changes its
    |count - g| by +1 if k > g, else -1: one sort and a cumulative sum give every
    candidate's total error (SKU-110K's test set has ~900k scores). Among equal
    errors the highest threshold wins (fewest boxes).
    """
    gt, scores = _count_inputs(gt_dicts, predictions)
    ranked = [np.sort(s)[::-1] for s in scores]
    if not any(len(s) for s in ranked):
        return 1.0  # nothing predicted: every threshold counts zero
    all_scores = np.concatenate(ranked)
    delta = np.concatenate([np.where(np.arange(1, len(s) + 1) > g, 1, -1) for s, g in zip(ranked, gt)])
    order = np.argsort(-all_scores, kind="mergesort")
    sorted_scores = all_scores[order]
    total = int(gt.sum()) + np.cumsum(delta[order])
    # Tied scores enter together: a threshold sits at the last of each run of equal scores.
    last = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    thresholds = np.concatenate([[np.nextafter(sorted_scores[0], np.inf)], sorted_scores[last]])
    errors = np.concatenate([[int(gt.sum())], total[last]])
    return float(thresholds[int(np.argmin(errors))])


def count_metrics(gt_dicts: Sequence[Mapping[str, Any]], predictions: Mapping[str, Mapping[str, Any]],
                  threshold: Optional[float] = None) -> Dict[str, float]:
    """``count_mae``, ``count_rel_error`` at ``count_threshold`` (fit here with
    :func:`fit_count_threshold` when not given)."""
    if threshold is None:
        threshold = fit_count_threshold(gt_dicts, predictions)
    mae, rel = count_errors(gt_dicts, predictions, threshold)
    return {"count_mae": mae, "count_rel_error": rel, "count_threshold": float(threshold)}


class Match(NamedTuple):
    """Indices from :func:`match_boxes`: predictions (tp, fp) and ground truth (fn)."""
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray


def _xywh(boxes: Sequence[Sequence[float]]) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def match_boxes(gt_boxes: Sequence[Sequence[float]], pred_boxes: Sequence[Sequence[float]], scores: Sequence[float],
                score_threshold: float = 0.0, iou_threshold: float = 0.5) -> Match:
    """Greedy matching of XYXY predictions scoring >= ``score_threshold`` to ground truth, as COCOeval
    does it: by descending score, each prediction takes the unmatched ground-truth box it overlaps most,
    if that IoU is >= ``iou_threshold``. Predictions below the score threshold are in neither tp nor fp.
    """
    from pycocotools import mask as mask_utils

    gt = _xywh(gt_boxes)
    pred = _xywh(pred_boxes)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    kept = np.flatnonzero(s >= score_threshold)
    kept = kept[np.argsort(-s[kept], kind="mergesort")]
    gt_taken = np.zeros(len(gt), dtype=bool)
    is_tp = np.zeros(len(pred), dtype=bool)
    if len(gt) and len(kept):
        # The IoU matrix COCOeval uses (kept predictions x ground truth), in one call.
        ious = np.asarray(mask_utils.iou(pred[kept], gt, np.zeros(len(gt), dtype=np.uint8))).reshape(len(kept), len(gt))
        for row, k in zip(ious, kept):
            row = np.where(gt_taken, -1.0, row)
            j = int(np.argmax(row))
            if row[j] >= iou_threshold:
                gt_taken[j] = True
                is_tp[k] = True
    tp = np.sort(kept[is_tp[kept]])
    fp = np.sort(kept[~is_tp[kept]])
    return Match(tp=tp, fp=fp, fn=np.flatnonzero(~gt_taken))


def score(gt_dicts: Sequence[Mapping[str, Any]], predictions: Mapping[str, Mapping[str, Any]],
          class_names: Sequence[str], max_dets: int = 300, fast: bool = True,
          count_threshold: Optional[float] = None) -> Dict[str, float]:
    """COCO bbox metrics (fractions 0-1) of predictions (the serving answer's JSON) keyed by photo file name,
    and the count metrics of :func:`count_metrics` at ``count_threshold`` (None: fit on these).

    ``gt_dicts`` are Detectron2 dataset dicts (``shelfdet.core.catalog.load_manifest``);
    a photo with no prediction entry counts as having no detections.
    """
    metrics = _coco_metrics(gt_dicts, predictions, class_names, max_dets, fast)
    metrics.update(count_metrics(gt_dicts, predictions, count_threshold))
    return metrics


def _coco_metrics(gt_dicts: Sequence[Mapping[str, Any]], predictions: Mapping[str, Mapping[str, Any]],
                  class_names: Sequence[str], max_dets: int, fast: bool) -> Dict[str, float]:
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
    """Runs the detector over every photo of a dataset; returns predictions keyed by file name.

    One photo per forward, decoded and run as the endpoint does: in a batch, padding to the
    largest photo shifts boxes slightly, and validation AP would then disagree
    with the final evaluation and with serving.
    """
    preds: Dict[str, Dict[str, Any]] = {}
    start = time.time()
    total = len(gt_dicts)
    for done, d in enumerate(gt_dicts, 1):
        preds[os.path.basename(d["file_name"])] = detector.predict([detector.read(d["file_name"])])[0]
        if done == total or done % max(1, log_every) == 0:
            rate = done / max(time.time() - start, 1e-9)
            log.info("evaluation: %d/%d images, %.1f img/s, ETA %.0fs", done, total, rate, (total - done) / rate)
    return preds


def predict_shared(detector: Any, gt_dicts: Sequence[Mapping[str, Any]],
                   log_every: int = 20) -> Optional[Dict[str, Dict[str, Any]]]:
    """:func:`predict_dataset` shared by the processes of a distributed job; every process must call it.

    Each predicts every world-size-th photo from its rank on with its own detector, and rank 0
    gathers them, as Detectron2's ``inference_on_dataset`` and evaluators do: the job's GPUs all
    work, and no process waits for more than the others' share. Returns every prediction on rank 0
    (one forward per photo, so the same as one process), None on the others.
    """
    from detectron2.utils import comm

    rank, world = comm.get_rank(), comm.get_world_size()
    if world == 1:
        return predict_dataset(detector, gt_dicts, log_every=log_every)
    mine = list(gt_dicts)[rank::world]
    log.info("evaluation: rank %d of %d predicts %d of %d images", rank, world, len(mine), len(gt_dicts))
    shares = comm.gather(predict_dataset(detector, mine, log_every=log_every), dst=0)
    if rank != 0:
        return None
    preds: Dict[str, Dict[str, Any]] = {}
    for share in shares:
        preds.update(share)
    return preds


def evaluate(detector: Any, gt_dicts: Sequence[Mapping[str, Any]], class_names: Sequence[str], max_dets: int,
             fast: bool, log_every: int = 20, count_threshold: Optional[float] = None
             ) -> Tuple[Optional[Dict[str, float]], Optional[Dict[str, Dict[str, Any]]]]:
    """The one model evaluation: validation AP during training and the final evaluation
    both call it, so the tuning objective and the reported score are the same number.

    In a distributed job every process calls it and predicts its share (:func:`predict_shared`);
    rank 0 scores and gets (metrics, predictions), the others (None, None).
    """
    preds = predict_shared(detector, gt_dicts, log_every=log_every)
    if preds is None:
        return None, None
    return score(gt_dicts, preds, class_names, max_dets, fast=fast, count_threshold=count_threshold), preds


def format_metrics(metrics: Mapping[str, float]) -> str:
    return "  ".join("{}: {:.4f}".format(k, metrics[k]) for k in ("AP", "AP50", "AP75", "AR") if k in metrics)


def format_counts(metrics: Mapping[str, float]) -> str:
    return "count MAE {:.3f}  relative {:.4f}  (score >= {:.4f})".format(
        metrics["count_mae"], metrics["count_rel_error"], metrics["count_threshold"])


def load_predictions(folder: str) -> Dict[str, Dict[str, Any]]:
    """Reads ``<photo>.out`` (batch transform) or ``<photo>.json`` files; key = photo file name."""
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
        if isinstance(body, list):  # a JSON batch of one photo
            if len(body) != 1:
                raise ValueError("{}: holds {} predictions, expected one image".format(path, len(body)))
            body = body[0]
        if not isinstance(body, dict) or not all(k in body for k in ("pred_boxes", "scores", "pred_classes")):
            raise ValueError("{}: missing pred_boxes/scores/pred_classes".format(path))
        preds[stem] = body
    if not preds:
        raise ValueError("no .out or .json prediction files in {}".format(folder))
    return preds


def _photos_of(manifest: str) -> str:
    """``DATA_DIR/annotations/<channel>.manifest`` -> ``DATA_DIR/<channel>``, the layout ``make data`` writes."""
    channel = os.path.splitext(os.path.basename(manifest))[0]
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(manifest))), channel)


def _model_predictions(model_dir: str, device: Optional[str], infer: str, out_dir: str, manifest: str, label: str,
                       count_threshold: Optional[float], gt: Sequence[Mapping[str, Any]]
                       ) -> Tuple[Dict[str, Dict[str, Any]], Optional[float], Dict[str, Any]]:
    """Runs the model folder over the photos of ``gt`` (with INFER overrides); writes each prediction file.
    Returns the predictions, the count threshold fit on the sibling validation manifest, and run facts."""
    from shelfdet.core import catalog, exported, hyperparameters

    overrides = hyperparameters.parse_inference(infer or "", "--infer")
    # The runtime its endpoint would run (SHELFDET_RUNTIME: the folder's export, else the eager model).
    detector = exported.load(model_dir, runtime=os.environ.get("SHELFDET_RUNTIME"), overrides=overrides,
                             device=device)
    start = time.time()
    preds = predict_dataset(detector, gt)
    seconds = time.time() - start
    os.makedirs(out_dir, exist_ok=True)
    for name, pred in preds.items():
        with open(os.path.join(out_dir, name + ".json"), "w") as f:
            json.dump(pred, f)
    threshold = None
    val_manifest = os.path.join(os.path.dirname(manifest), "validation.manifest")
    if count_threshold is None and os.path.abspath(val_manifest) != os.path.abspath(manifest) \
            and os.path.isfile(val_manifest):
        val, _ = catalog.load_manifest(val_manifest, _photos_of(val_manifest), label)
        threshold = fit_count_threshold(val, predict_dataset(detector, val))
    facts = {"model_dir": model_dir, "inference": overrides, "seconds_per_image": round(seconds / max(1, len(gt)), 4),
             "max_dets": _detections_per_image(detector), "runtime": getattr(detector, "runtime", None) or "torch"}
    return preds, threshold, facts


def _detections_per_image(detector: Any) -> int:
    """The eager model's cap, or an exported model's (its settings)."""
    if hasattr(detector, "max_detections"):
        return int(detector.max_detections)
    return int(detector.settings.detections)


# What the count line says of its threshold, by where it came from.
COUNT_NOTES = {"these predictions": ", threshold fit on these same predictions (optimistic: pass --count-threshold "
                                    "with one fit on validation)",
               "given": ", threshold given", "validation": ", threshold fit on validation"}


class Evaluation(NamedTuple):
    """What ``make evaluate`` scores: the manifest's ground truth and the predictions, where they are (and
    where metrics.json goes by default), the count threshold and where it came from, and run facts."""
    gt: List[Dict[str, Any]]
    names: List[str]
    preds: Dict[str, Dict[str, Any]]
    folder: str
    count_threshold: Optional[float]
    fit_on: str
    facts: Dict[str, Any]


def gather(manifest: str, predictions: Optional[str] = None, model_dir: Optional[str] = None,
           photo_dir: Optional[str] = None, infer: str = "", device: Optional[str] = None,
           out_dir: str = os.path.join("predictions", "evaluation"), label: str = "sku",
           count_threshold: Optional[float] = None, fast: bool = True) -> Evaluation:
    """The ground truth and the predictions: prediction files (matched by file name), or a model folder's
    run over the manifest's photos (prediction files written to ``out_dir``)."""
    from shelfdet.core import catalog

    # The scorer first: with a model folder, a missing one would otherwise fail after predicting every photo.
    require_backend(fast)
    folder = (photo_dir or _photos_of(manifest)) if model_dir else os.path.dirname(manifest)
    gt, names = catalog.load_manifest(manifest, folder, label, check_images=bool(model_dir))
    fit_on = "given"
    facts = {}  # type: Dict[str, Any]
    if model_dir:
        preds, fitted, facts = _model_predictions(model_dir, device, infer, out_dir, manifest, label, count_threshold, gt)
        if fitted is not None:
            count_threshold, fit_on = fitted, "validation"
        folder = out_dir
    else:
        preds = load_predictions(predictions)
        folder = predictions or ""
    if count_threshold is None:
        fit_on = "these predictions"
    return Evaluation(gt, names, preds, folder, count_threshold, fit_on, facts)


def score_files(ev: Evaluation, max_dets: Optional[int] = None, fast: bool = True, out: Optional[str] = None
             ) -> Tuple[Dict[str, Any], str]:
    """Scores the predictions (a photo without one: no detections) and writes metrics.json: the metrics, its path."""
    known = {os.path.basename(d["file_name"]) for d in ev.gt}
    missing = known - set(ev.preds)
    extra = set(ev.preds) - known
    if missing:
        log.warning("%d of %d images have no prediction file (scored as no detections), e.g. %s",
                    len(missing), len(known), sorted(missing)[0])
    if extra:
        log.warning("%d prediction files match no image of the manifest, e.g. %s", len(extra), sorted(extra)[0])
    max_dets = max_dets or ev.facts.get("max_dets") or 300
    metrics = score(ev.gt, ev.preds, ev.names, max_dets, fast=fast, count_threshold=ev.count_threshold)
    metrics["images"] = len(ev.gt)
    metrics["max_dets"] = max_dets
    metrics["count_threshold_fit"] = ev.fit_on
    metrics.update(ev.facts)
    out = out or os.path.join(ev.folder, "metrics.json")
    with open(out, "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics, out
