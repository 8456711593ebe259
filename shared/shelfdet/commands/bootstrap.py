"""``make bootstrap``: what an administrator creates once, so that day-to-day use needs no IAM writes."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from shelfdet.commands import launching
from shelfdet.launch import bootstrap, image_names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shelfdet bootstrap", description=__doc__.splitlines()[0])
    p.add_argument("--project", default=image_names.PROJECT, help="CodeBuild project whose logs the role writes (default: %(default)s)")
    launching.add_common(p, stack=False)
    return p


def _main(argv: List[str]) -> int:
    args = parser().parse_args(argv)
    cloud = launching.cloud(args)
    arn = bootstrap.bootstrap(cloud, args.bucket, args.prefix, args.project)
    if not cloud.dry_run:
        launching.say(arn)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return launching.run(_main, sys.argv[1:] if argv is None else argv)
