"""``make doctor``: what this machine and account can do, as a table (part, what, status, detail).

The preflight's checks of each stack's external parts (shelfdet.images.preflight), plus
Docker (daemon, buildx, host architecture) and AWS (credentials, the region, ECR, the
SageMaker execution role the launchers would use). Exit 1 when a required check fails.
AWS calls honour AWS_ENDPOINT_URL(_<SERVICE>) as the launchers do (botocore reads them).
Without boto3 (no .venv yet) the AWS rows say so and the rest still runs.
"""
from __future__ import annotations

import os
import platform
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from shelfdet.launch import image_names
from shelfdet.images import preflight as pf
from shelfdet.images.preflight import ERROR, SKIP, WARN, Check, Result, fail, ok, warn

AWS_LIMIT = 60.0  # boto3 spends seconds loading each client's service model before any call


# ---- Docker ----------------------------------------------------------------------------

def host_checks(timeout: float) -> List[Check]:
    limit = 2 * timeout + 1

    def daemon() -> Result:
        rc, out = pf.docker(["info", "--format", "{{.ServerVersion}}"], 2 * timeout)
        if rc == 0:
            return ok("daemon {} answers".format(out))
        return fail(out, "the Docker daemon does not answer ({})".format(out))

    def buildx() -> Result:
        rc, out = pf.docker(["buildx", "version"], 2 * timeout)
        if rc == 0:
            return ok(out, status="available")
        return ok("not installed: images.sh uses the classic builder (DOCKER_BUILDKIT=0), which needs none",
                  status="absent")

    def arch() -> Result:
        rc, out = pf.docker(["version", "--format", "{{.Server.Arch}}"], 2 * timeout)
        name = out if rc == 0 and out else platform.machine()
        if name in ("arm64", "aarch64"):
            return warn("{}: the images are linux/amd64, built here under emulation; compiling Detectron2 "
                        "(cu101, cu12) takes hours: {}".format(name, pf.CODEBUILD))
        return ok(name)

    return [Check("docker", "docker", "daemon", daemon, limit),
            Check("buildx", "docker", "buildx/BuildKit", buildx, limit),
            Check("arch", "docker", "host architecture", arch, limit)]


# ---- AWS -------------------------------------------------------------------------------

def _endpoint(service: str) -> str:
    env = "AWS_ENDPOINT_URL_" + service.upper()
    url = os.environ.get(env) or os.environ.get("AWS_ENDPOINT_URL")
    return " (endpoint {})".format(url) if url else ""


def _client(region: str, service: str, timeout: float) -> Any:
    from botocore.config import Config

    from shelfdet.launch import aws

    session = aws.make_session(region)
    if session.get_credentials() is None:
        raise aws.LaunchError(aws.NO_CREDENTIALS)
    return session.client(service, config=Config(connect_timeout=timeout, read_timeout=timeout,
                                                 retries={"max_attempts": 1}))


def _aws_failure(err: Exception) -> str:
    """One line, as commands.launching.run words them."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    from shelfdet.launch import aws

    if isinstance(err, NoCredentialsError):
        return aws.NO_CREDENTIALS
    if isinstance(err, EndpointConnectionError):
        return "cannot reach {}".format(getattr(err, "kwargs", {}).get("endpoint_url", "AWS"))
    if isinstance(err, ClientError):
        info = err.response.get("Error", {})
        return "{}: {}: {}".format(getattr(err, "operation_name", "request"), info.get("Code", "Error"),
                                   info.get("Message", ""))
    return str(err) or type(err).__name__


def _guard(what: str, body: Any) -> Any:
    def run() -> Result:
        try:
            return body()
        except ImportError:
            return Result(SKIP, "skip", "boto3 is not installed here (make setup installs it)")
        except Exception as err:
            line = " ".join(_aws_failure(err).split())
            return fail(line, "{}: {}".format(what, line))
    return run


def aws_checks(region: str, role: Optional[str], timeout: float) -> List[Check]:
    def credentials() -> Result:
        who = _client(region, "sts", timeout).get_caller_identity()
        return ok("account {}, {}{}".format(who["Account"], who["Arn"], _endpoint("sts")))

    def region_ok() -> Result:
        from shelfdet.launch import aws

        try:
            aws.check_region(region)
        except aws.LaunchError as err:
            return fail(str(err), str(err))
        return ok("SageMaker is offered there")

    def ecr() -> Result:
        client = _client(region, "ecr", timeout)
        names = set()
        for page in client.get_paginator("describe_repositories").paginate():
            names.update(r["repositoryName"] for r in page.get("repositories", []))
        versions = image_names.read_versions()
        ours = [versions.get("IMAGE_REPO_" + k.upper(), "") for k in image_names.KINDS]
        state = ["{} {}".format(n, "exists" if n in names else "(make push-* creates it)") for n in ours if n]
        return ok("describe_repositories: {} repositories; {}{}".format(len(names), ", ".join(state),
                                                                         _endpoint("ecr")))

    def execution_role() -> Result:
        from shelfdet.launch import aws

        iam = _client(region, "iam", timeout)
        m = aws.ROLE_ARN.match(role or "")
        if role:
            name = m.group(2) if m else role
            try:
                found = iam.get_role(RoleName=name)["Role"]
            except iam.exceptions.NoSuchEntityException:
                if m:
                    account = _client(region, "sts", timeout).get_caller_identity()["Account"]
                    if m.group(1) != account:
                        return warn("{} is in account {}, not {}: IAM here cannot see it".format(
                            role, m.group(1), account))
                text = "execution role '{}' not found: pass ROLE=<arn or name> of a role SageMaker can assume".format(
                    name)
                return fail(text, text)
            source = "ROLE={}".format(role)
        else:
            arn = aws.find_execution_role(iam)
            if not arn:
                text = ("no SageMaker execution role found (none named like '*SageMaker*' that "
                        "sagemaker.amazonaws.com can assume): pass ROLE=<arn or name>")
                return fail(text, text)
            found = iam.get_role(RoleName=arn.rsplit("/", 1)[-1])["Role"]
            source = "found by name, as the launchers find it (ROLE= chooses another)"
        if not aws.trusts(found.get("AssumeRolePolicyDocument"), "sagemaker.amazonaws.com"):
            return warn("{} ({}) does not let sagemaker.amazonaws.com assume it".format(found["Arn"], source))
        return ok("{} ({})".format(found["Arn"], source))

    return [Check("aws creds", "aws", "credentials (sts get-caller-identity)",
                  _guard("AWS credentials", credentials), AWS_LIMIT),
            Check("aws region", "aws", "region " + region, _guard("region " + region, region_ok), AWS_LIMIT),
            Check("aws ecr", "aws", "ECR access", _guard("ECR", ecr), AWS_LIMIT),
            Check("aws role", "aws", "SageMaker execution role", _guard("SageMaker execution role", execution_role),
                  AWS_LIMIT)]


def settle_aws(checks: Sequence[Check]) -> None:
    """Without credentials, the calls that need them say so once, not three times."""
    by_key = {c.key: c for c in checks}
    creds = by_key.get("aws creds")
    if creds is None or creds.result is None or creds.result.level != ERROR:
        return
    for key in ("aws ecr", "aws role"):
        c = by_key.get(key)
        if c is not None and c.result is not None and c.result.level == ERROR:
            c.result = Result(SKIP, "skip", "needs the credentials above")


# ---- the table -------------------------------------------------------------------------

def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths)] + [r[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def status_of(result: Result) -> str:
    if result.level == ERROR:
        return "FAIL"
    if result.level == WARN and not result.status.startswith("warn"):
        return "warn: " + result.status
    return result.status


class Findings(NamedTuple):
    """The checks run: the host's (Docker, AWS), each stack's external parts once (``parts``), and per stack."""
    host: List[Check]
    parts: List[Check]
    stacks: List[pf.Stack]
    per_stack: Dict[str, List[Check]]

    def every(self) -> List[Check]:
        return self.host + self.parts


def examine(names: Sequence[str], versions: Dict[str, str], region: str, role: Optional[str],
            timeout: float) -> Findings:
    """Runs the host's checks and those of the named stacks' builds, each part once."""
    parent = os.environ.get("PARENT", "")
    stacks = [pf.Stack(n, versions, parent) for n in names]
    merged = {}  # type: Dict[str, Check]
    per_stack = {}  # type: Dict[str, List[Check]]
    limit = 2 * timeout + 1
    for stack in stacks:
        mine = []
        for check in [pf.base_check(stack, timeout, limit)] + pf.stack_checks(stack, timeout):
            check = merged.setdefault(check.key, check)
            check.stacks.append(stack.name)
            mine.append(check)
        per_stack[stack.name] = mine
    host = host_checks(timeout) + aws_checks(region, role, timeout)
    pf.run_checks(host + list(merged.values()))
    settle_aws(host)
    for stack in stacks:
        pf.settle(stack, per_stack[stack.name])
    return Findings(host, list(merged.values()), stacks, per_stack)


def report(findings: Findings) -> str:
    """The table: one row per check (stack, part, what, status, detail)."""
    rows = [["stack", "part", "what", "status", "detail"]]
    for check in findings.host:
        rows.append(["-", check.part, check.what, status_of(check.result), check.result.detail])
    for check in findings.parts:
        rows.append([",".join(check.stacks), check.part, check.what, status_of(check.result), check.result.detail])
    return table(rows)


def verdict(findings: Findings) -> Tuple[bool, List[str]]:
    """Whether every required check passed, and the lines that say so (or which failed, per stack)."""
    failed = [c for c in findings.every() if c.result.level == ERROR]
    warned = [c for c in findings.every() if c.result.level == WARN]
    if failed:
        lines = ["doctor: {} required check{} failed (the FAIL rows)".format(len(failed), "" if len(failed) == 1 else "s")]
        for stack in findings.stacks:
            line = pf.error_line(stack, findings.per_stack[stack.name], others=False)
            if line:
                lines.append(line.replace("error: preflight:", "doctor:", 1))
        return False, lines
    skipped = [c for c in findings.every() if c.result.level == SKIP]
    extra = ["{} warning{}".format(len(warned), "" if len(warned) == 1 else "s")] if warned else []
    extra += ["{} not checked".format(len(skipped))] if skipped else []
    return True, ["doctor: every required check passes{}".format(" ({})".format(", ".join(extra)) if extra else "")]
