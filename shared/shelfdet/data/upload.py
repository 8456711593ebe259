"""DATA_DIR -> s3://BUCKET/PREFIX/{training,validation,test,annotations}/ (``python -m shelfdet upload``).

Resumable by construction: objects already there with the same content are
skipped, so a second run (or one after an interruption) sends only the rest.
Same content means the same checksum, never the same size alone: a
re-generated photo of the same byte size is sent again. Each object goes up
with a SHA-256 checksum (ChecksumAlgorithm=SHA256) and is compared through its
ETag (the MD5, unless SSE-KMS or SSE-C) or, where that differs, its
ChecksumSHA256; the local side is hashed streaming, nothing is downloaded. An
object of PART_SIZE or more is a multipart upload: S3 then keeps digests of the
parts' digests ("<digest>-<parts>"; SHA-256 has no full-object form), and the
local file is hashed part by part at the same part size to match.
Manifests built without --bucket point at local files; they are rewritten on
the way up so their source-refs name the uploaded photos.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from shelfdet.data import CHANNELS, DataError
from shelfdet.data.manifests import quiet, source_ref


# Multipart threshold and part size of the upload, and so of the composite checksums compared on resume.
PART_SIZE = 8 << 20


class Item(NamedTuple):
    key: str
    path: str
    body: Optional[bytes]  # rewritten content (manifests); None: upload the file as is
    size: int


def _key(prefix: str, *parts: str) -> str:
    return "/".join(p for p in (prefix.strip("/"),) + parts if p)


def _manifest_body(path: str, bucket: str, prefix: str, channel: str, data_dir: str) -> bytes:
    out = io.StringIO()
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                name = os.path.basename(rec["source-ref"])
            except (ValueError, KeyError, TypeError):
                raise DataError("{}:{}: not a manifest line with a source-ref".format(path, lineno)) from None
            rec["source-ref"] = source_ref(bucket, prefix, channel, name, data_dir)
            out.write(json.dumps(rec) + "\n")
    return out.getvalue().encode()


def plan(data_dir: str, bucket: str, prefix: str) -> List[Item]:
    ann_dir = os.path.join(data_dir, "annotations")
    items: List[Item] = []
    for ch in CHANNELS:
        manifest = os.path.join(ann_dir, ch + ".manifest")
        ch_dir = os.path.join(data_dir, ch)
        if not os.path.isfile(manifest):
            continue
        for name in sorted(os.listdir(ch_dir)) if os.path.isdir(ch_dir) else []:
            path = os.path.join(ch_dir, name)
            items.append(Item(_key(prefix, ch, name), path, None, os.path.getsize(path)))
        body = _manifest_body(manifest, bucket, prefix, ch, data_dir)
        items.append(Item(_key(prefix, "annotations", ch + ".manifest"), manifest, body, len(body)))
    if not items:
        raise DataError("{}: no annotations/<channel>.manifest; run `make data DATA_DIR={}` first".format(
            data_dir, data_dir))
    return items


def existing(s3, bucket: str, prefix: str) -> Dict[str, Tuple[int, str]]:
    """key -> (size, ETag) of every object under ``prefix``."""
    found: Dict[str, Tuple[int, str]] = {}
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.strip("/"))
    for page in pages:
        for obj in page.get("Contents", []):
            found[obj["Key"]] = (obj["Size"], obj.get("ETag", "").strip('"'))
    return found


def checksums(item: Item, part_size: int = PART_SIZE) -> Tuple[str, str]:
    """(ETag, ChecksumSHA256) of ``item`` as S3 computes them for our upload of it.

    One part: the MD5 (hex) and SHA-256 (base64) of the content. From
    ``part_size`` on, the transfer manager sends parts of ``part_size`` (raised
    past 10,000 parts as it does), and S3 digests the concatenated part
    digests and appends "-<parts>".
    """
    from s3transfer.utils import ChunksizeAdjuster

    multipart = item.size >= part_size
    part = ChunksizeAdjuster().adjust_chunksize(part_size, item.size) if multipart else max(item.size, 1)
    md5s, shas = [], []
    with (io.BytesIO(item.body) if item.body is not None else open(item.path, "rb")) as f:
        for start in range(0, max(item.size, 1), part):
            md5, sha = hashlib.md5(), hashlib.sha256()
            left = min(part, item.size - start)
            while left > 0:
                block = f.read(min(left, 1 << 20))
                if not block:  # shorter than planned: the digests differ and it goes again
                    break
                md5.update(block)
                sha.update(block)
                left -= len(block)
            md5s.append(md5.digest())
            shas.append(sha.digest())
    if not multipart:
        return md5s[0].hex(), base64.b64encode(shas[0]).decode()
    parts = "-{}".format(len(md5s))
    return (hashlib.md5(b"".join(md5s)).hexdigest() + parts,
            base64.b64encode(hashlib.sha256(b"".join(shas)).digest()).decode() + parts)


def kms_key_matches(there: Optional[str], wanted: str) -> bool:
    """Whether S3's SSEKMSKeyId (a key ARN) is the key ``wanted`` names (ID or ARN; an alias: any KMS key)."""
    if not there:
        return False
    if "alias/" in wanted:
        return True  # only KMS can say which key an alias names: any KMS key counts
    return there == wanted or there.endswith("/" + wanted)


def compare(s3, bucket: str, item: Item, etag: str, part_size: int = PART_SIZE, kms_key: Optional[str] = None) -> str:
    """Whether the object there, of the item's size, holds its content: same, changed or unknown (no checksum);
    with ``kms_key``, unencrypted when it holds it but not under that key (it is sent again, encrypted)."""
    local_etag, local_sha = checksums(item, part_size)
    if etag == local_etag and not kms_key:
        return "same"
    import botocore.exceptions

    # Not the MD5: changed, or an ETag that is no MD5 (SSE-KMS, SSE-C); the checksum tells which.
    try:
        head = s3.head_object(Bucket=bucket, Key=item.key, ChecksumMode="ENABLED")
        remote_sha = head.get("ChecksumSHA256")
    except botocore.exceptions.ClientError as err:
        # A write-only role may not read objects back: sending again is the safe answer.
        if err.response.get("Error", {}).get("Code", "") in ("403", "AccessDenied"):
            return "unknown"
        raise
    if kms_key and not (head.get("ServerSideEncryption") == "aws:kms" and kms_key_matches(head.get("SSEKMSKeyId"), kms_key)):
        return "unencrypted"
    if etag == local_etag:
        return "same"
    if remote_sha is None:
        return "unknown"
    # Compared without the "-<parts>" S3 appends to a composite (moto's HEAD leaves it out): the parts'
    # digests are what is hashed, so another part count already gives another digest.
    return "same" if remote_sha.split("-")[0] == local_sha.split("-")[0] else "changed"


def _keys(items: List[Item]) -> str:
    return ", ".join(i.key for i in items[:3]) + (", ..." if len(items) > 3 else "")


def _client(bucket: str, prefix: str, region: Optional[str], concurrency: int) -> Tuple[Any, Dict[str, Tuple[int, str]]]:
    """An S3 client and what is under ``prefix`` already; DataError saying why the bucket cannot be used."""
    import boto3.session
    import botocore.config
    import botocore.exceptions

    cfg = botocore.config.Config(max_pool_connections=concurrency, retries={"max_attempts": 5, "mode": "standard"})
    # A fresh session: credentials are looked up now, not cached from an earlier call.
    s3 = boto3.session.Session(region_name=region).client("s3", config=cfg)
    try:
        s3.head_bucket(Bucket=bucket)
        return s3, existing(s3, bucket, prefix)
    except botocore.exceptions.NoCredentialsError:
        raise DataError("no AWS credentials: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY") from None
    except botocore.exceptions.ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchBucket"):
            raise DataError("bucket {} does not exist (region {}); create it or set BUCKET".format(
                bucket, region or s3.meta.region_name)) from None
        if code in ("403", "AccessDenied"):
            raise DataError("access denied to bucket {}: check your credentials and its policy".format(bucket)) from None
        raise DataError("bucket {}: {}".format(bucket, err)) from None
    except botocore.exceptions.EndpointConnectionError as err:
        raise DataError("cannot reach S3: {}".format(err)) from None


def _resend(s3: Any, bucket: str, same_size: List[Item], there: Dict[str, Tuple[int, str]], part_size: int,
            kms_key: Optional[str], concurrency: int, say: Callable[[str], None]) -> List[Item]:
    """Of the objects there with the local size, those to send again (changed, unknown or unencrypted)."""
    import botocore.exceptions

    say("upload: {} objects of the same size there: comparing checksums".format(len(same_size)))
    try:
        with ThreadPoolExecutor(concurrency) as pool:
            verdicts = list(pool.map(lambda i: compare(s3, bucket, i, there[i.key][1], part_size, kms_key), same_size))
    except botocore.exceptions.ClientError as err:
        raise DataError("bucket {}: {}".format(bucket, err)) from None
    changed = [i for i, v in zip(same_size, verdicts) if v == "changed"]
    unknown = [i for i, v in zip(same_size, verdicts) if v == "unknown"]
    unencrypted = [i for i, v in zip(same_size, verdicts) if v == "unencrypted"]
    if changed:
        say("upload: {} of the same size but another checksum, sent again: {}".format(len(changed), _keys(changed)))
    if unknown:
        say("upload: {} of the same size with no checksum to compare (ETag not their MD5, no readable "
            "ChecksumSHA256), sent again: {}".format(len(unknown), _keys(unknown)))
    if unencrypted:
        say("upload: {} not encrypted with KMS_KEY {}, sent again with it: {}".format(
            len(unencrypted), kms_key, _keys(unencrypted)))
    return changed + unknown + unencrypted


def _send(s3: Any, bucket: str, todo: List[Item], part_size: int, kms_key: Optional[str], concurrency: int,
          say: Callable[[str], None]) -> int:
    """Uploads ``todo``; the number sent, or DataError naming the first failure (a rerun resumes)."""
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    config = TransferConfig(max_concurrency=concurrency, use_threads=True, multipart_threshold=part_size,
                            multipart_chunksize=part_size)
    extra = {"ChecksumAlgorithm": "SHA256"}
    if kms_key:
        extra.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=kms_key)
    failures: List[str] = []
    done = 0
    with create_transfer_manager(s3, config) as tm:
        futures = [(i, tm.upload(io.BytesIO(i.body) if i.body is not None else i.path, bucket, i.key,
                                 extra_args=extra)) for i in todo]
        for n, (item, fut) in enumerate(futures, 1):
            try:
                fut.result()
                done += 1
            except Exception as err:  # noqa: BLE001 - collect all, report once, rerun resumes
                failures.append("{}: {}".format(item.key, err))
            if n % 500 == 0 or n == len(futures):
                say("upload: {}/{} sent".format(n, len(futures)))
    if failures:
        raise DataError("{} uploads failed (rerun to resume), first: {}".format(len(failures), failures[0]))
    return done


def upload(data_dir: str, bucket: str, prefix: str, region: Optional[str] = None, dry_run: bool = False,
           concurrency: int = 16, part_size: int = PART_SIZE, kms_key: Optional[str] = None,
           say: Callable[[str], None] = quiet) -> Dict[str, int]:
    """Sends what is not there yet; ``say`` gets the progress lines. Returns files, uploaded and skipped."""
    items = plan(data_dir, bucket, prefix)
    total = sum(i.size for i in items)
    if dry_run:
        for i in items[:5]:
            say("would upload {} -> s3://{}/{}".format(i.path, bucket, i.key))
        say("dry run: {} files, {:.1f} MB to s3://{}/{}{} (nothing called)".format(
            len(items), total / 1e6, bucket, prefix.strip("/"),
            ", SSE-KMS with key {}".format(kms_key) if kms_key else ""))
        return {"files": len(items), "uploaded": 0, "skipped": 0}
    s3, there = _client(bucket, prefix, region, concurrency)
    todo = [i for i in items if i.key not in there or there[i.key][0] != i.size]
    same_size = [i for i in items if i.key in there and there[i.key][0] == i.size]
    if same_size:
        todo += _resend(s3, bucket, same_size, there, part_size, kms_key, concurrency, say)
    skipped = len(items) - len(todo)
    say("upload: {} files to s3://{}/{}: {} already there, {} to send ({:.1f} MB)".format(
        len(items), bucket, prefix.strip("/"), skipped, len(todo), sum(i.size for i in todo) / 1e6))
    done = _send(s3, bucket, todo, part_size, kms_key, concurrency, say)
    return {"files": len(items), "uploaded": done, "skipped": skipped}
