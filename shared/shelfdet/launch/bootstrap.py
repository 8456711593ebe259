"""``make bootstrap``: what an administrator creates once, so that day-to-day use needs no IAM writes.

The day-to-day policy (docs/iam-policy.json) may pass roles but never make or change one: a
principal allowed ``iam:CreateRole`` and ``iam:PutRolePolicy`` can write itself any permission.
So the roles the project needs are made here, by someone holding docs/iam-bootstrap.json:

- the CodeBuild service role ``shelfdet-codebuild`` (``make push-* BUILDER=codebuild``): CloudWatch
  Logs of its project, read of the build zips under s3://BUCKET/<PREFIX or shelfdet/codebuild>/,
  push to the project's ECR repositories; its policy is set again on each run, so a new BUCKET is a
  second ``make bootstrap``;
- Application Auto Scaling's service-linked role for SageMaker endpoints (``make deploy
  MAX_INSTANCES=...``), which AWS would otherwise create at the first scaled deploy, asking the
  deployer for ``iam:CreateServiceLinkedRole``.

Prints the CodeBuild role's ARN on stdout; ``--dry-run`` prints the requests instead.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

from shelfdet.launch import aws, image_names
from shelfdet.launch.aws import note

SCALING_SERVICE = "sagemaker.application-autoscaling.amazonaws.com"
SCALING_ROLE = "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
SCALING_PATH = "/aws-service-role/{}/".format(SCALING_SERVICE)


def role_requests(region: str, account: str, bucket: str, prefix: str, project: str,
                  repos: List[str]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """create_role and put_role_policy for the CodeBuild role: only what a push from a zip needs."""
    arn = "arn:{}".format(image_names.partition(region))
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "codebuild.amazonaws.com"}, "Action": "sts:AssumeRole",
        # Only this account's builds may assume it (the confused-deputy guard AWS recommends).
        "Condition": {"StringEquals": {"aws:SourceAccount": account}}}]}
    group = "{}:logs:{}:{}:log-group:/aws/codebuild/{}".format(arn, region, account, project)
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Logs", "Effect": "Allow",
         "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": [group, group + ":*"]},
        {"Sid": "BuildContext", "Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectVersion"],
         "Resource": "{}:s3:::{}/{}/*".format(arn, bucket, prefix.strip("/"))},
        {"Sid": "BuildContextBucket", "Effect": "Allow", "Action": ["s3:GetBucketAcl", "s3:GetBucketLocation"],
         "Resource": "{}:s3:::{}".format(arn, bucket)},
        {"Sid": "EcrLogin", "Effect": "Allow", "Action": ["ecr:GetAuthorizationToken"], "Resource": "*"},
        {"Sid": "EcrPush", "Effect": "Allow", "Action": list(image_names.ECR_ACTIONS),
         "Resource": ["{}:ecr:{}:{}:repository/{}".format(arn, region, account, r) for r in repos]},
    ]}
    create = {"RoleName": image_names.ROLE_NAME, "AssumeRolePolicyDocument": json.dumps(trust),
              "Description": "CodeBuild builds and pushes the shelfdet images (make push-* BUILDER=codebuild)",
              "Tags": [{"Key": "project", "Value": "shelfdet"}]}
    put = {"RoleName": image_names.ROLE_NAME, "PolicyName": image_names.ROLE_NAME, "PolicyDocument": json.dumps(policy)}
    return create, put


def image_repositories() -> List[str]:
    """The ECR repositories the images are pushed to (versions.env IMAGE_REPO_*, the test image's excepted)."""
    v = image_names.read_versions()
    return [v[k] for k in ("IMAGE_REPO_BASE", "IMAGE_REPO_TRAINING", "IMAGE_REPO_SERVING") if k in v]


def _code(err: Any) -> str:
    return err.response.get("Error", {}).get("Code", "")


def codebuild_role(cloud: aws.Aws, requests: Tuple[Dict[str, Any], Dict[str, Any]]) -> str:
    if cloud.dry_run:
        note("# the role below is created only when missing; its policy is set each time")
        cloud.send("iam", "create_role", requests[0])
        cloud.send("iam", "put_role_policy", requests[1])
        return "arn:{}:iam::{}:role/{}".format(image_names.partition(cloud.region), cloud.account(), image_names.ROLE_NAME)
    iam = cloud.client("iam")
    try:
        arn = iam.get_role(RoleName=image_names.ROLE_NAME)["Role"]["Arn"]
        note("IAM role {} exists; setting its policy".format(image_names.ROLE_NAME))
    except iam.exceptions.NoSuchEntityException:
        note("creating IAM role {} for CodeBuild (logs, read of the build zips, ECR push)".format(image_names.ROLE_NAME))
        arn = iam.create_role(**requests[0])["Role"]["Arn"]
    iam.put_role_policy(**requests[1])
    return arn


def scaling_role(cloud: aws.Aws) -> None:
    request = {"AWSServiceName": SCALING_SERVICE,
               "Description": "Application Auto Scaling of SageMaker endpoints (make deploy MAX_INSTANCES=...)"}
    if cloud.dry_run:
        note("# sent only when the service-linked role {} is missing".format(SCALING_ROLE))
        cloud.send("iam", "create_service_linked_role", request)
        return
    from botocore.exceptions import ClientError

    iam = cloud.client("iam")
    # Found by its path, which AWS derives from the service: the one name that does not vary.
    found = iam.list_roles(PathPrefix=SCALING_PATH).get("Roles", [])
    if found:
        note("service-linked role {} exists".format(found[0]["RoleName"]))
        return
    note("creating service-linked role {} (endpoint scaling)".format(SCALING_ROLE))
    try:
        iam.create_service_linked_role(**request)
    except ClientError as err:
        # Made meanwhile by a scaled deploy of someone allowed to: what was wanted.
        if _code(err) != "InvalidInput" or "has been taken" not in err.response.get("Error", {}).get("Message", ""):
            raise


def bootstrap(cloud: aws.Aws, bucket: Optional[str], prefix: Optional[str], project: str) -> str:
    """The CodeBuild role (its policy set again) and the scaling service-linked role: the CodeBuild role's ARN."""
    account = cloud.account()
    bucket = bucket or image_names.default_bucket(cloud.region, account)
    requests = role_requests(cloud.region, account, bucket, image_names.zip_prefix(prefix), project, image_repositories())
    arn = codebuild_role(cloud, requests)
    scaling_role(cloud)
    if not cloud.dry_run:
        note("bootstrap done: day-to-day users need only the policy `make policy` prints (docs/aws.md)")
    return arn
