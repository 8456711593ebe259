"""SRC (a folder, the .tar.gz, or its http(s)/s3 URL) -> an extracted ``SKU110K_fixed`` folder.

Downloads stream to ``<name>.part`` and resume with a Range request, so an
interrupted 13 GB download continues where it stopped. Progress lines go to a ``say`` callback.
"""
from __future__ import annotations

import os
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Iterator, Optional, Tuple

from shelfdet.core import safepath
from shelfdet.data import ROOT_NAME, DataError

CHUNK = 1 << 20
DONE = ".shelfdet-extracted"


def _quiet(line: str) -> None:
    """The default ``say``: the library prints nothing; ``make data`` passes a writer to stderr."""


def is_url(src: str) -> bool:
    return src.startswith(("http://", "https://", "s3://"))


def _is_root(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "images")) and os.path.isdir(os.path.join(path, "annotations"))


def find_root(path: str) -> Optional[str]:
    """The folder holding images/ and annotations/: ``path`` itself or a SKU110K_fixed below it."""
    if _is_root(path):
        return path
    for dirpath, dirnames, _ in os.walk(path):
        if os.path.basename(dirpath) == ROOT_NAME and _is_root(dirpath):
            return dirpath
        if dirpath.count(os.sep) - path.count(os.sep) >= 2:
            dirnames[:] = []
    return None


class _Progress:
    def __init__(self, what: str, total: Optional[int], done: int, say: Callable[[str], None]):
        self.what, self.total, self.done, self.say = what, total, done, say
        self.t0 = self.last = time.time()
        self.start = done

    def add(self, n: int) -> None:
        self.done += n
        now = time.time()
        if now - self.last >= 5 or (self.total and self.done >= self.total):
            self.last = now
            rate = (self.done - self.start) / max(now - self.t0, 1e-6) / 1e6
            pct = " {:5.1f}%".format(100.0 * self.done / self.total) if self.total else ""
            self.say("download {}:{} {:.0f} MB, {:.1f} MB/s".format(self.what, pct, self.done / 1e6, rate))


def _http_stream(url: str, offset: int) -> Tuple[Iterator[bytes], Optional[int], bool]:
    """(chunks, total size, whether the server resumed at offset)."""
    req = urllib.request.Request(url, headers={"Range": "bytes={}-".format(offset)} if offset else {})
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing after offset: the file is complete
            return iter(()), offset, True
        raise DataError("SRC {}: HTTP {} {}".format(url, err.code, err.reason)) from None
    except (urllib.error.URLError, OSError) as err:
        raise DataError("SRC {}: cannot connect ({})".format(url, getattr(err, "reason", err))) from None
    resumed = resp.status == 206
    length = resp.headers.get("Content-Length")
    total = int(length) + (offset if resumed else 0) if length else None
    return iter(lambda: resp.read(CHUNK), b""), total, resumed


def _s3_stream(url: str, offset: int) -> Tuple[Iterator[bytes], Optional[int], bool]:
    import boto3.session
    import botocore.exceptions

    parsed = urllib.parse.urlparse(url)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    s3 = boto3.session.Session().client("s3")
    try:
        total = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
        if offset >= total:
            return iter(()), total, True
        body = s3.get_object(Bucket=bucket, Key=key, Range="bytes={}-".format(offset))["Body"]
    except botocore.exceptions.NoCredentialsError:
        raise DataError("SRC {}: no AWS credentials (set AWS_PROFILE or AWS_ACCESS_KEY_ID)".format(url)) from None
    except botocore.exceptions.ClientError as err:
        raise DataError("SRC {}: {}".format(url, err.response.get("Error", {}).get("Message") or err)) from None
    return iter(lambda: body.read(CHUNK), b""), total, True


def download(url: str, dest_dir: str, say: Callable[[str], None] = _quiet) -> str:
    name = os.path.basename(urllib.parse.urlparse(url).path) or "download"
    try:
        dest = safepath.inside(dest_dir, name)
        safepath.check(name + ".part")
    except safepath.UnsafeName as err:
        raise DataError("SRC {}: its file name {}".format(url, err)) from None
    if os.path.isfile(dest):
        return dest
    os.makedirs(dest_dir, exist_ok=True)
    part = dest + ".part"
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    opener: Callable[[str, int], Tuple[Iterator[bytes], Optional[int], bool]] = \
        _s3_stream if url.startswith("s3://") else _http_stream
    chunks, total, resumed = opener(url, offset)
    if not resumed:
        offset = 0
    if offset:
        say("download {}: resuming at {:.0f} MB".format(name, offset / 1e6))
    progress = _Progress(name, total, offset, say)
    with open(part, "ab" if offset else "wb") as f:
        for chunk in chunks:
            f.write(chunk)
            progress.add(len(chunk))
    size = os.path.getsize(part)
    if total is not None and size != total:
        raise DataError("SRC {}: download stopped at {} of {} bytes; run again to resume".format(url, size, total))
    os.replace(part, dest)
    return dest


def extract(tarball: str, dest_dir: str, say: Callable[[str], None] = _quiet) -> str:
    stamp = "{} {}".format(os.path.getsize(tarball), int(os.path.getmtime(tarball)))
    marker = os.path.join(dest_dir, DONE)
    if os.path.isfile(marker) and open(marker).read() == stamp:
        root = find_root(dest_dir)
        if root:
            return root
    os.makedirs(dest_dir, exist_ok=True)
    say("extracting {} into {}".format(tarball, dest_dir))
    try:
        with tarfile.open(tarball, "r:*") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest_dir, filter="data")
            else:  # Python < 3.8.17: refuse what the data filter would
                for m in tar.getmembers():
                    if m.name.startswith("/") or ".." in m.name.split("/") or not (m.isfile() or m.isdir()):
                        raise DataError("{}: unsafe member {!r}".format(tarball, m.name))
                tar.extractall(dest_dir)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError("SRC {}: cannot extract ({})".format(tarball, err)) from None
    root = find_root(dest_dir)
    if not root:
        raise DataError("SRC {}: no {}/images and annotations inside".format(tarball, ROOT_NAME))
    with open(marker, "w") as f:
        f.write(stamp)
    return root


def resolve(src: str, work_dir: str, say: Callable[[str], None] = _quiet) -> str:
    """Returns the SKU110K_fixed folder for SRC, downloading and extracting into work_dir as needed."""
    if is_url(src):
        src = download(src, os.path.join(work_dir, "download"), say)
    if os.path.isdir(src):
        root = find_root(src)
        if not root:
            raise DataError("SRC {}: not a {} folder (needs images/ and annotations/)".format(src, ROOT_NAME))
        return root
    if os.path.isfile(src):
        if not tarfile.is_tarfile(src):
            raise DataError("SRC {}: not a folder, a .tar.gz or an http(s)/s3 URL".format(src))
        return extract(src, os.path.join(work_dir, "extracted"), say)
    raise DataError("SRC {}: no such file or folder".format(src))
