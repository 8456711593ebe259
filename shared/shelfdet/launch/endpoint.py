"""Calling a deployed endpoint (for ``make predict ENDPOINT=...``)."""
from __future__ import annotations

import json
from typing import Any, Dict

from . import aws


def invoke(endpoint: str, region: str, body: bytes, content_type: str = "application/x-image") -> Dict[str, Any]:
    """POSTs body to the endpoint's /invocations and returns the decoded JSON answer (SPEC §4).

    Raises aws.LaunchError with one line when the endpoint is missing, the
    container fails, or the answer is not JSON.
    """
    aws.check_region(region)
    client = aws.Aws(region).client("sagemaker-runtime")
    from botocore.exceptions import ClientError

    try:
        out = client.invoke_endpoint(EndpointName=endpoint, ContentType=content_type, Accept="application/json", Body=body)
    except ClientError as err:
        info = err.response.get("Error", {})
        text = " ".join(str(info.get("Message", "")).split())[:300]
        raise aws.LaunchError("endpoint {}: {}: {}".format(endpoint, info.get("Code", "Error"), text)) from None
    payload = out["Body"].read()
    try:
        return json.loads(payload)
    except ValueError:
        raise aws.LaunchError("endpoint {} answered {} bytes of {} that are not JSON: {!r}".format(
            endpoint, len(payload), out.get("ContentType", "?"), payload[:200])) from None
