"""Decode-checks images in parallel and reads their displayed size; writes resized copies.

cv2.imdecode "succeeds" on a truncated JPEG (grey bottom, a warning on
stderr), so the check is Pillow's: ``verify`` for the container, then a full
``load``, which raises on truncation. The size is the one Detectron2 sees:
after EXIF orientation (phone photos rotated by 90 degrees swap W and H).
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, NamedTuple, Optional, Tuple

from PIL import Image

EXIF_ORIENTATION = 0x0112
TRANSPOSED = (5, 6, 7, 8)
# EXIF orientation -> the PIL transpose that shows the image upright.
UPRIGHT = {2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM, 5: Image.TRANSPOSE,
           6: Image.ROTATE_270, 7: Image.TRANSVERSE, 8: Image.ROTATE_90}
# A reduced JPEG decode (libjpeg's scaled IDCT) keeps at least this much more than the target size, so
# a proper resize always follows: landing exactly on the target, the 1/4 and 1/8 scales differ from a
# full decode + resize by 1.4-2.4 grey levels on average on shelf photos; with the margin, under 1.
DRAFT_MARGIN = 1.25
# Resized copies are written once and read every epoch: the sharper filter, and about the photos' own quality.
RESIZE_FILTER = Image.LANCZOS
JPEG_QUALITY = 90


class Checked(NamedTuple):
    width: int
    height: int
    error: Optional[str]  # None when the image decodes


def check(path: str) -> Checked:
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            width, height = im.size
            orientation = im.getexif().get(EXIF_ORIENTATION, 1)
            im.load()
    except Exception as err:  # noqa: BLE001 - any decoder failure means "unusable image"
        return Checked(0, 0, "{}: {}".format(type(err).__name__, err))
    if orientation in TRANSPOSED:
        width, height = height, width
    return Checked(width, height, None)


def check_all(paths: List[str], workers: Optional[int] = None) -> Dict[str, Checked]:
    """Pillow's decoders release the GIL, so threads use every core without pickling."""
    workers = workers or max(1, min(8, (os.cpu_count() or 1)))
    with ThreadPoolExecutor(workers) as pool:
        return dict(zip(paths, pool.map(check, paths, chunksize=16) if workers > 1 else map(check, paths)))


def fit(width: int, height: int, max_side: int) -> Tuple[int, int]:
    """The size with the longer side at most ``max_side``, aspect kept; smaller images keep theirs."""
    longer = max(width, height)
    if longer <= max_side:
        return width, height
    scale = max_side / float(longer)
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def draft_size(size: Tuple[int, int]) -> Tuple[int, int]:
    """What to ask ``Image.draft`` for to end at ``size``: DRAFT_MARGIN larger (Pillow keeps at least that)."""
    return int(math.ceil(size[0] * DRAFT_MARGIN)), int(math.ceil(size[1] * DRAFT_MARGIN))


def write_resized(src: str, dst: str, size: Tuple[int, int]) -> int:
    """Writes ``src`` at ``size`` (width, height, displayed) to ``dst``, upright, in its own format; returns bytes.

    The EXIF orientation is applied to the pixels and not written again (the
    manifests' sizes and boxes are the displayed ones). JPEGs are decoded at
    the largest DCT scale that keeps at least ``size``. ``dst`` is replaced
    atomically, so a hard link to ``src`` left there by an earlier build is
    never written through.
    """
    with Image.open(src) as im:
        fmt = im.format
        orientation = im.getexif().get(EXIF_ORIENTATION, 1)
        stored = (size[1], size[0]) if orientation in TRANSPOSED else tuple(size)
        if fmt in ("JPEG", "MPO"):
            im.draft("RGB", draft_size(stored))
        out = im.convert("RGB") if im.mode not in ("RGB", "L") else im
        out = out.resize(stored, RESIZE_FILTER)
        if orientation in UPRIGHT:
            out = out.transpose(UPRIGHT[orientation])
    tmp = dst + ".tmp"
    if fmt in ("JPEG", "MPO"):
        out.save(tmp, "JPEG", quality=JPEG_QUALITY)
    else:
        out.save(tmp, fmt)
    os.replace(tmp, dst)
    return os.path.getsize(dst)


def resize_all(jobs: List[Tuple[str, str, Tuple[int, int]]], workers: Optional[int] = None) -> List[int]:
    """``write_resized`` over (src, dst, size) jobs in threads (Pillow's codecs release the GIL); bytes written."""
    workers = workers or max(1, min(8, (os.cpu_count() or 1)))
    if workers == 1 or len(jobs) < 2:
        return [write_resized(*j) for j in jobs]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda j: write_resized(*j), jobs))
