"""``python -m shelfdet visualize``: PNGs of ground-truth (and predicted) boxes, drawn by Detectron2.

Dense scenes have ~150 boxes per photo: boxes are drawn without labels.
Ground truth alone is green. With predictions, the picture shows errors at a
score threshold: matched predictions (true positives) green, false positives
red, missed ground truth (false negatives) blue, with the counts in the title.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from shelfdet.core.visualize import DEFAULT_SCORE_THRESHOLD, default_score_threshold, picture


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shelfdet visualize", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--channel", default="validation")
    p.add_argument("-n", type=int, default=4, help="number of photos")
    p.add_argument("--predictions", help="folder of prediction JSON files (the serving answer) named <image>.json or <image>.out")
    p.add_argument("--score-threshold", "--min-score", dest="score_threshold", type=float, default=None,
                   help="predictions scoring below are not drawn nor matched (default: count_threshold of "
                        "PREDICTIONS/metrics.json as make evaluate writes it, else {})".format(DEFAULT_SCORE_THRESHOLD))
    p.add_argument("--label", default="sku")
    p.add_argument("--out", help="PNG folder (default DATA_DIR/visualize/<channel>)")
    return p


def warn(message: str) -> None:
    print(message, file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    from shelfdet.core.catalog import ManifestError, load_manifest

    manifest = os.path.join(args.data_dir, "annotations", args.channel + ".manifest")
    photo_dir = os.path.join(args.data_dir, args.channel)
    out_dir = args.out or os.path.join(args.data_dir, "visualize", args.channel)
    try:
        dicts, _ = load_manifest(manifest, photo_dir, args.label)
    except ManifestError as err:
        print("error: {} (run `make data` first?)".format(err), file=sys.stderr)
        return 2
    if args.predictions and not os.path.isdir(args.predictions):
        print("error: --predictions {}: no such folder".format(args.predictions), file=sys.stderr)
        return 2
    score_threshold = args.score_threshold
    if args.predictions and score_threshold is None:
        score_threshold, origin = default_score_threshold(args.predictions)
        print("score threshold {:.4f} ({})".format(score_threshold, origin))
    written = []
    for d in dicts[:max(0, args.n)]:
        try:
            out, shows = picture(d, out_dir, args.predictions, score_threshold, warn)
        except ValueError as err:
            print("error: {}".format(err), file=sys.stderr)
            return 2
        written.append(out)
        print("{}: {}".format(out, shows))
    print("visualize: {} PNGs in {}".format(len(written), out_dir))
    return 0
