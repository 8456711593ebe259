"""`make weights`: the zoo's checkpoints from a mirror on 127.0.0.1 (the zoo's host cannot be reached here),
checked, uploaded to moto's S3, and the PRETRAINED= it prints accepted by a locked-down training job."""
from __future__ import annotations

import functools
import http.server
import threading

import pytest

from shelfdet.commands import launch_train
from shelfdet.commands import weights as weights_command
from shelfdet.launch import weights
from test_launch_support import (BUCKET, PREFIX, REGION, account, client, fast_sessions, one_error_line, sent,  # noqa: F401
                                 wire)

X101 = ["--", "--backbone", "X_101_32x8d_FPN"]
JOB = ["--data-dir", "data", "--instance-type", "ml.p3.2xlarge", "--stack", "cpu", "--region", REGION,
       "--bucket", BUCKET, "--prefix", PREFIX]


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A static HTTP server laid out like the zoo's host; SHELFDET_ZOO_MIRROR points at it."""
    root = tmp_path / "zoo"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for key in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv(weights.MIRROR_VARIABLE, "http://127.0.0.1:{}/".format(server.server_address[1]))
    yield root
    server.shutdown()


def _key(algo, argv=()):
    from shelfdet.core.config import zoo_key

    (url,) = weights.needed([algo], list(argv))
    return zoo_key(url)


def run(capsys, argv):
    capsys.readouterr()
    rc = weights_command.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_weights_downloaded_uploaded_and_taken_by_an_isolated_job(account, wire, mirror, tmp_path, capsys):
    key = _key("retinanet", X101[1:])
    assert key == "ImageNetPretrained/FAIR/X-101-32x8d.pkl"
    body = b"x101 imagenet weights" * 1000
    (mirror / key).parent.mkdir(parents=True)
    (mirror / key).write_bytes(body)
    argv = ["--algo", "retinanet", "--region", REGION, "--bucket", BUCKET, "--cache", str(tmp_path / "cache")] + X101
    rc, out, err = run(capsys, argv)
    assert rc == 0, err
    prefix = "s3://{}/detectron2/weights/".format(BUCKET)
    assert out.strip().splitlines()[-1] == "PRETRAINED=" + prefix
    assert "no md5 in its name (ImageNet backbone): size only" in err
    stored = client("s3").get_object(Bucket=BUCKET, Key="detectron2/weights/" + key)["Body"].read()
    assert stored == body
    assert not list((tmp_path / "cache").rglob("*.part"))

    rc, _, err = run(capsys, argv)  # again: nothing downloaded or uploaded twice
    assert rc == 0 and "already in " + prefix + key in err and "downloading" not in err

    capsys.readouterr()
    rc = launch_train.main(JOB + ["--algo", "retinanet", "--network-isolation", "--pretrained", prefix] + X101)
    assert rc == 0, capsys.readouterr().err
    (request,) = sent(wire, "CreateTrainingJob")
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]}
    assert channels["pretrained"] == prefix and request["EnableNetworkIsolation"] is True


def test_a_checkpoint_that_fails_its_md5_is_deleted_and_not_uploaded(account, mirror, tmp_path, capsys):
    key = _key("faster_rcnn")
    md5 = weights.MD5_IN_NAME.search(key).group(1)  # the zoo's names end in the md5's first 6 hex digits
    (mirror / key).parent.mkdir(parents=True)
    (mirror / key).write_bytes(b"not the zoo's file")
    rc, _, err = run(capsys, ["--region", REGION, "--bucket", BUCKET, "--cache", str(tmp_path / "cache")])
    assert rc != 0
    assert "does not start with {} as its name says: deleted".format(md5) in one_error_line(err)
    assert not (tmp_path / "cache" / key).exists()
    assert "Contents" not in client("s3").list_objects_v2(Bucket=BUCKET, Prefix="detectron2/weights/")


def test_a_missing_checkpoint_is_one_line(account, mirror, tmp_path, capsys):
    rc, _, err = run(capsys, ["--algo", "cascade_rcnn", "--region", REGION, "--bucket", BUCKET,
                              "--cache", str(tmp_path / "cache")])
    assert rc != 0
    line = one_error_line(err)
    assert "cannot download http://127.0.0.1:" in line and _key("cascade_rcnn") in line and "HTTP 404" in line
    assert not list((tmp_path / "cache").rglob("*.pkl*"))


def test_each_algorithm_needs_its_own_checkpoint_with_its_md5_in_the_name():
    urls = weights.needed(["faster_rcnn", "retinanet", "cascade_rcnn", "faster_rcnn"], [])
    assert len(urls) == 3  # one each, the repeat dropped
    assert all(weights.MD5_IN_NAME.search(u) for u in urls)
    assert "faster_rcnn_R_50_FPN_1x" in urls[0]
    assert "cascade_mask_rcnn_R_50_FPN_1x" in urls[2] and "retinanet_R_50_FPN_1x" in urls[1]


def test_make_weights(account, mirror, tmp_path):
    from test_launch_support import make

    key = _key("retinanet", X101[1:])
    (mirror / key).parent.mkdir(parents=True, exist_ok=True)
    (mirror / key).write_bytes(b"weights " + key.encode())
    out = make("weights", "ALGO=retinanet", "REGION=" + REGION, "BUCKET=" + BUCKET,
               "HP=--backbone X_101_32x8d_FPN", env={"HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "PRETRAINED=s3://{}/detectron2/weights/".format(BUCKET)
    listed = client("s3").list_objects_v2(Bucket=BUCKET, Prefix="detectron2/weights/")["Contents"]
    assert [o["Key"] for o in listed] == ["detectron2/weights/" + key]
    assert (tmp_path / ".cache" / "shelfdet" / "weights" / key).is_file()


def test_kms_key_encrypts_the_uploaded_checkpoints(account, mirror, tmp_path, capsys):
    key = _key("retinanet", X101[1:])
    (mirror / key).parent.mkdir(parents=True)
    (mirror / key).write_bytes(b"x101 imagenet weights" * 100)
    kms = client("kms").create_key()["KeyMetadata"]["Arn"]
    rc, _, err = run(capsys, ["--algo", "retinanet", "--region", REGION, "--bucket", BUCKET, "--cache",
                              str(tmp_path / "cache"), "--kms-key", kms] + X101)
    assert rc == 0, err
    head = client("s3").head_object(Bucket=BUCKET, Key="detectron2/weights/" + key)
    assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", kms)
