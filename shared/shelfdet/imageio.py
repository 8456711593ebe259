"""Image decoding shared by training-time evaluation, prediction and serving.

One decoder everywhere, so a model scored offline and the same model behind
the endpoint see identical pixels (EXIF orientation applied, BGR order).
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

# Shelf photos are up to ~12 MP; 60 MP leaves room and still caps memory at ~180 MB per image.
MAX_PIXELS = 60_000_000


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image, are truncated, or declare absurd dimensions."""


def _open(fp, name: str) -> Image.Image:
    try:
        img = Image.open(fp)
    except Image.DecompressionBombError as err:
        raise ImageDecodeError("{}: {}".format(name, err)) from None
    except Exception as err:  # PIL raises several types for junk input
        raise ImageDecodeError("{}: not a decodable image ({})".format(name, type(err).__name__)) from None
    width, height = img.size
    # Checked from the header, before any pixel is decoded.
    if width <= 0 or height <= 0 or width * height > MAX_PIXELS:
        raise ImageDecodeError("{}: declared size {}x{} exceeds the {} pixel limit".format(name, width, height, MAX_PIXELS))
    return img


def _to_bgr(img: Image.Image, name: str) -> np.ndarray:
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        rgb = np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise ImageDecodeError("{}: corrupt or truncated image ({})".format(name, err)) from None
    return np.ascontiguousarray(rgb[:, :, ::-1])


def declared_pixels(data: bytes, name: str = "image") -> int:
    """Width x height from the header alone (the pixel cap and decodability of the header checked)."""
    if not data:
        raise ImageDecodeError("{}: empty payload".format(name))
    width, height = _open(io.BytesIO(data), name).size
    return width * height


def decode(data: bytes, name: str = "image") -> np.ndarray:
    """Bytes -> HxWx3 uint8 BGR array, EXIF orientation applied."""
    if not data:
        raise ImageDecodeError("{}: empty payload".format(name))
    return _to_bgr(_open(io.BytesIO(data), name), name)


def read(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        return decode(f.read(), path)
