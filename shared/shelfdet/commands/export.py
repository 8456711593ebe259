"""``python -m shelfdet export --model-dir DIR [--format openvino|onnx|torchscript]``: the model as a graph that
serving runs without torch or Detectron2 (``MODEL_DIR/export/<format>/``, graph and record.json).

The export is checked against the eager model before it is kept: on up to
``--check-photos`` photos of ``--photos`` (default: the data folder's test
split) and on the traced example, 99% of the eager boxes must come back
(IoU >= 0.9, score within 0.01).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import List, Optional

from shelfdet.core import exported, photos

CHECK_PHOTOS = 4  # the same as training's export= (core.export.CHECK_PHOTOS), without importing torch for --help


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="shelfdet export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True, help="a model folder written by training (artefacts.json)")
    ap.add_argument("--format", default="openvino", choices=exported.FORMATS,
                    help="openvino (default: the fastest on CPUs), onnx, or torchscript")
    ap.add_argument("--photos", default="data/test",
                    help="a folder of photos to check the export on (default: data/test; none there: the example only)")
    ap.add_argument("--check-photos", type=int, default=CHECK_PHOTOS, help="how many of them (default: 4)")
    return ap.parse_args(argv)


def check_photos(folder: str, count: int) -> list:
    """Up to ``count`` photos of ``folder`` that decode (a damaged one is skipped: it checks nothing)."""
    found = []
    for path in sorted(glob.glob(os.path.join(glob.escape(folder), "*"))):
        if len(found) >= count:
            break
        if os.path.splitext(path)[1].lower() not in (".jpg", ".jpeg", ".png"):
            continue
        try:
            found.append(photos.read(path))
        except photos.ImageDecodeError as err:
            print("export: skipped {} for the check: {}".format(path, err), file=sys.stderr)
    return found


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from shelfdet.core import export

    pictures = check_photos(args.photos, args.check_photos) if os.path.isdir(args.photos) else []
    print("export: {} of {} ({} check photos)...".format(args.format, args.model_dir, len(pictures)), file=sys.stderr)
    try:
        folder, agreement = export.export(args.model_dir, args.format, pictures)
    except export.ExportError as err:
        print("error: {}".format(err), file=sys.stderr)
        return 2
    print("export: {} of the eager boxes found again; wrote {}".format(
        "{:.1%}".format(agreement) if agreement is not None else "none (no boxes to compare)", folder), file=sys.stderr)
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
