"""Every launcher uses the image of the stack its instance type needs, and refuses,
before creating anything, when that image is not in the account's ECR."""
from __future__ import annotations

import pytest

from test_launch_support import (ACCOUNT, BUCKET, PREFIX, REGION, account, cli, client, fast_sessions,  # noqa: F401
                                 image_uri, json_docs, make, no_network, one_error_line, put_image, sent, wire)

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
# Instance family -> the stack built for its GPU (cu101's CUDA arch list is 7.0;7.5).
FAMILIES = [("ml.p3.2xlarge", "cu101"), ("ml.g4dn.xlarge", "cu101"),  # V100, T4: the card's stack
            ("ml.p4d.24xlarge", "cu12"), ("ml.p5.48xlarge", "cu12"), ("ml.g5.2xlarge", "cu12")]  # A100, H100, A10G
REGISTRY = "{}.dkr.ecr.{}.amazonaws.com".format(ACCOUNT, REGION)
# moto 5.2.5 validates endpoint instance types against a list that ends at p3/g4dn.
MOTO_ENDPOINT_TYPES = ("ml.p3.", "ml.g4dn.")


def account_state() -> dict:
    """What a launch could create or change: SageMaker resources, S3 objects, ECR repositories and tags."""
    sm, s3, ecr = client("sagemaker"), client("s3"), client("ecr")
    objects = {b["Name"]: sorted(o["Key"] for o in s3.list_objects_v2(Bucket=b["Name"]).get("Contents", []))
               for b in s3.list_buckets()["Buckets"]}
    repos = {r["repositoryName"]: sorted(i.get("imageTag", "") for i in
                                         ecr.list_images(repositoryName=r["repositoryName"])["imageIds"])
             for r in ecr.describe_repositories()["repositories"]}
    return {"training": sm.list_training_jobs()["TrainingJobSummaries"],
            "tuning": sm.list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"],
            "models": sm.list_models()["Models"], "endpoint configs": sm.list_endpoint_configs()["EndpointConfigs"],
            "endpoints": sm.list_endpoints()["Endpoints"],
            "transforms": sm.list_transform_jobs()["TransformJobSummaries"], "s3": objects, "ecr": repos}


def unpush(kind: str, stack: str) -> None:
    repo, tag = image_uri(kind, stack).split("/", 1)[1].split(":")
    client("ecr").batch_delete_image(repositoryName=repo, imageIds=[{"imageTag": tag}])


def missing_line(kind: str, stack: str) -> str:
    return "error: shelfdet-{0}:0.1.0-{1}-t3st000 is not in ECR ({2}/shelfdet-{0}): run make push-{0} REGION={3} STACK={1}".format(
        kind, stack, REGISTRY, REGION)


def image_in(request: dict) -> str:
    if "AlgorithmSpecification" in request:
        return request["AlgorithmSpecification"]["TrainingImage"]
    if "TrainingJobDefinition" in request:
        return request["TrainingJobDefinition"]["AlgorithmSpecification"]["TrainingImage"]
    return request["PrimaryContainer"]["Image"]


@pytest.fixture(autouse=True)
def deployments_in_tmp(monkeypatch, tmp_path):
    """deploy records what it created; keep those records out of the repository's runs/."""
    from shelfdet.launch import deploy

    monkeypatch.setattr(deploy, "RECORD_DIR", str(tmp_path / "deployments"))


@pytest.fixture
def model_artefact(account):
    client("s3").put_object(Bucket=BUCKET, Key=MODEL.split("/", 3)[3], Body=b"tar")


@pytest.mark.parametrize("command", sorted(LAUNCHERS))
@pytest.mark.parametrize("instance, stack", FAMILIES)
def test_unpushed_image_stops_the_launch_before_anything_then_the_pushed_one_runs(model_artefact, wire, capsys,
                                                                                  command, instance, stack):
    argv, kind, operation = LAUNCHERS[command]
    argv = argv + ["--instance-type", instance] + COMMON
    if stack == "cu101":
        unpush(kind, stack)  # the account fixture pushed it
    before = account_state()
    rc, _, err = cli(capsys, *argv)
    assert rc != 0
    assert one_error_line(err) == missing_line(kind, stack)
    assert account_state() == before
    assert not [op for op, _ in wire if op.startswith("Create")]

    put_image(kind, stack)
    rc, _, err = cli(capsys, *argv)
    (request,) = sent(wire, operation)
    assert image_in(request) == image_uri(kind, stack)
    if command == "deploy" and not instance.startswith(MOTO_ENDPOINT_TYPES):
        assert "CreateEndpointConfig failed: ValidationException" in one_error_line(err)  # moto's, not ours
    else:
        assert rc == 0, err


def test_missing_repository_reads_like_a_missing_tag(account, capsys):
    argv = LAUNCHERS["train"][0] + ["--instance-type", "ml.g5.2xlarge"] + COMMON
    client("ecr").delete_repository(repositoryName="shelfdet-training", force=True)
    before = account_state()
    rc, _, err = cli(capsys, *argv)
    assert rc != 0 and one_error_line(err) == missing_line("training", "cu12")
    assert account_state() == before


def test_another_ecr_image_uri_is_checked_too(account, capsys):
    uri = "{}/elsewhere:v1".format(REGISTRY)
    rc, _, err = cli(capsys, *(LAUNCHERS["train"][0] + ["--instance-type", "ml.p3.2xlarge", "--image-uri", uri] + COMMON))
    assert rc != 0
    assert one_error_line(err) == "error: elsewhere:v1 is not in ECR ({}/elsewhere): push it there, or pass another --image-uri".format(REGISTRY)


@pytest.mark.parametrize("command", sorted(LAUNCHERS))
def test_make_with_an_unpushed_stack_prints_the_push_command_and_creates_nothing(model_artefact, command):
    argv, kind, _ = LAUNCHERS[command]
    before = account_state()
    out = make(command, "INSTANCE_TYPE=ml.g5.2xlarge", "REGION=" + REGION, "BUCKET=" + BUCKET,
               "MODEL=" + MODEL, "MANIFEST=" + __file__)  # any file: transform checks the manifest exists first
    assert out.returncode != 0
    # Make adds its own "make: *** ... Error 1" after the launcher's line.
    errors = [l for l in out.stderr.splitlines() if l.startswith("error: ")]
    assert errors == [missing_line(kind, "cu12")], out.stderr
    assert "Traceback" not in out.stderr
    assert account_state() == before


@pytest.mark.parametrize("command", sorted(LAUNCHERS))
def test_dry_run_asks_aws_nothing_and_says_the_image_was_not_checked(command, wire, capsys, monkeypatch):
    argv, kind, _ = LAUNCHERS[command]
    no_network(monkeypatch)  # any AWS call would now fail
    monkeypatch.setenv("SHELFDET_IMAGE_TAG", "t3st000")
    rc, out, err = cli(capsys, *(argv + ["--instance-type", "ml.g5.2xlarge", "--dry-run"] + COMMON))
    assert rc == 0, err
    assert wire == []
    uri = "<account>.dkr.ecr.{}.amazonaws.com/shelfdet-{}:0.1.0-cu12-t3st000".format(REGION, kind)
    assert "# dry run: whether {} is in ECR was not checked".format(uri) in err.splitlines()
    assert image_in(json_docs(out)[0]) == uri


def test_test_only_twin_is_never_a_default_and_never_launched(account, capsys):
    from shelfdet.launch import aws, image_names

    assert image_names.CARD_STACK == "cu101"  # the design card: CUDA 10.1, torch 1.6
    families = ["ml.{}.xlarge".format(f) for f in ("m5", "c5", "p2", "p3", "g4dn", "g5", "g6", "p4d", "p5", "trn1")]
    assert not set(map(aws.default_stack, families)) & set(image_names.TEST_STACKS)
    rc, _, err = cli(capsys, *(LAUNCHERS["train"][0] + ["--instance-type", "ml.m5.xlarge", "--stack", "cu101cpu"] + COMMON))
    assert rc != 0 and "stack 'cu101cpu' is a CPU twin for tests, never pushed or launched" in one_error_line(err)
    assert client("sagemaker").list_training_jobs()["TrainingJobSummaries"] == []
