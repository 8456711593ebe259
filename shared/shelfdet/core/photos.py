"""Photo decoding shared by training-time evaluation, prediction and serving.

One decoder everywhere, so a model scored offline and the same model behind
the endpoint see identical pixels (EXIF orientation applied, BGR order).

A model's input is decoded by :func:`decode_scaled` straight at its test
scale, the training mapper's way (``photo_files.decode_resized``): size and
EXIF orientation from the header, libjpeg's reduced DCT scales with a margin,
then Detectron2's resize, then the orientation. Damaged JPEG data is caught on
the way (``photo_files.load_checked``) and reported, not refused.

Every photo shelfdet opens, from a request, a data folder or a training
channel, goes through :func:`open_photo` (in :mod:`shelfdet.core.photo_files`),
which lets Pillow try its JPEG and PNG openers and no other.
"""
from __future__ import annotations

import io
from typing import NamedTuple, Tuple

import numpy as np
from PIL import Image

from shelfdet.core import photo_files
# The opener and its errors live with the file checks that use them; their public names stay here too.
from shelfdet.core.photo_files import (  # noqa: F401
    ACCEPTED_FORMATS, OPENED_FORMATS, FormatNotAccepted, ImageDecodeError, open_image, open_photo)

# Shelf photos are up to ~12 MP; 60 MP leaves room and still caps memory at ~180 MB per image.
MAX_PIXELS = 60_000_000


class Decoded(NamedTuple):
    """A photo as a model reads it."""

    image: np.ndarray  # HxWx3 uint8 BGR, upright, at the model's test scale (or full size)
    height: int  # the photo's own size, upright: boxes are given in it
    width: int
    warnings: Tuple[str, ...] = ()  # damage decoded through (the pixels past it are not the photo's)


def inference_size(height: int, width: int, min_size: int, max_size: int) -> Tuple[int, int]:
    """(height, width) of Detectron2's test-time ``ResizeShortestEdge`` with no side below 1 px;
    ``min_size`` 0: the image's own size. See ``inference.inference_resize``."""
    if min_size <= 0:
        return height, width
    scale = min_size / min(height, width)
    new_h, new_w = (min_size, scale * width) if height < width else (scale * height, min_size)
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def _open(fp, name: str) -> Image.Image:
    try:
        img = open_photo(fp, name)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as err:  # PIL's own cap, far above ours: say ours
        raise ImageDecodeError("{}: declared size exceeds the {} pixel limit ({})".format(name, MAX_PIXELS, err)) from None
    except Exception as err:  # PIL raises several types for junk input
        raise ImageDecodeError("{}: not a decodable image ({})".format(name, type(err).__name__)) from None
    width, height = img.size
    # Checked from the header, before any pixel is decoded.
    if width <= 0 or height <= 0 or width * height > MAX_PIXELS:
        raise ImageDecodeError("{}: declared size {}x{} exceeds the {} pixel limit".format(name, width, height, MAX_PIXELS))
    return img


def declared_pixels(data: bytes, name: str = "image") -> int:
    """Width x height from the header alone (the pixel cap and decodability of the header checked)."""
    if not data:
        raise ImageDecodeError("{}: empty payload".format(name))
    width, height = _open(io.BytesIO(data), name).size
    return width * height


def decode_scaled(data: bytes, min_size: int, max_size: int, name: str = "image") -> Decoded:
    """Bytes -> the photo resized as a model with this test size resizes it (``min_size`` 0: full size).

    JPEGs large enough decode at 1/2, 1/4 or 1/8 scale: within about one
    grey level of a full decode + resize on photos, at a fraction of the time
    and memory.
    """
    if not data:
        raise ImageDecodeError("{}: empty payload".format(name))

    def load(fp: io.BytesIO) -> Tuple[Image.Image, int, int]:
        img = _open(fp, name)
        method = photo_files.exif_transpose_method(img)
        width, height = img.size
        if method in photo_files.SWAPS_SIDES:
            width, height = height, width
        new_h, new_w = inference_size(height, width, min_size, max_size)
        size = None if (new_h, new_w) == (height, width) else (new_w, new_h)
        return photo_files.decode_resized(img, size, method), height, width

    try:
        (rgb, height, width), damage = photo_files.load_checked(data, load)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise ImageDecodeError("{}: corrupt or truncated image ({})".format(name, err)) from None
    return Decoded(np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1]), height, width, tuple(damage))


def decode(data: bytes, name: str = "image") -> np.ndarray:
    """Bytes -> HxWx3 uint8 BGR array at full size, EXIF orientation applied."""
    return decode_scaled(data, 0, 0, name).image


def read(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        return decode(f.read(), path)
