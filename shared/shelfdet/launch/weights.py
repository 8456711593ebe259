"""``make weights BUCKET=b [ALGO=...]``: the model zoo's checkpoints in S3, for jobs that cannot download.

A job with NETWORK_ISOLATION=1 has no network, so ``weights=zoo`` cannot be
fetched from the zoo's host. This downloads the checkpoint each algorithm's
``weights=zoo`` starts from (once, into ~/.cache/shelfdet/weights), checks it
against the md5 prefix the zoo puts in its file names (MODEL_ZOO.md: "any model
on this page contains its md5 prefix in its file name"; the ImageNet backbones
have none, so only their size is checked), uploads it to
``s3://BUCKET/detectron2/weights/<its path on the zoo's host>`` and prints the
``PRETRAINED=`` to pass to ``make train``. The container reads ``weights=zoo``
from that channel (``config.pretrained_file``).
"""
from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from typing import List, Optional, Tuple

from shelfdet.core import compat, hyperparameters
from shelfdet.launch import aws
from shelfdet.launch.aws import LaunchError, note, s3_uri, split_s3

DEFAULT_PREFIX = "detectron2/weights"
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "shelfdet", "weights")
# A mirror of the zoo's host (an internal artifact store, or a test server): same paths below it.
MIRROR_VARIABLE = "SHELFDET_ZOO_MIRROR"
MD5_IN_NAME = re.compile(r"_([0-9a-f]{6})\.pkl$")


def needed(algos: List[str], hp_argv: List[str]) -> List[str]:
    """The zoo URL each algorithm's weights=zoo starts from, with HP's backbone and schedule (SageMaker defaults)."""
    compat.apply()  # the zoo's paths come from Detectron2's model_zoo, imported with the config
    from shelfdet.core.config import ConfigError, zoo_weights

    urls = []
    for algo in algos:
        values = hyperparameters.parse({**{k.replace("_", "-"): v for k, v in hyperparameters.parse_cli(hp_argv).items()},
                                        "model-type": algo})
        try:
            url = zoo_weights(algo, values.backbone, values.lr_schedule)
        except ConfigError as err:
            raise LaunchError(str(err)) from None
        if url not in urls:
            urls.append(url)
    return urls


def source(url: str) -> Tuple[str, str]:
    """(the path below the zoo's host, the URL to download it from)."""
    compat.apply()  # the zoo's paths come from Detectron2's model_zoo, imported with the config
    from shelfdet.core.config import ZOO_HOST, zoo_key

    key = zoo_key(url)
    return key, os.environ.get(MIRROR_VARIABLE, ZOO_HOST).rstrip("/") + "/" + key


def download(url: str, path: str) -> None:
    """To ``path`` through a ``.part`` file, so an interrupted download is never taken for a whole one."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    part = path + ".part"
    total = done = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            shown = -1
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                done += len(chunk)
                if total and 10 * done // total != shown:
                    shown = 10 * done // total
                    note("  {} {:.0f} of {:.0f} MB".format(os.path.basename(path), done / 1e6, total / 1e6))
    except OSError as err:
        if os.path.exists(part):
            os.unlink(part)
        why = "HTTP {} {}".format(err.code, err.reason) if isinstance(err, urllib.error.HTTPError) else getattr(err, "reason", err)
        raise LaunchError("cannot download {}: {}".format(url, why)) from None
    if total and done != total:
        os.unlink(part)
        raise LaunchError("{}: got {} of {} bytes; run `make weights` again".format(url, done, total))
    os.replace(part, path)


def verify(path: str) -> str:
    """The md5 check the zoo's file names allow; what was checked, for the log. A mismatch deletes the file."""
    m = MD5_IN_NAME.search(os.path.basename(path))
    if not m:
        return "no md5 in its name (ImageNet backbone): size only"
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(m.group(1)):
        os.unlink(path)
        raise LaunchError("{}: md5 {} does not start with {} as its name says: deleted; run `make weights` again".format(
            path, digest.hexdigest(), m.group(1)))
    return "md5 {}... as its name says".format(m.group(1))


def upload(cloud: aws.Aws, algos: List[str], hp_argv: List[str], bucket: Optional[str], weights_prefix: str,
           cache: str, kms_key: Optional[str] = None) -> str:
    """Each algorithm's zoo checkpoint, downloaded to ``cache`` and checked, into S3 unless there: their prefix."""
    urls = needed(algos, hp_argv)
    prefix = s3_uri(cloud.check_bucket(bucket), weights_prefix)
    for url in urls:
        key, fetch_from = source(url)
        path = os.path.join(cache, key)
        if not os.path.isfile(path):
            note("downloading {}".format(fetch_from))
            download(fetch_from, path)
        checked = verify(path)
        target = prefix + key
        if cloud.dry_run:
            note("# would upload {} to {}".format(path, target))
            continue
        s3 = cloud.client("s3")
        b, k = split_s3(target)
        size = os.path.getsize(path)
        try:
            present = s3.head_object(Bucket=b, Key=k).get("ContentLength") == size
        except s3.exceptions.ClientError:
            present = False
        if present:
            note("{}: already in {} ({})".format(key, target, checked))
            continue
        s3.upload_file(path, b, k, ExtraArgs=aws.sse_kms(kms_key) or None)
        note("{}: uploaded to {} ({:.0f} MB, {})".format(key, target, size / 1e6, checked))
    return prefix
