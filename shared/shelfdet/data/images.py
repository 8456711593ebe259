"""Decode-checks images in parallel and reads their displayed size.

cv2.imdecode "succeeds" on a truncated JPEG (grey bottom, a warning on
stderr), so the check is Pillow's: ``verify`` for the container, then a full
``load``, which raises on truncation. The size is the one Detectron2 sees:
after EXIF orientation (phone photos rotated by 90 degrees swap W and H).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, NamedTuple, Optional

from PIL import Image

EXIF_ORIENTATION = 0x0112
TRANSPOSED = (5, 6, 7, 8)


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
