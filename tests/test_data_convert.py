"""SKU-110K CSV -> manifests: the real traps, on real files written here."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from _jpeg_damage import (DAMAGED_PHOTO, PADDED_PHOTO, clean_jpeg, extraneous, premature_end, real_photo,
                          trailing_zeros)
from shelfdet.commands import data as data_command
from shelfdet.data import csvrows, sku110k, synthetic

W, H = 100, 80


def make_root(tmp_path: Path, rows: str, images=("train_0.jpg", "train_1.jpg", "val_0.jpg", "test_0.jpg"),
              split: str = "train") -> Path:
    root = tmp_path / "SKU110K_fixed"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for name in images:
        cv2.imwrite(str(root / "images" / name), np.full((H, W, 3), 120, np.uint8))
    (root / "annotations" / "annotations_{}.csv".format(split)).write_text(rows)
    return root


def problems(report, kind):
    return [p for p in report["problems"] if p["kind"] == kind]


def test_first_row_of_headerless_csv_is_kept(tmp_path):
    root = make_root(tmp_path, "train_0.jpg,1,2,30,40,object,100,80\ntrain_0.jpg,40,2,60,40,object,100,80\n")
    report = sku110k.convert(str(root), str(tmp_path / "d"), log=lambda s: None)
    assert report["boxes"] == {"rows": 2, "kept": 2, "clipped": 0, "dropped": 0, "dropped_by_reason": {}}
    rec = json.loads((tmp_path / "d" / "annotations" / "training.manifest").read_text())
    assert rec["sku"]["annotations"][0] == {"class_id": 0, "left": 1, "top": 2, "width": 29, "height": 38}


@pytest.mark.parametrize("row, kind, field, action", [
    ("train_0.jpg,1,2,30\n", "wrong_column_count", "row", "dropped"),
    ("train_0.jpg,1,2,30,40,object,100,80,9\n", "wrong_column_count", "row", "dropped"),
    ("train_0.jpg,1,abc,30,40,object,100,80\n", "non_numeric", "y1", "dropped"),
    ("train_0.jpg,1,2,30,,object,100,80\n", "non_numeric", "y2", "dropped"),
    ("train_0.jpg,1,2,30,40,cat,100,80\n", "unknown_class", "class", "dropped"),
    ("train_0.jpg,30,2,10,40,object,100,80\n", "degenerate", "x2", "dropped"),  # negative area
    ("train_0.jpg,5,20,30,20,object,100,80\n", "degenerate", "y2", "dropped"),  # zero area
    ("train_0.jpg,120,2,130,40,object,100,80\n", "outside_image", "box", "dropped"),
    ("train_0.jpg,-5,2,30,90,object,100,80\n", "clipped", "box", "clipped"),
    ("train_0.jpg,1,2,30,40,object,80,100\n", "size_mismatch", "image_width", "kept"),
    ("train_7.jpg,1,2,30,40,object,100,80\n", "image_missing", "image_name", "dropped"),
    ("other_0.jpg,1,2,30,40,object,100,80\n", "unknown_split", "image_name", "dropped"),
])
def test_each_bad_row_kind_is_reported_with_file_and_line(tmp_path, row, kind, field, action):
    good = "train_0.jpg,50,2,70,40,object,100,80\n"
    root = make_root(tmp_path, good + row + "train_0.jpg,72,2,90,40,object,100,80\n", images=("train_0.jpg", "other_0.jpg"))
    report = sku110k.convert(str(root), str(tmp_path / "d"), log=lambda s: None)
    found = problems(report, kind)
    assert len(found) == 1, report["problems"]
    p = found[0]
    assert (p["file"], p["line"], p["field"], p["action"]) == (
        str(root / "annotations" / "annotations_train.csv"), 2, field, action)
    b = report["boxes"]
    assert b["rows"] == b["kept"] + b["dropped"] == 3
    assert b["dropped"] == (1 if action == "dropped" else 0)
    assert b["clipped"] == (1 if action == "clipped" else 0)
    if action == "dropped":
        assert b["dropped_by_reason"] == {kind: 1}
    manifest = (tmp_path / "d" / "annotations" / "training.manifest").read_text().splitlines()
    kept = [a for line in manifest for a in json.loads(line)["sku"]["annotations"]]
    assert len(kept) == b["kept"]
    if kind == "clipped":
        assert {"class_id": 0, "left": 0, "top": 2, "width": 30, "height": 78} in kept


def test_size_is_read_after_exif_orientation(tmp_path):
    root = make_root(tmp_path, "train_0.jpg,1,2,30,90,object,80,100\n", images=())
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: displayed 80x100
    Image.new("RGB", (W, H), (90, 90, 90)).save(root / "images" / "train_0.jpg", exif=exif)
    report = sku110k.convert(str(root), str(tmp_path / "d"), log=lambda s: None)
    assert report["problems"] == []
    rec = json.loads((tmp_path / "d" / "annotations" / "training.manifest").read_text())
    assert rec["sku"]["image_size"] == [{"width": 80, "height": 100, "depth": 3}]


def test_truncated_jpeg_is_dropped_with_reason(tmp_path):
    root = make_root(tmp_path, "train_0.jpg,1,2,30,40,object,100,80\ntrain_1.jpg,1,2,30,40,object,100,80\n")
    img = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    data = cv2.imencode(".jpg", img)[1].tobytes()
    (root / "images" / "train_1.jpg").write_bytes(data[:len(data) // 2])
    report = sku110k.convert(str(root), str(tmp_path / "d"), log=lambda s: None)
    assert [c["image"] for c in report["images"]["corrupted"]] == ["train_1.jpg"]
    assert "truncated" in report["images"]["corrupted"][0]["reason"]
    assert report["boxes"]["dropped_by_reason"] == {"image_corrupted": 1}
    assert not (tmp_path / "d" / "training" / "train_1.jpg").exists()
    assert report["channels"]["training"] == {"images": 1, "boxes": 1}


def test_fast_and_slow_csv_paths_agree(tmp_path):
    # Quotes, CRLF, decimals and signs take the csv-module path; the values must not differ.
    text = 'a_1.jpg,1,2,3,4,object,10,10\r\n"a_1.jpg",1,2,3,4,object,10,10\na_2.jpg,1.5,-2,3,4,object,10,10\n\n' \
           'a_2.jpg,12345678,2,3,4,object,10,10'
    path = tmp_path / "x.csv"
    path.write_text(text)
    rows, probs, seen = csvrows.read([str(path)])
    assert probs == [] and seen == 4
    assert [rows.names[i] for i in rows.photo] == ["a_1.jpg", "a_1.jpg", "a_2.jpg", "a_2.jpg"]
    assert rows.line.tolist() == [1, 2, 3, 5]
    assert rows.values[:, 0].tolist() == [1, 1, 1.5, 12345678]
    assert rows.values[2, 1] == -2


def test_synthetic_set_converts_with_every_problem_accounted(tmp_path):
    gen = synthetic.generate(str(tmp_path / "src"), {"train": 8, "val": 4, "test": 4}, (160, 128), seed=3,
                             corrupt={"train": 1, "test": 1}, workers=1)
    report = sku110k.convert(gen.root, str(tmp_path / "d"), bucket="bk", prefix="p/q", log=lambda s: None)
    assert sorted(c["image"] for c in report["images"]["corrupted"]) == sorted(gen.corrupted)
    clean = {n: k for n, k in gen.boxes.items() if n not in gen.corrupted}
    assert report["boxes"]["kept"] == sum(clean.values())
    kinds = {p["kind"] for p in report["problems"]}
    assert {"degenerate", "clipped", "size_mismatch", "image_corrupted"} <= kinds
    assert report["boxes"]["dropped_by_reason"]["degenerate"] == 3
    line = (tmp_path / "d" / "annotations" / "validation.manifest").read_text().splitlines()[0]
    rec = json.loads(line)
    assert rec["source-ref"] == "s3://bk/p/q/validation/val_0.jpg"
    meta = rec["sku-metadata"]
    assert meta["class-map"] == {"0": "SKU"} and meta["type"] == "groundtruth/object-detection"
    assert len(meta["objects"]) == len(rec["sku"]["annotations"]) == gen.boxes["val_0.jpg"]
    assert all(o == {"confidence": 1.0} for o in meta["objects"])


def test_synthetic_generation_is_deterministic(tmp_path):
    a = synthetic.generate(str(tmp_path / "a"), {"train": 3, "val": 1, "test": 1}, (128, 96), seed=5, workers=1)
    b = synthetic.generate(str(tmp_path / "b"), {"train": 3, "val": 1, "test": 1}, (128, 96), seed=5, workers=1)
    for sub in ("images/train_2.jpg", "annotations/annotations_train.csv"):
        assert Path(a.root, sub).read_bytes() == Path(b.root, sub).read_bytes()
    assert all(5 <= n for n in a.boxes.values()), a.boxes


def test_damaged_jpegs_are_dropped_with_libjpegs_warning_and_padded_ones_kept(tmp_path, capsys):
    # Pillow loads all four; libjpeg warns about the middle two (tests/test_photo_decode.py checks that).
    clean = clean_jpeg()
    files = {"train_0.jpg": clean, "train_1.jpg": premature_end(clean), "train_2.jpg": extraneous(clean),
             "train_3.jpg": trailing_zeros(clean)}
    root = make_root(tmp_path, "".join("{},1,2,30,40,object,160,120\n".format(n) for n in files), images=())
    for name, data in files.items():
        (root / "images" / name).write_bytes(data)
    # Through `make data SRC=...`'s entry.
    assert data_command.main(["--data-dir", str(tmp_path / "d"), "--src", str(root)]) == 0
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert {c["image"]: c["reason"] for c in report["images"]["corrupted"]} == {
        "train_1.jpg": "corrupt JPEG data: premature end of data segment",
        "train_2.jpg": "corrupt JPEG data: extraneous bytes before marker 0xd9"}
    assert report["boxes"]["dropped_by_reason"] == {"image_corrupted": 2}
    assert report["channels"]["training"] == {"images": 2, "boxes": 2}
    assert not (tmp_path / "d" / "training" / "train_1.jpg").exists()
    assert (tmp_path / "d" / "training" / "train_3.jpg").read_bytes() == files["train_3.jpg"]
    assert "corrupted image dropped: train_1.jpg (corrupt JPEG data: premature end of data segment)" in \
        capsys.readouterr().out


def test_the_damaged_real_photo_is_dropped_and_the_padded_one_kept(tmp_path, capsys):
    damaged, padded = real_photo(DAMAGED_PHOTO), real_photo(PADDED_PHOTO)
    # One box each, written here inside the photos' real sizes: not SKU-110K labels.
    rows = "{},100,100,400,500,object,1920,2560\n{},100,100,400,500,object,2336,4160\n".format(damaged.name,
                                                                                              padded.name)
    root = make_root(tmp_path, rows, images=(), split="test")
    for photo in (damaged, padded):
        (root / "images" / photo.name).symlink_to(photo)
    assert data_command.main(["--data-dir", str(tmp_path / "d"), "--src", str(root)]) == 0
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert report["images"]["corrupted"] == [
        {"image": damaged.name, "channel": "test", "reason": "corrupt JPEG data: premature end of data segment"}]
    assert report["channels"]["test"] == {"images": 1, "boxes": 1}
    rec = json.loads((tmp_path / "d" / "annotations" / "test.manifest").read_text())
    assert rec["source-ref"].endswith(padded.name)
    assert rec["sku"]["image_size"] == [{"width": 2336, "height": 4160, "depth": 3}]
    assert "corrupted image dropped: {}".format(damaged.name) in capsys.readouterr().out
