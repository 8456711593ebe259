"""`make deploy SERVERLESS=1` (ServerlessConfig on the slim image, for an exported model) and `make undeploy`,
against a moto server; `make predict ENDPOINT=` on a serverless endpoint (its 4 MB request limit)."""
from __future__ import annotations

import io
import json
import tarfile

import pytest

from test_launch_support import (BUCKET, PREFIX, REGION, ROLE_ARN, account, cli, client, fast_sessions,  # noqa: F401
                                 image_uri, json_docs, no_network, one_error_line, put_image, sent, wire)
from test_predict_endpoints import MB, big_photo, sagemaker  # noqa: F401

AWS = ["--region", REGION, "--bucket", BUCKET, "--prefix", PREFIX]
OPS = ("CreateModel", "CreateEndpointConfig", "CreateEndpoint")


def model_tar(*members: str) -> bytes:
    """A model.tar.gz holding ``members`` (small files), as a training job's or `make export`'s folder packs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("model_final.pth", "artefacts.json") + members:
            data = b"{}" if name.endswith(".json") else b"weights"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def put_model(key: str, *members: str) -> str:
    client("s3").put_object(Bucket=BUCKET, Key=key, Body=model_tar(*members))
    return "s3://{}/{}".format(BUCKET, key)


EXPORTED = "export/openvino/record.json"


def training_job(name: str, hyperparameters: dict) -> str:
    """A completed training job in moto whose model.tar.gz is in S3."""
    artefact = put_model("detectron2/output/{}/output/model.tar.gz".format(name))
    client("sagemaker").create_training_job(
        TrainingJobName=name, HyperParameters=hyperparameters, RoleArn=ROLE_ARN,
        AlgorithmSpecification={"TrainingImage": image_uri("training"), "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": "s3://{}/detectron2/output".format(BUCKET)},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 30},
        StoppingCondition={"MaxRuntimeInSeconds": 3600})
    assert client("sagemaker").describe_training_job(TrainingJobName=name)["ModelArtifacts"]["S3ModelArtifacts"] == artefact
    return name


def deploy_argv(tmp_path, model, endpoint="shelf-sls", *extra):
    return ["deploy", "--model", model, "--endpoint", endpoint, "--serverless", "--role", ROLE_ARN,
            "--record-dir", str(tmp_path)] + list(extra) + AWS


@pytest.fixture
def slim(account):
    put_image("serving", "cpu-slim")
    return account


def test_serverless_deploy_sends_exactly_these_requests_and_undeploy_removes_them(slim, wire, capsys, monkeypatch, tmp_path):
    model = "s3://{}/m/model.tar.gz".format(BUCKET)
    argv = deploy_argv(tmp_path, model, "shelf-sls", "--memory", "4096", "--max-concurrency", "3")
    with monkeypatch.context() as m:
        no_network(m)
        rc, out, err = cli(capsys, *(argv + ["--dry-run"]))
    assert rc == 0, err
    assert "whether {} holds an export the slim image runs (export/<openvino|onnx>/record.json".format(model) in err
    printed = json_docs(out)

    put_model("m/model.tar.gz", EXPORTED)
    rc, out, err = cli(capsys, *argv)
    assert rc == 0, err
    assert out.strip().splitlines()[-1] == "shelf-sls"
    assert "{} holds an export (openvino)".format(model) in err
    requests = [body for op, body in wire if op in OPS]
    assert [op for op, _ in wire if op in OPS] == list(OPS)
    assert requests == printed
    tags = [{"Key": "shelfdet:deployment", "Value": "shelf-sls"}]
    assert requests[0] == {"ModelName": "shelf-sls-model", "ExecutionRoleArn": ROLE_ARN, "Tags": tags,
                           "PrimaryContainer": {"Image": image_uri("serving", "cpu-slim"), "ModelDataUrl": model}}
    # No instance type, no instance count: SageMaker picks the CPUs from the memory.
    assert requests[1] == {"EndpointConfigName": "shelf-sls-config", "Tags": tags, "ProductionVariants": [
        {"VariantName": "AllTraffic", "ModelName": "shelf-sls-model",
         "ServerlessConfig": {"MemorySizeInMB": 4096, "MaxConcurrency": 3}}]}
    assert not [op for op, _ in wire if op in ("RegisterScalableTarget", "PutScalingPolicy")]

    sm = client("sagemaker")
    (variant,) = sm.describe_endpoint_config(EndpointConfigName="shelf-sls-config")["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 4096, "MaxConcurrency": 3}
    assert sm.describe_endpoint(EndpointName="shelf-sls")["EndpointStatus"] == "InService"

    rc, _, err = cli(capsys, "undeploy", "--endpoint", "shelf-sls", "--record-dir", str(tmp_path), *AWS)
    assert rc == 0, err
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert sm.list_models()["Models"] == [] and not (tmp_path / "shelf-sls.json").exists()


def test_serverless_defaults_6144_mb_and_5_concurrent_and_keeps_the_kms_key(slim, wire, capsys, tmp_path):
    model = put_model("m/model.tar.gz", "./export/onnx/record.json")
    key = "arn:aws:kms:us-east-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    rc, _, err = cli(capsys, *deploy_argv(tmp_path, model, "shelf-sls", "--kms-key", key))
    assert rc == 0, err
    (config,) = sent(wire, "CreateEndpointConfig")
    assert config["ProductionVariants"][0]["ServerlessConfig"] == {"MemorySizeInMB": 6144, "MaxConcurrency": 5}
    assert config["KmsKeyId"] == key


@pytest.mark.parametrize("hyperparameters, ok", [
    ({"export": "openvino"}, True),
    ({"export": '"onnx"'}, True),  # as the SageMaker Python SDK sends it, JSON-encoded
    ({"export": "none"}, False),
    ({}, False),  # a job from before the export hyperparameter
    ({"export": "torchscript"}, False),
])
def test_the_export_check_reads_a_training_jobs_export_hyperparameter(slim, wire, capsys, tmp_path, hyperparameters, ok):
    job = training_job("detectron2-exported", dict({"model-type": "faster_rcnn"}, **hyperparameters))
    rc, _, err = cli(capsys, *deploy_argv(tmp_path, job))
    if ok:
        assert rc == 0, err
        assert "training job detectron2-exported exported its model to" in err
        return
    line = one_error_line(err)
    assert rc != 0 and line.startswith("error: SERVERLESS=1 serves an exported model, and training job "
                                       "detectron2-exported made ")
    assert "train with HP='--export openvino', or run `make export MODEL_DIR=<its model folder>`" in line
    assert not [op for op, _ in wire if op in OPS]
    # The job's tar is not read: its hyperparameter says what it holds.
    assert not [op for op, _ in wire if op == "GetObject"]


@pytest.mark.parametrize("members, needle", [
    ((), "has no export (no export/<openvino|onnx>/record.json)"),
    (("export/openvino/model.xml",), "has no export"),
    (("export/torchscript/record.json",), "has only a torchscript export, which needs torch"),
])
def test_the_export_check_reads_an_s3_model_tar(slim, wire, capsys, tmp_path, members, needle):
    model = put_model("m/model.tar.gz", *members)
    rc, _, err = cli(capsys, *deploy_argv(tmp_path, model))
    line = one_error_line(err)
    assert rc != 0 and "SERVERLESS=1 serves an exported model, and {} {}".format(model, needle) in line
    assert not [op for op, _ in wire if op in OPS]


def test_a_model_that_is_no_tar_is_refused(slim, capsys, tmp_path):
    client("s3").put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"tgz")
    rc, _, err = cli(capsys, *deploy_argv(tmp_path, "s3://{}/m/model.tar.gz".format(BUCKET)))
    assert rc != 0 and "is not a readable model.tar.gz" in one_error_line(err)


def test_the_export_check_stops_at_the_first_export(slim, capsys, monkeypatch, tmp_path):
    """The weights after the export are not read: a big model need not come down whole."""
    from shelfdet.launch import aws, deploy

    model = put_model("m/model.tar.gz", EXPORTED, "last.bin")
    seen = []
    original = tarfile.TarFile.next

    def spy(self):
        member = original(self)
        seen.append(member.name if member else None)
        return member

    monkeypatch.setattr(tarfile.TarFile, "next", spy)
    assert deploy.exports_in_tar(aws.Aws(REGION), model) == ["openvino"]
    assert EXPORTED in seen and "last.bin" not in seen


@pytest.mark.parametrize("extra, needle", [
    (["--memory", "512"], "MEMORY=512: a serverless endpoint has 1024, 2048, 3072, 4096, 5120 or 6144 MB: pass one of them"),
    (["--memory", "7168"], "MEMORY=7168: a serverless endpoint has 1024,"),
    (["--memory", "1500"], "MEMORY=1500: a serverless endpoint has 1024,"),
    (["--max-concurrency", "0"], "MAX_CONCURRENCY=0: a serverless endpoint takes 1 to 200 concurrent invocations"),
    (["--max-concurrency", "201"], "MAX_CONCURRENCY=201: a serverless endpoint takes 1 to 200"),
    (["--async"], "SERVERLESS=1 with ASYNC=1: an asynchronous endpoint runs on instances: drop one of"),
    (["--min-instances", "1"], "SERVERLESS=1 with MIN_INSTANCES/MAX_INSTANCES: a serverless endpoint scales itself"),
    (["--max-instances", "2"], "SERVERLESS=1 with MIN_INSTANCES/MAX_INSTANCES: "),
    (["--instance-type", "ml.m5.large"], "SERVERLESS=1 with INSTANCE_TYPE: SageMaker picks a serverless endpoint's CPUs"),
    (["--instance-count", "2"], "SERVERLESS=1 with INSTANCE_COUNT: a serverless endpoint has no instances"),
    (["--vpc-subnets", "subnet-1", "--vpc-security-groups", "sg-1"],
     "SERVERLESS=1 with VPC_SUBNETS/VPC_SECURITY_GROUPS: SageMaker serverless endpoints have no VPC configuration"),
    (["--network-isolation"], "SERVERLESS=1 with NETWORK_ISOLATION=1: SageMaker serverless endpoints have no network"),
    (["--stack", "cpu"], "SERVERLESS=1 with STACK=cpu: a serverless endpoint is CPU only and runs the slim image: "
                         "drop STACK (or STACK=cpu-slim)"),
])
def test_what_serverless_cannot_do_is_refused_before_anything_is_sent(slim, wire, capsys, monkeypatch, tmp_path, extra,
                                                                       needle):
    model = put_model("m/model.tar.gz", EXPORTED)
    rc, _, err = cli(capsys, *deploy_argv(tmp_path, model, "shelf-sls", *extra))
    assert rc != 0 and needle in one_error_line(err)
    assert wire == []
    with monkeypatch.context() as m:  # a dry run refuses the same, with no AWS call
        no_network(m)
        rc, _, err = cli(capsys, *(deploy_argv(tmp_path, model, "shelf-sls", *extra) + ["--dry-run"]))
    assert rc != 0 and needle in one_error_line(err)


def test_the_slim_stack_has_no_training_image(account, capsys):
    rc, _, err = cli(capsys, "train", "--algo", "faster_rcnn", "--instance-type", "ml.m5.large", "--stack", "cpu-slim",
                     *AWS)
    assert rc != 0 and "stack 'cpu-slim' has no training image (only: serving)" in one_error_line(err)


def test_the_slim_image_must_be_pushed(account, capsys, tmp_path):
    model = put_model("m/model.tar.gz", EXPORTED)
    rc, _, err = cli(capsys, *deploy_argv(tmp_path, model))
    assert rc != 0 and ": run make push-serving REGION=us-east-2 STACK=cpu-slim" in one_error_line(err)


# ---- make predict ENDPOINT= on a serverless endpoint ---------------------------------------

def serverless_endpoint(name):
    """A serverless endpoint in moto, as `make deploy SERVERLESS=1` leaves it."""
    sm = client("sagemaker")
    sm.create_model(ModelName=name + "-model", ExecutionRoleArn=ROLE_ARN,
                    PrimaryContainer={"Image": image_uri("serving", "cpu-slim"),
                                      "ModelDataUrl": "s3://{}/m/model.tar.gz".format(BUCKET)})
    sm.create_endpoint_config(EndpointConfigName=name + "-config", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": name + "-model",
         "ServerlessConfig": {"MemorySizeInMB": 6144, "MaxConcurrency": 5}}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name + "-config")


def test_serverless_predict_refuses_a_photo_over_4_mb_naming_resize(account, sagemaker, capsys, tmp_path):
    serverless_endpoint("shelf-sls")
    photo = big_photo(tmp_path / "big.jpg", 4.2, 3000, 2250)
    assert photo.stat().st_size < 6 * MB  # a real-time endpoint would take it
    rc, _, err = cli(capsys, "predict", "--image", str(photo), "--endpoint", "shelf-sls", "--region", REGION)
    assert rc == 2 and one_error_line(err) == (
        "error: {} is {:.1f} MB, over the 4 MB a serverless endpoint takes: pass RESIZE=1 to send them at the "
        "model's test scale, or deploy with ASYNC=1 (asynchronous, up to 1 GB)".format(photo, photo.stat().st_size / MB))
    assert sagemaker.sent("InvokeEndpoint") == []


def test_serverless_predict_sends_a_small_photo_and_waits_past_60_s(account, sagemaker, capsys, tmp_path):
    from _serving_support import encode, shelf_image
    from shelfdet.launch import aws, endpoint

    serverless_endpoint("shelf-sls")
    served = {"image_height": 30, "image_width": 40, "pred_boxes": [[10.0, 10.0, 30.0, 20.0]], "scores": [0.9],
              "pred_classes": [0], "pred_class_names": ["SKU"], "class_names": ["SKU"]}
    sagemaker.answer = lambda body, ctype, attributes: (200, json.dumps(served).encode())
    photo = tmp_path / "shelf.png"
    photo.write_bytes(encode(shelf_image(9, 40, 30), "PNG"))
    rc, stdout, err = cli(capsys, "predict", "--image", str(photo), "--endpoint", "shelf-sls", "--region", REGION,
                          "--out", str(tmp_path / "preds"))
    assert rc == 0, err
    (request,) = sagemaker.sent("InvokeEndpoint")
    assert request["Body"] == photo.read_bytes()
    # SageMaker gives a serverless invocation 60 s after its cold start; botocore's default read timeout is 60 s.
    runtime = endpoint.runtime_client(aws.make_session(REGION), endpoint.SERVERLESS)
    assert runtime.meta.config.read_timeout >= endpoint.SERVERLESS_INVOCATION_S + 60


def test_a_serverless_invocation_ended_at_60_s_names_resize(account, sagemaker, capsys, tmp_path):
    from _serving_support import encode, shelf_image

    serverless_endpoint("shelf-sls")
    timed_out = {"__type": "ModelError", "message": "Received server error (0) from primary with message "
                 "\"Your invocation timed out while waiting for a response from container primary.\""}
    sagemaker.answer = lambda body, ctype, attributes: (424, json.dumps(timed_out).encode())
    photo = tmp_path / "shelf.png"
    photo.write_bytes(encode(shelf_image(9, 40, 30), "PNG"))
    rc, _, err = cli(capsys, "predict", "--image", str(photo), "--endpoint", "shelf-sls", "--region", REGION)
    line = one_error_line(err)
    assert rc == 2 and line.startswith("error: {}: endpoint shelf-sls did not answer within the 60 s a serverless "
                                       "invocation has (Received server error (0)".format(photo))
    assert line.endswith("pass RESIZE=1 to send it at the model's test scale, or deploy on instances")
