"""Dense-scene inference options: sliced (tiled) inference and Soft-NMS.

Sliced inference follows SAHI (Akyon et al., 2022): overlapping tiles, each
resized to the model's input scale as a whole image would be, plus one pass
over the whole image for products larger than a tile, merged into one set.
SAHI itself is not used: it requires the GUI build of OpenCV (its ``cv2``
clashes with our headless build, and needs libGL in the slim images), Shapely,
Fire and Click in every image, and its Detectron2 wrapper builds its
own ``DefaultPredictor`` from a config file, which bypasses our release-aware
config load and exact checkpoint load. The tiling itself is the grid below.

A box that touches a tile's inner edge is dropped before merging: with an
overlap larger than the products, each product lies whole in some tile (or
is found by the whole-image pass), so a cut box is a duplicate fragment that
IoU-based NMS would not remove (a half box overlaps the whole one at IoU 0.5).

Soft-NMS (Bodla et al., 2017, Gaussian): instead of dropping a box that
overlaps a better one, its score is multiplied by exp(-IoU^2 / sigma). Neither
torchvision nor Detectron2 has it; ``ensemble-boxes`` (the maintained package)
imports numba and pandas at import, ~150 MB per image and a numpy range the
Python 3.8 stack cannot meet, for a loop of a dozen lines.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torchvision.ops import batched_nms

# The tiling and Soft-NMS are numpy code, shared with exported models (core.exported).
from shelfdet.core import exported


def windows(height: int, width: int, size: int, overlap: float) -> List[Tuple[int, int, int, int]]:
    """Tiles (x0, y0, x1, y1) of at most ``size`` px covering the image, neighbours overlapping by
    ``overlap`` x size; all the same shape (the last row and column are pushed back inside)."""
    return exported.windows(height, width, size, overlap)


def uncut(boxes: torch.Tensor, tile: Tuple[int, int, int, int], height: int, width: int) -> torch.Tensor:
    """Mask of boxes (image coordinates) that touch none of the tile's inner edges."""
    return torch.from_numpy(exported.uncut(boxes.numpy(), tile, height, width))


def soft_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, sigma: float, min_score: float,
             max_keep: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gaussian Soft-NMS per class: (indices kept, their decayed scores), best first, at most ``max_keep``,
    none below ``min_score``. One IoU row per kept box, so memory stays linear in the candidates."""
    keep, kept = exported.soft_nms(boxes.numpy(), scores.numpy(), classes.numpy(), sigma, min_score, max_keep)
    return torch.from_numpy(keep), torch.from_numpy(kept).to(scores.dtype)


def merge(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, method: str, nms_thresh: float,
          sigma: float, min_score: float, max_keep: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """One set from candidates: ``hard`` NMS at ``nms_thresh`` or ``soft`` NMS; (indices, scores), best first."""
    if method == "soft":
        return soft_nms(boxes, scores, classes, sigma, min_score, max_keep)
    keep = batched_nms(boxes, scores, classes, nms_thresh)
    keep = keep[scores[keep] >= min_score][:max_keep]
    return keep, scores[keep]
