"""docs/iam-policy.json (day to day) and docs/iam-bootstrap.json allow exactly what shelfdet's code calls.

tests/awsrecord records every AWS call the product makes while the suite runs it on moto, in this
process and in the `make` and `python -m shelfdet` subprocesses the tests start. This file sorts
last: in a run that held every AWS test it reads what the session recorded; run alone, or with only
some of them, it first runs the tests that talk to moto in a pytest of their own, recording into a file
of its own.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import aws_record
import iam
from conftest import MOTO_TESTS_ONLY

TESTS = Path(__file__).resolve().parent
# A test file that talks to moto uses one of these.
MARKERS = ("aws_env", "moto_server", "test_launch_support")
AWS_TESTS = sorted(p.name for p in TESTS.glob("test_*.py")
                   if p.name != Path(__file__).name and any(m in p.read_text() for m in MARKERS))
# Actions that AWS authorises on "*" only (no resource type), all of them reads or lists.
ON_STAR_ONLY = {"sagemaker:ListTrainingJobs", "iam:ListRoles", "ecr:GetAuthorizationToken", "ecr:DescribeRepositories",
                "application-autoscaling:DescribeScalableTargets", "application-autoscaling:DescribeScalingPolicies"}


def _whole_files_ran(session) -> bool:
    ran = {Path(str(item.fspath)).name for item in session.items}
    narrowed = session.config.getoption("keyword") or session.config.getoption("markexpr") or any(
        "::" in arg for arg in session.config.args)
    return set(AWS_TESTS) <= ran and not narrowed


class Calls(list):
    """The recorded calls, and what went wrong in the pytest that made them, if anything."""
    trouble = ""

    def why(self, message: str) -> str:
        return message + ("\n(the AWS tests run for this did not all pass, so calls may be missing:\n{})".format(
            self.trouble) if self.trouble else "")


@pytest.fixture(scope="module")
def calls(request, record_aws_calls, tmp_path_factory):
    """The recorded calls: this session's, or those of a pytest of the moto tests run here."""
    if record_aws_calls is None:
        pytest.skip("botocore is not installed: no AWS call can be recorded")
    if _whole_files_ran(request.session):
        return Calls(aws_record.read(record_aws_calls))
    path = tmp_path_factory.mktemp("aws-calls-alone") / "calls.jsonl"
    env = dict(os.environ, **{aws_record.ENV: str(path), MOTO_TESTS_ONLY: "1"})
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"] + [str(TESTS / f) for f in AWS_TESTS],
                          cwd=str(TESTS.parent), env=env, capture_output=True, text=True, timeout=3600)
    out = Calls(aws_record.read(path))
    if proc.returncode != 0:
        # A failing test elsewhere need not hide a policy fault: compare anyway, and say it with any difference.
        out.trouble = "\n".join(l for l in proc.stdout.splitlines() if l.startswith(("FAILED", "ERROR"))) or proc.stdout[-2000:]
    return out


def _actions(calls, policy: str) -> "dict[str, str]":
    out = {}  # type: dict
    for call in calls:
        action = iam.action(call["service"], call["operation"])
        if call["policy"] == policy and action not in iam.FREE:
            out.setdefault(action, call["test"])
    return out


def test_the_calls_of_subprocesses_are_recorded(calls):
    """Some tests run `python -m shelfdet deploy|undeploy` as the Makefile does: those calls are seen too."""
    made = {iam.action(c["service"], c["operation"]) for c in calls if c["subprocess"]}
    assert {"sagemaker:CreateEndpoint", "sagemaker:DeleteEndpoint"} <= made, calls.why(str(sorted(made)))


def test_the_day_to_day_policy_allows_every_call_the_product_makes_and_no_other(calls):
    called = _actions(calls, "day")
    assert {"sagemaker:CreateTrainingJob", "sagemaker:CreateEndpoint", "s3:PutObject", "ecr:DescribeImages"} <= set(called), \
        calls.why(str(sorted(called)))
    policy = iam.allowed(iam.POLICY)
    missing = sorted(set(called) - policy)
    assert not missing, "docs/iam-policy.json lacks {} (first made by {})".format(missing, {a: called[a] for a in missing})
    unused = sorted(policy - set(called) - iam.NOT_CALLED)
    assert not unused, calls.why("docs/iam-policy.json allows {} that nothing calls: take them out".format(unused))
    # Role writes are the bootstrap's alone.
    assert not {a for a in called if a.startswith("iam:") and not a.startswith(("iam:Get", "iam:List"))}, called


def test_the_bootstrap_policy_allows_every_bootstrap_call_and_no_other(calls):
    called = _actions(calls, "bootstrap")
    assert {"iam:CreateRole", "iam:PutRolePolicy", "iam:CreateServiceLinkedRole"} <= set(called), calls.why(str(called))
    policy = iam.allowed(iam.BOOTSTRAP)
    missing = sorted(set(called) - policy)
    assert not missing, "docs/iam-bootstrap.json lacks {} (first made by {})".format(missing, {a: called[a] for a in missing})
    unused = sorted(policy - set(called) - iam.BOOTSTRAP_NOT_CALLED)
    assert not unused, calls.why("docs/iam-bootstrap.json allows {} that make bootstrap does not call".format(unused))


@pytest.mark.parametrize("path", [iam.POLICY, iam.BOOTSTRAP], ids=lambda p: p.name)
def test_the_templates_are_valid_iam_documents(path):
    doc = json.loads(path.read_text())
    assert doc["Version"] == "2012-10-17"
    sids = [s["Sid"] for s in doc["Statement"]]
    assert len(set(sids)) == len(sids) and all(s.isalnum() for s in sids), sids
    for statement in doc["Statement"]:
        assert statement["Effect"] == "Allow" and statement["Resource"], statement
        actions = statement["Action"]
        assert all(":" in a and "*" not in a for a in actions), actions
        if statement["Resource"] == "*":
            # Everything else names its resources: only what AWS cannot scope stays on "*".
            assert set(actions) <= ON_STAR_ONLY, (statement["Sid"], sorted(set(actions) - ON_STAR_ONLY))
