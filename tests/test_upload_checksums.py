"""`make upload` resumes by content, not size: a re-generated image of the same byte size goes up again."""
from __future__ import annotations

import io
import os
from collections import Counter

import boto3
import pytest

from shelfdet.commands import data as data_command
from shelfdet.commands import upload as upload_command
from shelfdet.data import upload

PREFIX = "detectron2/data"
SMALL = ["--train-images", "4", "--val-images", "2", "--test-images", "2", "--image-size", "160x128", "--seed", "3"]


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "d"
    assert data_command.main(["--data-dir", str(d)] + SMALL) == 0
    return d


@pytest.fixture
def bucket(aws_env):
    s3 = boto3.client("s3", region_name="us-east-2")
    s3.create_bucket(Bucket="shelf", CreateBucketConfiguration={"LocationConstraint": "us-east-2"})
    # Every PUT leaves a version: what was sent again is counted on S3's side, not taken from our report.
    s3.put_bucket_versioning(Bucket="shelf", VersioningConfiguration={"Status": "Enabled"})
    return s3


def puts(s3):
    versions = s3.list_object_versions(Bucket="shelf", Prefix=PREFIX)["Versions"]
    return Counter(v["Key"] for v in versions)


def regenerated(path):
    """The image drawn over and encoded again, padded after its end marker to the old byte size."""
    from PIL import Image, ImageDraw

    size = path.stat().st_size
    img = Image.open(str(path)).convert("RGB")
    ImageDraw.Draw(img).rectangle((8, 8, 60, 50), fill=(250, 20, 20))
    for quality in range(95, 4, -5):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        if buf.tell() <= size:
            break
    body = buf.getvalue()
    assert len(body) <= size
    return body + b"\0" * (size - len(body))


def test_a_same_size_image_with_new_content_is_sent_again_and_only_it(data_dir, bucket, capsys):
    first = upload.upload(str(data_dir), "shelf", PREFIX, "us-east-2", say=print)
    n = first["files"]
    assert first["uploaded"] == n
    image = sorted((data_dir / "training").iterdir())[0]
    new = regenerated(image)
    assert len(new) == image.stat().st_size and new != image.read_bytes()
    image.write_bytes(new)
    capsys.readouterr()

    again = upload.upload(str(data_dir), "shelf", PREFIX, "us-east-2", say=print)
    key = PREFIX + "/training/" + image.name
    assert again == {"files": n, "uploaded": 1, "skipped": n - 1}
    counts = puts(bucket)
    assert len(counts) == n and {k for k, c in counts.items() if c != 1} == {key}, counts
    assert counts[key] == 2
    assert bucket.get_object(Bucket="shelf", Key=key)["Body"].read() == new
    out = capsys.readouterr().out
    assert "1 of the same size but another checksum, sent again: " + key in out, out

    # Unchanged now: nothing goes up.
    assert upload.upload(str(data_dir), "shelf", PREFIX, "us-east-2", say=print) == {"files": n, "uploaded": 0, "skipped": n}
    assert puts(bucket) == counts


def test_an_object_without_a_comparable_checksum_is_sent_again_and_said(data_dir, bucket, capsys):
    upload.upload(str(data_dir), "shelf", PREFIX, "us-east-2", say=print)
    image = sorted((data_dir / "validation").iterdir())[0]
    key = PREFIX + "/validation/" + image.name
    local = image.read_bytes()
    # Same size, other bytes, put by another client (boto3's default CRC32, no SHA-256): its ETag is not
    # our MD5 and there is no ChecksumSHA256 to decide by.
    bucket.put_object(Bucket="shelf", Key=key, Body=bytes(255 - b for b in local))
    assert "ChecksumSHA256" not in bucket.head_object(Bucket="shelf", Key=key, ChecksumMode="ENABLED")
    capsys.readouterr()
    again = upload.upload(str(data_dir), "shelf", PREFIX, "us-east-2", say=print)
    assert again["uploaded"] == 1
    out = capsys.readouterr().out
    assert "1 of the same size with no checksum to compare" in out and key in out, out
    assert bucket.get_object(Bucket="shelf", Key=key)["Body"].read() == local


def test_multipart_objects_compare_by_their_part_composite(data_dir, bucket, capsys):
    part = 5 << 20  # S3's smallest part
    big = data_dir / "training" / "big.bin"
    big.write_bytes(os.urandom(2 * part + 12345))  # three parts
    upload.upload(str(data_dir), "shelf", PREFIX, "us-east-2", part_size=part, say=print)
    key = PREFIX + "/training/big.bin"
    got = bucket.get_object(Bucket="shelf", Key=key, ChecksumMode="ENABLED")
    got["Body"].close()
    item = upload.Item(key, str(big), None, big.stat().st_size)
    # What S3 computed over the parts it got is what we compute locally, streaming, at the same part size.
    assert (got["ETag"].strip('"'), got["ChecksumSHA256"]) == upload.checksums(item, part)
    assert got["ChecksumSHA256"].endswith("-3") and got["ETag"].endswith('-3"')

    n = len(puts(bucket))
    assert upload.upload(str(data_dir), "shelf", PREFIX, "us-east-2", part_size=part, say=print)["uploaded"] == 0
    with open(str(big), "r+b") as f:  # one byte of the last part changes, the size does not
        f.seek(2 * part + 100)
        old = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([old[0] ^ 0xFF]))
    capsys.readouterr()
    again = upload.upload(str(data_dir), "shelf", PREFIX, "us-east-2", part_size=part, say=print)
    assert again["uploaded"] == 1
    counts = puts(bucket)
    assert len(counts) == n and {k for k, c in counts.items() if c != 1} == {key}
    assert bucket.get_object(Bucket="shelf", Key=key)["Body"].read() == big.read_bytes()


def test_an_etag_that_is_no_md5_falls_back_to_the_sha256_checksum(data_dir, bucket):
    # SSE-KMS objects carry an ETag that is not their MD5; moto always stores the MD5, so such an ETag is
    # given here, and the decision rests on the ChecksumSHA256 our upload stored.
    upload.upload(str(data_dir), "shelf", PREFIX, "us-east-2", say=print)
    image = sorted((data_dir / "test").iterdir())[0]
    item = upload.Item(PREFIX + "/test/" + image.name, str(image), None, image.stat().st_size)
    assert upload.compare(bucket, "shelf", item, "not-an-md5") == "same"
    image.write_bytes(bytes(255 - b for b in image.read_bytes()))
    assert upload.compare(bucket, "shelf", item, "not-an-md5") == "changed"


def test_kms_key_encrypts_every_object_and_resends_those_without_it(data_dir, bucket, capsys):
    """make upload KMS_KEY=: each object goes up with SSE-KMS under the key (S3's HEAD says so); objects an
    earlier upload left unencrypted are sent again with it, and a third run sends nothing."""
    key_arn = boto3.client("kms", region_name="us-east-2").create_key(Description="shelfdet uploads")["KeyMetadata"]["Arn"]
    plain = upload.upload(str(data_dir), "shelf", PREFIX, "us-east-2", say=print)
    n = plain["files"]
    capsys.readouterr()
    assert upload_command.main(["--data-dir", str(data_dir), "--bucket", "shelf", "--prefix", PREFIX, "--region", "us-east-2",
                        "--kms-key", key_arn]) == 0
    out = capsys.readouterr().out
    assert "upload: {} not encrypted with KMS_KEY {}, sent again with it".format(n, key_arn) in out, out
    keys = sorted(puts(bucket))
    assert len(keys) == n and set(puts(bucket).values()) == {2}
    for k in keys:
        head = bucket.head_object(Bucket="shelf", Key=k)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key_arn), k
    # Encrypted under the key and unchanged: nothing goes up; the key's ID names it as well as its ARN.
    key_id = key_arn.rsplit("/", 1)[-1]
    assert upload.upload(str(data_dir), "shelf", PREFIX, "us-east-2", kms_key=key_id, say=print) == {
        "files": n, "uploaded": 0, "skipped": n}
    assert set(puts(bucket).values()) == {2}
    # Another key: sent again under it.
    other = boto3.client("kms", region_name="us-east-2").create_key()["KeyMetadata"]["Arn"]
    assert upload.upload(str(data_dir), "shelf", PREFIX, "us-east-2", kms_key=other, say=print)["uploaded"] == n


def test_make_upload_passes_the_kms_key(data_dir):
    from test_launch_support import make

    out = make("upload", "DRY_RUN=1", "DATA_DIR=" + str(data_dir), "BUCKET=shelf", "KMS_KEY=alias/shelves")
    assert out.returncode == 0, out.stderr
    assert ", SSE-KMS with key alias/shelves (nothing called)" in out.stdout
