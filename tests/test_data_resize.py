"""`make data MAX_SIDE=...`: a dataset whose images are resized once, boxes scaled, manifests valid."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shelfdet.core import catalog
from shelfdet.commands import data as data_command
from shelfdet.data import build
from shelfdet.core import photo_files

ROOT = Path(__file__).resolve().parents[1]
MAX_SIDE = 200
# name: (displayed width, height, EXIF orientation, format)
IMAGES = {
    "train_0.jpg": (400, 300, None, "JPEG"),  # landscape, halved
    "train_1.jpg": (300, 400, 6, "JPEG"),     # stored sideways 400x300, shown 300x400
    "train_2.png": (250, 100, None, "PNG"),
    "val_0.jpg": (160, 120, None, "JPEG"),    # already small: kept as it is
    "test_0.jpg": (200, 150, None, "JPEG"),   # exactly at the limit: kept
}
BOXES = [(10, 20, 110, 80), (150, 30, 230, 90)]  # x1, y1, x2, y2 in displayed pixels


def make_source(root: Path) -> Path:
    src = root / "SKU110K_fixed"
    (src / "images").mkdir(parents=True)
    (src / "annotations").mkdir()
    rows = {"train": [], "val": [], "test": []}
    for name, (w, h, orientation, fmt) in IMAGES.items():
        shown = np.zeros((h, w, 3), np.uint8)
        shown[:, : w // 2] = (200, 30, 30)  # left half red: shows whether the copy is upright
        shown[:, w // 2:] = (30, 30, 200)
        im = Image.fromarray(shown)
        kwargs = {"quality": 95} if fmt == "JPEG" else {}
        if orientation:
            exif = Image.Exif()
            exif[photo_files.EXIF_ORIENTATION] = orientation
            kwargs["exif"] = exif.tobytes()
            im = im.transpose(Image.ROTATE_90)
        im.save(src / "images" / name, fmt, **kwargs)
        split = name.split("_")[0]
        for x1, y1, x2, y2 in BOXES:
            rows[split].append("{},{},{},{},{},object,{},{}\n".format(name, x1, y1, min(x2, w), min(y2, h), w, h))
    for split, lines in rows.items():
        (src / "annotations" / "annotations_{}.csv".format(split)).write_text("".join(lines))
    return src


def digest(folder: Path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def manifest(data: Path, channel: str):
    return {os.path.basename(r["source-ref"]): r["sku"] for r in
            map(json.loads, (data / "annotations" / (channel + ".manifest")).read_text().splitlines())}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resize")
    src = make_source(tmp)
    before = digest(src / "images")
    data = tmp / "data"
    # First as they are (channel files are hard links to the source), then resized over that folder.
    assert data_command.main(["--data-dir", str(data), "--src", str(src.parent)]) == 0
    plain = {c: manifest(data, c) for c in catalog.CHANNELS}
    assert data_command.main(["--data-dir", str(data), "--src", str(src.parent), "--max-side", str(MAX_SIDE)]) == 0
    return {"src": src, "data": data, "before": before, "plain": plain}


def test_every_image_fits_and_small_ones_are_the_source_files(built):
    data, src = built["data"], built["src"]
    for name, (w, h, _, fmt) in IMAGES.items():
        channel = {"train": "training", "val": "validation", "test": "test"}[name.split("_")[0]]
        path = data / channel / name
        with Image.open(path) as im:
            assert im.format == fmt and max(im.size) <= MAX_SIDE
            assert im.getexif().get(photo_files.EXIF_ORIENTATION, 1) == 1, "the copy is upright, without the tag"
            left, right = im.convert("RGB").getpixel((2, im.size[1] // 2)), im.convert("RGB").getpixel(
                (im.size[0] - 3, im.size[1] // 2))
        assert left[0] > 150 > left[2] and right[2] > 150 > right[0], "left half must stay red: {}".format(name)
        expected = photo_files.fit(w, h, MAX_SIDE)
        assert im.size == expected
        same_file = os.path.samefile(path, src / "images" / name)
        assert same_file == (max(w, h) <= MAX_SIDE)
    assert digest(src / "images") == built["before"], "the source images were written through a link"


def test_manifests_carry_scaled_sizes_and_boxes(built):
    for channel in catalog.CHANNELS:
        for name, rec in manifest(built["data"], channel).items():
            w, h = IMAGES[name][:2]
            nw, nh = photo_files.fit(w, h, MAX_SIDE)
            assert rec["image_size"][0]["width"] == nw and rec["image_size"][0]["height"] == nh
            old = built["plain"][channel][name]["annotations"]
            assert len(rec["annotations"]) == len(old) > 0
            for a, b in zip(rec["annotations"], old):
                assert a["left"] == pytest.approx(b["left"] * nw / w, abs=0.005)
                assert a["top"] == pytest.approx(b["top"] * nh / h, abs=0.005)
                assert a["width"] == pytest.approx(b["width"] * nw / w, abs=0.01)
                assert a["height"] == pytest.approx(b["height"] * nh / h, abs=0.01)
                assert a["left"] + a["width"] <= nw + 1e-6 and a["top"] + a["height"] <= nh + 1e-6
    report = json.loads((built["data"] / "report.json").read_text())
    assert report["options"]["max_side"] == MAX_SIDE
    assert report["resized"]["images"] == 3 and report["resized"]["bytes_after"] < report["resized"]["bytes_before"]


def test_the_resized_set_loads_and_maps_for_training(built):
    from shelfdet.data.mapper import FastDatasetMapper  # before Detectron2: it applies shelfdet.core.compat

    from detectron2.data import transforms as T

    data = built["data"]
    mapper = FastDatasetMapper(is_train=True, augmentations=[T.ResizeShortestEdge((100,), 200, "choice")],
                               image_format="BGR")
    for channel in catalog.CHANNELS:
        dicts, _ = catalog.load_manifest(str(data / "annotations" / (channel + ".manifest")), str(data / channel))
        for d in dicts:
            out = mapper(d)  # checks the file's size against the manifest's, as Detectron2 does
            assert len(out["instances"]) == len(d["annotations"])


def test_a_new_max_side_rebuilds_and_without_it_the_originals_come_back(built, tmp_path):
    src = built["src"]
    args = data_command.parser().parse_args(["--data-dir", str(built["data"]), "--src", str(src.parent),
                                      "--max-side", str(MAX_SIDE)])
    assert build.up_to_date(str(built["data"]), data_command.options(args))
    args.max_side = 300
    assert not build.up_to_date(str(built["data"]), data_command.options(args))
    data = tmp_path / "d"
    assert data_command.main(["--data-dir", str(data), "--src", str(src.parent), "--max-side", str(MAX_SIDE)]) == 0
    assert data_command.main(["--data-dir", str(data), "--src", str(src.parent)]) == 0
    assert os.path.samefile(data / "training" / "train_0.jpg", src / "images" / "train_0.jpg")
    assert manifest(data, "training") == built["plain"]["training"]


def test_bad_max_side_and_the_makefile_variable(capsys):
    with pytest.raises(SystemExit):
        data_command.parser().parse_args(["--data-dir", "d", "--max-side", "12"])
    assert "64 at least" in capsys.readouterr().err
    make = ["make", "-n", "--no-print-directory", "-o", ".venv/.stamp", "data"]
    out = subprocess.run(make + ["MAX_SIDE=1333"], cwd=str(ROOT), capture_output=True, text=True).stdout
    assert "--max-side 1333" in out
    out = subprocess.run(make, cwd=str(ROOT), capture_output=True, text=True).stdout
    assert "shelfdet data" in out and "--max-side" not in out
