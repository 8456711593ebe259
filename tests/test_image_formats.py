"""Only JPEG and PNG are decoded (photos.open_photo): other formats are refused before any decoder of
theirs runs, in the photo decoder, in `make data` (dropped and reported like a corrupt image) and in the
training mapper (both of its paths). The HTTP 415 is in tests/test_serving_http.py."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from detectron2.data import transforms as T
from detectron2.structures import BoxMode
from PIL import Image

from shelfdet.core import photos
from shelfdet.data.mapper import FastDatasetMapper

ROOT = Path(__file__).resolve().parent.parent


def _picture(seed: int = 0, size=(96, 72)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _encoded(fmt: str, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    _picture(seed).save(buf, fmt)
    return buf.getvalue()


OTHERS = {"WEBP": "WebP image", "TIFF": "TIFF image", "ICO": "ICO image", "GIF": "GIF image", "BMP": "BMP image",
          "JPEG2000": "JPEG 2000 image", "TGA": "unrecognised data"}


@pytest.mark.parametrize("fmt", sorted(OTHERS))
def test_other_formats_are_refused_naming_what_they_are(fmt, monkeypatch):
    data = _encoded(fmt)
    Image.init()
    asked = []
    if fmt in Image.OPEN:  # its opener is never asked, not even whether the bytes are its
        monkeypatch.setitem(Image.OPEN, fmt, (lambda *a, **k: asked.append("open"),
                                              lambda prefix: asked.append("accept")))
    with pytest.raises(photos.FormatNotAccepted) as err:
        photos.decode_scaled(data, 0, 0, "shelf.x")
    assert str(err.value) == "shelf.x: not a JPEG or PNG image ({})".format(OTHERS[fmt])
    assert err.value.kind == OTHERS[fmt]
    assert isinstance(err.value, photos.ImageDecodeError)  # every caller that refuses bad images refuses it
    assert asked == []


def test_a_camera_mpo_is_decoded_as_the_jpeg_it_starts_with():
    first, second = _picture(1), _picture(2)
    mpo, jpeg = io.BytesIO(), io.BytesIO()
    first.save(mpo, "MPO", save_all=True, append_images=[second])
    first.save(jpeg, "JPEG")
    with photos.open_photo(io.BytesIO(mpo.getvalue())) as im:
        assert im.format == "MPO"
    assert np.array_equal(photos.decode(mpo.getvalue()), photos.decode(jpeg.getvalue()))


def test_a_jpeg_or_png_whose_header_is_cut_stays_a_decode_error_not_a_format_error():
    for data in (_encoded("JPEG")[:12], _encoded("PNG")[:20]):
        with pytest.raises(photos.ImageDecodeError) as err:
            photos.decode(data, "cut")
        assert not isinstance(err.value, photos.FormatNotAccepted)
        assert "not a decodable image" in str(err.value)


def _gt_source(root: Path) -> dict:
    """A Ground Truth folder whose images are JPEGs and PNGs, and three others under photo names."""
    files = {"good.jpg": _encoded("JPEG", 1), "webp.webp": _encoded("WEBP", 2), "tiff.jpg": _encoded("TIFF", 3),
             "ico.png": _encoded("ICO", 4), "good.png": _encoded("PNG", 5), "test.jpg": _encoded("JPEG", 6)}
    splits = {"train": ["good.jpg", "webp.webp", "tiff.jpg"], "val": ["ico.png", "good.png"], "test": ["test.jpg"]}
    (root / "images").mkdir(parents=True)
    for name, data in files.items():
        (root / "images" / name).write_bytes(data)
    for split, names in splits.items():
        records = [{"source-ref": "images/" + name,
                    "shelf": {"annotations": [{"class_id": 0, "left": 10, "top": 8, "width": 30, "height": 40}],
                              "image_size": [{"width": 96, "height": 72, "depth": 3}]},
                    "shelf-metadata": {"class-map": {"0": "SKU"}, "type": "groundtruth/object-detection",
                                       "job-name": "labeling-job/shelf", "human-annotated": "yes"}} for name in names]
        (root / (split + ".manifest")).write_text("".join(json.dumps(r) + "\n" for r in records))
    return files


def test_make_data_drops_and_reports_other_formats_like_corrupt_images(tmp_path):
    src = tmp_path / "gt"
    files = _gt_source(src)
    out = tmp_path / "data"
    proc = subprocess.run([sys.executable, "-m", "shelfdet", "data", "--data-dir", str(out), "--src", str(src),
                           "--format", "gt", "--workers", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "report.json").read_text())
    corrupted = {c["image"]: c["reason"] for c in report["images"]["corrupted"]}
    assert corrupted == {"webp.webp": "not a JPEG or PNG image (WebP image)",
                         "tiff.jpg": "not a JPEG or PNG image (TIFF image)",
                         "ico.png": "not a JPEG or PNG image (ICO image)"}, corrupted
    for name, reason in corrupted.items():
        assert "corrupted image dropped: {} ({})".format(name, reason) in proc.stdout, proc.stdout
    kept = set()
    for manifest in (out / "annotations").glob("*.manifest"):
        kept |= {Path(json.loads(line)["source-ref"]).name for line in manifest.read_text().splitlines()}
    assert kept == {"good.jpg", "good.png", "test.jpg"}
    for name, data in files.items():  # the originals are untouched
        assert (src / "images" / name).read_bytes() == data


@pytest.mark.parametrize("path", ["fast", "detectron2"])
def test_the_training_mapper_refuses_another_format_naming_the_file(tmp_path, path):
    photo = tmp_path / "shelf.jpg"
    photo.write_bytes(_encoded("WEBP", 7))  # a WebP under a JPEG's name
    d = {"file_name": str(photo), "image_id": 0, "height": 72, "width": 96,
         "annotations": [{"bbox": [10, 8, 30, 40], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0}]}
    augs = [T.ResizeShortestEdge(64, 128), T.RandomFlip()]
    if path == "detectron2":
        augs.append(T.RandomBrightness(0.9, 1.1))  # not shape-only: Detectron2's own __call__ maps it
    mapper = FastDatasetMapper(is_train=True, augmentations=augs, image_format="BGR")
    assert mapper.fast_path(d) == (path == "fast")
    with pytest.raises(photos.FormatNotAccepted, match=r"shelf\.jpg: not a JPEG or PNG image \(WebP image\)"):
        mapper(d)
    photo.write_bytes(_encoded("JPEG", 7))
    assert tuple(mapper(d)["image"].shape[1:]) in ((64, 85), (64, 86))
