"""API operations -> the IAM actions that allow them (most are <service>:<Operation>; S3's are not)."""
from __future__ import annotations

import json
from pathlib import Path

POLICY = Path(__file__).resolve().parent.parent / "docs" / "iam-policy.json"
# IAM prefixes where they differ from the endpoint prefix.
SERVICES = {"runtime.sagemaker": "sagemaker", "api.sagemaker": "sagemaker", "api.ecr": "ecr", "monitoring": "cloudwatch",
            "autoscaling": "application-autoscaling"}
S3 = {"ListObjectsV2": "ListBucket", "ListObjects": "ListBucket", "HeadBucket": "ListBucket",
      "HeadObject": "GetObject", "GetObject": "GetObject", "PutObject": "PutObject",
      "CreateMultipartUpload": "PutObject", "UploadPart": "PutObject", "CompleteMultipartUpload": "PutObject",
      "UploadPartCopy": "PutObject", "AbortMultipartUpload": "AbortMultipartUpload", "CopyObject": "PutObject",
      "DeleteObject": "DeleteObject", "DeleteObjects": "DeleteObject", "ListBuckets": "ListAllMyBuckets",
      "GetBucketLocation": "GetBucketLocation", "CreateBucket": "CreateBucket", "ListObjectVersions": "ListBucketVersions"}
# Allowed by the policy although the code never calls them itself: SageMaker needs to pass the
# execution role; `docker push` (make push-*) talks to ECR with these.
NOT_CALLED = {"iam:PassRole", "ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload", "ecr:UploadLayerPart",
              "ecr:CompleteLayerUpload", "ecr:PutImage", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"}
# Needs no permission (AWS answers it for any valid credentials).
FREE = {"sts:GetCallerIdentity"}


def action(endpoint_prefix: str, operation: str) -> str:
    if endpoint_prefix == "s3":
        return "s3:" + S3.get(operation, operation)
    return "{}:{}".format(SERVICES.get(endpoint_prefix, endpoint_prefix), operation)


def allowed() -> "set[str]":
    doc = json.loads(POLICY.read_text())
    out = set()
    for statement in doc["Statement"]:
        actions = statement["Action"]
        out.update([actions] if isinstance(actions, str) else actions)
    return out
