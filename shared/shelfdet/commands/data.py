"""``python -m shelfdet data``: build DATA_DIR from SRC, or from a generated synthetic SKU-110K.

Cheap to call again: when DATA_DIR/report.json was made from the same source
and options, it says so and stops (``make train`` calls it every time).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from shelfdet.data import CHANNELS, DEFAULT_LABEL, REPORT, DataError, build, synthetic


def _size(text: str) -> Tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError("expected WIDTHxHEIGHT, e.g. 320x256, got {!r}".format(text)) from None
    if w < 64 or h < 64:
        raise argparse.ArgumentTypeError("image size {}x{} is too small (64x64 at least)".format(w, h))
    return w, h


def _max_side(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 64:
        raise argparse.ArgumentTypeError("expected a longer side in pixels (64 at least), got {!r}".format(text))
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shelfdet data", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", required=True, help="output folder (channels, annotations/, report.json)")
    p.add_argument("--src", help="SKU110K_fixed folder, SKU110K_fixed.tar.gz, or its http(s)/s3 URL; "
                                 "omitted: generate the synthetic set into DATA_DIR/source")
    p.add_argument("--format", choices=build.SOURCE_FORMATS, default="sku110k",
                   help="labels in SRC: sku110k (its CSVs, the default), coco, voc, yolo or gt (Ground Truth output "
                        "manifests); see docs/own-data.md")
    p.add_argument("--bucket", help="manifest source-refs point at s3://BUCKET/PREFIX/<channel>/<image>")
    p.add_argument("--prefix", default="detectron2/data")
    p.add_argument("--label", default=DEFAULT_LABEL, help="label attribute name in the manifests")
    p.add_argument("--max-side", type=_max_side, default=None,
                   help="write images resized once so their longer side is at most this (boxes scaled in the "
                        "manifests); smaller images are kept as they are. E.g. 1333, the training scale")
    p.add_argument("--preset", choices=sorted(synthetic.PRESETS), default="default",
                   help="synthetic only: default (the main job's set) or hard (SKU-110K-like: ~140 objects per "
                        "photo with a long tail, perspective, occlusion; see docs/data.md)")
    d, h = synthetic.DEFAULT_IMAGES, synthetic.HARD_IMAGES
    for split, flag in (("train", "--train-images"), ("val", "--val-images"), ("test", "--test-images")):
        p.add_argument(flag, type=int, default=None, help="synthetic only (default {}, hard {})".format(d[split], h[split]))
    p.add_argument("--image-size", type=_size, default=None,
                   help="synthetic only, WxH (default {}x{}; hard {}x{}, each photo portrait or landscape)".format(
                       *synthetic.DEFAULT_SIZE, *synthetic.HARD_SIZE))
    p.add_argument("--seed", type=int, default=synthetic.DEFAULT_SEED, help="synthetic only")
    p.add_argument("--workers", type=int, default=None, help="parallel image checks (default: CPU count)")
    p.add_argument("--force", action="store_true", help="rebuild even when report.json is current")
    return p


def request(args: argparse.Namespace) -> build.Request:
    return build.Request(
        data_dir=args.data_dir, src=args.src, format=args.format, bucket=args.bucket, prefix=args.prefix,
        label=args.label, max_side=args.max_side, preset=args.preset,
        photos={"train": args.train_images, "val": args.val_images, "test": args.test_images},
        photo_size=args.image_size, seed=args.seed, workers=args.workers, force=args.force)


def options(args: argparse.Namespace) -> Dict[str, Any]:
    """The options report.json records for these arguments."""
    return build.options(request(args))


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        report = build.build(request(args), say=print, progress=_progress)
    except DataError as err:
        print("error: {}".format(err), file=sys.stderr)
        return 2
    except OSError as err:
        print("error: {}: {}".format(getattr(err, "filename", None) or "data", err.strerror or err), file=sys.stderr)
        return 2
    if not any(report["channels"][c]["images"] for c in CHANNELS):
        print("error: no usable image in {}; see {}".format(args.src or "the synthetic set",
                                                           os.path.join(args.data_dir, REPORT)), file=sys.stderr)
        return 2
    return 0
