"""`make data` and `make clean` touch only what the project wrote: DATA_DIR overlapping SRC is refused
before anything is written, a rebuild into a folder of the user's removes none of their files (only
what its own written.json names and it no longer produces), and `make clean` goes by the same records,
printing what it removes, keeping runs/deployments and any folder without a record."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from PIL import Image

from shelfdet.commands import data as data_command
from shelfdet.data.written import RECORD, Written

ROOT = Path(__file__).resolve().parent.parent


def jpeg(path: Path, size=(160, 128)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 40, 40)).save(str(path), "JPEG", quality=90)
    return path


def tree(folder: Path):
    """Every path below ``folder``: files with sha256 and mtime, folders as such."""
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def coco(src: Path, names):
    """A COCO export with one box per image of ``names`` in its train split."""
    for n in names:
        if not (src / "train" / n).exists():
            jpeg(src / "train" / n)
    doc = {"images": [{"id": i, "file_name": n, "width": 160, "height": 128} for i, n in enumerate(names)],
           "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [20, 20, 100, 80], "iscrowd": 0}
                           for i in range(len(names))],
           "categories": [{"id": 1, "name": "SKU"}]}
    (src / "annotations").mkdir(parents=True, exist_ok=True)
    (src / "annotations" / "instances_train.json").write_text(json.dumps(doc))
    return src


def test_data_dir_equal_to_inside_or_above_src_is_refused_before_anything_is_written(tmp_path, capsys):
    src = coco(tmp_path / "export", ["a.jpg", "b.jpg"])
    sku = tmp_path / "sku" / "SKU110K_fixed"
    jpeg(sku / "images" / "train_0.jpg")
    (sku / "annotations").mkdir()
    (sku / "annotations" / "annotations_train.csv").write_text("train_0.jpg,20,20,120,100,object,160,128\n")
    before = tree(tmp_path)
    for data, source, fmt, relation in [(src / "out", src, "coco", "lies inside"), (tmp_path, src, "coco", "holds"),
                                        (sku, sku, "sku110k", "is"), (sku / "data", sku.parent, "sku110k", "lies inside"),
                                        (sku.parent, sku, "sku110k", "holds")]:
        rc = data_command.main(["--data-dir", str(data), "--src", str(source), "--format", fmt])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, err
        assert err[0] == ("error: DATA_DIR={} {} SRC={}: make data writes its channels, manifests and report there; "
                          "pick a DATA_DIR apart from SRC".format(data, relation, source))
    # Through make, DATA_DIR equal to SRC.
    proc = subprocess.run(["make", "-s", "-o", ".venv/.stamp", "data", "SRC={}".format(src), "FORMAT=coco",
                           "DATA_DIR={}".format(src)], cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        "error: DATA_DIR={0} is SRC={0}: make data writes its channels, manifests and report there; pick a DATA_DIR "
        "apart from SRC".format(src)], proc.stderr
    assert tree(tmp_path) == before


def test_a_rebuild_into_a_users_folder_removes_only_what_it_wrote_and_no_longer_makes(tmp_path, capsys):
    src = coco(tmp_path / "export", ["a.jpg", "b.jpg", "c.jpg"])
    data = tmp_path / "shelves"  # a Ground Truth source folder of the user's, used as DATA_DIR
    (data / "training").mkdir(parents=True)
    (data / "training" / "output.manifest").write_text('{"source-ref": "s3://b/x.jpg"}\n')
    jpeg(data / "training" / "unlabelled.jpg", (320, 240))
    jpeg(data / "test" / "mine.jpg")
    (data / "notes.txt").write_text("where the photos came from\n")
    (data / "annotations").mkdir()
    (data / "annotations" / "classes.txt").write_text("SKU\n")
    theirs = tree(data)
    assert data_command.main(["--data-dir", str(data), "--src", str(src), "--format", "coco"]) == 0
    record = json.loads((data / RECORD).read_text())["files"]
    assert record == ["annotations/training.manifest", "report.json", "training/a.jpg", "training/b.jpg", "training/c.jpg"]
    coco(src, ["a.jpg", "c.jpg"])
    assert data_command.main(["--data-dir", str(data), "--src", str(src), "--format", "coco"]) == 0
    assert not (data / "training" / "b.jpg").exists()  # written by the first run, no longer produced
    assert sorted(os.listdir(data / "training")) == ["a.jpg", "c.jpg", "output.manifest", "unlabelled.jpg"]
    now = tree(data)
    assert {p: v for p, v in now.items() if p in theirs} == theirs
    assert json.loads((data / RECORD).read_text())["files"] == [
        "annotations/training.manifest", "report.json", "training/a.jpg", "training/c.jpg"]
    # A file of the user's where the build would write: refused in one line, nothing written or removed.
    capsys.readouterr()
    coco(src, ["a.jpg", "c.jpg", "unlabelled.jpg"])
    before = tree(data)
    assert data_command.main(["--data-dir", str(data), "--src", str(src), "--format", "coco"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: {}: already there and not written by shelfdet ({} does not name it); move it away or pick "
                   "another folder".format(data / "training" / "unlabelled.jpg", data / RECORD)]
    assert tree(data) == before


def test_a_data_folder_built_before_the_record_is_rebuilt_and_cleaned_by_its_report(tmp_path):
    src = coco(tmp_path / "export", ["a.jpg", "b.jpg"])
    data = tmp_path / "data"
    assert data_command.main(["--data-dir", str(data), "--src", str(src), "--format", "coco"]) == 0
    (data / RECORD).unlink()  # as the project left data folders before written.json
    (data / "mine.txt").write_text("mine\n")
    coco(src, ["a.jpg"])
    assert data_command.main(["--data-dir", str(data), "--src", str(src), "--format", "coco"]) == 0
    assert sorted(os.listdir(data / "training")) == ["a.jpg"] and (data / "mine.txt").read_text() == "mine\n"
    assert Written(str(data)).clean()["kept"] == ["mine.txt"]
    assert sorted(os.listdir(data)) == ["mine.txt"]


def _work(tmp_path: Path) -> Path:
    """The Makefile in a folder of its own (its runs/ there), with this checkout's venv."""
    work = tmp_path / "work"
    for name in ("Makefile", "versions.env"):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(str(ROOT / name), str(work / name))
    return work


def make_clean(work: Path, data: Path) -> subprocess.CompletedProcess:
    venv = os.environ.get("VENV") or str(ROOT / ".venv")
    return subprocess.run(["make", "-s", "clean", "DATA_DIR={}".format(data), "VENV=" + venv], cwd=str(work),
                          capture_output=True, text=True, timeout=300)


def test_make_clean_removes_only_what_the_records_name(tmp_path):
    work = _work(tmp_path)
    runs = work / "runs"
    run = runs / "detectron2-faster-rcnn-20261207-000000"
    (run / "input" / "config").mkdir(parents=True)
    (run / "input" / "config" / "hyperparameters.json").write_text("{}\n")
    (run / "model").mkdir()
    (run / "model" / "metrics.json").write_text("{}\n")
    (runs / "deployments").mkdir()
    (runs / "deployments" / "shelf-endpoint.json").write_text('{"EndpointName": "shelf-endpoint"}\n')
    (runs / "my-notes").mkdir()
    (runs / "my-notes" / "ideas.txt").write_text("ideas\n")
    job = runs / "sagemaker" / "detectron2-job"
    downloads = Written(str(job), legacy=False)
    events = Path(downloads.claim("output/tensorboard/train/events.out.tfevents.1"))
    downloads.begin()
    events.parent.mkdir(parents=True)
    events.write_bytes(b"events")
    downloads.finish(keep=("",))
    (job / "output" / "tensorboard" / "mine.txt").write_text("mine\n")
    photos = tmp_path / "photos"  # a user's folder, passed as DATA_DIR by mistake
    jpeg(photos / "training" / "shelf.jpg")
    (photos / "report.json").write_text('{"mine": true}\n')
    kept = {**tree(photos), **tree(runs / "deployments"), **tree(runs / "my-notes")}

    proc = make_clean(work, photos)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "clean: {}: left as it is: no written.json or report.json of make data in it".format(photos) in lines
    assert "clean: removed {}".format(Path("runs") / run.name) in lines
    assert "clean: kept runs/deployments: make undeploy needs the deployment records in it" in lines
    assert not run.exists() and not events.exists() and (job / "output" / "tensorboard" / "mine.txt").exists()
    assert {**tree(photos), **tree(runs / "deployments"), **tree(runs / "my-notes")} == kept

    # A data folder make data built: everything it wrote goes, then the folder, with a line each.
    src = coco(tmp_path / "export", ["a.jpg", "b.jpg"])
    data = tmp_path / "data"
    assert data_command.main(["--data-dir", str(data), "--src", str(src), "--format", "coco"]) == 0
    proc = make_clean(work, data)
    assert proc.returncode == 0, proc.stderr
    assert "clean: removed 2 file(s) make data wrote in {}/training/".format(data) in proc.stdout.splitlines()
    assert "clean: removed {}".format(data) in proc.stdout.splitlines()
    assert not data.exists() and (runs / "deployments" / "shelf-endpoint.json").is_file()
