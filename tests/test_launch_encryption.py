"""KMS_KEY, inter-container traffic encryption, model VPC/isolation and tracking URIs without credentials,
on a moto server: the requests as sent (equal to what DRY_RUN prints) and what moto stores."""
from __future__ import annotations

import json

import pytest

from shelfdet.core import redact
from shelfdet.launch import aws
from test_launch_support import (BUCKET, PREFIX, REGION, ROLE_ARN, account, cli, client,  # noqa: F401
                                 fast_sessions, json_docs, make, no_network, sent, wire)

KEY = "arn:aws:kms:us-east-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
AWS = ["--region", REGION, "--bucket", BUCKET, "--prefix", PREFIX, "--role", ROLE_ARN]
VPC = ["--vpc-subnets", "subnet-1,subnet-2", "--vpc-security-groups", "sg-1"]
VPC_CONFIG = {"SecurityGroupIds": ["sg-1"], "Subnets": ["subnet-1", "subnet-2"]}
MODEL = "s3://{}/m/model.tar.gz".format(BUCKET)


def dry_then_real(capsys, monkeypatch, wire, argv, operations):
    """The requests DRY_RUN prints, then the same command sent to moto: both, checked equal."""
    with monkeypatch.context() as m:
        no_network(m)
        rc, out, err = cli(capsys, *(argv + ["--dry-run"]))
    assert rc == 0, err
    printed = json_docs(out)
    rc, out, err = cli(capsys, *argv)
    assert rc == 0, err
    requests = [body for op, body in wire if op in operations]
    # An async endpoint's dry run goes on with its scaling requests: the creates come first.
    assert requests and requests == printed[:len(requests)]
    return requests, err


def test_training_job_carries_the_key_and_encrypts_traffic_between_its_instances(account, wire, capsys, monkeypatch):
    argv = ["train", "--instance-type", "ml.p3.8xlarge", "--instance-count", "2", "--stack", "cpu",
            "--job-name", "detectron2-kms", "--kms-key", KEY] + VPC + AWS
    (request,), _ = dry_then_real(capsys, monkeypatch, wire, argv, ("CreateTrainingJob",))
    assert request["ResourceConfig"] == {"InstanceType": "ml.p3.8xlarge", "InstanceCount": 2, "VolumeSizeInGB": 100,
                                         "VolumeKmsKeyId": KEY}
    assert request["OutputDataConfig"] == {"S3OutputPath": "s3://{}/detectron2/output/".format(BUCKET), "KmsKeyId": KEY}
    assert request["EnableInterContainerTrafficEncryption"] is True
    assert request["VpcConfig"] == VPC_CONFIG
    job = client("sagemaker").describe_training_job(TrainingJobName="detectron2-kms")
    assert job["ResourceConfig"]["VolumeKmsKeyId"] == KEY and job["OutputDataConfig"]["KmsKeyId"] == KEY
    assert job["EnableInterContainerTrafficEncryption"] is True


@pytest.mark.parametrize("count, extra, on, said", [
    ("1", [], False, False),
    ("2", ["--no-encrypt-traffic"], False, True),
    ("3", [], True, False),
])
def test_traffic_encryption_follows_the_instance_count(account, wire, capsys, count, extra, on, said):
    rc, _, err = cli(capsys, "train", "--instance-type", "ml.p3.2xlarge", "--instance-count", count, "--stack", "cpu",
                     *(extra + AWS))
    assert rc == 0, err
    (request,) = sent(wire, "CreateTrainingJob")
    assert request["EnableInterContainerTrafficEncryption"] is on
    assert "OutputDataConfig" in request and "KmsKeyId" not in request["OutputDataConfig"]
    assert "VolumeKmsKeyId" not in request["ResourceConfig"]
    assert ("ENCRYPT_TRAFFIC=0: the traffic between the {} instances is not encrypted".format(count) in err) is said


def test_local_nvme_instances_get_no_volume_key_but_their_output_does(account, wire, capsys):
    rc, _, err = cli(capsys, "train", "--instance-type", "ml.g4dn.12xlarge", "--stack", "cpu", "--kms-key", KEY, *AWS)
    assert rc == 0, err
    (request,) = sent(wire, "CreateTrainingJob")
    assert "VolumeKmsKeyId" not in request["ResourceConfig"]
    assert request["OutputDataConfig"]["KmsKeyId"] == KEY
    assert "note: ml.g4dn.12xlarge has local NVMe storage, encrypted by the instance itself: VolumeKmsKeyId not set" in err


@pytest.mark.parametrize("instance_type, local", [
    ("ml.p3.2xlarge", False), ("ml.p3.16xlarge", False), ("ml.m5.xlarge", False), ("ml.c5.2xlarge", False),
    ("ml.g4dn.xlarge", True), ("ml.p3dn.24xlarge", True), ("ml.g5.2xlarge", True), ("ml.g6.xlarge", True),
    ("ml.g6e.xlarge", True), ("ml.p4d.24xlarge", True), ("ml.p4de.24xlarge", True), ("ml.p5.48xlarge", True),
    ("ml.m5d.large", True), ("ml.trn1.32xlarge", True),
])
def test_local_storage_families(instance_type, local):
    assert aws.local_storage(instance_type) is local


def test_tuning_definition_carries_the_key_and_traffic_encryption(account, wire, capsys, monkeypatch):
    argv = ["tune", "--instance-type", "ml.p3.8xlarge", "--instance-count", "2", "--stack", "cpu",
            "--job-name", "d2-frcnn-kms", "--kms-key", KEY] + AWS
    (request,), _ = dry_then_real(capsys, monkeypatch, wire, argv, ("CreateHyperParameterTuningJob",))
    definition = request["TrainingJobDefinition"]
    assert definition["ResourceConfig"] == {"InstanceType": "ml.p3.8xlarge", "InstanceCount": 2, "VolumeSizeInGB": 100,
                                            "VolumeKmsKeyId": KEY}
    assert definition["OutputDataConfig"] == {"S3OutputPath": "s3://{}/detectron2/output/".format(BUCKET), "KmsKeyId": KEY}
    assert definition["EnableInterContainerTrafficEncryption"] is True
    stored = client("sagemaker").describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="d2-frcnn-kms")
    assert stored["TrainingJobDefinition"]["OutputDataConfig"]["KmsKeyId"] == KEY


def test_one_instance_tuning_leaves_traffic_encryption_off(account, wire, capsys):
    rc, _, err = cli(capsys, "tune", "--instance-type", "ml.p3.2xlarge", "--stack", "cpu", *AWS)
    assert rc == 0, err
    (request,) = sent(wire, "CreateHyperParameterTuningJob")
    assert request["TrainingJobDefinition"]["EnableInterContainerTrafficEncryption"] is False


def test_endpoint_storage_key_and_model_vpc_and_isolation(account, wire, capsys, monkeypatch, tmp_path):
    client("s3").put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"tgz")
    argv = ["deploy", "--model", MODEL, "--endpoint", "ep-kms", "--instance-type", "ml.c5.xlarge", "--stack", "cpu",
            "--record-dir", str(tmp_path), "--kms-key", KEY, "--network-isolation"] + VPC + AWS
    (model, config, _), _ = dry_then_real(capsys, monkeypatch, wire, argv,
                                          ("CreateModel", "CreateEndpointConfig", "CreateEndpoint"))
    assert model["VpcConfig"] == VPC_CONFIG and model["EnableNetworkIsolation"] is True
    assert config["KmsKeyId"] == KEY and "AsyncInferenceConfig" not in config
    sm = client("sagemaker")
    stored = sm.describe_model(ModelName=model["ModelName"])
    # moto's DescribeModel answers EnableNetworkIsolation false whatever was sent: the request above is the truth.
    assert stored["VpcConfig"] == VPC_CONFIG
    assert sm.describe_endpoint_config(EndpointConfigName=config["EndpointConfigName"])["KmsKeyId"] == KEY


def test_async_endpoint_output_key_on_a_local_nvme_instance(account, wire, capsys, monkeypatch, tmp_path):
    client("s3").put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"tgz")
    argv = ["deploy", "--model", MODEL, "--endpoint", "ep-async-kms", "--instance-type", "ml.g4dn.xlarge", "--stack",
            "cpu", "--record-dir", str(tmp_path), "--async", "--kms-key", KEY] + AWS
    (model, config, _), err = dry_then_real(capsys, monkeypatch, wire, argv,
                                            ("CreateModel", "CreateEndpointConfig", "CreateEndpoint"))
    output = config["AsyncInferenceConfig"]["OutputConfig"]
    assert output == {"S3OutputPath": "s3://{}/detectron2/async/ep-async-kms/output/".format(BUCKET),
                      "S3FailurePath": "s3://{}/detectron2/async/ep-async-kms/failure/".format(BUCKET), "KmsKeyId": KEY}
    assert "KmsKeyId" not in config  # ml.g4dn has local NVMe storage: SageMaker refuses a storage key there
    assert "the endpoint config's KmsKeyId not set" in err
    assert "VpcConfig" not in model and "EnableNetworkIsolation" not in model
    stored = client("sagemaker").describe_endpoint_config(EndpointConfigName=config["EndpointConfigName"])
    assert stored["AsyncInferenceConfig"]["OutputConfig"]["KmsKeyId"] == KEY and "KmsKeyId" not in stored


def test_transform_output_and_volume_key_and_model_vpc(account, wire, capsys, monkeypatch, tmp_path):
    client("s3").put_object(Bucket=BUCKET, Key="m/model.tar.gz", Body=b"tgz")
    argv = ["transform", "--model", MODEL, "--job-name", "detectron2-transform-kms", "--stack", "cpu", "--no-wait",
            "--manifest", str(tmp_path / "unused"), "--kms-key", KEY, "--network-isolation"] + VPC + AWS
    (model, job), _ = dry_then_real(capsys, monkeypatch, wire, argv, ("CreateModel", "CreateTransformJob"))
    assert job["TransformOutput"] == {"S3OutputPath": "s3://{}/detectron2/transform/detectron2-transform-kms/".format(BUCKET),
                                      "Accept": "application/json", "AssembleWith": "None", "KmsKeyId": KEY}
    assert job["TransformResources"] == {"InstanceType": "ml.p3.2xlarge", "InstanceCount": 1, "VolumeKmsKeyId": KEY}
    assert model["VpcConfig"] == VPC_CONFIG and model["EnableNetworkIsolation"] is True
    stored = client("sagemaker").describe_transform_job(TransformJobName="detectron2-transform-kms")
    assert stored["TransformOutput"]["KmsKeyId"] == KEY and stored["TransformResources"]["VolumeKmsKeyId"] == KEY


def test_half_a_vpc_is_refused_for_models_too(account, wire, capsys, tmp_path):
    rc, _, err = cli(capsys, "deploy", "--model", MODEL, "--vpc-subnets", "subnet-1", "--record-dir", str(tmp_path), *AWS)
    assert rc == 1 and err.strip().splitlines()[-1] == \
        "error: VPC_SUBNETS and VPC_SECURITY_GROUPS go together: a VpcConfig needs both"
    assert wire == []


def test_make_passes_kms_key_traffic_and_network_flags(account):
    common = ["DRY_RUN=1", "REGION=" + REGION, "BUCKET=" + BUCKET, "ROLE=" + ROLE_ARN, "KMS_KEY=" + KEY,
              "NETWORK_ISOLATION=1", "VPC_SUBNETS=subnet-1,subnet-2", "VPC_SECURITY_GROUPS=sg-1"]
    out = make("train", "INSTANCE_TYPE=ml.p3.2xlarge", "INSTANCE_COUNT=2", "ENCRYPT_TRAFFIC=0", "HP=--weights none", *common)
    assert out.returncode == 0, out.stderr
    (request,) = json_docs(out.stdout)
    assert request["ResourceConfig"]["VolumeKmsKeyId"] == KEY and request["OutputDataConfig"]["KmsKeyId"] == KEY
    assert request["EnableInterContainerTrafficEncryption"] is False and request["VpcConfig"] == VPC_CONFIG
    out = make("deploy", "MODEL=" + MODEL, "ENDPOINT=ep-make", "INSTANCE_TYPE=ml.m5.xlarge", *common)
    assert out.returncode == 0, out.stderr
    model, config, _ = json_docs(out.stdout)
    assert model["VpcConfig"] == VPC_CONFIG and model["EnableNetworkIsolation"] is True and config["KmsKeyId"] == KEY
    out = make("transform", "MODEL=" + MODEL, *common)
    assert out.returncode == 0, out.stderr
    model, job = json_docs(out.stdout)
    assert model["VpcConfig"] == VPC_CONFIG and job["TransformOutput"]["KmsKeyId"] == KEY


# ---- tracking URIs: no credentials in the job --------------------------------------------------------

SECRET_URI = "https://alice:pw-s3cret@mlflow.example.com:8443/team/?token=tok-s3cret&workspace=7"


@pytest.mark.parametrize("given, shown", [
    (SECRET_URI, "https://mlflow.example.com:8443/team/?workspace=7"),
    ("http://bob@127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("https://h.example/p?access_token=a&api_key=b&x-amz-signature=c", "https://h.example/p"),
    ("https://h.example/p#access_token=a", "https://h.example/p"),
    ("http://127.0.0.1:5000/path?run=1", "http://127.0.0.1:5000/path?run=1"),
    ("arn:aws:sagemaker:us-east-2:123456789012:mlflow-tracking-server/team",
     "arn:aws:sagemaker:us-east-2:123456789012:mlflow-tracking-server/team"),
    ("/home/me/mlruns", "/home/me/mlruns"),
])
def test_redacted_uri_keeps_scheme_host_and_path(given, shown):
    assert redact.uri(given) == shown
    assert redact.text("API request to {}/api/2.0 failed".format(given)).count("s3cret") == 0


def test_a_credential_quoted_without_a_scheme_is_taken_out_of_text():
    said = "Max retries exceeded with url: /?access_token=tok-s3cret/api/2.0/x&experiment_name=shelves"
    assert redact.text(said) == "Max retries exceeded with url: /?access_token=<redacted>/api/2.0/x&experiment_name=shelves"


def test_the_job_gets_the_tracking_uri_without_credentials(account, wire, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SECRET_URI)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "env-s3cret")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "env-s3cret-token")
    argv = ["train", "--instance-type", "ml.p3.2xlarge", "--stack", "cpu", "--job-name", "detectron2-tracked"] + AWS
    with monkeypatch.context() as m:
        no_network(m)
        rc, dry_out, dry_err = cli(capsys, *(argv + ["--dry-run"]))
    assert rc == 0, dry_err
    rc, out, err = cli(capsys, *argv)
    assert rc == 0, err
    (request,) = sent(wire, "CreateTrainingJob")
    assert request["Environment"] == {"MLFLOW_TRACKING_URI": "https://mlflow.example.com:8443/team/?workspace=7"}
    job = client("sagemaker").describe_training_job(TrainingJobName="detectron2-tracked")
    # moto's DescribeTrainingJob leaves Environment out: the request above is what SageMaker would show.
    assert job.get("Environment", request["Environment"]) == request["Environment"]
    for text in (json.dumps(wire), json.dumps(job, default=str), dry_out, dry_err, out, err):
        assert "s3cret" not in text
    assert "its user, password or token stay here" in err
    assert "MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_TOKEN not passed to the job" in err


def test_tuning_jobs_get_the_tracking_uri_without_credentials(account, wire, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", SECRET_URI)
    rc, _, err = cli(capsys, "tune", "--instance-type", "ml.p3.2xlarge", "--stack", "cpu", *AWS)
    assert rc == 0, err
    (request,) = sent(wire, "CreateHyperParameterTuningJob")
    assert request["TrainingJobDefinition"]["Environment"] == {
        "MLFLOW_TRACKING_URI": "https://mlflow.example.com:8443/team/?workspace=7"}
    assert "s3cret" not in json.dumps(wire)
