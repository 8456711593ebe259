"""`make deploy` and `make undeploy` against a moto server (`make predict ENDPOINT=`: test_serving_predict.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from shelfdet.commands import launch_train
from test_launch_support import (BUCKET, PREFIX, REGION, ROLE_ARN, account, cli, client,  # noqa: F401
                                 fast_sessions, image_uri, json_docs, no_network, one_error_line, put_image, sent, wire)

AWS = ["--region", REGION, "--bucket", BUCKET, "--prefix", PREFIX]


def train_job(capsys) -> str:
    capsys.readouterr()
    assert launch_train.main(["--algo", "faster_rcnn", "--instance-type", "ml.g4dn.xlarge"] + AWS) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def python_m(cwd, *args):
    """`python -m shelfdet ...` as the Makefile runs it, in a scratch folder (runs/ lands there)."""
    return subprocess.run([sys.executable, "-m", "shelfdet"] + list(args), cwd=str(cwd), capture_output=True,
                          text=True, env=dict(os.environ), timeout=120)


def test_deploy_then_undeploy_removes_exactly_that(account, capsys, tmp_path):
    sm = client("sagemaker")
    job = train_job(capsys)
    artefact = sm.describe_training_job(TrainingJobName=job)["ModelArtifacts"]["S3ModelArtifacts"]
    # Something deploy did not create, which undeploy must leave alone.
    sm.create_model(ModelName="other-model", ExecutionRoleArn=ROLE_ARN,
                    PrimaryContainer={"Image": image_uri("serving"), "ModelDataUrl": artefact})

    out = python_m(tmp_path, "deploy", "--model", job, "--endpoint", "shelf-ep", "--instance-type", "ml.g4dn.xlarge",
                   "--stack", "cpu", *AWS)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "shelf-ep"
    ep = sm.describe_endpoint(EndpointName="shelf-ep")
    assert ep["EndpointStatus"] == "InService"
    config = sm.describe_endpoint_config(EndpointConfigName=ep["EndpointConfigName"])
    (variant,) = config["ProductionVariants"]
    assert variant["InstanceType"] == "ml.g4dn.xlarge" and variant["InitialInstanceCount"] == 1
    model = sm.describe_model(ModelName=variant["ModelName"])
    assert model["PrimaryContainer"]["Image"] == image_uri("serving")
    assert model["PrimaryContainer"]["ModelDataUrl"] == artefact
    assert model["ExecutionRoleArn"] == ROLE_ARN
    record = json.loads((tmp_path / "runs" / "deployments" / "shelf-ep.json").read_text())
    assert record == {"region": REGION, "model": variant["ModelName"], "endpoint_config": ep["EndpointConfigName"],
                      "endpoint": "shelf-ep"}

    out = python_m(tmp_path, "undeploy", *AWS)  # no ENDPOINT: the newest recorded one
    assert out.returncode == 0, out.stderr
    assert sm.list_endpoints()["Endpoints"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert [m["ModelName"] for m in sm.list_models()["Models"]] == ["other-model"]
    assert not (tmp_path / "runs" / "deployments" / "shelf-ep.json").exists()


def test_deploy_newest_job_by_default_and_dry_run_equals_request(account, wire, capsys, monkeypatch, tmp_path):
    train_job(capsys)
    newest = train_job(capsys)
    argv = ["deploy", "--model", "s3://{}/m/model.tar.gz".format(BUCKET), "--endpoint", "ep-dry",
            "--instance-type", "ml.g4dn.2xlarge", "--stack", "cpu", "--role", ROLE_ARN, "--record-dir", str(tmp_path),
            "--env", "SAGEMAKER_MODEL_SERVER_WORKERS=1"] + AWS
    with monkeypatch.context() as m:
        no_network(m)
        rc, out, err = cli(capsys, *(argv + ["--dry-run"]))
    assert rc == 0, err
    printed = json_docs(out)
    assert len(printed) == 3

    client("s3").put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"tgz")
    rc, out, err = cli(capsys, *argv)
    assert rc == 0, err
    requests = [body for op, body in wire if op in ("CreateModel", "CreateEndpointConfig", "CreateEndpoint")]
    assert requests == printed
    assert requests[0]["PrimaryContainer"]["Environment"] == {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}

    rc, out, err = cli(capsys, "deploy", "--endpoint", "ep-newest", "--record-dir", str(tmp_path), *AWS)
    assert rc == 0, err
    assert "model from training job {}".format(newest) in err
    (config,) = [b for op, b in wire if op == "CreateEndpointConfig" and b["EndpointConfigName"].startswith("ep-newest")]
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.g4dn.xlarge"


def test_deploy_and_undeploy_errors(account, capsys, tmp_path):
    sm = client("sagemaker")
    rc, _, err = cli(capsys, "deploy", "--record-dir", str(tmp_path), *AWS)
    assert rc != 0 and "no completed detectron2-* training job" in one_error_line(err)
    rc, _, err = cli(capsys, "deploy", "--model", "s3://{}/missing.tar.gz".format(BUCKET), "--record-dir", str(tmp_path), *AWS)
    assert rc != 0 and "not found in S3" in one_error_line(err)
    rc, _, err = cli(capsys, "deploy", "--model", "s3://x/m.tar.gz", "--stack", "cu12", "--record-dir", str(tmp_path), *AWS)
    assert rc != 0 and ": run make push-serving REGION=us-east-2 STACK=cu12" in one_error_line(err)
    rc, _, err = cli(capsys, "undeploy", "--record-dir", str(tmp_path), *AWS)
    assert rc != 0 and "no ENDPOINT given and no deployment recorded" in one_error_line(err)
    assert sm.list_models()["Models"] == []

    # An endpoint made elsewhere (no tag, no record) is not undeploy's to delete unless forced.
    client("s3").put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"tgz")
    sm.create_model(ModelName="theirs", ExecutionRoleArn=ROLE_ARN,
                    PrimaryContainer={"Image": image_uri("serving"), "ModelDataUrl": "s3://{}/m/model.tar.gz".format(BUCKET)})
    sm.create_endpoint_config(EndpointConfigName="theirs-config", ProductionVariants=[
        {"VariantName": "v", "ModelName": "theirs", "InstanceType": "ml.m5.large", "InitialInstanceCount": 1}])
    sm.create_endpoint(EndpointName="theirs", EndpointConfigName="theirs-config")
    rc, _, err = cli(capsys, "undeploy", "--endpoint", "theirs", "--record-dir", str(tmp_path), *AWS)
    assert rc != 0 and "was not created by `make deploy`" in one_error_line(err)
    rc, _, err = cli(capsys, "undeploy", "--endpoint", "theirs", "--force", "--record-dir", str(tmp_path), *AWS)
    assert rc == 0, err
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []


@pytest.mark.parametrize("instance_type, stack", [("ml.m5.large", "cpu"), ("ml.c5.xlarge", "cpu"), ("ml.p3.2xlarge", "cu101"),
                                                  ("ml.g4dn.xlarge", "cu101"), ("ml.g5.xlarge", "cu12"), ("ml.g6.xlarge", "cu12")])
def test_default_stack_serving_image_for_each_instance_family(account, wire, capsys, monkeypatch, tmp_path, instance_type, stack):
    put_image("serving", "cu12")  # every stack pushed: the image named is the launcher's choice alone
    client("s3").put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"tgz")
    argv = ["deploy", "--model", "s3://{}/m/model.tar.gz".format(BUCKET), "--endpoint", "ep-stack", "--role", ROLE_ARN,
            "--instance-type", instance_type, "--record-dir", str(tmp_path)] + AWS
    if stack == "cu12":
        # moto refuses endpoint configs on g5/g6 (its instance list predates them): the dry run, which
        # prints exactly what is sent (test_deploy_newest_job_by_default_and_dry_run_equals_request), stands in.
        with monkeypatch.context() as m:
            no_network(m)
            rc, out, err = cli(capsys, *(argv + ["--dry-run"]))
        assert rc == 0, err
        model, config, _ = json_docs(out)
    else:
        rc, out, err = cli(capsys, *argv)
        assert rc == 0, err
        (model,), (config,) = sent(wire, "CreateModel"), sent(wire, "CreateEndpointConfig")
        created = client("sagemaker").describe_model(ModelName=model["ModelName"])
        assert created["PrimaryContainer"]["Image"] == image_uri("serving", stack)
    assert model["PrimaryContainer"]["Image"] == image_uri("serving", stack)
    assert config["ProductionVariants"][0]["InstanceType"] == instance_type
