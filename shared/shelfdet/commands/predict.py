"""``make predict IMAGE=f [MODEL_DIR=d | ENDPOINT=name]``: one photo -> JSON + PNG with boxes.

Outputs are named after the whole photo file name (``shelf.jpg`` ->
``shelf.jpg.json``, ``shelf.jpg.png``), like batch transform's
``shelf.jpg.out``: ``make evaluate`` matches predictions to the manifest by
photo file name, and an output never overwrites its input.

With ENDPOINT, IMAGE may also be a folder. A real-time endpoint takes a photo of
at most 6 MB, a serverless one 4 MB (RESIZE: sent at the model's test scale,
boxes scaled back); an asynchronous one gets each photo through S3, beside its results, and the
outputs are written as each result arrives.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from shelfdet.core import photos
from shelfdet.serving.predict import Outputs, PredictError, predict_file


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="shelfdet predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", required=True, help="photo file (JPEG, PNG, ...); with an endpoint, also a folder of them")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model-dir", default=None, help="local model folder (artefacts.json)")
    src.add_argument("--endpoint", default=None, help="SageMaker endpoint name")
    ap.add_argument("--region", default=None, help="AWS region of the endpoint")
    ap.add_argument("--out", default="predictions", help="output folder (default: predictions/)")
    ap.add_argument("--score-threshold", default=None, help="only boxes scoring at least this")
    ap.add_argument("--max-detections", default=None, help="at most this many boxes")
    ap.add_argument("--score", type=float, default=None,
                    help="the PNG draws boxes scoring at least this (default: the model's count_threshold from "
                         "its metrics.json, else 0.5); the JSON keeps every box")
    ap.add_argument("--device", default=None, help="cpu | cuda for a local model (default: cuda when available)")
    ap.add_argument("--infer", default="", help="a local model's inference hyperparameters over its own, e.g. "
                    "'--tile-size 512 --nms soft' (an endpoint has its SHELFDET_INFER)")
    ap.add_argument("--resize", action="store_true",
                    help="endpoint: send each photo re-encoded at the model's test scale (boxes scaled back)")
    ap.add_argument("--test-size", default=None, metavar="MIN/MAX|MODEL_DIR",
                    help="--resize: the endpoint model's test size, e.g. 800/1333, or the model folder it was made from")
    ap.add_argument("--timeout", type=float, default=3600.0,
                    help="asynchronous endpoint: seconds to wait for the results (default: an hour, its longest request)")
    return ap.parse_args(argv)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def say(message: str) -> None:
    print(message)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        paths = run(args)
    except (PredictError, photos.ImageDecodeError) as err:
        print("error: {}".format(err), file=sys.stderr)
        return 2
    print("\n".join(paths))
    return 0


def run(args: argparse.Namespace) -> List[str]:
    if not args.image:
        raise PredictError("no image: pass IMAGE=<file>")
    outputs = Outputs(args.out, args.score, args.model_dir, args.endpoint)
    if args.endpoint:
        from shelfdet.launch import endpoint

        if args.infer:
            raise PredictError("INFER applies to a local model; an endpoint runs with its SHELFDET_INFER "
                               "(make deploy INFER=...)")
        request = endpoint.Request(args.endpoint, args.region, args.score_threshold, args.max_detections,
                                   args.resize, args.test_size, args.timeout)
        return endpoint.predict_photos(args.image, request, outputs, endpoint.Reporter(say, progress))
    if args.resize and os.path.isfile(args.image) and args.model_dir:
        raise PredictError("RESIZE applies to an endpoint (ENDPOINT=); a local model resizes the photo itself")
    return predict_file(args.image, args.model_dir, outputs, args.score_threshold, args.max_detections, args.device,
                        args.infer, say)
