"""``python -m shelfdet upload``: DATA_DIR -> s3://BUCKET/PREFIX/{training,validation,test,annotations}/.

Resumable: objects already there with the same content are skipped (see
:mod:`shelfdet.data.upload` for how content is compared).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from shelfdet.data import DataError, upload


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shelfdet upload", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--bucket", help="target bucket (required)")
    p.add_argument("--prefix", default="detectron2/data")
    p.add_argument("--region", default=None)
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded; call nothing")
    p.add_argument("--role", help="accepted for the Makefile's common AWS flags; uploads use your credentials")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--kms-key", help="KMS key (ID, ARN, alias/<name>): every object is sent with SSE-KMS under it")
    return p


def _say(line: str) -> None:
    print(line, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    if not args.bucket:
        print("error: no bucket: make upload BUCKET=<bucket> (or --bucket)", file=sys.stderr)
        return 2
    try:
        upload.upload(args.data_dir, args.bucket, args.prefix, args.region, args.dry_run, args.concurrency,
                      kms_key=args.kms_key, say=_say)
    except DataError as err:
        print("error: {}".format(err), file=sys.stderr)
        return 2
    return 0
