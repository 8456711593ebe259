"""``make weights``: the model zoo's checkpoints into S3, for jobs without network (NETWORK_ISOLATION=1)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from shelfdet.commands import launching
from shelfdet.core import hyperparameters
from shelfdet.launch import weights
from shelfdet.launch.aws import note


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shelfdet weights", description=weights.__doc__.splitlines()[0])
    p.add_argument("--algo", nargs="+", default=["faster_rcnn"], choices=hyperparameters.ALGORITHMS)
    p.add_argument("--weights-prefix", default=weights.DEFAULT_PREFIX, help="S3 prefix the checkpoints go under")
    p.add_argument("--cache", default=weights.CACHE, help="where downloads are kept")
    launching.add_common(p, stack=False)
    return p


def _main(argv: List[str]) -> int:
    own, hp_argv = launching.split_hp(argv)
    args = parser().parse_args(own)
    cloud = launching.cloud(args)
    prefix = weights.upload(cloud, args.algo, hp_argv, args.bucket, args.weights_prefix, args.cache, args.kms_key)
    print("PRETRAINED={}".format(prefix))
    note("pass it with NETWORK_ISOLATION=1: make train INSTANCE_TYPE=... NETWORK_ISOLATION=1 PRETRAINED={}".format(prefix))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return launching.run(_main, sys.argv[1:] if argv is None else argv)
