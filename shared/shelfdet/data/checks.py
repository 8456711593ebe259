"""Every rule a label row and its box must pass, for every format (the SKU-110K CSV, COCO, VOC, YOLO,
Ground Truth): one checker, so a box is kept, clipped or dropped for the same reason, with the same
message, whichever tool wrote it.

A problem names the file, line and field it comes from; ``report.json`` lists them all and
docs/troubleshooting.md explains each message, so the wording here is part of the interface.

Boxes are checked as arrays (the SKU-110K CSV has 1.7M rows): :func:`check_boxes` sorts them into
no area, outside the photo, clipped and kept; :func:`box_problems` writes their problems.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

# The messages of boxes, as %-formats: real data can have 100k+ clipped boxes, formatted at C speed.
DEGENERATE = "box (%g,%g,%g,%g) has no area"
OUTSIDE = "box (%g,%g,%g,%g) lies outside the %gx%g image"
CLIPPED = "box (%g,%g,%g,%g) crosses the %gx%g image border: clipped to (%g,%g,%g,%g)"
# kind, action, message, the field a problem names when the reader gives none.
BOX_RULES = (("degenerate", "dropped", DEGENERATE), ("outside_image", "dropped", OUTSIDE),
             ("clipped", "clipped", CLIPPED))

# The messages of a photo whose boxes cannot be used.
PHOTO_CORRUPTED = "image does not decode: its boxes are dropped"
NO_PREFIX = "name has no train_/val_/test_ prefix: its boxes are dropped"
SWAPPED = " (swapped: EXIF orientation?)"


def problem(file: str, line: int, image: str, field: str, kind: str, action: str, message: str,
            **extra: Any) -> Dict[str, Any]:
    """One line of report.json's problems: where (file, line, photo, field), what, and what was done."""
    out = {"file": file, "line": int(line), "image": image, "field": field, "kind": kind, "action": action,
           "message": message}
    out.update(extra)
    return out


def unsafe(file: str, line: int, field: str, err: Exception, boxes: int = 0, image: str = "") -> Dict[str, Any]:
    """The problem of a photo whose name would lead out of its folder: the photo and its ``boxes`` dropped."""
    return problem(file, line, image, field, "unsafe_name", "dropped",
                   "{}: the image and its boxes are dropped".format(err), rows=boxes)


def csv_row(file: str, line: int, row: Sequence[str], columns: Sequence[str], numeric: Sequence[int],
            expected_class: str) -> Dict[str, Any]:
    """The problem of a CSV row that does not parse: its column count, then its numbers, then its class."""
    image = row[0] if row else ""
    if len(row) != len(columns):
        return problem(file, line, image, "row", "wrong_column_count", "dropped",
                       "{} columns, expected {} ({})".format(len(row), len(columns), ",".join(columns)))
    for k in numeric:
        try:
            ok = math.isfinite(float(row[k]))
        except ValueError:
            ok = False
        if not ok:
            return problem(file, line, image, columns[k], "non_numeric", "dropped",
                           "{} is {!r}, not a number".format(columns[k], row[k]))
    return problem(file, line, image, "class", "unknown_class", "dropped",
                   "class is {!r}, expected {!r}".format(row[5], expected_class))


def unknown_class(cls: str, classes: Sequence[str]) -> str:
    return "class {!r} is not in the class list {}".format(cls, list(classes))


def size_mismatch(said_by: str, declared: Tuple[float, float], actual: Tuple[float, float], truth: str = "image file",
                  against: str = "file") -> str:
    """The message of a declared photo size that is not the file's (``said_by``: "CSV says", "labels say")."""
    swapped = tuple(declared) == (actual[1], actual[0])
    return "{} {:g}x{:g}, the {} is {:g}x{:g}{}; boxes checked against the {}".format(
        said_by, declared[0], declared[1], truth, actual[0], actual[1], SWAPPED if swapped else "", against)


class Checked(NamedTuple):
    """Boxes sorted by the rules: masks over the boxes given, and the boxes clipped to their photo."""

    masks: Dict[str, np.ndarray]  # degenerate, outside_image, clipped (kept and clipped), and kept
    values: List[np.ndarray]  # x1, y1, x2, y2, photo width, photo height, clipped x1, y1, x2, y2

    @property
    def kept(self) -> np.ndarray:
        return self.masks["kept"]

    @property
    def clipped_boxes(self) -> List[np.ndarray]:
        return self.values[6:]


def check_boxes(x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, width: np.ndarray,
                height: np.ndarray, usable: Optional[np.ndarray] = None) -> Checked:
    """Pixel boxes (x1 y1 x2 y2) on photos of ``width`` x ``height``: no area (x2 <= x1 or y2 <= y1) is
    dropped; one crossing the photo's border is clipped to it, or dropped when nothing is left inside.
    ``usable``: the boxes to check at all (those of a photo that decoded, of a known class)."""
    usable = np.ones(len(x1), bool) if usable is None else usable
    degenerate = usable & ((x2 <= x1) | (y2 <= y1))
    cx1, cy1 = np.clip(x1, 0, width), np.clip(y1, 0, height)
    cx2, cy2 = np.clip(x2, 0, width), np.clip(y2, 0, height)
    outside = usable & ~degenerate & ((cx2 <= cx1) | (cy2 <= cy1))
    kept = usable & ~degenerate & ~outside
    clipped = kept & ((cx1 != x1) | (cy1 != y1) | (cx2 != x2) | (cy2 != y2))
    return Checked({"degenerate": degenerate, "outside_image": outside, "clipped": clipped, "kept": kept},
                   [x1, y1, x2, y2, width, height, cx1, cy1, cx2, cy2])


def box_problems(checked: Checked, where: Callable[[int], Tuple[str, int, str]],
                 field: Callable[[int, str], str]) -> List[Tuple[int, Dict[str, Any]]]:
    """(box index, problem) of every box dropped or clipped, rule by rule; ``where(i)``: its file, line and
    photo; ``field(i, kind)``: the field the problem names."""
    out = []
    for kind, action, text in BOX_RULES:
        idx = np.flatnonzero(checked.masks[kind])
        cols = checked.values[:text.count("%")]
        # One C-level format for all rows.
        values = np.column_stack([c[idx] for c in cols]).ravel().tolist() if len(idx) else []
        messages = ((text + "\0") * len(idx) % tuple(values)).split("\0")
        for j, i in enumerate(idx.tolist()):
            file, line, image = where(i)
            out.append((i, problem(file, line, image, field(i, kind), kind, action, messages[j])))
    return out
