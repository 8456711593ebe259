"""Image decoding shared by training-time evaluation, prediction and serving.

One decoder everywhere, so a model scored offline and the same model behind
the endpoint see identical pixels (EXIF orientation applied, BGR order).

A model's input is decoded by :func:`decode_scaled` straight at its test
scale, the training mapper's way (``data.images.decode_resized``): size and
EXIF orientation from the header, libjpeg's reduced DCT scales with a margin,
then Detectron2's resize, then the orientation. Damaged JPEG data is caught on
the way (``data.images.load_checked``) and reported, not refused.

Every photo shelfdet opens, from a request, a data folder or a training
channel, goes through :func:`open_image`, which lets Pillow try its JPEG and
PNG openers and no other: bytes from outside never reach the WebP, TIFF, ICO,
TGA or JPEG 2000 decoders (the images' Pillow has had exploited bugs in
libwebp).
"""
from __future__ import annotations

import io
import os
from typing import IO, NamedTuple, Optional, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from shelfdet.core import photo_files

# Shelf photos are up to ~12 MP; 60 MP leaves room and still caps memory at ~180 MB per image.
MAX_PIXELS = 60_000_000


# The formats Pillow may try on a photo: what the endpoint's Content-Types name and make data keeps.
# A camera JPEG with a second picture appended comes back from the JPEG opener as Pillow's "MPO" (MPO
# is no opener of its own: Image.open(formats=["MPO"]) is a KeyError), and is decoded as the JPEG it is.
ACCEPTED_FORMATS = ("JPEG", "PNG")
OPENED_FORMATS = ("JPEG", "MPO", "PNG")

# Signatures of formats people send instead, to say which one it was. Read from the bytes here, so
# that no decoder of theirs is ever asked. Formats without a signature of their own (TGA; CUR, whose
# first bytes a TGA can have) are "unrecognised data".
_OTHER_FORMATS = (
    (0, (b"RIFF",), "WebP", (8, b"WEBP")),
    (0, (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"), "TIFF", None),
    (0, (b"\x00\x00\x01\x00",), "ICO", None),
    (0, (b"GIF87a", b"GIF89a"), "GIF", None),
    (0, (b"BM",), "BMP", None),
    (0, (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51"), "JPEG 2000", None),
    (4, (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypmsf1", b"ftyphevc"), "HEIF", None),
    (4, (b"ftypavif", b"ftypavis"), "AVIF", None),
    (0, (b"8BPS",), "PSD", None),
    (0, (b"qoif",), "QOI", None),
    (0, (b"DDS ",), "DDS", None),
    (0, (b"icns",), "ICNS", None),
)
_JPEG_OR_PNG = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image, are truncated, or declare absurd dimensions."""


class FormatNotAccepted(ImageDecodeError):
    """Bytes that are not a JPEG or PNG (another image format, or no image): never decoded.
    ``kind`` says what they are ("WebP image", "unrecognised data")."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def _not_accepted(name: str, found: Optional[str]) -> FormatNotAccepted:
    kind = "{} image".format(found) if found else "unrecognised data"
    return FormatNotAccepted("{}: not a JPEG or PNG image ({})".format(name, kind), kind)


def _other_format(head: bytes) -> Optional[str]:
    for offset, signatures, name, also in _OTHER_FORMATS:
        if head[offset:].startswith(signatures) and (also is None or head[also[0]:].startswith(also[1])):
            return name
    return None


def _head(fp: Union[str, "os.PathLike[str]", IO[bytes]]) -> bytes:
    if isinstance(fp, (str, os.PathLike)):
        with open(fp, "rb") as f:
            return f.read(16)
    fp.seek(0)
    return fp.read(16)


def open_image(fp: Union[str, "os.PathLike[str]", IO[bytes]], name: str = "image") -> Image.Image:
    """``Image.open`` for every photo from outside: Pillow tries its JPEG and PNG openers only.

    Anything else raises :class:`FormatNotAccepted` (an :class:`ImageDecodeError`) naming the format
    its first bytes show; a JPEG or PNG whose header does not open raises Pillow's own error.
    """
    try:
        img = Image.open(fp, formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        head = _head(fp)
        if head.startswith(_JPEG_OR_PNG):
            raise
        raise _not_accepted(name, _other_format(head)) from None
    if img.format not in OPENED_FORMATS:  # a later Pillow's JPEG or PNG opener returning another kind
        found = img.format
        img.close()
        raise _not_accepted(name, found)
    return img


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
        img = open_image(fp, name)
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
