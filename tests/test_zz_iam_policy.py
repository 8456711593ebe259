"""docs/iam-policy.json allows exactly what the launchers call. conftest records every AWS call made
from shelfdet's code while the suite runs them on moto (this file sorts last, so it sees them all)."""
from __future__ import annotations

import json

import pytest

import iam
from conftest import AWS_CALLS

# Calls a full run of the suite makes: with fewer recorded, the launcher tests did not run in this
# session (-k, one file) and there is nothing to compare.
SENTINELS = {"sagemaker:CreateTrainingJob", "sagemaker:CreateEndpoint", "s3:PutObject", "ecr:DescribeImages"}


def test_the_policy_allows_every_call_the_launchers_make_and_no_other():
    called = {a for a in AWS_CALLS if a not in iam.FREE}
    if not SENTINELS <= called:
        pytest.skip("the launcher tests did not run in this session ({} of {} recorded)".format(
            len(SENTINELS & called), len(SENTINELS)))
    policy = iam.allowed()
    missing = sorted(called - policy)
    assert not missing, "docs/iam-policy.json lacks {} (first made by {})".format(
        missing, {a: AWS_CALLS[a] for a in missing})
    unused = sorted(policy - called - iam.NOT_CALLED)
    assert not unused, "docs/iam-policy.json allows {} that no launcher calls: take them out".format(unused)


def test_the_policy_is_a_valid_iam_document():
    doc = json.loads(iam.POLICY.read_text())
    assert doc["Version"] == "2012-10-17"
    for statement in doc["Statement"]:
        assert statement["Effect"] == "Allow" and statement["Resource"] and statement["Sid"].isalnum()
        actions = statement["Action"]
        assert all(":" in a and "*" not in a for a in actions), actions
