"""`make data SRC=<folder> FORMAT=coco|voc|yolo|gt`: the same generated shelves written in each
format's standard layout convert to the manifests the SKU-110K CSV path writes, with the same checks
(corrupted images, boxes without area, outside or across the border) and a report naming file,
line and field for each bad label."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from shelfdet.commands import data as data_command

SPLITS = {"train_": "train", "val_": "val", "test_": "test"}
ROOT = Path(__file__).resolve().parent.parent


def synthetic_shelves(out: Path, train: int = 6, val: int = 3, test: int = 3):
    """A small synthetic SKU-110K (with its deliberate defects) built by the CSV path into ``out``;
    returns its images folder and labels: image -> (split, declared size, [x1 y1 x2 y2 boxes])."""
    assert data_command.main(["--data-dir", str(out), "--train-images", str(train), "--val-images", str(val),
                       "--test-images", str(test), "--image-size", "160x128", "--workers", "2"]) == 0
    source = out / "source" / "SKU110K_fixed"
    labels = {}
    for path in sorted((source / "annotations").glob("*.csv")):
        with open(path, newline="") as f:
            for row in csv.reader(f):
                try:
                    name, x1, y1, x2, y2, _, w, h = row
                    box = [float(v) for v in (x1, y1, x2, y2)]
                    size = (int(w), int(h))
                except ValueError:
                    continue  # a malformed row: the CSV path drops it too
                split = next(s for p, s in SPLITS.items() if name.startswith(p))
                labels.setdefault(name, (split, size, []))[2].append(box)
    for image in sorted((source / "images").iterdir()):
        if image.name not in labels:
            split = next((s for p, s in SPLITS.items() if image.name.startswith(p)), None)
            if split:
                labels[image.name] = (split, (160, 128), [])
    return source / "images", labels


@pytest.fixture(scope="module")
def shelves(tmp_path_factory):
    """The CSV path's data folder, its images and their labels."""
    out = tmp_path_factory.mktemp("csv-path")
    images, labels = synthetic_shelves(out)
    return out, images, labels


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.exists():
        shutil.copyfile(src, dst)


def write_coco(root: Path, images: Path, labels, categories=("SKU",), classes_of=None):
    (root / "annotations").mkdir(parents=True)
    docs = {s: {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": c} for i, c in enumerate(categories)]}
            for s in ("train", "val", "test")}
    for n, (name, (split, (w, h), boxes)) in enumerate(sorted(labels.items())):
        _link(images / name, root / (split + "2017") / name)
        docs[split]["images"].append({"id": n, "file_name": name, "width": w, "height": h})
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            cat = 1 + (classes_of(name, k) if classes_of else 0)
            docs[split]["annotations"].append({"id": len(docs[split]["annotations"]), "image_id": n, "category_id": cat,
                                               "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0, "area": 1})
    for split, doc in docs.items():
        (root / "annotations" / "instances_{}2017.json".format(split)).write_text(json.dumps(doc))


def write_voc(root: Path, images: Path, labels):
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    ids = {"train": [], "val": [], "test": []}
    for name, (split, (w, h), boxes) in sorted(labels.items()):
        stem = os.path.splitext(name)[0]
        ids[split].append(stem)
        _link(images / name, root / "JPEGImages" / name)
        objects = "".join("<object><name>SKU</name><difficult>0</difficult><bndbox><xmin>{:g}</xmin><ymin>{:g}</ymin>"
                          "<xmax>{:g}</xmax><ymax>{:g}</ymax></bndbox></object>\n".format(x1 + 1, y1 + 1, x2, y2)
                          for x1, y1, x2, y2 in boxes)
        (root / "Annotations" / (stem + ".xml")).write_text(
            "<annotation>\n<filename>{}</filename>\n<size><width>{}</width><height>{}</height><depth>3</depth></size>\n{}"
            "</annotation>\n".format(escape(name), w, h, objects))
    for split, stems in ids.items():
        (root / "ImageSets" / "Main" / (split + ".txt")).write_text("".join(s + "\n" for s in stems))


def write_yolo(root: Path, images: Path, labels):
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\ntest: images/test\nnames:\n  0: SKU\n")
    from PIL import Image

    for name, (split, (w, h), boxes) in sorted(labels.items()):
        _link(images / name, root / "images" / split / name)
        try:  # YOLO labels are fractions of the image file's own size
            with Image.open(images / name) as im:
                w, h = im.size
        except OSError:
            pass
        rows = ["0 {:.8f} {:.8f} {:.8f} {:.8f}".format((x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h)
                for x1, y1, x2, y2 in boxes]
        label = root / "labels" / split / (os.path.splitext(name)[0] + ".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(r + "\n" for r in rows))


def write_gt(root: Path, images: Path, labels):
    lines = {"train": [], "val": [], "test": []}
    for name, (split, (w, h), boxes) in sorted(labels.items()):
        _link(images / name, root / "images" / name)
        record = {"source-ref": "images/" + name,
                  "shelf": {"annotations": [{"class_id": 0, "left": x1, "top": y1, "width": x2 - x1, "height": y2 - y1}
                                            for x1, y1, x2, y2 in boxes],
                            "image_size": [{"width": w, "height": h, "depth": 3}]},
                  "shelf-metadata": {"class-map": {"0": "SKU"}, "type": "groundtruth/object-detection",
                                     "job-name": "labeling-job/shelf", "human-annotated": "yes"}}
        lines[split].append(json.dumps(record))
    for split, records in lines.items():
        (root / (split + ".manifest")).write_text("".join(r + "\n" for r in records))


WRITERS = {"coco": write_coco, "voc": write_voc, "yolo": write_yolo, "gt": write_gt}


def manifests(data_dir: Path):
    """channel -> image -> (size, class map, sorted boxes as (class, left, top, width, height))."""
    out = {}
    for path in sorted((data_dir / "annotations").glob("*.manifest")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            label = next(k for k in record if k + "-metadata" in record)
            size = record[label]["image_size"][0]
            boxes = sorted((a["class_id"], a["left"], a["top"], a["width"], a["height"]) for a in record[label]["annotations"])
            out.setdefault(path.stem, {})[os.path.basename(record["source-ref"])] = (
                (size["width"], size["height"]), record[label + "-metadata"]["class-map"], boxes)
    return out


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_each_format_converts_to_the_csv_paths_manifests(shelves, tmp_path, fmt):
    csv_dir, images, labels = shelves
    src = tmp_path / fmt
    WRITERS[fmt](src, images, labels)
    out = tmp_path / "data"
    proc = subprocess.run([sys.executable, "-m", "shelfdet", "data", "--data-dir", str(out), "--src", str(src),
                           "--format", fmt, "--workers", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    want, got = manifests(csv_dir), manifests(out)
    assert set(got) == set(want) == {"training", "validation", "test"}
    for channel in want:
        assert sorted(got[channel]) == sorted(want[channel]), channel
        for name, (size, class_map, boxes) in want[channel].items():
            g_size, g_map, g_boxes = got[channel][name]
            assert (g_size, g_map, len(g_boxes)) == (size, class_map, len(boxes)), name
            for a, b in zip(g_boxes, boxes):  # YOLO's normalised coordinates come back to 1/100 px
                assert a[0] == b[0] and a[1:] == pytest.approx(b[1:], abs=0.011), name
    ours, theirs = (json.loads((d / "report.json").read_text()) for d in (out, csv_dir))
    assert ours["channels"] == theirs["channels"]
    assert ours["boxes"]["kept"] == theirs["boxes"]["kept"] and ours["boxes"]["clipped"] == theirs["boxes"]["clipped"]
    assert sorted(c["image"] for c in ours["images"]["corrupted"]) == sorted(c["image"] for c in theirs["images"]["corrupted"])
    assert {p["kind"] for p in ours["problems"]} >= {"degenerate", "image_corrupted"}
    assert "corrupted image dropped: " in proc.stdout and "boxes: " in proc.stdout
    # A second call finds it current; a touched label file makes it convert again.
    again = subprocess.run([sys.executable, "-m", "shelfdet", "data", "--data-dir", str(out), "--src", str(src),
                            "--format", fmt], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "is up to date" in again.stdout, again.stdout + again.stderr


def test_a_multi_class_coco_set_keeps_its_class_map_and_trains_as_one_catalog(shelves, tmp_path):
    from shelfdet.core import catalog

    _, images, labels = shelves
    src = tmp_path / "coco"
    write_coco(src, images, labels, categories=("bottle", "box"), classes_of=lambda name, k: k % 2)
    out = tmp_path / "data"
    assert data_command.main(["--data-dir", str(out), "--src", str(src), "--format", "coco"]) == 0
    got = manifests(out)
    for channel in got.values():
        for size, class_map, boxes in channel.values():
            assert class_map == {"0": "bottle", "1": "box"}
            assert {b[0] for b in boxes} <= {0, 1}
    assert any(b[0] == 1 for c in got.values() for _, _, boxes in c.values() for b in boxes)
    read = catalog.read_channels(str(out / "annotations"), {c: str(out / c) for c in got}, "sku")
    assert {tuple(names) for _, _, names in read.values()} == {("bottle", "box")}


def _problems(data_dir: Path):
    return json.loads((data_dir / "report.json").read_text())["problems"]


def test_bad_labels_are_named_by_file_line_and_field_in_each_format(shelves, tmp_path):
    _, images, labels = shelves
    from shelfdet.core.photo_files import check

    # Labels of decodable images only: a corrupted image's labels are dropped before their boxes are read.
    good = {n: v for n, v in labels.items() if v[2] and (images / n).exists() and not check(str(images / n)).error}
    name = sorted(n for n in good if n.startswith("train_"))[-1]
    out = {}
    for fmt in WRITERS:
        src = tmp_path / fmt
        WRITERS[fmt](src, images, good)
        out[fmt] = src
    coco = out["coco"] / "annotations" / "instances_train2017.json"
    doc = json.loads(coco.read_text())
    doc["annotations"][0]["bbox"] = ["x", 1, 2, 3]
    doc["annotations"][1]["category_id"] = 9
    coco.write_text(json.dumps(doc))
    voc = out["voc"] / "Annotations" / (os.path.splitext(name)[0] + ".xml")
    voc.write_text(voc.read_text().replace("<xmax>", "<xmaxx>", 1).replace("</xmax>", "</xmaxx>", 1))
    yolo = out["yolo"] / "labels" / "train" / (os.path.splitext(name)[0] + ".txt")
    yolo.write_text(yolo.read_text() + "0 0.5 0.5 0.1\n3 0.5 0.5 0.1 0.1\n")
    gt = out["gt"] / "train.manifest"
    gt.write_text(gt.read_text() + "{not json\n")
    expected = {
        "coco": [(str(coco), 1, "annotations[0].bbox", "bad_value"), (str(coco), 2, "annotations[1].category_id",
                                                                         "unknown_class")],
        "voc": [(str(voc), 4, "bndbox", "bad_value")],
        "yolo": [(str(yolo), len(good[name][2]) + 1, "row", "bad_value"),
                 (str(yolo), len(good[name][2]) + 2, "class", "unknown_class")],
        "gt": [(str(gt), len(gt.read_text().splitlines()), "json", "bad_value")],
    }
    for fmt, src in out.items():
        data = tmp_path / ("data-" + fmt)
        assert data_command.main(["--data-dir", str(data), "--src", str(src), "--format", fmt]) == 0, fmt
        found = [(p["file"], p["line"], p["field"], p["kind"]) for p in _problems(data)
                 if p["kind"] in ("bad_value", "unknown_class")]
        assert found == expected[fmt], fmt
        report = json.loads((data / "report.json").read_text())
        assert report["channels"]["training"]["images"] >= 1  # the rest converted


@pytest.mark.parametrize("fmt, expect", [
    ("coco", "no annotations/instances_<split>.json"),
    ("voc", "no ImageSets/Main/<split>.txt"),
    ("yolo", "no data.yaml"),
    ("gt", "no <split>.manifest"),
])
def test_a_folder_without_the_layout_is_one_line(tmp_path, fmt, expect):
    (tmp_path / "src").mkdir()
    proc = subprocess.run(["make", "-s", "data", "SRC={}".format(tmp_path / "src"), "FORMAT=" + fmt,
                           "DATA_DIR={}".format(tmp_path / "out")], cwd=str(ROOT), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expect in errors[0], proc.stderr
