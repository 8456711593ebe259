"""``sm-train``: the SageMaker training entrypoint (the image runs it; ``make train`` runs the same
program locally).

Reads the job from /opt/ml (or ``--ml-root``), trains with periodic
checkpoints (a restarted spot job resumes), and on global rank 0 writes the
model folder: weights, resolved config, class names, metrics, plots and
``artefacts.json``. Any error ends in one line on stderr, the same line in
``output/failure``, and a non-zero exit.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from shelfdet.training import entry


def report_line(line: str) -> None:
    print(line, file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="shelfdet sm-train", description=__doc__)
    ap.add_argument("--ml-root", default=None, help="folder shaped like /opt/ml (default: /opt/ml)")
    args, _ = ap.parse_known_args(argv)  # SageMaker may append "train"
    return entry.run(args.ml_root, report_line)
