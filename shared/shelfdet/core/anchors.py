"""Anchors fitted to the training boxes: hyperparameter ``anchors=auto``.

The model zoo's anchors (32 to 512 px, aspect 0.5/1/2) suit COCO at an 800 px
input. Shelf products are small, tall or flat, and at a CPU-sized input smaller
still: on the hard preset at the local scale (longer side 320) the median box
side is 16 px, half the zoo's smallest anchor.

``auto`` keeps the zoo's ladder (one octave per pyramid level, the same scales
within a level, so each level keeps its size-to-stride ratio) and fits two
things to the boxes as the model sees them (resized to the test scale):

- the ladder's scale: the factor on every zoo size that maximises the mean
  IoU of each box (a square of side sqrt(w*h)) with its best anchor, that
  anchor's centre a quarter stride off on each axis, as a box between anchor
  centres is; the offset is what makes a fine level (dense centres) beat a
  coarse one with the same anchor size, which a fit on sizes alone cannot
  tell apart (ladders an octave apart fit sizes about equally); no anchor
  smaller than twice its level's stride, which would fall between the
  anchor centres;
- the aspect ratios: 1-D k-means on log(h/w), as many clusters as the zoo has ratios.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Sequence

import numpy as np

log = logging.getLogger(__name__)

# The ladder's scale is searched on this grid (a twelfth of an octave), up to 4x the zoo's sizes.
_STEPS_PER_OCTAVE = 12
_MAX_FACTOR = 4.0


class Fitted(NamedTuple):
    sizes: List[List[float]]
    aspect_ratios: List[float]
    factor: float
    boxes: int
    median_side: float


def box_shapes(dicts: Iterable[Mapping[str, Any]], min_size: int, max_size: int) -> np.ndarray:
    """(N, 2) box widths and heights in model-input pixels: each image resized as
    Detectron2's ResizeShortestEdge does at the test scale (``min_size``, capped at ``max_size``)."""
    parts = []
    for d in dicts:
        anns = d.get("annotations") or []
        if not anns:
            continue
        h, w = float(d["height"]), float(d["width"])
        scale = min(min_size / min(h, w), max_size / max(h, w))
        wh = np.array([a["bbox"][2:4] for a in anns], dtype=np.float64)
        parts.append(wh * scale)
    return np.concatenate(parts) if parts else np.zeros((0, 2))


def kmeans_1d(values: np.ndarray, k: int, iterations: int = 100) -> np.ndarray:
    """Lloyd's k-means on 1-D data, started at the quantiles (deterministic); sorted centres."""
    values = np.sort(np.asarray(values, dtype=np.float64))
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        label = np.searchsorted((centres[1:] + centres[:-1]) / 2, values)
        new = np.array([values[label == j].mean() if np.any(label == j) else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


def _ladder_error(sides: np.ndarray, anchor_sides: np.ndarray, anchor_strides: np.ndarray) -> float:
    """Mean of 1 - IoU of each (square) box with its best anchor, the anchor's centre off the box's by
    a quarter of its level's stride on each axis (the mean distance to the nearest anchor centre)."""
    b, a = sides[:, None], anchor_sides[None, :]
    d = anchor_strides[None, :] / 4.0
    overlap = np.clip(np.minimum(b / 2, d + a / 2) - np.maximum(-b / 2, d - a / 2), 0, None)
    inter = overlap ** 2
    iou = inter / (a ** 2 + b ** 2 - inter)
    return float(np.mean(1.0 - iou.max(axis=1)))


def fit(shapes: np.ndarray, zoo_sizes: Sequence[Sequence[float]], strides: Sequence[int], num_ratios: int) -> Fitted:
    """Fitted sizes (zoo_sizes' shape, one row per level of ``strides``) and ``num_ratios``
    aspect ratios (h/w) for (N, 2) box shapes."""
    shapes = shapes[(shapes[:, 0] > 0) & (shapes[:, 1] > 0)]
    if not len(shapes):
        raise ValueError("anchors=auto: the training set has no boxes to fit anchors to")
    log_sides = 0.5 * np.log2(shapes[:, 0] * shapes[:, 1])
    zoo = np.log2(np.array([s for level in zoo_sizes for s in level], dtype=np.float64))
    if len(zoo_sizes) == 1 and len(strides) > 1:
        zoo_sizes = [zoo_sizes[0]] * len(strides)  # Detectron2: one row is used on every level
    min_factor = max(2.0 * stride / min(level) for stride, level in zip(strides, zoo_sizes))
    exponents = np.arange(np.ceil(np.log2(min_factor) * _STEPS_PER_OCTAVE),
                          np.log2(_MAX_FACTOR) * _STEPS_PER_OCTAVE + 1)
    level_strides = np.array([stride for stride, level in zip(strides, zoo_sizes) for _ in level], dtype=np.float64)
    sides = 2.0 ** log_sides
    errors = [_ladder_error(sides, 2.0 ** (zoo + e / _STEPS_PER_OCTAVE), level_strides) for e in exponents]
    factor = float(2.0 ** (exponents[int(np.argmin(errors))] / _STEPS_PER_OCTAVE))
    sizes = [[round(float(s) * factor, 1) for s in level] for level in zoo_sizes]
    ratios = np.exp(kmeans_1d(np.log(shapes[:, 1] / shapes[:, 0]), num_ratios))
    return Fitted(sizes, [round(float(r), 3) for r in ratios], factor, len(shapes),
                  float(np.median(2.0 ** log_sides)))


def feature_strides(cfg: Any) -> List[int]:
    """Strides of the feature maps the anchors sit on (FPN ``pN``: 2**N; C4 and DC5: 16)."""
    features = cfg.MODEL.RETINANET.IN_FEATURES if "RetinaNet" in cfg.MODEL.META_ARCHITECTURE else cfg.MODEL.RPN.IN_FEATURES
    return [2 ** int(f[1:]) if f.startswith("p") else 16 for f in features]


def apply(cfg: Any, dicts: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Sets ``cfg.MODEL.ANCHOR_GENERATOR`` from the training dicts (cfg not frozen); returns what was set.

    The config carries the anchors into the saved ``config.yaml``, so serving builds the same model.
    """
    gen = cfg.MODEL.ANCHOR_GENERATOR
    zoo_ratios = [r for level in gen.ASPECT_RATIOS for r in level] if isinstance(gen.ASPECT_RATIOS[0], (list, tuple)) \
        else list(gen.ASPECT_RATIOS)
    shapes = box_shapes(dicts, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    fitted = fit(shapes, gen.SIZES, feature_strides(cfg), len(zoo_ratios))
    gen.SIZES = fitted.sizes
    gen.ASPECT_RATIOS = [fitted.aspect_ratios]
    log.info("anchors=auto: sizes %s (the zoo's x%.2f), aspect ratios h/w %s, fitted to %d training boxes "
             "at the test scale (median side %.1f px)", fitted.sizes, fitted.factor, fitted.aspect_ratios,
             fitted.boxes, fitted.median_side)
    return {"sizes": fitted.sizes, "aspect_ratios": fitted.aspect_ratios, "factor": round(fitted.factor, 4)}
