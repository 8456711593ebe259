"""`make data` / `make upload` / `make visualize` end to end on a small generated set."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from shelfdet.core import catalog
from shelfdet.commands import data as data_command
from shelfdet.commands import upload as upload_command
from shelfdet.data import build, fetch, upload

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--train-images", "6", "--val-images", "3", "--test-images", "3", "--image-size", "160x128", "--seed", "1"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data") / "d"
    assert data_command.main(["--data-dir", str(d)] + SMALL) == 0
    return d


def test_manifests_round_trip_through_detectron2_registration(data_dir):
    report = json.loads((data_dir / "report.json").read_text())
    for ch in catalog.CHANNELS:
        dicts, names = catalog.load_manifest(str(data_dir / "annotations" / (ch + ".manifest")), str(data_dir / ch))
        assert names == ["SKU"]
        assert len(dicts) == report["channels"][ch]["images"] == len(os.listdir(data_dir / ch))
        assert sum(len(d["annotations"]) for d in dicts) == report["channels"][ch]["boxes"]
        assert all(d["width"] == 160 and d["height"] == 128 for d in dicts)
    assert sum(c["boxes"] for c in report["channels"].values()) == report["boxes"]["kept"]
    registered = catalog.register_channels("sku_test", str(data_dir / "annotations"),
                                           {c: str(data_dir / c) for c in ("training", "test")})
    from detectron2.data import DatasetCatalog

    assert sum(len(d["annotations"]) for d in DatasetCatalog.get(registered["test"])) == report["channels"]["test"]["boxes"]


def test_build_is_idempotent_and_rebuilds_on_new_options(data_dir, capsys):
    before = (data_dir / "report.json").stat().st_mtime_ns
    assert data_command.main(["--data-dir", str(data_dir)] + SMALL) == 0
    assert "up to date" in capsys.readouterr().out
    assert (data_dir / "report.json").stat().st_mtime_ns == before
    args = data_command.parser().parse_args(["--data-dir", str(data_dir)] + SMALL[:-1] + ["2"])
    assert not build.up_to_date(str(data_dir), data_command.options(args))


def test_folder_and_tarball_sources(data_dir, tmp_path):
    src = data_dir / "source" / "SKU110K_fixed"
    out = tmp_path / "from_folder"
    assert data_command.main(["--data-dir", str(out), "--src", str(src.parent)]) == 0
    a = json.loads((out / "report.json").read_text())
    b = json.loads((data_dir / "report.json").read_text())
    assert a["channels"] == b["channels"] and a["boxes"] == b["boxes"]
    import tarfile

    tarball = tmp_path / "SKU110K_fixed.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(src, arcname="SKU110K_fixed")
    out2 = tmp_path / "from_tar"
    assert data_command.main(["--data-dir", str(out2), "--src", str(tarball)]) == 0
    assert json.loads((out2 / "report.json").read_text())["channels"] == b["channels"]


@pytest.mark.parametrize("src, words", [("/no/such/dir", "no such file"), (__file__, "not a folder, a .tar.gz")])
def test_bad_src_is_one_line_error(tmp_path, src, words):
    out = subprocess.run([sys.executable, "-m", "shelfdet", "data", "--data-dir", str(tmp_path / "d"), "--src", src],
                         capture_output=True, text=True, cwd=str(ROOT))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and words in out.stderr and "Traceback" not in out.stderr


def test_upload_to_s3_skips_what_is_there(data_dir, aws_env):
    s3 = boto3.client("s3", region_name="us-east-2")
    s3.create_bucket(Bucket="shelf", CreateBucketConfiguration={"LocationConstraint": "us-east-2"})
    first = upload.upload(str(data_dir), "shelf", "detectron2/data", "us-east-2")
    n_images = sum(len(os.listdir(data_dir / c)) for c in catalog.CHANNELS)
    assert first == {"files": n_images + 3, "uploaded": n_images + 3, "skipped": 0}
    body = s3.get_object(Bucket="shelf", Key="detectron2/data/annotations/test.manifest")["Body"].read().decode()
    assert json.loads(body.splitlines()[0])["source-ref"].startswith("s3://shelf/detectron2/data/test/test_")
    assert s3.head_object(Bucket="shelf", Key="detectron2/data/training/train_0.jpg")["ContentLength"] == \
        (data_dir / "training" / "train_0.jpg").stat().st_size
    # An interrupted upload: one object missing, one truncated. Only those two go again.
    s3.delete_object(Bucket="shelf", Key="detectron2/data/validation/val_0.jpg")
    s3.put_object(Bucket="shelf", Key="detectron2/data/training/train_0.jpg", Body=b"partial")
    again = upload.upload(str(data_dir), "shelf", "detectron2/data", "us-east-2")
    assert again == {"files": n_images + 3, "uploaded": 2, "skipped": n_images + 1}


def test_upload_errors_are_one_line(data_dir, aws_env, monkeypatch, capsys):
    assert upload_command.main(["--data-dir", str(data_dir), "--bucket", "nope", "--region", "us-east-2"]) == 2
    assert "bucket nope does not exist" in capsys.readouterr().err
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(data_dir / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(data_dir / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert upload_command.main(["--data-dir", str(data_dir), "--bucket", "nope", "--region", "us-east-2"]) == 2
    assert "no AWS credentials" in capsys.readouterr().err


def test_s3_download_resumes(tmp_path, aws_env):
    s3 = boto3.client("s3", region_name="us-east-2")
    s3.create_bucket(Bucket="src", CreateBucketConfiguration={"LocationConstraint": "us-east-2"})
    blob = os.urandom(3 << 20)
    s3.put_object(Bucket="src", Key="x/SKU110K_fixed.tar.gz", Body=blob)
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "SKU110K_fixed.tar.gz.part").write_bytes(blob[:1000])  # an interrupted earlier run
    path = fetch.download("s3://src/x/SKU110K_fixed.tar.gz", str(dest))
    assert Path(path).read_bytes() == blob


def test_visualize_writes_pngs(data_dir, tmp_path, capsys):
    from shelfdet.commands import visualize as visualize_command

    preds = tmp_path / "preds"
    preds.mkdir()
    (preds / "val_0.jpg.out").write_text(json.dumps({"pred_boxes": [[1, 2, 30, 40]], "scores": [0.9],
                                                     "pred_classes": [0], "image_width": 160, "image_height": 128}))
    assert visualize_command.main(["--data-dir", str(data_dir), "--channel", "validation", "-n", "2",
                                   "--predictions", str(preds), "--out", str(tmp_path / "png")]) == 0
    assert sorted(os.listdir(tmp_path / "png")) == ["val_0.png", "val_1.png"]
    assert str(tmp_path / "png") in capsys.readouterr().out
