"""Photo files: the one opener (JPEG and PNG only), decode checks in parallel with their displayed size,
resized copies, the reduced-scale decode.

:func:`open_photo` lets Pillow try its JPEG and PNG openers and no other: bytes from outside never
reach the WebP, TIFF, ICO, TGA or JPEG 2000 decoders (the Docker images' Pillow has had exploited
bugs in libwebp). :mod:`shelfdet.core.photos` decodes on top of this module.

cv2.imdecode "succeeds" on a truncated JPEG (grey bottom, a warning on
stderr), so the check is Pillow's: ``verify`` for the container, then a full
``load``, which raises on truncation. The size is the one Detectron2 sees:
after EXIF orientation (phone photos rotated by 90 degrees swap W and H).

Damage that libjpeg decodes through only warns, and Pillow drops every libjpeg
warning (its error manager prints nothing and never reads ``num_warnings``,
Pillow 8.4 to 13). :func:`load_checked` makes the two warnings of damaged
entropy data visible through what Pillow does show, how far libjpeg reads
(see :class:`ScanProbe`), in the same decode.
"""
from __future__ import annotations

import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Callable, Dict, List, NamedTuple, Optional, Tuple, TypeVar, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from shelfdet.core.atomic import temp_beside

EXIF_ORIENTATION = 0x0112
TRANSPOSED = (5, 6, 7, 8)
# EXIF orientation -> the PIL transpose that shows the photo upright (Detectron2's table in read_image).
UPRIGHT = {2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM, 5: Image.TRANSPOSE,
           6: Image.ROTATE_270, 7: Image.TRANSVERSE, 8: Image.ROTATE_90}
# These swap width and height: the stored photo is the displayed one turned by 90 degrees.
SWAPS_SIDES = (Image.TRANSPOSE, Image.ROTATE_270, Image.TRANSVERSE, Image.ROTATE_90)
# Formats libjpeg decodes (MPO: phone photos with a second picture appended).
JPEG_FORMATS = ("JPEG", "MPO")
# A reduced JPEG decode (libjpeg's scaled IDCT) keeps at least this many times the target size, per
# scale, so a proper resize always follows. Measured on the 11 undamaged real photos, as the mean absolute
# difference to a full decode + resize (grey levels, mean/worst photo): 1/2 landing on the target is
# 1.48/2.68, at 1.2 times it 0.82/1.33; the coarser 1/4 and 1/8 are 1.28/2.07 and 1.82/2.55 at 1.25
# times, 0.47/0.69 and 0.66/0.88 at 2.5 times (synthetic shelves stayed under 1 at 1.25 on all three).
# 1.19, not 1.2: a 1920x2560 photo at an 800 px test size (800x1067) is just under 1.2 times it at 1/2
# (960x1280); decoded whole, it gained 1.8x instead of 3.7x.
DRAFT_MARGINS = {2: 1.19, 4: 2.5, 8: 2.5}
# Resized copies are written once and read every epoch: the sharper filter, and about the photos' own quality.
RESIZE_FILTER = Image.LANCZOS
JPEG_QUALITY = 90

# libjpeg's words for the two warnings load_checked turns into damage.
PREMATURE_END = "corrupt JPEG data: premature end of data segment"
EXTRANEOUS_DATA = "corrupt JPEG data: extraneous bytes before marker 0xd9"
# libjpeg-turbo's Huffman decoder fills its 64-bit bit buffer up to 8 bytes past the bits it needs, even
# for the last block (IJG libjpeg: 4): on the real photos, 6 bytes were too few for one, 7 for none.
LOOKAHEAD = 8
# Stands in for the end-of-image marker: the lookahead and no more, in one bits (0xFF stuffed with 0x00,
# as in entropy data). 16 one bits are never a Huffman code, so a decoder still wanting data gets about
# two blocks out of it before it runs out; more padding would hide more damage (on 1,500 crafted JPEGs,
# twice this missed 3 times as many of libjpeg's premature-end warnings; neither flagged a clean one).
PAST_THE_SCAN = b"\xff\x00" * LOOKAHEAD
# A marker in entropy-coded data: 0xFF not followed by a stuffed 0x00, a restart marker or fill.
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Frame markers of Huffman-coded sequential JPEGs (baseline, extended): the only ones probed.
_SEQUENTIAL = (0xC0, 0xC1)
_OTHER_FRAMES = frozenset(range(0xC2, 0xD0)) - {0xC4, 0xC8, 0xCC}  # progressive, lossless, arithmetic

T_ = TypeVar("T_")


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


def open_photo(fp: Union[str, "os.PathLike[str]", IO[bytes]], name: str = "image") -> Image.Image:
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


# The name mapper, serving and bench call it by.
open_image = open_photo


class Checked(NamedTuple):
    width: int
    height: int
    error: Optional[str]  # None when the photo decodes


def check(path: str) -> Checked:
    try:
        with open_photo(path, path) as im:
            im.verify()
        with open(path, "rb") as f:
            data = f.read()

        def load(fp: io.BytesIO) -> Tuple[Tuple[int, int], int]:
            with open_photo(fp, path) as im:
                size, orientation = im.size, im.getexif().get(EXIF_ORIENTATION, 1)
                im.load()
            return size, orientation

        ((width, height), orientation), damage = load_checked(data, load)
    except FormatNotAccepted as err:
        return Checked(0, 0, "not a JPEG or PNG image ({})".format(err.kind))
    except Exception as err:  # noqa: BLE001 - any decoder failure means "unusable photo"
        return Checked(0, 0, "{}: {}".format(type(err).__name__, err))
    if damage:
        return Checked(0, 0, "; ".join(damage))
    if orientation in TRANSPOSED:
        width, height = height, width
    return Checked(width, height, None)


def check_all(paths: List[str], workers: Optional[int] = None) -> Dict[str, Checked]:
    """Pillow's decoders release the GIL, so threads use every core without pickling."""
    workers = workers or max(1, min(8, (os.cpu_count() or 1)))
    with ThreadPoolExecutor(workers) as pool:
        return dict(zip(paths, pool.map(check, paths, chunksize=16) if workers > 1 else map(check, paths)))


def fit(width: int, height: int, max_side: int) -> Tuple[int, int]:
    """The size with the longer side at most ``max_side``, aspect kept; smaller photos keep theirs."""
    longer = max(width, height)
    if longer <= max_side:
        return width, height
    scale = max_side / float(longer)
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def draft_size(size: Tuple[int, int], full: Tuple[int, int]) -> Optional[Tuple[int, int]]:
    """What to ask ``Image.draft`` for to end at ``size`` from a JPEG stored at ``full`` (both stored
    orientation, width first): the largest DCT scale that keeps DRAFT_MARGINS times ``size``, as that
    scale's own size (Pillow then picks exactly it); None: decode every pixel."""
    for scale in (8, 4, 2):
        margin = DRAFT_MARGINS[scale]
        if full[0] // scale >= margin * size[0] and full[1] // scale >= margin * size[1]:
            return full[0] // scale, full[1] // scale
    return None


def exif_transpose_method(image: Image.Image) -> Optional[int]:
    """The transpose that applies the photo's EXIF orientation, or None; unreadable EXIF counts as none."""
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION)
    except Exception:  # noqa: BLE001 - broken EXIF: Detectron2 ignores it too
        return None
    return UPRIGHT.get(orientation)


def decode_resized(image: Image.Image, size: Optional[Tuple[int, int]], method: Optional[int]) -> Image.Image:
    """An opened photo -> RGB at ``size`` (width, height, after orientation), EXIF orientation applied.

    ``size=None`` keeps the photo's own size. JPEGs are decoded at the
    largest DCT scale (1/2, 1/4, 1/8) that keeps both sides at least
    DRAFT_MARGINS times ``size`` (libjpeg's scaled IDCT: at 1/2 a photo
    decodes in about 3/5 of the time and resizes in a third), then resized
    exactly to ``size`` with Detectron2's filter.
    """
    stored = None
    if size is not None:
        # Decoding and resizing happen in the stored orientation; the transpose comes last, on the small image.
        stored = (size[1], size[0]) if method in SWAPS_SIDES else tuple(size)
    box = None
    request = None
    if stored is not None and image.format in JPEG_FORMATS and min(stored) > 0:
        request = draft_size(stored, image.size)
    if request:
        # Pillow returns the area of the reduced image that the full image maps to (the last
        # row/column may be partly outside when a side is not a multiple of the scale).
        drafted = image.draft("RGB", request)
        if drafted:
            box = drafted[1]
    image.load()
    if image.mode != "RGB":
        image = image.convert("RGB")
    if stored is not None:
        image = image.resize(stored, Image.BILINEAR, box=box)
    if method is not None:
        image = image.transpose(method)
    return image


def decode_crop(image: Image.Image, size: Tuple[int, int], window: Tuple[int, int, int, int],
                method: Optional[int]) -> Image.Image:
    """An opened photo -> RGB of ``window`` (left, top, width, height) of the photo resized to ``size``
    (width, height, after orientation): what resizing the whole photo and cropping it gives, computed
    over the window's source pixels only, from a reduced-scale decode where the resize allows one.

    Pillow's resize with a ``box`` maps output pixels exactly as the whole resize does (same scale,
    same offsets), so the window's pixels equal the whole photo's within rounding.
    """
    left, top, width, height = window
    if method is not None:  # rare (phone photos with EXIF rotation): whole, then cut
        whole = np.asarray(decode_resized(image, size, method))
        return Image.fromarray(whole[top:top + height, left:left + width])
    full = image.size
    sx, sy = full[0] / float(size[0]), full[1] / float(size[1])
    region = [left * sx, top * sy, (left + width) * sx, (top + height) * sy]
    if image.format in JPEG_FORMATS and min(size) > 0:
        request = draft_size(tuple(size), full)
        drafted = image.draft("RGB", request) if request else None
        if drafted:
            box = drafted[1]  # the reduced image's area that the full image maps to
            fx, fy = (box[2] - box[0]) / float(full[0]), (box[3] - box[1]) / float(full[1])
            region = [box[0] + region[0] * fx, box[1] + region[1] * fy, box[0] + region[2] * fx, box[1] + region[3] * fy]
    image.load()
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image.resize((width, height), Image.BILINEAR, box=tuple(region))


def jpeg_scan(data: bytes) -> Optional[Tuple[int, int]]:
    """Start and end of the entropy-coded data of a JPEG with one Huffman-coded sequential scan, when
    the end-of-image marker ends it; else None (other formats, progressive or multi-scan JPEGs, a
    file cut inside its scan, or a scan ended by another marker)."""
    if not data.startswith(b"\xff\xd8"):
        return None
    i, components = 2, None
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _OTHER_FRAMES:
            return None
        if marker in _SEQUENTIAL and i + 9 < len(data):
            components = data[i + 9]
        if marker == 0xDA:
            # One scan holds every component, else libjpeg reads all scans before the first row.
            if components is None or i + 4 >= len(data) or data[i + 4] != components:
                return None
            start = i + 2 + length
            end = _MARKER.search(data, start)
            if end is None or end.start() <= start or data[end.start() + 1] != 0xD9:
                return None
            return start, end.start()
        i += 2 + length
    return None


class ScanProbe(io.BytesIO):
    """A JPEG as a file for ``Image.open`` that shows whether libjpeg decoded exactly its entropy data.

    libjpeg warns "premature end of data segment" when the scan runs out
    before its last block (decoding the rest as grey) and "extraneous bytes
    before marker" when its last block is decoded before the scan ends: the
    data was garbled or cut on its way. Pillow shows neither. Here:

    - the end-of-image marker (and anything after it) waits behind
      PAST_THE_SCAN and comes only when the decoder asks for more: a clean
      image is finished before (only its lookahead reads the padding);
    - reads stop once at ``fence``, the scan's last byte: a decoder done
      without it was done early (more than LOOKAHEAD bytes early: one or two
      spare bytes, which some encoders leave, pass).

    One decode, the file's own pixels; a scan that ran out has about two
    more blocks decoded (from PAST_THE_SCAN) before libjpeg's grey.
    """

    def __init__(self, data: bytes, scan: Tuple[int, int]):
        super().__init__(data[:scan[1]] + PAST_THE_SCAN)
        self.fence = scan[1] - 1
        self.ran_out = False

    def read(self, size: Optional[int] = -1) -> bytes:
        pos = self.tell()
        if pos < self.fence and (size is None or size < 0 or pos + size > self.fence):
            size = self.fence - pos
        chunk = super().read(size)
        if not chunk and size != 0 and not self.ran_out:
            self.ran_out = True
            return b"\xff\xd9"
        return chunk

    def damage(self) -> List[str]:
        """After a load: what libjpeg would have warned about."""
        if self.ran_out:
            return [PREMATURE_END]
        if self.tell() <= self.fence:
            return [EXTRANEOUS_DATA]
        return []


def load_checked(data: bytes, load: Callable[[io.BytesIO], T_]) -> Tuple[T_, List[str]]:
    """``load(file)`` (it opens and decodes the photo) on ``data``, and the damage libjpeg decoded through:
    a JPEG with one sequential scan is read through a :class:`ScanProbe`, other photos as they are."""
    scan = jpeg_scan(data)
    if scan is None:
        return load(io.BytesIO(data)), []
    probe = ScanProbe(data, scan)
    return load(probe), probe.damage()


def write_resized(src: str, dst: str, size: Tuple[int, int]) -> int:
    """Writes ``src`` at ``size`` (width, height, displayed) to ``dst``, upright, in its own format; returns bytes.

    The EXIF orientation is applied to the pixels and not written again (the
    manifests' sizes and boxes are the displayed ones). JPEGs are decoded at
    the largest DCT scale that keeps at least ``size``. ``dst`` is replaced
    atomically, so a hard link to ``src`` left there by an earlier build is
    never written through.
    """
    with open_photo(src, src) as im:
        fmt = im.format
        orientation = im.getexif().get(EXIF_ORIENTATION, 1)
        stored = (size[1], size[0]) if orientation in TRANSPOSED else tuple(size)
        request = draft_size(stored, im.size) if fmt in JPEG_FORMATS else None
        if request:
            im.draft("RGB", request)
        out = im.convert("RGB") if im.mode not in ("RGB", "L") else im
        out = out.resize(stored, RESIZE_FILTER)
        if orientation in UPRIGHT:
            out = out.transpose(UPRIGHT[orientation])
    tmp = temp_beside(dst)
    try:
        if fmt in ("JPEG", "MPO"):
            out.save(tmp, "JPEG", quality=JPEG_QUALITY)
        else:
            out.save(tmp, fmt)
        os.replace(tmp, dst)
    except BaseException:
        os.unlink(tmp)
        raise
    return os.path.getsize(dst)


def resize_all(jobs: List[Tuple[str, str, Tuple[int, int]]], workers: Optional[int] = None) -> List[int]:
    """``write_resized`` over (src, dst, size) jobs in threads (Pillow's codecs release the GIL); bytes written."""
    workers = workers or max(1, min(8, (os.cpu_count() or 1)))
    if workers == 1 or len(jobs) < 2:
        return [write_resized(*j) for j in jobs]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda j: write_resized(*j), jobs))
