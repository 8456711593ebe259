"""`make tune` against a moto server: ranges from the hyperparameter table, objective, spot, names."""
from __future__ import annotations

import pytest

from shelfdet.core.metrics import METRIC_DEFINITIONS
from test_launch_support import (BUCKET, REGION, ROLE_ARN, account, cli, client, describes, fast_sessions,  # noqa: F401,E501
                                 image_uri, json_docs, make, no_network, one_error_line, put_image, sent, wire)


def ranges_by_name(config):
    return {r["Name"]: r for r in config["ParameterRanges"]["ContinuousParameterRanges"]}


def test_make_tune_faster_rcnn_maximises_validation_ap(account):
    out = make("tune", "REGION=" + REGION, "BUCKET=" + BUCKET, "SPOT=1", "MAX_JOBS=6", "MAX_PARALLEL=3",
               "INSTANCE_TYPE=ml.p3.2xlarge", "STACK=cpu", "HP=--num-iter 1000")
    assert out.returncode == 0, out.stderr
    name = out.stdout.strip().splitlines()[-1]
    assert len(name) <= 32 and name.startswith("d2-frcnn-")

    job = client("sagemaker").describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    config = job["HyperParameterTuningJobConfig"]
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "validation:ap"}
    assert config["ResourceLimits"]["MaxNumberOfTrainingJobs"] == 6
    assert config["ResourceLimits"]["MaxParallelTrainingJobs"] == 3
    assert config["TrainingJobEarlyStoppingType"] == "Auto"
    ranges = ranges_by_name(config)
    assert set(ranges) == {"lr", "rpn-pos-fraction", "bbox-head-pos-fraction"}  # no focal ranges for Faster R-CNN
    assert ranges["lr"] == {"Name": "lr", "MinValue": "0.0005", "MaxValue": "0.1", "ScalingType": "Logarithmic"}
    assert ranges["rpn-pos-fraction"]["MinValue"] == "0.1" and ranges["rpn-pos-fraction"]["MaxValue"] == "0.5"

    definition = job["TrainingJobDefinition"]
    static = definition["StaticHyperParameters"]
    assert static["val-ap"] == "true" and static["num-iter"] == "1000" and static["model-type"] == "faster_rcnn"
    assert not set(ranges) & set(static)
    assert definition["AlgorithmSpecification"]["TrainingImage"] == image_uri("training")
    names = [m["Name"] for m in definition["AlgorithmSpecification"]["MetricDefinitions"]]
    assert "validation:ap" in names
    assert definition["EnableManagedSpotTraining"] is True
    assert definition["StoppingCondition"]["MaxWaitTimeInSeconds"] > definition["StoppingCondition"]["MaxRuntimeInSeconds"]
    assert definition["RoleArn"] == ROLE_ARN
    assert definition["ResourceConfig"]["InstanceType"] == "ml.p3.2xlarge"


def test_retinanet_minimising_loss_dry_run_equals_request(account, wire, capsys, monkeypatch):
    argv = ["tune", "--algo", "retinanet", "--instance-type", "ml.p3.8xlarge", "--objective", "validation:loss",
            "--max-jobs", "4", "--max-parallel", "2", "--stack", "cu101", "--region", REGION, "--role", ROLE_ARN,
            "--bucket", BUCKET, "--prefix", "detectron2/data", "--job-name", "d2-retina-fixed"]
    hp_args = ["--", "--lr", "0.01"]
    with monkeypatch.context() as m:
        no_network(m)
        rc, out, err = cli(capsys, *(argv + ["--dry-run"] + hp_args))
    assert rc == 0, err
    (printed,) = json_docs(out)

    from test_launch_support import put_image
    put_image("training", "cu101")
    rc, out, err = cli(capsys, *(argv + hp_args))
    assert rc == 0, err
    (request,) = sent(wire, "CreateHyperParameterTuningJob")
    assert request == printed
    config = request["HyperParameterTuningJobConfig"]
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Minimize", "MetricName": "validation:loss"}
    ranges = ranges_by_name(config)
    assert set(ranges) == {"focal-loss-gamma", "focal-loss-alpha"}  # lr pinned by HP; fractions are Faster R-CNN's
    assert (ranges["focal-loss-gamma"]["MinValue"], ranges["focal-loss-gamma"]["MaxValue"]) == ("2.5", "5.0")
    assert (ranges["focal-loss-alpha"]["MinValue"], ranges["focal-loss-alpha"]["MaxValue"]) == ("0.3", "1.0")
    definition = request["TrainingJobDefinition"]
    assert definition["StaticHyperParameters"]["lr"] == "0.01"
    assert definition["StaticHyperParameters"]["val-ap"] == "false"
    assert definition["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    assert definition["EnableManagedSpotTraining"] is False
    assert definition["CheckpointConfig"]["S3Uri"] == "s3://{}/detectron2/checkpoints/d2-retina-fixed/".format(BUCKET)


def test_tune_errors(account, capsys):
    base = ["tune", "--instance-type", "ml.p3.2xlarge", "--region", REGION, "--bucket", BUCKET]
    rc, _, err = cli(capsys, *(base + ["--max-jobs", "2", "--max-parallel", "3"]))
    assert rc != 0 and "MAX_PARALLEL (3) must be between 1 and MAX_JOBS (2)" in one_error_line(err)
    rc, _, err = cli(capsys, *(base + ["--", "--val-ap", "false"]))
    assert rc != 0 and "needs val-ap true" in one_error_line(err)
    rc, _, err = cli(capsys, *(base + ["--job-name", "x" * 33]))
    assert rc != 0 and "longer than 32" in one_error_line(err)
    assert client("sagemaker").list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"] == []


def counters(completed, running):
    return {"TrainingJobStatusCounters": {"Completed": completed, "InProgress": running, "RetryableError": 0,
                                          "NonRetryableError": 0, "Stopped": 0}}


TUNE = ["tune", "--instance-type", "ml.m5.xlarge", "--region", REGION, "--bucket", BUCKET, "--job-name", "d2-frcnn-waited"]


def test_wait_follows_the_counts_and_prints_the_best_job(account, describes, capsys, monkeypatch):
    monkeypatch.setenv("SHELFDET_POLL_SECONDS", "0.5")
    running = dict(counters(0, 2), HyperParameterTuningJobStatus="InProgress")
    describes.script("DescribeHyperParameterTuningJob", [running, running, dict(running, **counters(1, 1))])
    rc, out, err = cli(capsys, *(TUNE + ["--wait"]))
    assert rc == 0, err
    seen = describes.seen["DescribeHyperParameterTuningJob"]
    assert [d["HyperParameterTuningJobStatus"] for d in seen] == ["InProgress"] * 3 + ["Completed"]
    assert describes.naps == [0.5] * 3
    lines = [l for l in err.splitlines() if l.startswith("[d2-frcnn-waited]")]
    assert [l.split(" {")[0] for l in lines] == ["[d2-frcnn-waited] InProgress"] * 2 + ["[d2-frcnn-waited] Completed"]
    assert "'InProgress': 2" in lines[0] and "'Completed': 1, 'InProgress': 1" in lines[1]  # each change of counts once
    best = seen[-1]["BestTrainingJob"]
    metric = best["FinalHyperParameterTuningJobObjectiveMetric"]
    assert "best training job: {}".format(best["TrainingJobName"]) in out.splitlines()
    assert "objective {}: {}".format(metric["MetricName"], metric["Value"]) in out.splitlines()
    for key, value in best["TunedHyperParameters"].items():
        assert "  {} = {}".format(key, value) in out.splitlines()


@pytest.mark.parametrize("status, reason, expect", [
    ("Failed", "All training jobs failed", "failed: All training jobs failed"),
    ("Stopped", "", "stopped: no reason given"),
])
def test_wait_ends_with_the_failure_reason(account, describes, capsys, status, reason, expect):
    describes.script("DescribeHyperParameterTuningJob", [
        dict(counters(0, 1), HyperParameterTuningJobStatus="InProgress"),
        {"HyperParameterTuningJobStatus": status, "FailureReason": reason}])
    rc, out, err = cli(capsys, *(TUNE + ["--wait"]))
    assert rc == 1
    assert one_error_line(err) == "error: tuning job d2-frcnn-waited " + expect
    assert len(describes.seen["DescribeHyperParameterTuningJob"]) == 2
    assert "best training job" not in out


@pytest.mark.parametrize("instance_type, stack", [("ml.c5.xlarge", "cpu"), ("ml.p3.2xlarge", "cu101"), ("ml.g4dn.xlarge", "cu101"),
                                                  ("ml.g5.2xlarge", "cu12"), ("ml.p5.48xlarge", "cu12")])
def test_default_stack_image_for_each_instance_family(account, wire, capsys, instance_type, stack):
    put_image("training", "cu12")  # every stack pushed: the image named is the launcher's choice alone
    argv = list(TUNE)
    argv[argv.index("ml.m5.xlarge")] = instance_type
    rc, out, err = cli(capsys, *argv)
    assert rc == 0, err
    (request,) = sent(wire, "CreateHyperParameterTuningJob")
    definition = request["TrainingJobDefinition"]
    assert definition["AlgorithmSpecification"]["TrainingImage"] == image_uri("training", stack)
    assert definition["ResourceConfig"]["InstanceType"] == instance_type
    job = client("sagemaker").describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="d2-frcnn-waited")
    assert job["TrainingJobDefinition"]["AlgorithmSpecification"]["TrainingImage"] == image_uri("training", stack)
