"""Every launcher uses the image of the stack its instance type needs, and refuses,
before creating anything, when that image is not in the account's ECR."""
from __future__ import annotations

import pytest

from test_launch_support import (BUCKET, PREFIX, REGION, account, cli, client, fast_sessions, image_uri,  # noqa: F401
                                 one_error_line, wire, sent)

MODEL = "s3://{}/jobs/detectron2-x/output/model.tar.gz".format(BUCKET)
COMMON = ["--region", REGION, "--bucket", BUCKET, "--prefix", PREFIX]
# command -> (argv before the instance type, image kind, the request that would carry the image)
LAUNCHERS = {
    "train": (["train", "--algo", "faster_rcnn", "--data-dir", "data"], "training", "CreateTrainingJob"),
    "tune": (["tune", "--algo", "faster_rcnn", "--max-jobs", "2", "--max-parallel", "1"], "training",
             "CreateHyperParameterTuningJob"),
    "deploy": (["deploy", "--model", MODEL], "serving", "CreateModel"),
    # Waiting for and scoring the outputs is transform's own test's business.
    "transform": (["transform", "--model", MODEL, "--no-wait"], "serving", "CreateModel"),
}


def _created() -> dict:
    sm = client("sagemaker")
    return {"training": sm.list_training_jobs()["TrainingJobSummaries"],
            "tuning": sm.list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"],
            "models": sm.list_models()["Models"], "endpoints": sm.list_endpoints()["Endpoints"],
            "transforms": sm.list_transform_jobs()["TransformJobSummaries"]}


@pytest.fixture
def model_artefact(account):
    client("s3").put_object(Bucket=BUCKET, Key=MODEL.split("/", 3)[3], Body=b"tar")


@pytest.mark.parametrize("command", sorted(LAUNCHERS))
@pytest.mark.parametrize("instance", ["ml.p4d.24xlarge", "ml.g5.2xlarge"])
def test_missing_image_of_the_default_stack_fails_before_anything_is_created(model_artefact, capsys, command,
                                                                             instance):
    argv, kind, _ = LAUNCHERS[command]
    before = _created()
    rc, _, err = cli(capsys, *(argv + ["--instance-type", instance] + COMMON))
    assert rc != 0
    line = one_error_line(err)
    assert "{} is not in ECR: run `make push-{} REGION={} STACK=cu12` first".format(
        image_uri(kind, "cu12"), kind, REGION) in line, line
    assert _created() == before


@pytest.mark.parametrize("command", sorted(LAUNCHERS))
@pytest.mark.parametrize("instance", ["ml.p3.2xlarge", "ml.g4dn.xlarge"])
def test_volta_and_turing_instances_run_the_card_stack(model_artefact, wire, capsys, command, instance):
    argv, kind, operation = LAUNCHERS[command]
    rc, _, err = cli(capsys, *(argv + ["--instance-type", instance] + COMMON))
    assert rc == 0, err
    (request,) = sent(wire, operation)[:1]
    uri = image_uri(kind, "cu101")
    if operation == "CreateTrainingJob":
        assert request["AlgorithmSpecification"]["TrainingImage"] == uri
    elif operation == "CreateHyperParameterTuningJob":
        assert request["TrainingJobDefinition"]["AlgorithmSpecification"]["TrainingImage"] == uri
    else:
        assert request["PrimaryContainer"]["Image"] == uri
