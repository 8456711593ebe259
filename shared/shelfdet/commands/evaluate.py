"""``make evaluate``: COCO-style scores (faster-coco-eval by default, pycocotools gives the same numbers)
and the per-photo count error of prediction files, or of a model folder run over a manifest's photos."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

from shelfdet.core import evaluation


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="shelfdet evaluate", description=evaluation.__doc__)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", help="folder of <image>.out / <image>.json prediction files")
    src.add_argument("--model-dir", help="a model folder (artefacts.json): run it over the manifest's images")
    ap.add_argument("--manifest", required=True, help="ground-truth augmented manifest")
    ap.add_argument("--images", default=None, help="--model-dir: image folder (default: DATA_DIR/<channel> of the manifest)")
    ap.add_argument("--infer", default="", help="--model-dir: inference hyperparameters over the model's, e.g. "
                    "'--tile-size 512 --nms soft' (hyperparameters.INFERENCE)")
    ap.add_argument("--device", default=None, help="--model-dir: cpu | cuda (default: cuda when available)")
    ap.add_argument("--out-dir", default=os.path.join("predictions", "evaluation"),
                    help="--model-dir: where the prediction files and metrics.json go")
    ap.add_argument("--label", default="sku", help="label attribute in the manifest")
    ap.add_argument("--max-dets", type=int, default=None, help="COCO maxDets (default: 300, or the model's det-per-img)")
    ap.add_argument("--evaluation-type", choices=("fast", "coco"), default="fast",
                    help="fast: faster-coco-eval (C++); coco: pycocotools (same numbers, slower)")
    ap.add_argument("--count-threshold", type=float, default=None,
                    help="score threshold for the per-image count error (default: with --model-dir, the one with "
                         "the lowest count MAE on the validation manifest beside MANIFEST; with --predictions, "
                         "the one on these same predictions, which flatters it)")
    ap.add_argument("--out", default=None, help="metrics JSON (default: <predictions or out-dir>/metrics.json)")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    from shelfdet.core.hyperparameters import HyperparameterError

    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fast = args.evaluation_type == "fast"
    try:
        ev = evaluation.gather(args.manifest, args.predictions, args.model_dir, args.images, args.infer, args.device,
                               args.out_dir, args.label, args.count_threshold, fast)
    except (ValueError, FileNotFoundError, HyperparameterError, RuntimeError) as err:
        print("error: {}".format(err), file=sys.stderr)
        return 2
    metrics, out = evaluation.score_files(ev, args.max_dets, fast, args.out)
    print(evaluation.format_metrics(metrics))
    print(evaluation.format_counts(metrics) + evaluation.COUNT_NOTES[ev.fit_on])
    print("metrics written to {}".format(out))
    return 0
