"""``python -m shelfdet data``: build DATA_DIR from SRC, or from a generated synthetic SKU-110K.

Cheap to call again: when DATA_DIR/report.json was made from the same source
and options, it says so and stops (``make train`` calls it every time).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

from shelfdet.data import CHANNELS, DEFAULT_LABEL, REPORT, DataError, fetch, formats, sku110k, synthetic
from shelfdet.data.written import Written


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
    p.add_argument("--format", choices=("sku110k",) + formats.FORMATS, default="sku110k",
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


def _csv_stamp(root: str, fmt: str = "sku110k") -> List[List[Any]]:
    if fmt != "sku110k":
        return formats.stamp(root, fmt)
    return [[os.path.basename(c), os.path.getsize(c), int(os.path.getmtime(c))] for c in sku110k.find_csvs(root)]


def _synthetic(args: argparse.Namespace) -> Tuple[Dict[str, int], Tuple[int, int]]:
    """Split sizes and image size: the ones given, else the preset's."""
    preset = synthetic.PRESETS[args.preset]
    given = {"train": args.train_images, "val": args.val_images, "test": args.test_images}
    return ({k: preset["images"][k] if v is None else v for k, v in given.items()},
            tuple(args.image_size or preset["size"]))  # type: ignore[return-value]


def options(args: argparse.Namespace) -> Dict[str, Any]:
    opts: Dict[str, Any] = {"bucket": args.bucket, "prefix": args.prefix if args.bucket else None,
                            "label": args.label}
    if args.max_side:  # only when given: data folders built before the option stay current
        opts["max_side"] = args.max_side
    if args.format != "sku110k":  # only then: data folders built before formats stay current
        opts["format"] = args.format
    if args.src:
        opts["src"] = args.src if fetch.is_url(args.src) else os.path.abspath(args.src)
    else:
        opts["src"] = "synthetic"
        counts, size = _synthetic(args)
        opts["synthetic"] = {"version": synthetic.VERSION, "seed": args.seed, "image_size": list(size),
                             "images": counts}
        if args.preset != "default":  # only then: data folders built before presets stay current
            opts["synthetic"]["preset"] = args.preset
            opts["synthetic"]["preset_version"] = synthetic.PRESETS[args.preset]["version"]
    return opts


def up_to_date(data_dir: str, opts: Dict[str, Any]) -> bool:
    try:
        with open(os.path.join(data_dir, REPORT)) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return False
    if report.get("options") != opts:
        return False
    if opts["src"] != "synthetic" and not fetch.is_url(opts["src"]):
        # A local source edited in place must be converted again.
        root = report.get("source")
        try:
            if not root or not os.path.isdir(root) or _csv_stamp(root, opts.get("format", "sku110k")) != report.get("source_stamp"):
                return False
        except DataError:
            return False
    return all(os.path.isfile(os.path.join(data_dir, "annotations", c + ".manifest"))
               for c, v in report.get("channels", {}).items() if v.get("images"))


def check_apart(data_dir: str, src: Optional[str], fmt: str = "sku110k") -> None:
    """DataError when DATA_DIR is SRC, lies inside it or holds it: make data would write among the source's
    files. For a SKU-110K SRC the folder compared is the SKU110K_fixed one read (SRC may be its parent)."""
    if not src or fetch.is_url(src):
        return
    root = (fetch.find_root(src) or src) if fmt == "sku110k" and os.path.isdir(src) else src
    data, source = os.path.realpath(data_dir), os.path.realpath(root)
    if data == source:
        relation = "is"
    elif data.startswith(source.rstrip(os.sep) + os.sep):
        relation = "lies inside"
    elif source.startswith(data.rstrip(os.sep) + os.sep):
        relation = "holds"
    else:
        return
    raise DataError("DATA_DIR={} {} SRC={}: make data writes its channels, manifests and report there; pick a "
                    "DATA_DIR apart from SRC".format(data_dir, relation, src))


def build(args: argparse.Namespace) -> Dict[str, Any]:
    data_dir = args.data_dir
    check_apart(data_dir, args.src, args.format)
    opts = options(args)
    if not args.force and up_to_date(data_dir, opts):
        print("data: {} is up to date ({}); --force rebuilds".format(data_dir, opts["src"]))
        with open(os.path.join(data_dir, REPORT)) as f:
            return json.load(f)
    written = Written(data_dir)
    work = os.path.join(data_dir, "source")
    if args.format != "sku110k":
        if not args.src:
            raise DataError("FORMAT={} needs SRC=<folder> with the labels and images".format(args.format))
        if fetch.is_url(args.src):
            raise DataError("FORMAT={} reads a local folder; SRC={} is a URL (download and unpack it first)".format(
                args.format, args.src))
        root = args.src
        return formats.convert(root, args.format, data_dir, bucket=args.bucket, prefix=args.prefix, label=args.label,
                               workers=args.workers, extra={"options": opts},
                               max_side=args.max_side, written=written)
    if args.src:
        # A download and an extraction each get a folder of their own under source/.
        if fetch.is_url(args.src):
            written.claim_tree("source/download")
        if fetch.is_url(args.src) or os.path.isfile(args.src):
            written.claim_tree("source/extracted")
        written.begin()
        root = fetch.resolve(args.src, work)
    else:
        counts, size = _synthetic(args)
        for n in counts.values():
            if n < 1:
                raise DataError("--train/--val/--test-images must be at least 1, got {}".format(n))
        # Regenerate from scratch: a smaller set must not inherit the old set's extra images.
        tree = "source/{}/".format(synthetic.ROOT_NAME)
        written.claim_tree(tree)
        written.begin()
        written.remove(tree)
        gen = synthetic.generate(work, counts, size, args.seed, preset=args.preset)
        root = gen.root
        print("data: generated synthetic SKU-110K ({}{} images, {}x{}, seed {}) in {}".format(
            "" if args.preset == "default" else "preset {}, ".format(args.preset),
            len(gen.boxes), size[0], size[1], args.seed, root))
    extra = {"options": opts, "source_stamp": _csv_stamp(root)}
    return sku110k.convert(root, data_dir, bucket=args.bucket, prefix=args.prefix, label=args.label,
                           workers=args.workers, extra=extra, max_side=args.max_side, written=written)


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        report = build(args)
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
