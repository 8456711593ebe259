"""API operations -> the IAM actions that allow them (most are <service>:<Operation>; S3's are not), and
what the two policy templates of docs/ allow."""
from __future__ import annotations

import json
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
POLICY = DOCS / "iam-policy.json"
BOOTSTRAP = DOCS / "iam-bootstrap.json"
# IAM prefixes where they differ from the endpoint prefix.
SERVICES = {"runtime.sagemaker": "sagemaker", "api.sagemaker": "sagemaker", "api.ecr": "ecr", "monitoring": "cloudwatch",
            "autoscaling": "application-autoscaling"}
S3 = {"ListObjectsV2": "ListBucket", "ListObjects": "ListBucket", "HeadBucket": "ListBucket",
      "HeadObject": "GetObject", "GetObject": "GetObject", "PutObject": "PutObject",
      "CreateMultipartUpload": "PutObject", "UploadPart": "PutObject", "CompleteMultipartUpload": "PutObject",
      "UploadPartCopy": "PutObject", "AbortMultipartUpload": "AbortMultipartUpload", "CopyObject": "PutObject",
      "DeleteObject": "DeleteObject", "DeleteObjects": "DeleteObject", "ListBuckets": "ListAllMyBuckets",
      "GetBucketLocation": "GetBucketLocation", "CreateBucket": "CreateBucket", "ListObjectVersions": "ListBucketVersions"}
# Allowed by the day-to-day policy although the code never calls them itself, each for its reason:
NOT_CALLED = {
    # SageMaker and CodeBuild are handed the execution and service roles.
    "iam:PassRole",
    # `docker push` and `docker pull` (make push-*) talk to ECR with these.
    "ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart", "ecr:CompleteLayerUpload",
    "ecr:PutImage", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
    # Tags given to a create call are authorised as a tagging action too (moto does not check it; AWS does).
    "ecr:TagResource", "sagemaker:AddTags",
    # RegisterScalableTarget checks that the caller could scale the endpoint itself.
    "sagemaker:UpdateEndpointWeightsAndCapacities",
    # KMS_KEY: S3 encrypts uploads and decrypts downloads with it (SSE-KMS), SageMaker makes grants on it
    # for volumes and outputs, each in the caller's name.
    "kms:GenerateDataKey", "kms:Decrypt", "kms:CreateGrant", "kms:DescribeKey",
}
# The same for docs/iam-bootstrap.json: CreateRole's Tags.
BOOTSTRAP_NOT_CALLED = {"iam:TagRole"}
# Needs no permission (AWS answers it for any valid credentials).
FREE = {"sts:GetCallerIdentity"}


def action(endpoint_prefix: str, operation: str) -> str:
    if endpoint_prefix == "s3":
        return "s3:" + S3.get(operation, operation)
    return "{}:{}".format(SERVICES.get(endpoint_prefix, endpoint_prefix), operation)


def allowed(path: Path = POLICY) -> "set[str]":
    doc = json.loads(path.read_text())
    out = set()
    for statement in doc["Statement"]:
        actions = statement["Action"]
        out.update([actions] if isinstance(actions, str) else actions)
    return out
