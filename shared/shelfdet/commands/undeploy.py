"""``make undeploy``: delete the endpoint, endpoint config and model that ``make deploy`` created."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from shelfdet.commands import launching
from shelfdet.launch import deploy, undeploy


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shelfdet undeploy", description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", help="endpoint name (default: the newest one deploy recorded for REGION)")
    p.add_argument("--record-dir", default=deploy.RECORD_DIR)
    p.add_argument("--force", action="store_true", help="also delete an endpoint deploy did not create")
    launching.add_common(p, stack=False)
    return p


def _main(argv: List[str]) -> int:
    args = parser().parse_args(argv)
    cloud = launching.cloud(args)
    undeploy.remove(cloud, undeploy.plan(undeploy.UndeployOptions.of(args), cloud), args.record_dir)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    return launching.run(_main, sys.argv[1:] if argv is None else argv)
