"""Small JPEGs with the damage libjpeg decodes through (it only warns), and the real photos that have it.

The real photos (``../shared/realdata``: SKU-110K, academic licence) are read
from there, never copied into the project; tests that need them skip, saying
so, when the folder is absent.
"""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
# What the real photos' README says of them.
DAMAGED_PHOTO = "test_22.jpg"  # lower ~55% garbage; Pillow loads it, libjpeg warns
PADDED_PHOTO = "test_14.jpg"  # 156,340 zero bytes after its end-of-image marker; decodes cleanly
PADDING = 156_340


def real_photo(name: str) -> Path:
    path = REALDATA / name
    if not path.is_file():
        pytest.skip("{} is absent: the real SKU-110K photos are not part of the project".format(path))
    return path


def real_photos() -> list:
    paths = sorted(REALDATA.glob("*.jpg"))
    if not paths:
        pytest.skip("no photos in {}: the real SKU-110K photos are not part of the project".format(REALDATA))
    return paths


def clean_jpeg(width: int = 160, height: int = 120, seed: int = 0, noise: int = 12, cell: int = 8, exif=None) -> bytes:
    """Colour patches ``cell`` px apart, blended, plus pixel noise (+-``noise``): every block carries data."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (max(1, height // cell), max(1, width // cell), 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
    noisy = np.asarray(img).astype(np.int16) + rng.integers(-noise, noise + 1, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90, exif=exif or b"")
    return buf.getvalue()


def scan(data: bytes) -> tuple:
    """Start and end of the entropy-coded data of a one-scan JPEG written here (after SOS, before EOI)."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big"), data.rindex(b"\xff\xd9")


def premature_end(data: bytes, keep: float = 0.6) -> bytes:
    """The scan cut short, then the end-of-image marker: libjpeg's "premature end of data segment"."""
    start, end = scan(data)
    cut = start + int((end - start) * keep)
    return data[:cut] + b"\xff\xd9"


def extraneous(data: bytes, count: int = 200) -> bytes:
    """Bytes left between the last block and the end-of-image marker: libjpeg's "extraneous bytes before marker"."""
    _, end = scan(data)
    return data[:end] + bytes(i % 200 + 1 for i in range(count)) + data[end:]  # no 0xFF: no marker among them


def garbled(data: bytes) -> bytes:
    """A stretch of the scan zeroed, as a bad copy does: the decoder loses step and ends early or late."""
    start, end = scan(data)
    a, b = start + (end - start) // 3, start + (end - start) // 2
    return data[:a] + bytes(b - a) + data[b:]


def trailing_zeros(data: bytes, count: int = PADDING) -> bytes:
    return data + bytes(count)


def libjpeg_warning(data: bytes) -> str:
    """What libjpeg itself prints decoding ``data`` (OpenCV leaves its warnings on stderr); '' when nothing."""
    code = "import sys, cv2, numpy as np; cv2.imdecode(np.frombuffer(sys.stdin.buffer.read(), np.uint8), 1)"
    done = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True, check=True, timeout=120)
    return done.stderr.decode("utf-8", "replace").strip()
