"""`make bootstrap`, `make policy`: the roles an administrator makes once (on moto), the day-to-day
policy filled in for an account, what cloudsplaining says of it, and the product's default resource
names falling under its scoped statements."""
from __future__ import annotations

import fnmatch
import json
import uuid

import pytest

from test_launch_support import (ACCOUNT, BUCKET, REGION, ROLE_ARN, ROLE_NAME, account, cli, client,  # noqa: F401
                                 fast_sessions, json_docs, make, no_network, one_error_line, wire)

KMS_KEY = str(uuid.UUID(int=0x1234abcd12ab34cd56ef1234567890ab))
KMS_ARN = "arn:aws:kms:{}:{}:key/{}".format(REGION, ACCOUNT, KMS_KEY)
POLICY_VARS = ["REGION=" + REGION, "ACCOUNT=" + ACCOUNT, "BUCKET=" + BUCKET, "ROLE=" + ROLE_NAME]


def filled(*more: str, target: str = "policy") -> dict:
    out = make(target, *(POLICY_VARS + list(more)))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def allows(policy: dict, action: str, arn: str) -> bool:
    """Whether an Allow statement names the action and a resource pattern matching the ARN (IAM's * and ?)."""
    for s in policy["Statement"]:
        resources = [s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"]
        if action in s["Action"] and any(fnmatch.fnmatchcase(arn, r) for r in resources):
            return True
    return False


# ---- make bootstrap -------------------------------------------------------------------------

def test_bootstrap_makes_the_codebuild_role_and_the_scaling_role_once(aws_env, capsys):
    rc, out, err = cli(capsys, "bootstrap", "--region", REGION)
    assert rc == 0, err
    iam = client("iam")
    role = iam.get_role(RoleName="shelfdet-codebuild")["Role"]
    assert out.strip() == role["Arn"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "codebuild.amazonaws.com"} and trust["Action"] == "sts:AssumeRole"
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": ACCOUNT}}
    assert iam.list_role_tags(RoleName="shelfdet-codebuild")["Tags"] == [{"Key": "project", "Value": "shelfdet"}]
    default_bucket = "sagemaker-{}-{}".format(REGION, ACCOUNT)
    policy = iam.get_role_policy(RoleName="shelfdet-codebuild", PolicyName="shelfdet-codebuild")["PolicyDocument"]
    grants = {s["Sid"]: (s["Action"], s["Resource"]) for s in policy["Statement"]}
    assert grants["BuildContext"] == (["s3:GetObject", "s3:GetObjectVersion"],
                                      "arn:aws:s3:::{}/shelfdet/codebuild/*".format(default_bucket))
    assert grants["EcrLogin"] == (["ecr:GetAuthorizationToken"], "*")
    assert {"ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart", "ecr:CompleteLayerUpload",
            "ecr:PutImage", "ecr:CreateRepository", "ecr:DescribeRepositories", "ecr:BatchGetImage"} <= set(grants["EcrPush"][0])
    assert sorted(grants["EcrPush"][1]) == ["arn:aws:ecr:{}:{}:repository/shelfdet-{}".format(REGION, ACCOUNT, k)
                                            for k in ("base", "serving", "training")]
    assert set(grants["Logs"][0]) == {"logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"}
    (scaling,) = iam.list_roles(PathPrefix="/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/")["Roles"]
    assert "sagemaker.application-autoscaling.amazonaws.com" in json.dumps(scaling["AssumeRolePolicyDocument"])

    # Again with another bucket: the same roles, the role's policy now reading that bucket's zips.
    rc, out2, err = cli(capsys, "bootstrap", "--region", REGION, "--bucket", "team-builds")
    assert rc == 0, err
    assert out2 == out and "IAM role shelfdet-codebuild exists" in err
    assert "service-linked role {} exists".format(scaling["RoleName"]) in err
    policy = iam.get_role_policy(RoleName="shelfdet-codebuild", PolicyName="shelfdet-codebuild")["PolicyDocument"]
    assert {s["Sid"]: s["Resource"] for s in policy["Statement"]}["BuildContext"] == "arn:aws:s3:::team-builds/shelfdet/codebuild/*"
    assert len([r for r in iam.list_roles()["Roles"] if r["RoleName"] == "shelfdet-codebuild"]) == 1


def test_push_on_codebuild_without_bootstrap_names_it_and_makes_nothing(aws_env, monkeypatch, capsys):
    monkeypatch.setenv("SHELFDET_IMAGE_TAG", "t3st000")
    monkeypatch.delenv("CODEBUILD_BUILD_ID", raising=False)
    rc, out, err = cli(capsys, "push", "training", "--stack", "cu101", "--region", REGION, "--builder", "codebuild")
    assert rc == 1 and out == ""
    assert one_error_line(err) == (
        "error: CodeBuild service role 'shelfdet-codebuild' not found in account {}: an administrator runs "
        "`make bootstrap REGION={}` once (docs/aws.md), or pass ROLE=<arn or name> of a role codebuild.amazonaws.com "
        "can assume".format(ACCOUNT, REGION))
    assert [r["RoleName"] for r in client("iam").list_roles()["Roles"]] == []
    assert client("s3").list_buckets()["Buckets"] == []
    assert client("codebuild").list_projects()["projects"] == []


def test_make_bootstrap_dry_run_prints_the_requests_and_calls_nothing(monkeypatch):
    no_network(monkeypatch)
    out = make("bootstrap", "DRY_RUN=1", "REGION=" + REGION, "BUCKET=team-builds")
    assert out.returncode == 0, out.stderr
    create_role, put_policy, linked = json_docs(out.stdout)
    assert create_role["RoleName"] == put_policy["RoleName"] == "shelfdet-codebuild"
    assert "arn:aws:s3:::team-builds/shelfdet/codebuild/*" in put_policy["PolicyDocument"]
    assert linked == {"AWSServiceName": "sagemaker.application-autoscaling.amazonaws.com",
                      "Description": "Application Auto Scaling of SageMaker endpoints (make deploy MAX_INSTANCES=...)"}


# ---- make policy ------------------------------------------------------------------------------

def test_make_policy_fills_every_parameter_and_keeps_kms_only_with_a_key():
    text = json.dumps(filled())
    assert "${" not in text and "KmsKey" not in text and "kms:" not in text
    with_key = filled("KMS_KEY=" + KMS_KEY)
    kms = {s["Sid"]: s for s in with_key["Statement"] if s["Sid"].startswith("KmsKey")}
    assert {s["Resource"] for s in kms.values()} == {KMS_ARN}
    assert kms["KmsKeyForS3"]["Condition"] == {"StringEquals": {"kms:ViaService": "s3.{}.amazonaws.com".format(REGION)}}
    assert kms["KmsKeyForSageMaker"]["Condition"] == {
        "StringEquals": {"kms:ViaService": "sagemaker.{}.amazonaws.com".format(REGION)}}
    assert filled("KMS_KEY=" + KMS_ARN)["Statement"] == with_key["Statement"]
    passes = {s["Sid"]: s for s in with_key["Statement"] if s["Action"] == ["iam:PassRole"]}
    assert passes["PassTheExecutionRoleToSageMaker"]["Resource"] == ROLE_ARN
    assert passes["PassTheExecutionRoleToSageMaker"]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    assert passes["PassTheBuildRoleToCodeBuild"]["Resource"] == "arn:aws:iam::{}:role/shelfdet-codebuild".format(ACCOUNT)
    (repos,) = [s["Resource"] for s in with_key["Statement"] if s["Sid"] == "TheImageRepositories"]
    assert sorted(repos) == ["arn:aws:ecr:{}:{}:repository/shelfdet-{}".format(REGION, ACCOUNT, k)
                             for k in ("base", "serving", "training")]
    bootstrap = json.dumps(filled(target="bootstrap-policy"))
    assert "${" not in bootstrap and "arn:aws:iam::{}:role/shelfdet-codebuild".format(ACCOUNT) in bootstrap


@pytest.mark.parametrize("args, message", [
    (["BUCKET="], "error: the policy needs BUCKET=<bucket>"),
    (["ROLE="], "error: the policy needs ROLE=<SageMaker execution role, ARN or name>"),
    (["KMS_KEY=alias/shelf"], "error: KMS_KEY=alias/shelf: the policy needs the key ID or key ARN (IAM matches keys, "
                              "not aliases): `aws kms describe-key --key-id alias/shelf` shows its KeyId"),
    (["ACCOUNT=1234"], "error: ACCOUNT=1234: an AWS account ID is 12 digits"),
])
def test_make_policy_refuses_what_it_cannot_fill_in_one_line(args, message):
    out = make("policy", *(POLICY_VARS + args))
    assert out.returncode != 0 and out.stdout == ""
    assert one_error_line(out.stderr.split("make: ***")[0]) == message


def test_cloudsplaining_finds_none_of_the_four_risks_in_the_filled_policy():
    from cloudsplaining.command.scan_policy_file import scan_policy

    policy = filled("KMS_KEY=" + KMS_KEY)
    results = scan_policy(policy)
    found = {k: results[k]["findings"] for k in ("PrivilegeEscalation", "ResourceExposure", "DataExfiltration",
                                                  "InfrastructureModification")}
    assert found == {k: [] for k in found}
    # The scan is not blind: the same actions on "*" without conditions are what it reports.
    wide = dict(policy, Statement=[{"Sid": s["Sid"], "Effect": "Allow", "Action": s["Action"], "Resource": "*"}
                                   for s in policy["Statement"]])
    loose = scan_policy(wide)
    assert "s3:GetObject" in loose["DataExfiltration"]["findings"]
    assert {"sagemaker:CreateTrainingJob", "s3:PutObject", "ecr:PutImage"} <= set(loose["InfrastructureModification"]["findings"])
    # What stays, and why: `docker login` needs an ECR token, which AWS cannot scope to a repository.
    assert results["CredentialsExposure"]["findings"] == ["ecr:GetAuthorizationToken"]


def test_the_products_default_names_fall_under_the_policys_resources(account, capsys, monkeypatch, tmp_path):
    """Dry runs of each launcher without a chosen name: each created resource is one the policy allows."""
    policy = filled()
    no_network(monkeypatch)
    common = ["--region", REGION, "--role", ROLE_ARN, "--bucket", BUCKET, "--dry-run"]
    model = "s3://{}/m/model.tar.gz".format(BUCKET)
    manifest = tmp_path / "test.manifest"
    manifest.write_text('{"source-ref": "s3://%s/detectron2/data/test/a.jpg"}\n' % BUCKET)
    runs = [["train", "--algo", "faster_rcnn", "--instance-type", "ml.g4dn.xlarge"],
            ["tune", "--algo", "retinanet", "--instance-type", "ml.g4dn.xlarge"],
            ["deploy", "--model", model, "--instance-type", "ml.g4dn.xlarge", "--record-dir", str(tmp_path),
             "--async", "--min-instances", "0", "--max-instances", "2"],
            ["transform", "--model", model, "--instance-type", "ml.g4dn.xlarge", "--manifest", str(manifest), "--no-wait"]]
    arn = "arn:aws:sagemaker:{}:{}:{{}}/{{}}".format(REGION, ACCOUNT)
    fields = {"TrainingJobName": ("sagemaker:CreateTrainingJob", "training-job"),
              "HyperParameterTuningJobName": ("sagemaker:CreateHyperParameterTuningJob", "hyper-parameter-tuning-job"),
              "ModelName": ("sagemaker:CreateModel", "model"),
              "EndpointConfigName": ("sagemaker:CreateEndpointConfig", "endpoint-config"),
              "EndpointName": ("sagemaker:CreateEndpoint", "endpoint"),
              "TransformJobName": ("sagemaker:CreateTransformJob", "transform-job")}
    seen = set()
    for argv in runs:
        rc, out, err = cli(capsys, *(argv + common))
        assert rc == 0, (argv[0], err)
        for request in json_docs(out):
            for field, (action, kind) in fields.items():
                if isinstance(request.get(field), str):
                    name = request[field]
                    # SageMaker's ARNs carry the name in lower case.
                    assert allows(policy, action, arn.format(kind, name.lower())), (argv[0], field, name)
                    seen.add(field)
            if "AlarmName" in request:
                alarm = "arn:aws:cloudwatch:{}:{}:alarm:{}".format(REGION, ACCOUNT, request["AlarmName"])
                assert allows(policy, "cloudwatch:PutMetricAlarm", alarm), alarm
                seen.add("AlarmName")
    assert seen == set(fields) | {"AlarmName"}, seen
