"""`make train INSTANCE_TYPE=ml.*` against a moto server: the job read back, and the request as sent."""
from __future__ import annotations

import re
import time

import pytest

from shelfdet.commands import launch_train
from shelfdet.core import hyperparameters
from shelfdet.launch import training
from shelfdet.core.metrics import METRIC_DEFINITIONS
from test_launch_support import (BUCKET, PREFIX, REGION, ROLE_ARN, account, client, describes, fast_sessions,  # noqa: F401,E501
                                 image_uri, json_docs, no_network, one_error_line, put_image, sent, wire)

BASE = ["--algo", "retinanet", "--data-dir", "data", "--instance-type", "ml.p3.8xlarge", "--instance-count", "2",
        "--spot", "--stack", "cpu", "--region", REGION, "--bucket", BUCKET, "--prefix", PREFIX]


def run(capsys, argv):
    capsys.readouterr()
    rc = launch_train.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_training_job_as_created(account, wire, capsys):
    rc, out, err = run(capsys, BASE + ["--run-dir", "ignored", "--", "--lr", "0.01", "--num-iter", "500"])
    assert rc == 0, err
    name = out.strip().splitlines()[-1]
    assert re.match(r"^detectron2-retinanet-\d{8}-\d{6}-\d{3}$", name)
    assert "using execution role " + ROLE_ARN in err  # found by name: the other role is not SageMaker's

    job = client("sagemaker").describe_training_job(TrainingJobName=name)
    assert job["AlgorithmSpecification"]["TrainingImage"] == image_uri("training")
    assert job["RoleArn"] == ROLE_ARN
    assert job["ResourceConfig"]["InstanceType"] == "ml.p3.8xlarge"
    assert job["ResourceConfig"]["InstanceCount"] == 2
    assert job["EnableManagedSpotTraining"] is True
    stop = job["StoppingCondition"]
    assert stop["MaxWaitTimeInSeconds"] > stop["MaxRuntimeInSeconds"]
    assert job["CheckpointConfig"] == {"S3Uri": "s3://{}/detectron2/checkpoints/{}/".format(BUCKET, name),
                                       "LocalPath": "/opt/ml/checkpoints"}
    assert job["OutputDataConfig"]["S3OutputPath"] == "s3://{}/detectron2/output/".format(BUCKET)
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"] for c in job["InputDataConfig"]}
    assert set(channels) == {"training", "validation", "test", "annotation"}
    for name_ in ("training", "validation", "test"):
        assert channels[name_]["S3DataType"] == "S3Prefix"
        assert channels[name_]["S3Uri"] == "s3://{}/{}/{}/".format(BUCKET, PREFIX, name_)
    assert channels["annotation"]["S3Uri"] == "s3://{}/{}/annotations/".format(BUCKET, PREFIX)

    hps = job["HyperParameters"]
    assert set(hps) == {p.name for p in hyperparameters.PARAMS if p.default is not None}
    assert hps["model-type"] == "retinanet" and hps["lr"] == "0.01" and hps["num-iter"] == "500"
    assert hps["det-per-img"] == "300" and all(isinstance(v, str) for v in hps.values())
    hyperparameters.parse(hps)  # what the container will parse back

    # moto answers DescribeTrainingJob with its own metric list: the request is the truth.
    (request,) = sent(wire, "CreateTrainingJob")
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    assert request["HyperParameters"] == hps


def test_dry_run_prints_exactly_what_is_sent_and_calls_nothing(account, wire, capsys, monkeypatch):
    argv = BASE + ["--role", ROLE_ARN, "--job-name", "detectron2-retinanet-fixed", "--weights", "https://x/y.pkl"]
    with monkeypatch.context() as m:
        no_network(m)
        rc, out, err = run(capsys, argv + ["--dry-run", "--", "--lr", "0.02"])
    assert rc == 0, err
    assert wire == []
    (printed,) = json_docs(out)

    rc, out, err = run(capsys, argv + ["--", "--lr", "0.02"])
    assert rc == 0, err
    (request,) = sent(wire, "CreateTrainingJob")
    assert printed == request
    assert request["HyperParameters"]["weights"] == "https://x/y.pkl"


def test_without_spot_no_max_wait_and_test_channel_optional(account, wire, capsys):
    s3 = client("s3")
    s3.delete_object(Bucket=BUCKET, Key=PREFIX + "/test/test_1.jpg")
    argv = [a for a in BASE if a != "--spot"]
    rc, out, err = run(capsys, argv)
    assert rc == 0, err
    (request,) = sent(wire, "CreateTrainingJob")
    assert request["EnableManagedSpotTraining"] is False
    assert "MaxWaitTimeInSeconds" not in request["StoppingCondition"]
    assert [c["ChannelName"] for c in request["InputDataConfig"]] == ["training", "validation", "annotation"]
    assert "no test channel" in err


def test_s3_weights_become_a_channel(account, wire, capsys):
    client("s3").put_object(Bucket=BUCKET, Key="weights/model_final.pth", Body=b"w")
    rc, _, err = run(capsys, BASE + ["--weights", "s3://{}/weights/model_final.pth".format(BUCKET)])
    assert rc == 0, err
    (request,) = sent(wire, "CreateTrainingJob")
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    assert channels["weights"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://{}/weights/model_final.pth".format(BUCKET)
    assert request["HyperParameters"]["weights"] == "/opt/ml/input/data/weights/model_final.pth"


def test_wait_ends_with_artefact_and_metrics(account, capsys):
    rc, out, err = run(capsys, BASE + ["--wait"])
    assert rc == 0, err
    name = out.strip().splitlines()[0]
    job = client("sagemaker").describe_training_job(TrainingJobName=name)
    assert "model artefact: {}".format(job["ModelArtifacts"]["S3ModelArtifacts"]) in out
    assert job["FinalMetricDataList"]  # moto reports one: each is printed with its value
    for metric in job["FinalMetricDataList"]:
        assert "metric {}: {}".format(metric["MetricName"], metric["Value"]) in out.splitlines()
    assert "metrics: none reported" not in out
    assert "[{}] Completed / Completed".format(name) in err


def test_wait_says_when_no_metrics_came_and_the_billable_time(account, describes, capsys):
    describes.script("DescribeTrainingJob", [{"FinalMetricDataList": [], "BillableTimeInSeconds": 1234}])
    rc, out, err = run(capsys, BASE + ["--wait"])
    assert rc == 0, err
    assert "metrics: none reported" in out.splitlines() and "metric " not in out
    assert "bill: 1234 billable seconds x 2 ml.p3.8xlarge = 0.686 instance-hours; " \
           "spot savings unknown (no training time reported)" in out.splitlines()


def test_wait_ends_with_the_bill(account, describes, capsys):
    # SageMaker's own formula: spot saved 1 - billable / training time.
    describes.script("DescribeTrainingJob", [{"BillableTimeInSeconds": 900, "TrainingTimeInSeconds": 3600}])
    rc, out, err = run(capsys, BASE + ["--wait"])
    assert rc == 0, err
    assert "bill: 900 billable seconds x 2 ml.p3.8xlarge = 0.500 instance-hours; spot saved 75% (3600 s trained)" \
        in out.splitlines()


def test_wait_follows_status_and_logs_until_the_job_ends(account, describes, capsys, monkeypatch):
    name = "detectron2-followed"
    monkeypatch.setenv("SHELFDET_POLL_SECONDS", "0.25")
    logs = client("logs")
    logs.create_log_group(logGroupName="/aws/sagemaker/TrainingJobs")
    stream = name + "/algo-1-1700000000"
    logs.create_log_stream(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream)
    logs.put_log_events(logGroupName="/aws/sagemaker/TrainingJobs", logStreamName=stream,
                        logEvents=[{"timestamp": int(time.time() * 1000), "message": "iter 10 loss 0.5"}])
    running = [{"TrainingJobStatus": "InProgress", "SecondaryStatus": "Starting"},
               {"TrainingJobStatus": "InProgress", "SecondaryStatus": "Training"},
               {"TrainingJobStatus": "InProgress", "SecondaryStatus": "Training"}]
    describes.script("DescribeTrainingJob", running)
    rc, out, err = run(capsys, BASE + ["--wait", "--job-name", name])
    assert rc == 0, err
    # Three describes of a running job, then moto's Completed one ended the wait; a pause between each.
    assert [d["TrainingJobStatus"] for d in describes.seen["DescribeTrainingJob"]] == ["InProgress"] * 3 + ["Completed"]
    assert describes.naps == [0.25] * 3
    assert [l for l in err.splitlines() if l.startswith("[" + name + "]")] == [
        "[{}] InProgress / Starting".format(name), "[{}] InProgress / Training".format(name),
        "[{}] Completed / Completed".format(name)]
    assert out.splitlines().count("[algo-1-1700000000] iter 10 loss 0.5") == 1  # polled four times, printed once
    assert out.index("iter 10 loss 0.5") < out.index("model artefact: ")


@pytest.mark.parametrize("status, reason, expect", [
    ("Failed", "AlgorithmError: CUDA out of memory", "training job detectron2-ends failed: AlgorithmError: CUDA out of memory"),
    ("Stopped", None, "training job detectron2-ends stopped: no reason given"),
])
def test_wait_ends_with_the_failure_reason(account, describes, capsys, status, reason, expect):
    end = {"TrainingJobStatus": status, "SecondaryStatus": status}
    if reason:
        end["FailureReason"] = reason
    describes.script("DescribeTrainingJob", [{"TrainingJobStatus": "InProgress", "SecondaryStatus": "Training"}, end])
    rc, out, err = run(capsys, BASE + ["--wait", "--job-name", "detectron2-ends"])
    assert rc == 1
    assert one_error_line(err) == "error: " + expect
    assert len(describes.seen["DescribeTrainingJob"]) == 2  # the waiter stopped at the end state
    assert "model artefact" not in out


def test_wait_for_a_job_that_is_not_there_is_one_line(account, capsys):
    from shelfdet.commands import launching
    from shelfdet.launch import aws

    rc = launching.run(lambda _: training.wait(aws.Aws(REGION), "detectron2-nowhere"), [])
    err = capsys.readouterr().err
    assert rc == 1
    assert one_error_line(err).startswith("error: DescribeTrainingJob detectron2-nowhere: ValidationException"), err


@pytest.mark.parametrize("case, expect", [
    ("no-credentials", "no AWS credentials found"),
    ("missing-bucket", "bucket 'no-such-bucket' does not exist"),
    ("missing-image", "is not in ECR (123456789012.dkr.ecr.us-east-2.amazonaws.com/shelfdet-training): "
                      "run make push-training REGION=us-east-2 STACK=cu12"),
    ("missing-role", "execution role 'NoSuchRole' not found"),
    ("no-role-found", "no SageMaker execution role found"),
    ("unknown-region", "unknown region 'mars-north-1'"),
    ("no-data", "no data under s3://{}/elsewhere/training/".format(BUCKET)),
    ("bad-hp", "unknown hyperparameter 'lrr' (did you mean 'lr'?)"),
])
def test_errors_are_one_clear_line(account, capsys, monkeypatch, case, expect):
    argv = list(BASE)
    if case == "no-credentials":
        no_network(monkeypatch)
    elif case == "missing-bucket":
        argv[argv.index(BUCKET)] = "no-such-bucket"
    elif case == "missing-image":
        argv[argv.index("cpu")] = "cu12"
    elif case == "missing-role":
        argv += ["--role", "NoSuchRole"]
    elif case == "no-role-found":
        client("iam").delete_role(RoleName=ROLE_ARN.split("/")[-1])
    elif case == "unknown-region":
        argv[argv.index(REGION)] = "mars-north-1"
    elif case == "no-data":
        argv[argv.index(PREFIX)] = "elsewhere"
    elif case == "bad-hp":
        argv += ["--", "--lrr", "0.1"]
    rc, out, err = run(capsys, argv)
    assert rc != 0
    assert expect in one_error_line(err), err
    assert client("sagemaker").list_training_jobs()["TrainingJobSummaries"] == [] if case != "no-credentials" else True


def test_make_train_on_sagemaker_waits_and_reports(account):
    from test_launch_support import make

    out = make("train", "ALGO=faster_rcnn", "INSTANCE_TYPE=ml.p3.2xlarge", "INSTANCE_COUNT=2", "SPOT=1", "WAIT=1",
               "REGION=" + REGION, "BUCKET=" + BUCKET, "STACK=cpu", "HP=--lr 0.01 --num-iter 500")
    assert out.returncode == 0, out.stderr
    name = out.stdout.strip().splitlines()[0]
    job = client("sagemaker").describe_training_job(TrainingJobName=name)
    assert name.startswith("detectron2-faster-rcnn-")
    assert job["ResourceConfig"]["InstanceCount"] == 2 and job["EnableManagedSpotTraining"] is True
    assert job["HyperParameters"]["lr"] == "0.01" and job["HyperParameters"]["model-type"] == "faster_rcnn"
    assert "model artefact: " + job["ModelArtifacts"]["S3ModelArtifacts"] in out.stdout


def test_make_train_dry_run_needs_no_aws(account, monkeypatch):
    from test_launch_support import make

    no_network(monkeypatch)
    out = make("train", "INSTANCE_TYPE=ml.p3.2xlarge", "DRY_RUN=1", "REGION=" + REGION, "BUCKET=" + BUCKET)
    assert out.returncode == 0, out.stderr
    (request,) = json_docs(out.stdout)
    assert request["RoleArn"] == "<SageMaker execution role, found by name at launch>"
    assert request["AlgorithmSpecification"]["TrainingImage"].startswith("<account>.dkr.ecr.us-east-2.amazonaws.com/shelfdet-training:")


def test_default_stack_follows_the_instance_type():
    from shelfdet.launch.aws import default_stack

    assert default_stack("ml.p3.8xlarge") == "cu101"  # V100: compute 7.0
    assert default_stack("ml.g4dn.xlarge") == "cu101"  # T4: 7.5
    assert default_stack("ml.g5.xlarge") == "cu12"  # A10G: 8.6, not in cu101's arch list
    assert default_stack("ml.p4d.24xlarge") == "cu12"
    assert default_stack("ml.m5.xlarge") == "cpu"


# The default stack (no --stack) for one instance type of each family, as sent and as created.
DEFAULT_STACKS = [("ml.m5.xlarge", "cpu"), ("ml.c5.2xlarge", "cpu"), ("ml.p3.2xlarge", "cu101"), ("ml.p3dn.24xlarge", "cu101"), ("ml.g4dn.xlarge", "cu101"),
                  ("ml.g5.xlarge", "cu12"), ("ml.g6.xlarge", "cu12"), ("ml.p4d.24xlarge", "cu12"), ("ml.p5.48xlarge", "cu12")]


@pytest.mark.parametrize("instance_type, stack", DEFAULT_STACKS)
def test_default_stack_image_for_each_instance_family(account, wire, capsys, instance_type, stack):
    put_image("training", "cu12")  # every stack pushed: the image named is the launcher's choice alone
    argv = [a for a in BASE if a not in ("--stack", "cpu")]
    argv[argv.index("ml.p3.8xlarge")] = instance_type
    rc, out, err = run(capsys, argv)
    assert rc == 0, err
    (request,) = sent(wire, "CreateTrainingJob")
    assert request["AlgorithmSpecification"]["TrainingImage"] == image_uri("training", stack)
    assert request["ResourceConfig"]["InstanceType"] == instance_type
    job = client("sagemaker").describe_training_job(TrainingJobName=out.strip().splitlines()[-1])
    assert job["AlgorithmSpecification"]["TrainingImage"] == image_uri("training", stack)
    assert "warning" not in err


def _zoo_key(algo="retinanet"):
    from shelfdet.core.config import zoo_key, zoo_weights

    return zoo_key(zoo_weights(algo, "R_50_FPN", "1x"))


def test_locked_down_warm_streamed_job_as_sent(account, wire, capsys):
    key = _zoo_key()
    assert key.startswith("COCO-Detection/retinanet_R_50_FPN_1x/") and key.endswith(".pkl")
    client("s3").put_object(Bucket=BUCKET, Key="detectron2/weights/" + key, Body=b"w")
    argv = BASE + ["--input-mode", "FastFile", "--network-isolation", "--pretrained",
                   "s3://{}/detectron2/weights".format(BUCKET), "--vpc-subnets", "subnet-1,subnet-2",
                   "--vpc-security-groups", "sg-1", "--keep-alive", "1800"]
    rc, out, err = run(capsys, argv)
    assert rc == 0, err
    name = out.strip().splitlines()[-1]
    (request,) = sent(wire, "CreateTrainingJob")
    assert request["AlgorithmSpecification"]["TrainingInputMode"] == "FastFile"
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    assert set(channels) == {"training", "validation", "test", "annotation", "pretrained"}
    assert {c["InputMode"] for c in channels.values()} == {"FastFile"}
    assert channels["pretrained"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://{}/detectron2/weights/".format(BUCKET)
    assert request["EnableNetworkIsolation"] is True
    assert request["VpcConfig"] == {"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-1", "subnet-2"]}
    assert request["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 1800
    assert request["TensorBoardOutputConfig"] == {
        "S3OutputPath": "s3://{}/detectron2/tensorboard/{}/".format(BUCKET, name), "LocalPath": "/opt/ml/output/tensorboard"}
    # weights stays zoo: the container reads it from the channel (training.entry, config.pretrained_file)
    assert request["HyperParameters"]["weights"] == "zoo"


def test_default_job_is_file_mode_with_network_and_no_warm_pool(account, wire, capsys):
    rc, _, err = run(capsys, BASE)
    assert rc == 0, err
    (request,) = sent(wire, "CreateTrainingJob")
    assert request["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert {c["InputMode"] for c in request["InputDataConfig"]} == {"File"}
    assert request["EnableNetworkIsolation"] is False
    assert "VpcConfig" not in request and "KeepAlivePeriodInSeconds" not in request["ResourceConfig"]


@pytest.mark.parametrize("extra, expect", [
    (["--network-isolation"], "NETWORK_ISOLATION=1 with weights=zoo: the job cannot download the model zoo's weights; "
                              "run `make weights BUCKET=...` and pass the PRETRAINED=s3://... it prints"),
    (["--network-isolation", "--weights", "https://x/y.pkl"], "NETWORK_ISOLATION=1 with WEIGHTS=https://x/y.pkl"),
    (["--vpc-subnets", "subnet-1"], "VPC_SUBNETS and VPC_SECURITY_GROUPS go together"),
    (["--keep-alive", "3601"], "KEEP_ALIVE=3601: seconds from 0 to 3600"),
])
def test_locked_down_mistakes_are_refused_before_any_aws_call(account, wire, capsys, monkeypatch, extra, expect):
    no_network(monkeypatch)
    rc, _, err = run(capsys, BASE + extra)
    assert rc != 0
    assert expect in one_error_line(err), err
    assert wire == []


def test_the_mlflow_server_goes_to_the_job_environment(account, wire, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "arn:aws:sagemaker:us-east-2:123456789012:mlflow-tracking-server/team")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "shelves")
    rc, _, err = run(capsys, BASE)
    assert rc == 0, err
    (request,) = sent(wire, "CreateTrainingJob")
    assert request["Environment"] == {"MLFLOW_TRACKING_URI": "arn:aws:sagemaker:us-east-2:123456789012:mlflow-tracking-server/team",
                                      "MLFLOW_EXPERIMENT_NAME": "shelves"}


@pytest.mark.parametrize("uri, extra, expect", [
    ("/home/me/mlruns", [], "MLFLOW_TRACKING_URI=/home/me/mlruns is a path on this machine, which the job cannot write"),
    ("http://mlflow.internal:5000", ["--network-isolation", "--", "--weights", "none"],
     "NETWORK_ISOLATION=1: the job cannot reach MLFLOW_TRACKING_URI; not passed"),
])
def test_a_tracking_server_the_job_cannot_reach_is_not_passed(account, wire, capsys, monkeypatch, uri, extra, expect):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    rc, _, err = run(capsys, BASE + extra)
    assert rc == 0, err
    assert expect in err
    (request,) = sent(wire, "CreateTrainingJob")
    assert "Environment" not in request


def test_isolation_without_zoo_weights_needs_no_channel(account, wire, capsys):
    rc, _, err = run(capsys, BASE + ["--network-isolation", "--", "--weights", "none"])
    assert rc == 0, err
    (request,) = sent(wire, "CreateTrainingJob")
    assert request["EnableNetworkIsolation"] is True and "pretrained" not in {
        c["ChannelName"] for c in request["InputDataConfig"]}


def test_pretrained_prefix_without_the_checkpoint_is_one_line(account, wire, capsys):
    rc, _, err = run(capsys, BASE + ["--network-isolation", "--pretrained", "s3://{}/detectron2/weights/".format(BUCKET)])
    assert rc != 0
    assert "s3://{}/detectron2/weights/{} not found: run `make weights".format(BUCKET, _zoo_key()) in one_error_line(err)
    assert sent(wire, "CreateTrainingJob") == []


def test_make_train_passes_the_job_flags(account):
    from test_launch_support import make

    client("s3").put_object(Bucket=BUCKET, Key="w/" + _zoo_key("faster_rcnn"), Body=b"w")
    out = make("train", "INSTANCE_TYPE=ml.p3.2xlarge", "DRY_RUN=1", "REGION=" + REGION, "BUCKET=" + BUCKET,
               "INPUT_MODE=FastFile", "NETWORK_ISOLATION=1", "PRETRAINED=s3://{}/w/".format(BUCKET),
               "VPC_SUBNETS=subnet-1,subnet-2", "VPC_SECURITY_GROUPS=sg-1", "KEEP_ALIVE=60")
    assert out.returncode == 0, out.stderr
    (request,) = json_docs(out.stdout)
    assert request["AlgorithmSpecification"]["TrainingInputMode"] == "FastFile"
    assert request["EnableNetworkIsolation"] is True and request["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 60
    assert request["VpcConfig"]["Subnets"] == ["subnet-1", "subnet-2"]
    assert "pretrained" in {c["ChannelName"] for c in request["InputDataConfig"]}
