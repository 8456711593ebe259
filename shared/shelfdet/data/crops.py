"""Crop training for dense shelves (hyperparameters ``crop-size``, ``crop-scales``, ``crop-min-visible``).

Resizing a whole shelf photo to a CPU-sized input shrinks its products below
what an FPN level learns from (on the hard preset: 50 px products become
16 px at the local 320 px scale). Every SKU-110K record trains on crops near
native resolution instead and tests on the whole photo: the model sees
products at their real size, for the pixels of a small image.

:class:`ObjectCrop` is a Detectron2 augmentation: a random scale on the
stored size (log-uniform in ``crop-scales``), then a square window of
``crop-size`` around a randomly chosen box, as a Resize and a Crop transform.
Boxes the window cuts are kept when ``crop-min-visible`` of their area stays
inside (``FastDatasetMapper.instances``); Detectron2 has no ignore label on
every release, so the others are dropped. The fast mapper samples it from
the header and decodes only the window (``images.decode_crop``).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import numpy as np
from detectron2.data import transforms as T

from shelfdet.core.hyperparameters import Hyperparameters


class Crop(NamedTuple):
    size: int
    scales: Tuple[float, float]
    min_visible: float


def crop_of(hp: Hyperparameters) -> Optional[Crop]:
    """The run's crop settings, or None without crop training."""
    if not hp.crop_size:
        return None
    return Crop(hp.crop_size, hp.crop_scales, hp.crop_min_visible)


class ObjectCrop(T.Augmentation):
    """Resize by a random factor in ``scales``, then a ``size`` x ``size`` window (smaller where the
    resized image is) placed uniformly among the windows that hold a randomly chosen box's centre.
    Without boxes (Detectron2's own mapper passes none) the window is placed uniformly."""

    def __init__(self, size: int, scales: Tuple[float, float]):
        super().__init__()
        self.size = int(size)
        self.log_scales = (math.log(scales[0]), math.log(scales[1]))

    def get_transform(self, image: np.ndarray, boxes: Optional[np.ndarray] = None) -> T.Transform:
        h, w = image.shape[:2]
        scale = math.exp(np.random.uniform(*self.log_scales))
        new_h, new_w = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        ch, cw = min(self.size, new_h), min(self.size, new_w)
        if boxes is not None and len(boxes):
            x0, y0, x1, y1 = np.asarray(boxes, dtype=np.float64)[np.random.randint(len(boxes))]
            cx, cy = (x0 + x1) / 2 * new_w / w, (y0 + y1) / 2 * new_h / h
            left = _window(cx, cw, new_w)
            top = _window(cy, ch, new_h)
        else:
            left = np.random.randint(new_w - cw + 1)
            top = np.random.randint(new_h - ch + 1)
        return T.TransformList([T.ResizeTransform(h, w, new_h, new_w), T.CropTransform(left, top, cw, ch)])


def _window(centre: float, length: int, total: int) -> int:
    """A uniform start among the windows of ``length`` in [0, total) that contain ``centre``."""
    low = int(min(max(0, math.ceil(centre - length)), total - length))
    high = int(max(low, min(math.floor(centre), total - length)))
    return int(np.random.randint(low, high + 1))
