"""``make predict IMAGE=f [MODEL_DIR=d | ENDPOINT=name]``: one image -> JSON + PNG with boxes.

Outputs are named after the whole image file name (``shelf.jpg`` ->
``shelf.jpg.json``, ``shelf.jpg.png``), like batch transform's
``shelf.jpg.out``: ``make evaluate`` matches predictions to the manifest by
image file name, and an output never overwrites its input.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

from .. import imageio
from . import limits

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


class PredictError(RuntimeError):
    """A one-line, user-facing failure."""


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="shelfdet predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", required=True, help="image file (JPEG, PNG, ...)")
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
    return ap.parse_args(argv)


def predict_local(model_dir: str, image_bgr: Any, score_threshold: Optional[str], max_detections: Optional[str],
                  device: Optional[str], infer: str = "") -> Dict[str, Any]:
    from ..artefacts import ArtefactError
    from ..hyperparameters import HyperparameterError, parse_inference
    from ..inference import Detector

    try:
        detector = Detector.from_model_dir(model_dir, device, parse_inference(infer, "INFER"))
    except (ArtefactError, HyperparameterError) as err:
        raise PredictError(str(err)) from None
    try:
        thr, cap = limits.check_request_limits(score_threshold, max_detections, detector.min_score,
                                               detector.max_detections)
    except limits.LimitError as err:
        raise PredictError(str(err)) from None
    return detector.predict([image_bgr], thr, cap)[0]


def predict_endpoint(endpoint: str, region: Optional[str], data: bytes, content_type: str,
                     score_threshold: Optional[str], max_detections: Optional[str]) -> Dict[str, Any]:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    request = {"EndpointName": endpoint, "ContentType": content_type, "Accept": "application/json", "Body": data}
    attrs = ["{}={}".format(k, v) for k, v in (("score_threshold", score_threshold),
                                               ("max_detections", max_detections)) if v is not None]
    if attrs:
        # invoke_endpoint cannot pass query parameters; the app reads this header instead.
        request["CustomAttributes"] = ";".join(attrs)
    try:
        client = boto3.client("sagemaker-runtime", region_name=region)
        response = client.invoke_endpoint(**request)
        body = response["Body"].read()
    except ClientError as err:
        raise PredictError("endpoint {}: {}".format(endpoint, err.response.get("Error", {}).get("Message", err))) from None
    except BotoCoreError as err:
        raise PredictError("endpoint {}: {}".format(endpoint, err)) from None
    try:
        result = json.loads(body)
    except ValueError:
        raise PredictError("endpoint {} answered {} bytes that are not JSON: {!r}".format(
            endpoint, len(body), body[:80])) from None
    if isinstance(result, list) and len(result) == 1:
        result = result[0]
    if not isinstance(result, dict) or not all(k in result for k in ("pred_boxes", "scores", "pred_classes")):
        raise PredictError("endpoint {} answered JSON without pred_boxes/scores/pred_classes".format(endpoint))
    return result


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        paths = run(args)
    except (PredictError, imageio.ImageDecodeError) as err:
        print("error: {}".format(err), file=sys.stderr)
        return 2
    print("\n".join(paths))
    return 0


def run(args: argparse.Namespace) -> List[str]:
    if not args.image:
        raise PredictError("no image: pass IMAGE=<file>")
    if not os.path.isfile(args.image):
        raise PredictError("image not found: {}".format(args.image))
    if not args.endpoint and not args.model_dir:
        raise PredictError("no model: pass MODEL_DIR=<run>/model or ENDPOINT=<name>")
    with open(args.image, "rb") as f:
        data = f.read()
    # Decoded here in both modes: the PNG is drawn on the same pixels the server sees.
    image = imageio.decode(data, args.image)
    if args.endpoint and args.infer:
        raise PredictError("INFER applies to a local model; an endpoint runs with its SHELFDET_INFER "
                           "(make deploy INFER=...)")
    if args.endpoint:
        ctype = CONTENT_TYPES.get(os.path.splitext(args.image)[1].lower(), "application/x-image")
        pred = predict_endpoint(args.endpoint, args.region, data, ctype, args.score_threshold, args.max_detections)
    else:
        pred = predict_local(args.model_dir, image, args.score_threshold, args.max_detections, args.device, args.infer)

    from ..visualize import DEFAULT_SCORE_THRESHOLD, default_score_threshold, draw_counted

    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, os.path.basename(args.image))
    json_path, png_path = base + ".json", base + ".png"
    with open(json_path, "w") as f:
        json.dump(pred, f)
    # The picture shows what a count would count: every box down to the model's floor hides the shelf.
    if args.score is not None:
        threshold, why = args.score, "SCORE"
    elif args.model_dir:
        threshold, why = default_score_threshold(args.model_dir)
        why = "the model's count threshold" if why != "default" else why
    else:
        threshold, why = DEFAULT_SCORE_THRESHOLD, "default"
    draw_counted(image, pred["pred_boxes"], pred["scores"], png_path, threshold, os.path.basename(args.image), why)
    source = "endpoint " + args.endpoint if args.endpoint else args.model_dir
    print("{}: {} boxes ({})".format(args.image, len(pred["scores"]), source))
    return [json_path, png_path]
