"""``make predict IMAGE=f [MODEL_DIR=d | ENDPOINT=name]``: one image -> JSON + PNG with boxes.

Outputs are named after the whole image file name (``shelf.jpg`` ->
``shelf.jpg.json``, ``shelf.jpg.png``), like batch transform's
``shelf.jpg.out``: ``make evaluate`` matches predictions to the manifest by
image file name, and an output never overwrites its input.

With ENDPOINT, IMAGE may also be a folder. A real-time endpoint takes a photo of
at most 6 MB (RESIZE: sent at the model's test scale, boxes scaled back); an
asynchronous one gets each photo through S3, beside its results, and the
outputs are written as each result arrives.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import time
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from shelfdet.core import photos
from shelfdet.serving import limits

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


class PredictError(RuntimeError):
    """A one-line, user-facing failure."""


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="shelfdet predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", required=True, help="image file (JPEG, PNG, ...); with an endpoint, also a folder of them")
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


def predict_local(model_dir: str, data: bytes, name: str, score_threshold: Optional[str],
                  max_detections: Optional[str], device: Optional[str], infer: str = "") -> Dict[str, Any]:
    """The image's prediction by a local model, decoded as its endpoint decodes it (``Detector.decode``)."""
    from shelfdet.core.artefacts import ArtefactError
    from shelfdet.core.checkpoint import CheckpointMismatch
    from shelfdet.core.hyperparameters import HyperparameterError, parse_inference
    from shelfdet.core.inference import Detector

    try:
        detector = Detector.from_model_dir(model_dir, device, parse_inference(infer, "INFER"))
    except (ArtefactError, CheckpointMismatch, HyperparameterError) as err:
        raise PredictError(str(err)) from None
    try:
        thr, cap = limits.check_request_limits(score_threshold, max_detections, detector.min_score,
                                               detector.max_detections)
    except limits.LimitError as err:
        raise PredictError(str(err)) from None
    return detector.predict([detector.decode(data, name)], thr, cap)[0]


def predict_endpoint(client: Any, endpoint: str, data: bytes, content_type: str,
                     score_threshold: Optional[str], max_detections: Optional[str]) -> Dict[str, Any]:
    request = dict({"EndpointName": endpoint, "ContentType": content_type, "Accept": "application/json", "Body": data},
                   **custom_attributes(score_threshold, max_detections))
    return parse_prediction(endpoint, client.invoke_endpoint(**request)["Body"].read())


def custom_attributes(score_threshold: Optional[str], max_detections: Optional[str]) -> Dict[str, str]:
    attrs = ["{}={}".format(k, v) for k, v in (("score_threshold", score_threshold),
                                               ("max_detections", max_detections)) if v is not None]
    # invoke_endpoint cannot pass query parameters; the app reads this header instead.
    return {"CustomAttributes": ";".join(attrs)} if attrs else {}


def parse_prediction(endpoint: str, body: bytes) -> Dict[str, Any]:
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


# ---- ENDPOINT=: real-time or asynchronous ---------------------------------------------

# Real-time endpoints take 6 MB a request (SageMaker's limit, and the container's default cap).
REALTIME_MAX_BYTES = limits.DEFAULT_MAX_PAYLOAD_MB * 1024 * 1024
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


class Upload(NamedTuple):
    """What goes to the endpoint for one photo; when resized, ``size`` and ``sent`` are (height, width)
    of the photo and of what was sent."""
    path: str
    body: bytes
    content_type: str
    size: Optional[Tuple[int, int]] = None
    sent: Optional[Tuple[int, int]] = None
    warnings: Tuple[str, ...] = ()  # the damage the decoder read through, which the server would report


def run_endpoint(args: argparse.Namespace) -> List[str]:
    """IMAGE (a file, or a folder's images) through ENDPOINT, whichever kind it is."""
    from botocore.exceptions import BotoCoreError, ClientError

    if args.infer:
        raise PredictError("INFER applies to a local model; an endpoint runs with its SHELFDET_INFER "
                           "(make deploy INFER=...)")
    paths = image_files(args.image)
    scale = model_test_size(args.test_size) if args.resize else None
    try:
        return _run_endpoint(args, paths, scale)
    except ClientError as err:
        info = err.response.get("Error", {})
        raise PredictError("endpoint {}: {} failed: {}: {}".format(
            args.endpoint, err.operation_name, info.get("Code", "Error"), info.get("Message", ""))) from None
    except BotoCoreError as err:
        raise PredictError("endpoint {}: {}".format(args.endpoint, err)) from None


def _run_endpoint(args: argparse.Namespace, paths: List[str], scale: Optional[Tuple[int, int, int]]) -> List[str]:
    from shelfdet.launch import aws

    session = aws.make_session(args.region)
    sm = session.client("sagemaker")
    config = sm.describe_endpoint_config(
        EndpointConfigName=sm.describe_endpoint(EndpointName=args.endpoint)["EndpointConfigName"])
    if scale is not None:
        refuse_tiles(sm, config, scale[2])
    asynchronous = config.get("AsyncInferenceConfig")
    if asynchronous:
        return predict_async(session, args, paths, scale, asynchronous["OutputConfig"]["S3OutputPath"])
    if scale is None:
        over = [p for p in paths if os.path.getsize(p) > REALTIME_MAX_BYTES]
        if over:
            raise PredictError(too_big(over[0], os.path.getsize(over[0]), len(over), len(paths)))
    client = session.client("sagemaker-runtime")
    written = []  # type: List[str]
    for path in paths:
        upload = prepare(path, scale)
        if len(upload.body) > REALTIME_MAX_BYTES:
            raise PredictError("{} is {:.1f} MB even at the model's test scale, over the {} MB a real-time endpoint "
                               "takes: deploy with ASYNC=1 (asynchronous, up to 1 GB)".format(
                                   path, len(upload.body) / 1024 / 1024, limits.DEFAULT_MAX_PAYLOAD_MB))
        pred = predict_endpoint(client, args.endpoint, upload.body, upload.content_type, args.score_threshold,
                                args.max_detections)
        written += finish(args, upload, pred)
    return written


def too_big(path: str, size: int, over: int, total: int) -> str:
    limit = "the {} MB a real-time endpoint takes".format(limits.DEFAULT_MAX_PAYLOAD_MB)
    what = ("{} is {:.1f} MB, over {}".format(path, size / 1024 / 1024, limit) if total == 1 else
            "{} of {} photos are over {} (first: {}, {:.1f} MB)".format(over, total, limit, path, size / 1024 / 1024))
    return what + ": deploy with ASYNC=1 (asynchronous, up to 1 GB), or pass RESIZE=1 to send them at the model's test scale"


def image_files(path: str) -> List[str]:
    if os.path.isdir(path):
        found = sorted(os.path.join(path, n) for n in os.listdir(path)
                       if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES and os.path.isfile(os.path.join(path, n)))
        if not found:
            raise PredictError("no images ({}) in folder {}".format(" ".join(IMAGE_SUFFIXES), path))
        return found
    if not os.path.isfile(path):
        raise PredictError("image not found: {}".format(path))
    return [path]


def model_test_size(value: Optional[str]) -> Tuple[int, int, int]:
    """(min_size, max_size, tile_size) of the endpoint's model: TEST_SIZE=min/max, or a model folder's own."""
    text = (value or "").strip()
    m = re.match(r"^(\d+)/(\d+)$", text)
    if m and 0 < int(m.group(1)) <= int(m.group(2)):
        return int(m.group(1)), int(m.group(2)), 0
    if text and os.path.isdir(text):
        import yaml

        from shelfdet.core.artefacts import ArtefactError, read

        try:
            art = read(text)
        except ArtefactError as err:
            raise PredictError(str(err)) from None
        with open(art.config) as f:
            sizes = (yaml.safe_load(f) or {}).get("INPUT") or {}
        tile = (art.manifest.get("hyperparameters") or {}).get("tile-size") or 0
        return int(sizes.get("MIN_SIZE_TEST", 800)), int(sizes.get("MAX_SIZE_TEST", 1333)), int(tile)
    raise PredictError("RESIZE=1 needs the endpoint model's test size: TEST_SIZE=<min>/<max> (e.g. 800/1333) or "
                       "MODEL_DIR=<the model folder deployed>{}".format(", not {!r}".format(value) if text else ""))


def refuse_tiles(sm: Any, config: Dict[str, Any], tile: int) -> None:
    """Tiles are image pixels: a resized photo would be cut into other tiles than the whole one."""
    from shelfdet.core.hyperparameters import HyperparameterError, parse_inference

    for variant in config.get("ProductionVariants", []):
        container = sm.describe_model(ModelName=variant["ModelName"]).get("PrimaryContainer") or {}
        try:
            infer = parse_inference((container.get("Environment") or {}).get("SHELFDET_INFER", ""), "SHELFDET_INFER")
        except HyperparameterError:
            infer = {}
        tile = int(infer.get("tile-size", tile))
    if tile:
        raise PredictError("RESIZE=1 would change the tiles the endpoint's model cuts (tile-size {}, in image "
                           "pixels): send photos whole (ASYNC=1 for those over {} MB)".format(
                               tile, limits.DEFAULT_MAX_PAYLOAD_MB))


def prepare(path: str, scale: Optional[Tuple[int, int, int]]) -> Upload:
    """The photo as sent: its own bytes, or (RESIZE) as the server would decode it for the model.

    The server's decoder (``photos.decode_scaled``) runs here, so a lossless PNG of its result
    hands the model the very pixels the whole photo would: the same boxes. Of the photo and that
    PNG the smaller goes. (A JPEG at the test scale moved boxes and counts on real photos.)
    """
    with open(path, "rb") as f:
        data = f.read()
    ctype = CONTENT_TYPES.get(os.path.splitext(path)[1].lower(), "application/x-image")
    if scale is None:
        photos.declared_pixels(data, path)  # a file that is no image fails here, not on the endpoint
        return Upload(path, data, ctype)
    photo = photos.decode_scaled(data, scale[0], scale[1], path)
    new = photo.image.shape[:2]
    if new[0] >= photo.height:
        return Upload(path, data, ctype)
    from PIL import Image

    buf = io.BytesIO()
    # Upright, so no EXIF goes with it.
    Image.fromarray(np.ascontiguousarray(photo.image[:, :, ::-1])).save(buf, format="PNG")
    if len(data) <= buf.tell():
        note("{}: sent as it is ({:.2f} MB; {:.2f} MB at the test scale {}x{})".format(
            path, len(data) / 1024 / 1024, buf.tell() / 1024 / 1024, new[1], new[0]))
        return Upload(path, data, ctype)
    note("{}: sent at the test scale {}x{} as PNG ({:.2f} MB instead of {:.2f} MB)".format(
        path, new[1], new[0], buf.tell() / 1024 / 1024, len(data) / 1024 / 1024))
    return Upload(path, buf.getvalue(), "image/png", (photo.height, photo.width), (int(new[0]), int(new[1])),
                  photo.warnings)


def finish(args: argparse.Namespace, upload: Upload, pred: Dict[str, Any]) -> List[str]:
    """Writes the outputs as for the photo itself: boxes of a resized one scaled back to its pixels."""
    if upload.size and upload.sent:
        sy, sx = upload.size[0] / upload.sent[0], upload.size[1] / upload.sent[1]
        pred = dict(pred, image_height=upload.size[0], image_width=upload.size[1],
                    pred_boxes=[[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in pred["pred_boxes"]])
        if upload.warnings:
            pred["warnings"] = list(upload.warnings)
    with open(upload.path, "rb") as f:
        image = photos.decode(f.read(), upload.path)
    return write_outputs(argparse.Namespace(**dict(vars(args), image=upload.path)), image, pred)


def predict_async(session: Any, args: argparse.Namespace, paths: List[str], scale: Optional[Tuple[int, int, int]],
                  output_path: str) -> List[str]:
    """Each photo to S3 beside the endpoint's outputs, invoke_endpoint_async, then its result or failure object."""
    from shelfdet.launch import aws

    s3, runtime = session.client("s3"), session.client("sagemaker-runtime")
    bucket, key = aws.split_s3(output_path)
    parent = key.rstrip("/").rsplit("/", 1)[0] + "/" if "/" in key.strip("/") else ""
    folder = "{}input/{}/".format(parent, aws.timestamp())
    pending = {}  # type: Dict[str, Tuple[Upload, str, Optional[str]]]
    for path in paths:
        upload = prepare(path, scale)
        location = "s3://{}/{}{}".format(bucket, folder, os.path.basename(path))
        s3.put_object(Bucket=bucket, Key=folder + os.path.basename(path), Body=upload.body,
                      ContentType=upload.content_type)
        answer = runtime.invoke_endpoint_async(**dict(
            {"EndpointName": args.endpoint, "InputLocation": location, "ContentType": upload.content_type,
             "Accept": "application/json"}, **custom_attributes(args.score_threshold, args.max_detections)))
        pending[path] = (upload._replace(body=b""), answer["OutputLocation"], answer.get("FailureLocation"))
        note("{}: queued on endpoint {} ({} of {})".format(path, args.endpoint, len(pending), len(paths)))
    written, failed = [], []  # type: List[str], List[str]
    poll = float(os.environ.get("SHELFDET_POLL_SECONDS", "5"))
    start = last = time.monotonic()
    shown = -1
    while True:
        for path in sorted(pending):
            upload, output, failure = pending[path]
            body = s3_object(s3, output)
            if body is not None:
                written += finish(args, upload, parse_prediction(args.endpoint, body))
                del pending[path]
                continue
            reason = s3_object(s3, failure) if failure else None
            if reason is not None:
                text = " ".join(reason.decode("utf-8", "replace").split())[:300]
                note("{}: failed on endpoint {}: {} ({})".format(path, args.endpoint, text, failure))
                failed.append(path)
                del pending[path]
        if not pending:
            break
        waited = time.monotonic() - start
        if waited > args.timeout:
            raise PredictError("{} of {} results not there after {:.0f} s: they will be written to s3://{}/{}".format(
                len(pending), len(paths), waited, bucket, key))
        if len(pending) != shown or time.monotonic() - last >= 60:
            # An endpoint scaled to zero starts an instance first: minutes, not seconds.
            note("waiting for {} of {} results from endpoint {} ({:.0f} s)".format(
                len(pending), len(paths), args.endpoint, waited))
            shown, last = len(pending), time.monotonic()
        time.sleep(poll)
    if failed:
        raise PredictError("{} of {} photos failed on endpoint {} (first: {}); the reasons are above".format(
            len(failed), len(paths), args.endpoint, failed[0]))
    return written


def s3_object(s3: Any, uri: str) -> Optional[bytes]:
    """The object's bytes, or None while it does not exist."""
    from botocore.exceptions import ClientError

    from shelfdet.launch import aws

    bucket, key = aws.split_s3(uri)
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return None
        raise


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
    if args.endpoint:
        return run_endpoint(args)
    if not os.path.isfile(args.image):
        raise PredictError("image not found: {}".format(args.image))
    if not args.model_dir:
        raise PredictError("no model: pass MODEL_DIR=<run>/model or ENDPOINT=<name>")
    if args.resize:
        raise PredictError("RESIZE applies to an endpoint (ENDPOINT=); a local model resizes the photo itself")
    with open(args.image, "rb") as f:
        data = f.read()
    image = photos.decode(data, args.image)
    pred = predict_local(args.model_dir, data, args.image, args.score_threshold, args.max_detections, args.device,
                         args.infer)
    return write_outputs(args, image, pred)


def write_outputs(args: argparse.Namespace, image: Any, pred: Dict[str, Any]) -> List[str]:
    """``<out>/<image file>.json`` and ``.png``; ``image`` is the decoded photo (the server's pixels)."""
    from shelfdet.core.visualize import DEFAULT_SCORE_THRESHOLD, default_score_threshold, draw_counted

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
