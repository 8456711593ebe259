"""AWS session, the lookups every launcher needs, one-line errors, and the dry-run printer.

A launcher builds each request dict once and hands it to :meth:`Aws.send`:
with ``--dry-run`` it is printed as JSON (stdout, one document per request,
usable as ``aws ... --cli-input-json``) and nothing is called; otherwise the
same dict is sent. A dry run makes no AWS call at all, not even read-only
look-ups, so values only a look-up can give (account, a role found by name)
print as ``<placeholders>`` unless the flags already determine them.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import logging
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

DEFAULT_PREFIX = "detectron2/data"
NO_CREDENTIALS = ("no AWS credentials found: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                  "or run `aws configure` / `aws sso login`")
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):role/(?:.*/)?([\w+=,.@-]+)$")


class LaunchError(RuntimeError):
    """A prerequisite is missing; the message is the one line the user sees."""


# ---- arguments -------------------------------------------------------------------

@dataclasses.dataclass
class Options:
    """What every AWS command is given (the Makefile's AWS_FLAGS, and STACK where an image is used)."""
    region: str = ""
    dry_run: bool = False
    role: Optional[str] = None  # the SageMaker execution role: ARN or name (default: found by name)
    bucket: Optional[str] = None
    prefix: str = DEFAULT_PREFIX  # of the uploaded data
    kms_key: Optional[str] = None
    stack: Optional[str] = None  # default: from the instance type
    image_uri: Optional[str] = None  # instead of ours from ECR

    @classmethod
    def of(cls: Any, values: Any) -> Any:
        """These options read off ``values`` (a command's parsed flags); those it lacks keep their defaults."""
        return cls(**{f.name: getattr(values, f.name) for f in dataclasses.fields(cls) if hasattr(values, f.name)})


def timestamp() -> str:
    # Milliseconds keep two launches in the same second apart.
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S-") + "{:03d}".format(now.microsecond // 1000)


def job_name(*parts: str, limit: int = 63) -> str:
    """A SageMaker name: letters, digits and hyphens, no leading/trailing hyphen."""
    name = re.sub(r"[^A-Za-z0-9-]+", "-", "-".join(p for p in parts if p)).strip("-")
    return re.sub(r"-{2,}", "-", name)[:limit].rstrip("-")


def s3_uri(bucket: str, *keys: str) -> str:
    """s3://bucket/a/b/ (always a trailing slash: these are prefixes)."""
    path = "/".join(k.strip("/") for k in keys if k and k.strip("/"))
    return "s3://{}/{}".format(bucket, path + "/" if path else "")


def split_s3(uri: str) -> Tuple[str, str]:
    m = re.match(r"^s3://([^/]+)/?(.*)$", uri)
    if not m:
        raise LaunchError("not an S3 URI: {}".format(uri))
    return m.group(1), m.group(2)


def is_gpu_instance(instance_type: str) -> bool:
    return bool(re.match(r"^ml\.(p\d|g\d)", instance_type))


def default_stack(instance_type: Optional[str]) -> str:
    """The image stack for an instance type when STACK is not given.

    cu101 is built for Volta and Turing (p3 and p3dn = V100, g4dn = T4); newer GPUs
    (g5 A10G, g6 L4, p4d A100, p5 H100) need cu12; CPU instances take cpu.
    """
    if not instance_type or not is_gpu_instance(instance_type):
        return "cpu"
    return "cu101" if re.match(r"^ml\.(p3|p3dn|g4dn)\.", instance_type) else "cu12"


# Families with local NVMe instance storage, which the instance's own hardware encrypts: SageMaker
# refuses a KMS key for their volume (VolumeKmsKeyId, an endpoint config's KmsKeyId) and fails the
# request. A "d" after the generation (m5d, g4dn, p3dn, p4d, p4de, m6id), and g5, g6, g6e, p5*, trn*.
LOCAL_STORAGE = re.compile(r"^ml\.(?:[a-z]+\d+[a-z]*d[a-z]*|g5|g6e?|p5[a-z]*|trn\d+n?)\.")


def local_storage(instance_type: str) -> bool:
    """Whether the instance type has local NVMe storage (no KMS key for its volume)."""
    return bool(LOCAL_STORAGE.match(instance_type or ""))


def volume_key(kms_key: Optional[str], instance_type: str, field: str) -> Optional[str]:
    """The KMS key for an instance's storage volume, or None with a note where the type has local storage."""
    if not kms_key:
        return None
    if local_storage(instance_type):
        note("note: {} has local NVMe storage, encrypted by the instance itself: {} not set (SageMaker refuses "
             "it there); KMS_KEY still encrypts the outputs".format(instance_type, field))
        return None
    return kms_key


def sse_kms(kms_key: Optional[str]) -> Dict[str, str]:
    """S3 upload arguments that encrypt the object with the KMS key (none without one)."""
    if not kms_key:
        return {}
    return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key}


log = logging.getLogger("shelfdet.launch")


def note(message: str) -> None:
    """A progress line for the user: the command shows this logger's lines on stderr."""
    log.info(message)


def _logged(text: str) -> None:
    log.info(text)


@functools.lru_cache(maxsize=1)
def sagemaker_regions() -> Tuple[str, ...]:
    import boto3

    session = boto3.session.Session()
    known = set()  # type: set
    for partition in session.get_available_partitions():
        known.update(session.get_available_regions("sagemaker", partition))
    return tuple(sorted(known))


def check_region(region: str) -> None:
    if region not in sagemaker_regions():
        raise LaunchError("unknown region '{}': pass REGION=<an AWS region with SageMaker, e.g. us-east-2>".format(region))


def make_session(region: str) -> Any:
    """A boto3 session for the region (tests wrap this to observe the wire)."""
    import boto3

    return boto3.session.Session(region_name=region)


def to_json(request: Dict[str, Any]) -> str:
    return json.dumps(request, indent=2, default=str)


# ---- the session -----------------------------------------------------------------

class Aws:
    """Clients and look-ups for one region. In dry-run mode it never touches the network."""

    def __init__(self, region: str, dry_run: bool = False, show: Callable[[str], None] = _logged) -> None:
        """``show`` gets each request a dry run prints (the command's stdout)."""
        check_region(region)
        self.region = region
        self.dry_run = dry_run
        self.show = show
        self._session = None  # type: Any
        self._clients = {}  # type: Dict[str, Any]
        self._account = None  # type: Optional[str]

    # -- plumbing
    def client(self, service: str) -> Any:
        if self.dry_run:
            raise AssertionError("dry run must not create a {} client".format(service))
        if self._session is None:
            self._session = make_session(self.region)
            if self._session.get_credentials() is None:
                raise LaunchError(NO_CREDENTIALS)
        if service not in self._clients:
            self._clients[service] = self._session.client(service)
        return self._clients[service]

    def send(self, service: str, operation: str, request: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Prints the request (dry run) or sends exactly it. ``operation`` is the boto3 method name."""
        if self.dry_run:
            note("# {} {} (dry run: not sent)".format(service, _api_name(operation)))
            self.show(to_json(request))
            return None
        return getattr(self.client(service), operation)(**request)

    # -- look-ups
    def account(self) -> str:
        if self._account is None:
            if self.dry_run:
                return "<account>"
            self._account = self.client("sts").get_caller_identity()["Account"]
        return self._account

    def role_arn(self, role: Optional[str]) -> str:
        """``--role`` as an ARN or a name, else the SageMaker execution role found by name."""
        m = ROLE_ARN.match(role or "")
        if self.dry_run:
            if m:
                self._account = self._account or m.group(1)
                return role  # type: ignore[return-value]
            if role:
                return "arn:aws:iam::{}:role/{}".format(self.account(), role)
            return "<SageMaker execution role, found by name at launch>"
        iam = self.client("iam")
        if m and m.group(1) != self.account():
            return role  # type: ignore[return-value]  # another account's role: IAM here cannot see it
        if role:
            name = m.group(2) if m else role
            try:
                return iam.get_role(RoleName=name)["Role"]["Arn"]
            except iam.exceptions.NoSuchEntityException:
                raise LaunchError("execution role '{}' not found in account {}: pass ROLE=<arn or name> of a role "
                                  "SageMaker can assume".format(name, self.account())) from None
        found = find_execution_role(iam)
        if not found:
            raise LaunchError("no SageMaker execution role found (none named like '*SageMaker*' that "
                              "sagemaker.amazonaws.com can assume): pass ROLE=<arn or name>")
        note("using execution role {} (found by name; ROLE= chooses another)".format(found))
        return found

    def check_bucket(self, bucket: Optional[str]) -> str:
        if not bucket:
            raise LaunchError("no bucket: pass BUCKET=<bucket> (the one `make upload` used)")
        if self.dry_run:
            return bucket
        s3 = self.client("s3")
        from botocore.exceptions import ClientError

        try:
            head = s3.head_bucket(Bucket=bucket)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise LaunchError("bucket '{}' does not exist: create it or pass BUCKET=<existing bucket>".format(bucket)) from None
            if code in ("403", "AccessDenied", "Forbidden"):
                raise LaunchError("no access to bucket '{}' with these credentials".format(bucket)) from None
            raise
        where = head.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
        if where and where != self.region:
            raise LaunchError("bucket '{}' is in {}, but REGION is {}: SageMaker needs them in one region".format(
                bucket, where, self.region))
        return bucket

    def check_prefix(self, uri: str, what: str) -> bool:
        """Whether anything is stored under an s3:// prefix (always True in a dry run)."""
        if self.dry_run:
            return True
        bucket, key = split_s3(uri)
        out = self.client("s3").list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
        return bool(out.get("KeyCount") or out.get("Contents"))

    def image_uri(self, kind: str, stack: str, override: Optional[str] = None) -> str:
        """Our image's ECR URI for this account and region, checked to be pushed.

        Called before anything is created, so a missing image costs nothing but
        this one line. A dry run cannot look (no AWS call at all) and says so.
        """
        from shelfdet.launch import image_names

        try:
            uri = override or image_names.image(kind, stack).ecr_uri(self.account(), self.region)
        except image_names.ImageError as err:
            raise LaunchError(str(err)) from None
        parts = image_names.parse_ecr_uri(uri)
        if self.dry_run:
            if parts is not None or not override:
                note("# dry run: whether {} is in ECR was not checked".format(uri))
            return uri
        if parts is None:
            return uri  # another registry: ECR cannot answer for it
        ecr = self.client("ecr")
        try:
            ecr.describe_images(registryId=parts["account"], repositoryName=parts["repo"],
                                imageIds=[{"imageTag": parts["tag"]}])
        except (ecr.exceptions.RepositoryNotFoundException, ecr.exceptions.ImageNotFoundException):
            fix = ("push it there, or pass another --image-uri" if override else
                   "run make push-{} REGION={} STACK={}".format(kind, parts["region"], stack))
            raise LaunchError("{}:{} is not in ECR ({}/{}): {}".format(
                parts["repo"], parts["tag"], uri.split("/", 1)[0], parts["repo"], fix)) from None
        return uri


def _api_name(method: str) -> str:
    return "".join(w.capitalize() for w in method.split("_"))


def trusts(doc: Any, service: str) -> bool:
    """Whether an IAM trust policy (a dict, or the URL-encoded JSON IAM returns) lets ``service`` assume the role."""
    if isinstance(doc, str):
        from urllib.parse import unquote

        try:
            doc = json.loads(unquote(doc))
        except ValueError:
            return False
    for stmt in (doc or {}).get("Statement", []) if isinstance(doc, dict) else []:
        principal = (stmt.get("Principal") or {}).get("Service", [])
        services = [principal] if isinstance(principal, str) else list(principal)
        if stmt.get("Effect") == "Allow" and service in services:
            return True
    return False
    for stmt in (doc or {}).get("Statement", []) if isinstance(doc, dict) else []:
        service = (stmt.get("Principal") or {}).get("Service", [])
        services = [service] if isinstance(service, str) else list(service)
        if stmt.get("Effect") == "Allow" and "sagemaker.amazonaws.com" in services:
            return True
    return False


def find_execution_role(iam: Any) -> Optional[str]:
    """The best role named like SageMaker that SageMaker may assume: 'execution' in the name first, then newest."""
    roles = []
    for page in iam.get_paginator("list_roles").paginate():
        roles += page.get("Roles", [])
    named = [r for r in roles if "sagemaker" in r["RoleName"].lower()]
    trusted = [r for r in named if trusts(r.get("AssumeRolePolicyDocument"), "sagemaker.amazonaws.com")]
    if not trusted:
        return None
    trusted.sort(key=lambda r: ("execution" in r["RoleName"].lower(), str(r.get("CreateDate", ""))), reverse=True)
    return trusted[0]["Arn"]
