"""``make policy`` / ``make bootstrap-policy``: an IAM policy template of docs/ filled in for one account.

docs/iam-policy.json (day to day) and docs/iam-bootstrap.json (once, by an administrator) name
their resources with ``${Parameter}``s: the account, region and partition, the bucket, the
execution and CodeBuild roles, the image repositories, the KMS key. This fills them in and prints
the policy JSON on stdout, ready for ``aws iam put-user-policy --policy-document file://...``.
A statement about the KMS key is left out when no ``--kms-key`` is given; every other parameter
must have a value. Nothing is called on AWS except, without ``--account``, STS's GetCallerIdentity.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from shelfdet.launch import aws, bootstrap, image_names
from shelfdet.launch.aws import LaunchError

PLACEHOLDER = re.compile(r"\$\{([A-Za-z]+)\}")
# Parameters whose statements are dropped when they have no value.
OPTIONAL = ("KmsKeyArn",)
KMS_KEY_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$|^mrk-[0-9a-f]{32}$")
KMS_KEY_ARN = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+$")

Value = Union[str, List[str]]


def role_arn(role: str, account: str, partition: str) -> str:
    return role if aws.ROLE_ARN.match(role) else "arn:{}:iam::{}:role/{}".format(partition, account, role)


def kms_key_arn(key: str, region: str, account: str, partition: str) -> str:
    """IAM matches a key by its key ARN: an alias would match nothing."""
    if KMS_KEY_ARN.match(key):
        return key
    if KMS_KEY_ID.match(key):
        return "arn:{}:kms:{}:{}:key/{}".format(partition, region, account, key)
    raise LaunchError("KMS_KEY={}: the policy needs the key ID or key ARN (IAM matches keys, not aliases): "
                      "`aws kms describe-key --key-id {}` shows its KeyId".format(key, key))


def parameters(region: str, account: str, bucket: Optional[str], role: Optional[str], codebuild_role: str,
               kms_key: Optional[str]) -> Dict[str, Optional[Value]]:
    partition = image_names.partition(region)
    return {
        "Partition": partition,
        "Region": region,
        "Account": account,
        "Bucket": bucket,
        "ExecutionRoleArn": role_arn(role, account, partition) if role else None,
        "CodeBuildRoleArn": role_arn(codebuild_role, account, partition),
        "CodeBuildRoleName": aws.ROLE_ARN.match(role_arn(codebuild_role, account, partition)).group(2),  # type: ignore[union-attr]
        "CodeBuildProject": image_names.PROJECT,
        "ImageRepository": bootstrap.image_repositories(),
        "KmsKeyArn": kms_key_arn(kms_key, region, account, partition) if kms_key else None,
    }


# What to pass for each parameter, in the one-line error when it has no value.
FLAGS = {"Bucket": "BUCKET=<bucket>", "ExecutionRoleArn": "ROLE=<SageMaker execution role, ARN or name>"}


def _names(node: Any) -> List[str]:
    return PLACEHOLDER.findall(json.dumps(node))


def _fill_string(text: str, values: Dict[str, Optional[Value]]) -> List[str]:
    """The string with its parameters in; a list parameter gives one string per item."""
    out = [text]
    for name in PLACEHOLDER.findall(text):
        value = values[name]
        items = value if isinstance(value, list) else [value]
        out = [s.replace("${" + name + "}", str(v)) for s in out for v in items]
    return out


def _fill(node: Any, values: Dict[str, Optional[Value]]) -> Any:
    if isinstance(node, dict):
        return {k: _fill(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [s for item in node for s in (_fill_string(item, values) if isinstance(item, str) else [_fill(item, values)])]
    if isinstance(node, str):
        filled = _fill_string(node, values)
        return filled[0] if len(filled) == 1 else filled
    return node


def fill(template: Dict[str, Any], values: Dict[str, Optional[Value]]) -> Dict[str, Any]:
    """The template with every ``${Parameter}`` replaced; statements of an unset optional parameter dropped."""
    unknown = sorted(set(_names(template)) - set(values))
    if unknown:
        raise LaunchError("the policy template names unknown parameters: {}".format(", ".join(unknown)))
    kept = []
    for statement in template["Statement"]:
        unset = [n for n in _names(statement) if values.get(n) in (None, "", [])]
        if any(n in OPTIONAL for n in unset):
            continue
        if unset:
            raise LaunchError("the policy needs {}".format(" and ".join(FLAGS.get(n, n) for n in sorted(set(unset)))))
        kept.append(_fill(statement, values))
    return dict(template, Statement=kept)


def filled(template_path: str, region: str, account: Optional[str], bucket: Optional[str], role: Optional[str],
           codebuild_role: str, kms_key: Optional[str]) -> Any:
    """The policy template with this account's values (the account: the credentials' own when not given)."""
    aws.check_region(region)
    path = Path(template_path)
    try:
        template = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LaunchError("cannot read the policy template {}: {}".format(path, err)) from None
    if not account:
        account = aws.Aws(region).account()
    elif not re.match(r"^\d{12}$", account):
        raise LaunchError("ACCOUNT={}: an AWS account ID is 12 digits".format(account))
    return fill(template, parameters(region, account, bucket, role, codebuild_role, kms_key))
