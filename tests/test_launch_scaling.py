"""`make deploy ASYNC=1` and `MIN_INSTANCES=`/`MAX_INSTANCES=` (Application Auto Scaling, CloudWatch), and
`make undeploy` removing them, against a moto server. `make predict` on those endpoints: test_predict_endpoints.py."""
from __future__ import annotations

import copy
import json
import subprocess

import pytest

from test_launch_support import (BUCKET, PREFIX, REGION, ROLE_ARN, account, cli, client,  # noqa: F401
                                 fast_sessions, json_docs, no_network, one_error_line)

AWS = ["--region", REGION, "--bucket", BUCKET, "--prefix", PREFIX]
MODEL = "s3://{}/m/model.tar.gz".format(BUCKET)
TARGET = {"ServiceNamespace": "sagemaker", "ResourceId": "endpoint/shelf-async/variant/AllTraffic",
          "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"}
SCALING_OPS = ("RegisterScalableTarget", "PutScalingPolicy", "PutMetricAlarm", "DeleteAlarms", "DeleteScalingPolicy",
               "DeregisterScalableTarget")


@pytest.fixture
def calls(monkeypatch, fast_sessions):
    """Every API call the launchers make, as (operation, parameters) the way boto3 got them.

    CloudWatch speaks CBOR here, which the JSON ``wire`` fixture cannot read; the parameters
    before serialisation are the request all the same.
    """
    from shelfdet.launch import aws

    seen = []
    original = aws.make_session

    def record(params, model, **_):
        seen.append((model.name, copy.deepcopy(params)))

    def session(region):
        s = original(region)
        s.events.register("before-parameter-build", record)
        return s

    monkeypatch.setattr(aws, "make_session", session)
    return seen


def sent(calls, operation):
    return [params for op, params in calls if op == operation]


def deploy_argv(tmp_path, endpoint, *extra):
    return ["deploy", "--model", MODEL, "--endpoint", endpoint, "--instance-type", "ml.m5.large", "--stack", "cpu",
            "--role", ROLE_ARN, "--record-dir", str(tmp_path)] + list(extra) + AWS


def test_async_deploy_scales_to_zero_and_undeploy_removes_it_all(account, calls, capsys, monkeypatch, tmp_path):
    argv = deploy_argv(tmp_path, "shelf-async", "--async", "--max-instances", "3", "--sns-success", "shelf-done",
                       "--sns-error", "arn:aws:sns:us-east-2:123456789012:shelf-failed")
    with monkeypatch.context() as m:
        no_network(m)
        rc, out, err = cli(capsys, *(argv + ["--dry-run"]))
    assert rc == 0, err
    printed = json_docs(out)

    client("s3").put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"tgz")
    rc, out, err = cli(capsys, *argv)
    assert rc == 0, err
    assert out.strip().splitlines()[-1] == "shelf-async"

    (model,), (config,) = sent(calls, "CreateModel"), sent(calls, "CreateEndpointConfig")
    # The container's request cap follows the endpoint kind: SageMaker hands it the S3 object whole.
    assert model["PrimaryContainer"]["Environment"] == {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "200"}
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 1
    assert config["AsyncInferenceConfig"] == {
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 4},
        "OutputConfig": {"S3OutputPath": "s3://{}/detectron2/async/shelf-async/output/".format(BUCKET),
                         "S3FailurePath": "s3://{}/detectron2/async/shelf-async/failure/".format(BUCKET),
                         "NotificationConfig": {"SuccessTopic": "arn:aws:sns:us-east-2:123456789012:shelf-done",
                                                "ErrorTopic": "arn:aws:sns:us-east-2:123456789012:shelf-failed"}}}
    assert sent(calls, "RegisterScalableTarget") == [dict(TARGET, MinCapacity=0, MaxCapacity=3)]
    dims = [{"Name": "EndpointName", "Value": "shelf-async"}]
    assert sent(calls, "PutScalingPolicy") == [
        dict(TARGET, PolicyName="shelf-async-backlog-per-instance", PolicyType="TargetTrackingScaling",
             TargetTrackingScalingPolicyConfiguration={
                 "TargetValue": 5.0, "ScaleInCooldown": 600, "ScaleOutCooldown": 300,
                 "CustomizedMetricSpecification": {"MetricName": "ApproximateBacklogSizePerInstance",
                                                   "Namespace": "AWS/SageMaker", "Dimensions": dims,
                                                   "Statistic": "Average"}}),
        dict(TARGET, PolicyName="shelf-async-scale-out-from-zero", PolicyType="StepScaling",
             StepScalingPolicyConfiguration={"AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average",
                                             "Cooldown": 300,
                                             "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}]}),
    ]
    aas, cw, sm = client("application-autoscaling"), client("cloudwatch"), client("sagemaker")
    policies = {p["PolicyName"]: p for p in aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]}
    step_arn = policies["shelf-async-scale-out-from-zero"]["PolicyARN"]
    assert sent(calls, "PutMetricAlarm") == [{
        "AlarmName": "shelf-async-has-backlog-without-capacity", "MetricName": "HasBacklogWithoutCapacity",
        "Namespace": "AWS/SageMaker", "Statistic": "Average", "Dimensions": dims, "Period": 60,
        "EvaluationPeriods": 2, "DatapointsToAlarm": 2, "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold", "TreatMissingData": "missing",
        "AlarmActions": [step_arn]}]
    # The dry run printed every request, the alarm's action as the step policy it names.
    order = ["CreateModel", "CreateEndpointConfig", "CreateEndpoint", "RegisterScalableTarget", "PutScalingPolicy",
             "PutScalingPolicy", "PutMetricAlarm"]
    requests = [p for op, p in calls if op in order]
    assert [op for op, _ in calls if op in order] == order
    requests[-1] = dict(requests[-1], AlarmActions=["<PolicyARN of shelf-async-scale-out-from-zero>"])
    assert printed == requests

    # What AWS now holds.
    ep = sm.describe_endpoint(EndpointName="shelf-async")
    assert ep["EndpointStatus"] == "InService"
    assert sm.describe_endpoint_config(EndpointConfigName=ep["EndpointConfigName"])["AsyncInferenceConfig"] == \
        config["AsyncInferenceConfig"]
    (target,) = aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == (TARGET["ResourceId"], 0, 3)
    (alarm,) = cw.describe_alarms()["MetricAlarms"]
    assert alarm["AlarmActions"] == [step_arn] and alarm["MetricName"] == "HasBacklogWithoutCapacity"
    record = json.loads((tmp_path / "shelf-async.json").read_text())
    assert record == {"region": REGION, "model": "shelf-async-model", "endpoint_config": "shelf-async-config",
                      "endpoint": "shelf-async", "scalable_target": TARGET["ResourceId"],
                      "scaling_policies": ["shelf-async-backlog-per-instance", "shelf-async-scale-out-from-zero"],
                      "alarms": ["shelf-async-has-backlog-without-capacity"]}
    assert "scales between 0 and 3 instances" in err

    del calls[:]
    rc, out, err = cli(capsys, "undeploy", "--endpoint", "shelf-async", "--record-dir", str(tmp_path), *AWS)
    assert rc == 0, err
    # Scaling first: a scalable target would outlive its endpoint.
    assert [op for op, _ in calls if op.startswith("Delete") or op.startswith("Deregister")] == [
        "DeleteAlarms", "DeleteScalingPolicy", "DeleteScalingPolicy", "DeregisterScalableTarget", "DeleteEndpoint",
        "DeleteEndpointConfig", "DeleteModel"]
    assert sent(calls, "DeleteAlarms") == [{"AlarmNames": ["shelf-async-has-backlog-without-capacity"]}]
    assert sent(calls, "DeleteScalingPolicy") == [dict(TARGET, PolicyName=name) for name in record["scaling_policies"]]
    assert sent(calls, "DeregisterScalableTarget") == [TARGET]
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    assert aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"] == []
    assert cw.describe_alarms()["MetricAlarms"] == []
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []
    assert "and its scaling" in err
    assert not (tmp_path / "shelf-async.json").exists()


def test_undeploy_without_the_record_finds_the_scaling_on_aws(account, calls, capsys, tmp_path):
    client("s3").put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"tgz")
    rc, _, err = cli(capsys, *deploy_argv(tmp_path, "shelf-async", "--async"))
    assert rc == 0, err
    (tmp_path / "shelf-async.json").unlink()
    del calls[:]
    rc, _, err = cli(capsys, "undeploy", "--endpoint", "shelf-async", "--record-dir", str(tmp_path), *AWS)
    assert rc == 0, err
    assert sent(calls, "DeleteAlarms") == [{"AlarmNames": ["shelf-async-has-backlog-without-capacity"]}]
    assert sorted(p["PolicyName"] for p in sent(calls, "DeleteScalingPolicy")) == [
        "shelf-async-backlog-per-instance", "shelf-async-scale-out-from-zero"]
    assert sent(calls, "DeregisterScalableTarget") == [TARGET]
    assert client("application-autoscaling").describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
    assert client("cloudwatch").describe_alarms()["MetricAlarms"] == []


def test_realtime_endpoint_scales_on_invocations_per_instance(account, calls, capsys, tmp_path):
    client("s3").put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"tgz")
    rc, _, err = cli(capsys, *deploy_argv(tmp_path, "shelf-rt", "--min-instances", "2", "--max-instances", "4"))
    assert rc == 0, err
    (model,), (config,) = sent(calls, "CreateModel"), sent(calls, "CreateEndpointConfig")
    assert "Environment" not in model["PrimaryContainer"]  # a real-time endpoint keeps the 6 MB cap
    assert "AsyncInferenceConfig" not in config
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 2  # starts at its minimum
    target = dict(TARGET, ResourceId="endpoint/shelf-rt/variant/AllTraffic")
    assert sent(calls, "RegisterScalableTarget") == [dict(target, MinCapacity=2, MaxCapacity=4)]
    assert sent(calls, "PutScalingPolicy") == [dict(
        target, PolicyName="shelf-rt-invocations-per-instance", PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": 30.0, "ScaleInCooldown": 600, "ScaleOutCooldown": 300,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}})]
    assert sent(calls, "PutMetricAlarm") == []
    (policy,) = client("application-autoscaling").describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    assert policy["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}

    # Removed by hand already: undeploy's goal is reached all the same.
    client("application-autoscaling").delete_scaling_policy(PolicyName="shelf-rt-invocations-per-instance", **target)
    del calls[:]
    rc, _, err = cli(capsys, "undeploy", "--record-dir", str(tmp_path), *AWS)  # the newest recorded one
    assert rc == 0, err
    assert "shelf-rt-invocations-per-instance already gone" in err
    assert sent(calls, "DeleteScalingPolicy") == [dict(target, PolicyName="shelf-rt-invocations-per-instance")]
    assert sent(calls, "DeregisterScalableTarget") == [target]
    assert sent(calls, "DeleteAlarms") == []
    assert client("application-autoscaling").describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []


def test_a_plain_deploy_registers_no_scaling(account, calls, capsys, tmp_path):
    client("s3").put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"tgz")
    rc, _, err = cli(capsys, *deploy_argv(tmp_path, "shelf-plain"))
    assert rc == 0, err
    assert [op for op, _ in calls if op in SCALING_OPS] == []
    rc, _, err = cli(capsys, "undeploy", "--record-dir", str(tmp_path), *AWS)
    assert rc == 0, err
    assert [op for op, _ in calls if op in SCALING_OPS] == []


@pytest.mark.parametrize("extra, needle", [
    (["--min-instances", "0"], "a real-time endpoint keeps at least 1 instance; ASYNC=1 scales to 0"),
    (["--min-instances", "3", "--max-instances", "2"], "MAX_INSTANCES=2 is below MIN_INSTANCES=3"),
    (["--async", "--max-instances", "0"], "MAX_INSTANCES=0 is below"),
    (["--async", "--no-wait"], "scaling is registered once the endpoint is in service"),
    (["--async", "--max-concurrent", "0"], "--max-concurrent 0 must be >= 1"),
])
def test_scaling_mistakes_stop_before_anything_is_created(account, calls, capsys, tmp_path, extra, needle):
    client("s3").put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"tgz")
    rc, _, err = cli(capsys, *deploy_argv(tmp_path, "shelf-bad", *extra))
    assert rc != 0 and needle in one_error_line(err), err
    assert not [op for op, _ in calls if op.startswith("Create") or op in SCALING_OPS]


def test_async_needs_a_bucket(account, calls, capsys, tmp_path):
    client("s3").put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"tgz")
    argv = [a for a in deploy_argv(tmp_path, "shelf-async", "--async") if a not in ("--bucket", BUCKET)]
    rc, _, err = cli(capsys, *argv)
    assert rc != 0 and "ASYNC=1 needs BUCKET=<bucket>" in one_error_line(err)
    assert not [op for op, _ in calls if op.startswith("Create")]


def test_make_passes_async_scaling_and_resize_flags(tmp_path):
    from test_launch_support import ROOT

    def dry(*args):
        return subprocess.run(["make", "-n", "-s", "--no-print-directory", "-o", ".venv/.stamp"] + list(args),
                              cwd=str(ROOT), capture_output=True, text=True, timeout=60).stdout

    out = dry("deploy", "ASYNC=1", "MIN_INSTANCES=1", "MAX_INSTANCES=5", "SNS_SUCCESS=ok", "SNS_ERROR=ko", "BUCKET=b")
    assert "--async --min-instances 1 --max-instances 5 --sns-success ok --sns-error ko" in " ".join(out.split())
    assert "--async" not in dry("deploy", "ASYNC=0", "BUCKET=b")
    out = " ".join(dry("predict", "ENDPOINT=ep", "IMAGE=x.jpg", "RESIZE=1", "TEST_SIZE=800/1333").split())
    assert '--endpoint ep' in out and '--resize --test-size "800/1333"' in out
    out = " ".join(dry("predict", "ENDPOINT=ep", "IMAGE=x.jpg", "RESIZE=1", "MODEL_DIR=runs/j/model").split())
    assert '--resize --test-size "runs/j/model"' in out
    # The newest local model is no evidence of what the endpoint serves: only a MODEL_DIR given counts.
    out = " ".join(dry("predict", "ENDPOINT=ep", "IMAGE=x.jpg", "RESIZE=1").split())
    assert "--resize" in out and "--test-size" not in out
