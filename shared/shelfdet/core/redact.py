"""Credentials taken out of URIs before they are logged, stored or handed to a job.

A tracking URI may carry a user and password (``https://user:token@host/...``) or a token in its
query string (``?token=...``). Logs, run folders and a SageMaker job's ``Environment`` (which
DescribeTrainingJob and CloudWatch show) get the URI without them: scheme, host, port and path kept.
"""
from __future__ import annotations

import re
from typing import Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# Query parameter names that carry a credential (compared lower-case, "-" as "_").
SECRET_PARAM = re.compile(r"^(?:.*token.*|.*secret.*|.*password.*|passwd|pwd|.*api_?key.*|key|auth.*|.*credential.*|"
                          r"sig|signature|x_amz_signature|code)$")
# A URI inside free text (an error message): a scheme, then everything up to a space or quote.
IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def _secret(name: str) -> bool:
    return bool(SECRET_PARAM.match(name.lower().replace("-", "_")))


def uri(value: Optional[str], keep_user: bool = False) -> Optional[str]:
    """``value`` without ``user:password@`` (unless ``keep_user``) and without query parameters (or a
    fragment) that carry a credential."""
    if not has_credentials(value):
        return value  # a path, an ARN, or a URI with nothing to take out: as given
    try:
        parts = urlsplit(value)
        host = parts.netloc if keep_user else parts.netloc.rsplit("@", 1)[-1]
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _secret(k)]
        fragment = "" if "=" in parts.fragment else parts.fragment  # an OAuth-style #access_token=...
        return urlunsplit((parts.scheme, host, parts.path, urlencode(query), fragment))
    except ValueError:  # not parseable (a malformed port, a bad IPv6 host): keep only the scheme
        return value.split("://", 1)[0] + "://<redacted>"


# A credential parameter in text that holds no scheme (a URL's path and query quoted alone).
PARAM_IN_TEXT = re.compile(r"([?&#;]([A-Za-z0-9_.-]+)=)([^&#\s'\"<>/]+)")


def text(message: str) -> str:
    """``message`` with every URI in it passed through :func:`uri`, and the value of any credential
    parameter it quotes without a scheme (``/?token=...``) taken out: error messages quote the URL they called."""
    message = IN_TEXT.sub(lambda m: uri(m.group(0)) or "", message)
    return PARAM_IN_TEXT.sub(lambda m: m.group(1) + "<redacted>" if _secret(m.group(2)) else m.group(0), message)


def has_credentials(value: Optional[str]) -> bool:
    """Whether the URI carries a user, a password, or a credential in its query or fragment."""
    if not value or "://" not in value:
        return False
    try:
        parts = urlsplit(value)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return True  # cannot tell: treated as secret
    return "@" in parts.netloc or "=" in parts.fragment or any(_secret(k) for k, _ in query)
