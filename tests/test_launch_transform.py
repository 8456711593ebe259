"""`make transform` against a moto server: the job read back, outputs downloaded, evaluate called on them."""
from __future__ import annotations

import json
import sys

import pytest

from shelfdet.commands import launch_train
from shelfdet.launch import transform
from test_launch_support import (BUCKET, PREFIX, REGION, ROLE_ARN, account, cli, client, describes,  # noqa: F401
                                 fast_sessions, image_uri, json_docs, make, no_network, one_error_line, put_image, sent,
                                 wire)

AWS = ["--region", REGION, "--bucket", BUCKET, "--prefix", PREFIX]
PREDICTION = {"image_height": 10, "image_width": 20, "pred_boxes": [[1, 2, 3, 4]], "scores": [0.9],
              "pred_classes": [0], "class_names": ["SKU"]}


@pytest.fixture
def manifest(tmp_path):
    path = tmp_path / "test.manifest"
    path.write_text("{}\n")
    return path


@pytest.fixture
def evaluate_calls(monkeypatch, tmp_path):
    """Replaces the evaluate command (the serving owner's) by one that records its argv."""
    log = tmp_path / "evaluate.json"

    def command(predictions, manifest):
        code = "import json,sys; json.dump(sys.argv[1:], open({!r}, 'w'))".format(str(log))
        return [sys.executable, "-c", code, "--predictions", predictions, "--manifest", manifest]

    monkeypatch.setattr(transform, "evaluate_command", command)
    return log


def test_evaluate_command_is_shelfdet_evaluate():
    assert transform.evaluate_command("d", "m")[1:] == ["-m", "shelfdet", "evaluate", "--predictions", "d", "--manifest", "m"]


def test_transform_downloads_outputs_and_evaluates(account, wire, capsys, manifest, evaluate_calls, tmp_path):
    sm, s3 = client("sagemaker"), client("s3")
    capsys.readouterr()
    assert launch_train.main(["--instance-type", "ml.p3.2xlarge"] + AWS) == 0
    job = capsys.readouterr().out.strip().splitlines()[-1]
    artefact = sm.describe_training_job(TrainingJobName=job)["ModelArtifacts"]["S3ModelArtifacts"]
    name = "detectron2-transform-t1"
    # moto runs no container: put what SageMaker would write, <image>.out per input image.
    s3.put_object(Bucket=BUCKET, Key="detectron2/transform/{}/test_1.jpg.out".format(name), Body=json.dumps(PREDICTION).encode())
    download = tmp_path / "predictions"

    rc, out, err = cli(capsys, "transform", "--model", job, "--job-name", name, "--instance-type", "ml.p3.2xlarge",
                       "--stack", "cpu", "--manifest", str(manifest), "--download-dir", str(download), *AWS)
    assert rc == 0, err
    desc = sm.describe_transform_job(TransformJobName=name)
    assert desc["TransformInput"]["DataSource"]["S3DataSource"] == {"S3DataType": "S3Prefix",
                                                                     "S3Uri": "s3://{}/{}/test/".format(BUCKET, PREFIX)}
    assert desc["TransformInput"]["ContentType"] == "application/x-image"
    assert desc["TransformInput"]["SplitType"] == "None"
    assert desc["MaxPayloadInMB"] == 16 and desc["BatchStrategy"] == "SingleRecord"
    assert desc["TransformOutput"]["S3OutputPath"] == "s3://{}/detectron2/transform/{}/".format(BUCKET, name)
    assert desc["TransformResources"] == {"InstanceType": "ml.p3.2xlarge", "InstanceCount": 1}
    (model,) = sent(wire, "CreateModel")
    assert model["PrimaryContainer"] == {"Image": image_uri("serving"), "ModelDataUrl": artefact}
    assert model["ExecutionRoleArn"] == ROLE_ARN
    assert sm.list_models()["Models"] == []  # made for this job only, deleted after it
    assert json.loads((download / "test_1.jpg.out").read_text()) == PREDICTION
    assert json.loads(evaluate_calls.read_text()) == ["--predictions", str(download), "--manifest", str(manifest)]


def model_and_output(name):
    """A model artefact and the one .out the job named ``name`` would write (moto runs no container)."""
    s3 = client("s3")
    s3.put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"tgz")
    s3.put_object(Bucket=BUCKET, Key="detectron2/transform/{}/test_1.jpg.out".format(name), Body=json.dumps(PREDICTION).encode())
    return "s3://{}/m/model.tar.gz".format(BUCKET)


def test_transform_waits_for_the_job_then_downloads(account, describes, capsys, monkeypatch, tmp_path):
    name = "detectron2-transform-w"
    monkeypatch.setenv("SHELFDET_POLL_SECONDS", "0.5")
    describes.script("DescribeTransformJob", [{"TransformJobStatus": "InProgress"}] * 2)
    rc, out, err = cli(capsys, "transform", "--model", model_and_output(name), "--job-name", name, "--no-evaluate",
                       "--download-dir", str(tmp_path / "p"), *AWS)
    assert rc == 0, err
    assert [d["TransformJobStatus"] for d in describes.seen["DescribeTransformJob"]] == ["InProgress"] * 2 + ["Completed"]
    assert describes.naps == [0.5] * 2
    assert [l for l in err.splitlines() if l.startswith("[" + name + "]")] == [
        "[{}] InProgress".format(name), "[{}] Completed".format(name)]
    assert err.index("] Completed") < err.index("downloaded 1 predictions")
    assert (tmp_path / "p" / "test_1.jpg.out").exists()


@pytest.mark.parametrize("status, reason, expect", [
    ("Failed", "ClientError: 3 records failed", "failed: ClientError: 3 records failed"),
    ("Stopped", "", "stopped: no reason given"),
])
def test_transform_that_does_not_complete_is_one_line_and_downloads_nothing(account, describes, capsys, tmp_path,
                                                                             status, reason, expect):
    name = "detectron2-transform-f"
    describes.script("DescribeTransformJob", [{"TransformJobStatus": "InProgress"},
                                              {"TransformJobStatus": status, "FailureReason": reason}])
    rc, out, err = cli(capsys, "transform", "--model", model_and_output(name), "--job-name", name, "--no-evaluate",
                       "--download-dir", str(tmp_path / "p"), *AWS)
    assert rc == 1
    assert one_error_line(err) == "error: transform job {} {}".format(name, expect)
    assert len(describes.seen["DescribeTransformJob"]) == 2
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("instance_type, stack", [("ml.m5.xlarge", "cpu"), ("ml.c5.xlarge", "cpu"), ("ml.p3.2xlarge", "cu101"),
                                                  ("ml.g4dn.xlarge", "cu101"), ("ml.g5.xlarge", "cu12"),
                                                  ("ml.p4d.24xlarge", "cu12")])
def test_default_stack_serving_image_for_each_instance_family(account, wire, capsys, instance_type, stack):
    put_image("serving", "cu12")  # every stack pushed: the image named is the launcher's choice alone
    client("s3").put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"tgz")
    rc, out, err = cli(capsys, "transform", "--model", "s3://{}/m/model.tar.gz".format(BUCKET), "--instance-type", instance_type,
                       "--job-name", "detectron2-transform-s", "--no-wait", *AWS)
    assert rc == 0, err
    (model,) = sent(wire, "CreateModel")
    assert model["PrimaryContainer"]["Image"] == image_uri("serving", stack)
    assert client("sagemaker").describe_model(ModelName=model["ModelName"])["PrimaryContainer"]["Image"] == image_uri("serving", stack)
    (job,) = sent(wire, "CreateTransformJob")
    assert job["TransformResources"]["InstanceType"] == instance_type


def test_dry_run_equals_request_multirecord(account, wire, capsys, monkeypatch, manifest):
    argv = ["transform", "--model", "s3://{}/m/model.tar.gz".format(BUCKET), "--job-name", "detectron2-transform-t2",
            "--batch-strategy", "MultiRecord", "--max-concurrent", "2", "--instance-count", "2", "--role", ROLE_ARN,
            "--manifest", str(manifest), "--no-wait"] + AWS
    with monkeypatch.context() as m:
        no_network(m)
        rc, out, err = cli(capsys, *(argv + ["--dry-run"]))
    assert rc == 0, err
    printed = json_docs(out)
    client("s3").put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"tgz")
    rc, out, err = cli(capsys, *argv)
    assert rc == 0, err
    assert [b for op, b in wire if op in ("CreateModel", "CreateTransformJob")] == printed
    assert printed[1]["BatchStrategy"] == "MultiRecord" and printed[1]["MaxConcurrentTransforms"] == 2
    assert "MultiRecord sends several whole images" in err


def test_transform_errors(account, capsys, tmp_path, manifest):
    rc, _, err = cli(capsys, "transform", "--model", "s3://x/m.tar.gz", "--manifest", str(tmp_path / "nope"), *AWS)
    assert rc != 0 and "test manifest" in one_error_line(err) and "not found" in err
    client("s3").delete_object(Bucket=BUCKET, Key=PREFIX + "/test/test_1.jpg")
    client("s3").put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"tgz")
    rc, _, err = cli(capsys, "transform", "--model", "s3://{}/m/model.tar.gz".format(BUCKET), "--manifest", str(manifest), *AWS)
    assert rc != 0 and "no images under s3://{}/{}/test/".format(BUCKET, PREFIX) in one_error_line(err)
    assert client("sagemaker").list_transform_jobs()["TransformJobSummaries"] == []


def test_make_transform_dry_run(account, manifest):
    out = make("transform", "DRY_RUN=1", "REGION=" + REGION, "BUCKET=" + BUCKET, "ROLE=" + ROLE_ARN,
               "MODEL=s3://{}/m/model.tar.gz".format(BUCKET), "MANIFEST=" + str(manifest))
    assert out.returncode == 0, out.stderr
    model, job = json_docs(out.stdout)
    assert model["PrimaryContainer"]["ModelDataUrl"] == "s3://{}/m/model.tar.gz".format(BUCKET)
    assert job["TransformResources"]["InstanceType"] == "ml.p3.2xlarge"
    assert job["TransformInput"]["ContentType"] == "application/x-image"
