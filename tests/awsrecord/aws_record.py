"""Records every AWS API call that shelfdet's code makes, one JSON line each in the file $SHELFDET_AWS_RECORD.

Installed in the test process by conftest and, through this folder's sitecustomize.py (conftest puts
the folder on PYTHONPATH), in every Python subprocess: `make` targets and `python -m shelfdet`.
tests/test_zz_iam_policy.py compares the calls with docs/iam-policy.json and docs/iam-bootstrap.json.
A line: {"service": endpoint prefix, "operation": API name, "policy": "day" or "bootstrap",
"test": the pytest test running, "subprocess": whether a process other than pytest's made it}.
"""
from __future__ import annotations

import json
import os
import sys

ENV = "SHELFDET_AWS_RECORD"
BOOTSTRAP = os.sep + os.path.join("launch", "bootstrap.py")


def _caller(package: str):
    """Which policy the call falls under, or None when shelfdet's code did not make it (a test's own
    client, even one a product callback runs): the first caller outside botocore and boto3 decides.
    Transfers run in s3transfer's threads, whose stacks never reach their caller: only the product
    starts those."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if "botocore" not in name and "boto3" not in name:
            if "s3transfer" in name:
                return "day"
            if not name.startswith(package):
                return None
            break
        frame = frame.f_back
    while frame is not None:
        if frame.f_code.co_filename.startswith(package) and frame.f_code.co_filename.endswith(BOOTSTRAP):
            return "bootstrap"
        frame = frame.f_back
    return "day"


def _package() -> str:
    module = sys.modules.get("shelfdet")
    if module is None or not getattr(module, "__file__", None):
        return "\0"  # shelfdet not imported: no call is the product's
    return os.path.dirname(os.path.abspath(module.__file__)) + os.sep


def install() -> None:
    """Wraps BaseClient._make_api_call (once) to append each product call to $SHELFDET_AWS_RECORD."""
    from botocore.client import BaseClient

    if getattr(BaseClient._make_api_call, "shelfdet_original", None) is not None:
        return
    original = BaseClient._make_api_call

    def recording(self, operation_name, api_params):
        path = os.environ.get(ENV)
        policy = _caller(_package()) if path else None
        if policy:
            line = {"service": self.meta.service_model.endpoint_prefix, "operation": operation_name, "policy": policy,
                    "test": os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0],
                    "subprocess": "_pytest" not in sys.modules}
            with open(path, "a") as f:
                f.write(json.dumps(line) + "\n")
        return original(self, operation_name, api_params)

    recording.shelfdet_original = original  # type: ignore[attr-defined]
    BaseClient._make_api_call = recording


def uninstall() -> None:
    from botocore.client import BaseClient

    original = getattr(BaseClient._make_api_call, "shelfdet_original", None)
    if original is not None:
        BaseClient._make_api_call = original


def read(path) -> list:
    try:
        with open(str(path)) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
