"""Names from outside (label files, manifests, CSV rows, S3 keys) never become paths outside their folder.

Each reader gets absolute, ``../`` and NUL names that point at a sentinel tree beside the data folder (a
user's 3000x2000 photo, notes, an output file): the sentinel's bytes and mtimes stay as they were, and
each name is reported with its file, line and field. The S3 readers run against the moto server.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from shelfdet.commands import tensorboard
from shelfdet.core import safepath
from shelfdet.commands import data as data_command
from shelfdet.data import DataError, fetch
from shelfdet.data.written import RECORD
from shelfdet.launch import aws, transform
from test_launch_support import REGION, client, fast_sessions  # noqa: F401

BUCKET = "safe-paths-bucket"
BOX = (20, 20, 120, 100)  # x1, y1, x2, y2 inside a 160x128 image


def jpeg(path: Path, size=(160, 128), color=(200, 40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(str(path), "JPEG", quality=90)
    return path


def snapshot(folder: Path):
    """Every file below ``folder``: sha256 and mtime (ns)."""
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def outside(tmp_path):
    """The user's files beside the data folder, and their snapshot."""
    home = tmp_path / "outside"
    jpeg(home / "photo.jpg", (3000, 2000), (30, 90, 200))
    jpeg(home / "train_1.jpg", (3000, 2000), (30, 90, 200))
    (home / "notes.txt").write_text("my notes\n")
    (home / "x.out").write_text("{}\n")
    return home, snapshot(home)


def unsafe(data: Path):
    report = json.loads((data / "report.json").read_text())
    return sorted((p["file"], p["line"], p["field"]) for p in report["problems"] if p["kind"] == "unsafe_name")


def run(src: Path, data: Path, fmt: str = "", max_side: str = "1333") -> int:
    argv = ["--data-dir", str(data), "--src", str(src), "--workers", "1", "--max-side", max_side]
    return data_command.main(argv + (["--format", fmt] if fmt else []))


def test_the_one_check_refuses_each_kind_of_escape(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "out").symlink_to(tmp_path)
    for name, subpath, why in [("/etc/passwd", True, "an absolute path"), ("../x.jpg", True, "'..' component"),
                               ("a/../../x", True, "'..' component"), ("x\0.jpg", False, "NUL byte"),
                               ("a/b.jpg", False, "a bare file name is expected"), ("C:x.jpg", False, "drive letter"),
                               ("..\\x.jpg", False, "backslash"), ("a//b.jpg", True, "normalised"),
                               ("./b.jpg", True, "normalised"), ("", False, "not a file name"),
                               ("out/x.jpg", True, "symbolic link")]:
        with pytest.raises(safepath.UnsafeName, match=None) as err:
            safepath.inside(str(folder), name, subpath=subpath)
        assert why in str(err.value), (name, str(err.value))
    assert safepath.inside(str(folder), "a/b.jpg", subpath=True) == str(folder / "a" / "b.jpg")
    assert safepath.inside(str(folder), "out/x.jpg", subpath=True, links=True) == str(folder / "out" / "x.jpg")
    assert safepath.inside(str(folder), str(folder / "a" / "b.jpg"), subpath=True, absolute=True) == str(folder / "a" / "b.jpg")
    with pytest.raises(safepath.UnsafeName, match="an absolute path"):
        safepath.inside(str(folder), str(tmp_path / "b.jpg"), subpath=True, absolute=True)


def test_csv_rows(tmp_path, outside):
    home, before = outside
    src = tmp_path / "SKU110K_fixed"
    jpeg(src / "images" / "train_0.jpg")
    rows = ["train_0.jpg,20,20,120,100,object,160,128",
            "{},20,20,120,100,object,3000,2000".format(home / "train_1.jpg"),
            "../../outside/train_1.jpg,20,20,120,100,object,3000,2000",
            "train_\0.jpg,20,20,120,100,object,160,128"]
    (src / "annotations").mkdir()
    csv = src / "annotations" / "annotations_train.csv"
    csv.write_text("\n".join(rows) + "\n")
    data = tmp_path / "data"
    assert run(src, data) == 0
    assert snapshot(home) == before
    assert unsafe(data) == [(str(csv), 2, "image_name"), (str(csv), 3, "image_name"), (str(csv), 4, "image_name")]
    assert sorted(os.listdir(data / "training")) == ["train_0.jpg"]


def test_coco_file_names(tmp_path, outside):
    home, before = outside
    src = tmp_path / "coco"
    jpeg(src / "train" / "good.jpg")
    names = ["good.jpg", str(home / "photo.jpg"), "../../outside/photo.jpg", "photo\0.jpg"]
    doc = {"images": [{"id": i, "file_name": n, "width": 160, "height": 128} for i, n in enumerate(names)],
           "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [20, 20, 100, 80], "iscrowd": 0}
                           for i in range(len(names))],
           "categories": [{"id": 1, "name": "SKU"}]}
    (src / "annotations").mkdir(parents=True)
    ann = src / "annotations" / "instances_train.json"
    ann.write_text(json.dumps(doc))
    data = tmp_path / "data"
    assert run(src, data, "coco") == 0
    assert snapshot(home) == before
    assert unsafe(data) == [(str(ann), i + 1, "images[{}].file_name".format(i)) for i in (1, 2, 3)]
    report = json.loads((data / "report.json").read_text())
    assert report["boxes"]["dropped_by_reason"] == {"unsafe_name": 3} and report["boxes"]["kept"] == 1


def write_voc(src: Path, objects):
    """objects: id -> <filename> text (None: no XML file)."""
    for d in ("Annotations", "ImageSets/Main"):
        (src / d).mkdir(parents=True, exist_ok=True)
    for image_id, filename in objects.items():
        if filename is None:
            continue
        (src / "Annotations" / (image_id + ".xml")).write_text(
            "<annotation>\n<folder>x</folder>\n<filename>{}</filename>\n<size><width>160</width><height>128</height>"
            "</size>\n<object><name>SKU</name><bndbox><xmin>21</xmin><ymin>21</ymin><xmax>120</xmax><ymax>100</ymax>"
            "</bndbox></object>\n</annotation>\n".format(filename))
    (src / "ImageSets" / "Main" / "train.txt").write_text("".join(i + "\n" for i in objects))


def test_voc_filenames_and_ids(tmp_path, outside):
    home, before = outside
    src = tmp_path / "voc"
    jpeg(src / "JPEGImages" / "good.jpg")
    write_voc(src, {"good": "good.jpg", "abs": str(home / "photo.jpg"), "rel": "../../outside/photo.jpg",
                    "../../outside/notes": None, "nu\0l": None})
    data = tmp_path / "data"
    assert run(src, data, "voc") == 0
    assert snapshot(home) == before
    split = str(src / "ImageSets" / "Main" / "train.txt")
    assert unsafe(data) == sorted([(str(src / "Annotations" / "abs.xml"), 3, "filename"),
                                   (str(src / "Annotations" / "rel.xml"), 3, "filename"),
                                   (split, 4, "id"), (split, 5, "id")])


def test_the_issues_voc_repro_leaves_the_users_photo_as_it_was(tmp_path, outside):
    """<filename> the absolute path of a user's 3000x2000 photo, MAX_SIDE=1333: it used to be replaced in place
    by a 1333x889 copy."""
    home, before = outside
    src = tmp_path / "voc"
    jpeg(src / "JPEGImages" / "good.jpg")
    write_voc(src, {"good": "good.jpg", "photo": str(home / "photo.jpg")})
    data = tmp_path / "data"
    assert run(src, data, "voc") == 0
    assert snapshot(home) == before
    with Image.open(str(home / "photo.jpg")) as im:
        assert im.size == (3000, 2000)
    assert not (data / "training" / "photo.jpg").exists()


def test_yolo_reads_only_its_own_layout(tmp_path, outside):
    """YOLO's names are listed from images/<split>/, never read from a file: data.yaml's path and split
    entries pointing out are not followed, and a photo linked into images/ is read, never written."""
    home, before = outside
    src = tmp_path / "yolo"
    (src / "images" / "train").mkdir(parents=True)
    (src / "data.yaml").write_text('path: {}\ntrain: ../../outside\nval: "/x\\0"\nnames:\n  0: SKU\n'.format(home))
    jpeg(src / "images" / "train" / "good.jpg")
    (src / "images" / "train" / "linked.jpg").symlink_to(home / "photo.jpg")
    (src / "labels" / "train").mkdir(parents=True)
    for stem in ("good", "linked"):
        (src / "labels" / "train" / (stem + ".txt")).write_text("0 0.5 0.5 0.2 0.2\n")
    data = tmp_path / "data"
    assert run(src, data, "yolo") == 0
    assert snapshot(home) == before
    assert sorted(os.listdir(data / "training")) == ["good.jpg", "linked.jpg"]
    with Image.open(str(data / "training" / "linked.jpg")) as im:
        assert im.size == (1333, 889)  # a copy written in DATA_DIR; the original kept its 3000x2000
    assert not os.path.samefile(str(data / "training" / "linked.jpg"), str(home / "photo.jpg"))


def write_gt_manifest(manifest, refs):
    """A Ground Truth manifest with one labelled box per source-ref."""
    manifest.write_text("".join(json.dumps({
        "source-ref": r, "shelf": {"annotations": [{"class_id": 0, "left": 20, "top": 20, "width": 100, "height": 80}],
                                   "image_size": [{"width": 160, "height": 128, "depth": 3}]},
        "shelf-metadata": {"class-map": {"0": "SKU"}}}) + "\n" for r in refs))


def test_ground_truth_local_source_refs(tmp_path, outside):
    home, before = outside
    src = tmp_path / "gt"
    jpeg(src / "images" / "good.jpg")
    jpeg(src / "images" / "inside.jpg")
    refs = ["images/good.jpg", str(src / "images" / "inside.jpg"), str(home / "photo.jpg"), "../outside/photo.jpg",
            "images/\0.jpg"]
    manifest = src / "train.manifest"
    write_gt_manifest(manifest, refs)
    data = tmp_path / "data"
    assert run(src, data, "gt") == 0
    assert snapshot(home) == before
    assert unsafe(data) == [(str(manifest), n, "source-ref") for n in (3, 4, 5)]
    # An absolute source-ref inside SRC is the same file as its relative form.
    assert sorted(os.listdir(data / "training")) == ["good.jpg", "inside.jpg"]


def test_ground_truth_s3_source_refs_on_moto(tmp_path, outside, aws_env):
    home, before = outside
    s3 = client("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    good = jpeg(tmp_path / "good.jpg")
    other = jpeg(tmp_path / "other.jpg", (3000, 2000), (0, 0, 0))
    # Where each key would land below DATA_DIR/source/s3/<bucket>/ if it were joined as it is.
    keys = {"shelf/good.jpg": good, "../../../../outside/photo.jpg": other, "/outside/photo.jpg": other,
            "n\0.jpg": other}
    for key, path in keys.items():
        s3.upload_file(str(path), BUCKET, key)
    refs = ["s3://{}/{}".format(BUCKET, k) for k in keys] + ["s3://../outside/photo.jpg"]
    src = tmp_path / "gt"
    src.mkdir()
    manifest = src / "train.manifest"
    write_gt_manifest(manifest, refs)
    data = tmp_path / "data"
    assert run(src, data, "gt") == 0
    assert snapshot(home) == before
    assert unsafe(data) == [(str(manifest), n, "source-ref") for n in (2, 3, 4, 5)]
    downloaded = [str(p.relative_to(data)) for p in (data / "source").rglob("*") if p.is_file()]
    assert downloaded == ["source/s3/{}/shelf/good.jpg".format(BUCKET)]


def test_an_s3_src_download_keeps_to_its_folder(tmp_path, outside, aws_env, capsys):
    home, before = outside
    client("s3").create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    data = tmp_path / "data"
    assert data_command.main(["--data-dir", str(data), "--src", "s3://{}/a/..".format(BUCKET)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "its file name '..': a '..' component leads out of its folder" in err[0], err
    for url in ("s3://{}/x\0.tar.gz".format(BUCKET), "s3://{}/".format(BUCKET) + "..\\..\\x.tar.gz"):
        with pytest.raises(DataError, match="its file name"):
            fetch.download(url, str(data / "source" / "download"))
    assert snapshot(home) == before
    assert not (data / "source" / "download").exists()


def test_tensorboard_job_names_and_keys_on_moto(tmp_path, outside, aws_env, capsys):
    home, before = outside
    s3 = client("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    job = "detectron2-faster-rcnn-20261207-000000-000"
    prefix = "detectron2/tensorboard/{}/".format(job)
    bad = ["../../../../../outside/photo.jpg", "/outside/x.out", "train/n\0.txt", "train\\..\\x.out"]
    for rel in ["train/events.out.tfevents.1"] + bad:
        s3.put_object(Bucket=BUCKET, Key=prefix + rel, Body=b"overwritten")
    runs = tmp_path / "runs"
    target = tensorboard.fetch_job(job, BUCKET, "detectron2/tensorboard", REGION, str(runs))
    assert Path(target, "train", "events.out.tfevents.1").read_bytes() == b"overwritten"
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warned) == len(bad) and all(": skipped: " in w for w in warned), warned
    assert json.loads((runs / "sagemaker" / job / RECORD).read_text())["files"] == [
        "output/tensorboard/train/events.out.tfevents.1"]
    for name in ("../../outside", str(home), "a\0b", "a/b"):
        with pytest.raises(aws.LaunchError, match="not a training job name"):
            tensorboard.fetch_job(name, BUCKET, "detectron2/tensorboard", REGION, str(runs))
    # Through the command: one line, nothing served.
    rc = tensorboard.main(["--job", "../../outside", "--bucket", BUCKET, "--region", REGION, "--runs-dir", str(runs)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("error: JOB=../../outside: not a training job name"), err
    assert snapshot(home) == before


def test_transform_outputs_on_moto(tmp_path, outside, aws_env, capsys):
    home, before = outside
    s3 = client("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    prefix = "detectron2/transform/job-1/"
    for rel in ["test_1.jpg.out", "../../../outside/x.out", "/abs/x.out", "n\0.out", "..\\x.out"]:
        s3.put_object(Bucket=BUCKET, Key=prefix + rel, Body=b'{"overwritten": 1}')
    folder = tmp_path / "predictions"
    cloud = aws.Aws(REGION)
    assert transform.download(cloud, "s3://{}/{}".format(BUCKET, prefix), str(folder)) == 1
    assert sorted(os.listdir(folder)) == ["test_1.jpg.out", RECORD]
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 4 and all(": skipped: " in w for w in warned), warned
    # A second download replaces its own file; a file of the user's in the way is never replaced.
    assert transform.download(cloud, "s3://{}/{}".format(BUCKET, prefix), str(folder)) == 1
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "test_1.jpg.out").write_text("my own\n")
    with pytest.raises(aws.LaunchError, match="already there and not written by shelfdet"):
        transform.download(cloud, "s3://{}/{}".format(BUCKET, prefix), str(mine))
    assert (mine / "test_1.jpg.out").read_text() == "my own\n" and sorted(os.listdir(mine)) == ["test_1.jpg.out"]
    assert snapshot(home) == before
