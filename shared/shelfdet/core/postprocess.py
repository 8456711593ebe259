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
from torchvision.ops import batched_nms, box_iou

# A box this close (image pixels) to a tile's inner edge is a cut fragment.
EDGE_MARGIN = 2.0


def windows(height: int, width: int, size: int, overlap: float) -> List[Tuple[int, int, int, int]]:
    """Tiles (x0, y0, x1, y1) of at most ``size`` px covering the image, neighbours overlapping by
    ``overlap`` x size; all the same shape (the last row and column are pushed back inside)."""
    def starts(length: int) -> List[int]:
        if length <= size:
            return [0]
        step = max(1, int(size * (1.0 - overlap)))
        out = list(range(0, length - size, step))
        return out + [length - size]

    tw, th = min(size, width), min(size, height)
    return [(x, y, x + tw, y + th) for y in starts(height) for x in starts(width)]


def uncut(boxes: torch.Tensor, tile: Tuple[int, int, int, int], height: int, width: int) -> torch.Tensor:
    """Mask of boxes (image coordinates) that touch none of the tile's inner edges."""
    x0, y0, x1, y1 = tile
    keep = torch.ones(len(boxes), dtype=torch.bool)
    if x0 > 0:
        keep &= boxes[:, 0] > x0 + EDGE_MARGIN
    if y0 > 0:
        keep &= boxes[:, 1] > y0 + EDGE_MARGIN
    if x1 < width:
        keep &= boxes[:, 2] < x1 - EDGE_MARGIN
    if y1 < height:
        keep &= boxes[:, 3] < y1 - EDGE_MARGIN
    return keep


def soft_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, sigma: float, min_score: float,
             max_keep: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gaussian Soft-NMS per class: (indices kept, their decayed scores), best first, at most ``max_keep``,
    none below ``min_score``. One IoU row per kept box, so memory stays linear in the candidates."""
    if not len(boxes):
        return torch.zeros(0, dtype=torch.long), scores[:0]
    # Classes apart, as torchvision's batched_nms does it: boxes of other classes never overlap.
    shifted = boxes + (classes.to(boxes) * (boxes.max() + 1))[:, None]
    current = scores.clone()
    keep: List[int] = []
    kept_scores: List[float] = []
    for _ in range(min(max_keep, len(boxes))):
        best = int(torch.argmax(current))
        value = float(current[best])
        if value < min_score:
            break
        keep.append(best)
        kept_scores.append(value)
        iou = box_iou(shifted[best:best + 1], shifted)[0]
        current = current * torch.exp(-(iou * iou) / sigma)
        current[best] = -1.0  # taken
    return torch.tensor(keep, dtype=torch.long), torch.tensor(kept_scores, dtype=scores.dtype)


def merge(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, method: str, nms_thresh: float,
          sigma: float, min_score: float, max_keep: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """One set from candidates: ``hard`` NMS at ``nms_thresh`` or ``soft`` NMS; (indices, scores), best first."""
    if method == "soft":
        return soft_nms(boxes, scores, classes, sigma, min_score, max_keep)
    keep = batched_nms(boxes, scores, classes, nms_thresh)
    keep = keep[scores[keep] >= min_score][:max_keep]
    return keep, scores[keep]
