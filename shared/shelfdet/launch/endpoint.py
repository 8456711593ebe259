"""The client of a deployed endpoint: photos through ``make deploy``'s endpoints, whichever kind.

A real-time endpoint takes a photo of at most 6 MB, a serverless one 4 MB answered within 60 s
(RESIZE: sent at the model's test scale, boxes scaled back); an asynchronous one gets each photo
through S3, beside its results, and the outputs are written as each result arrives, as a local
model's are (``shelfdet.serving.predict``).
"""
from __future__ import annotations

import io
import json
import os
import re
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from shelfdet.core import photos
from shelfdet.launch import aws
from shelfdet.serving import limits
from shelfdet.serving.predict import CONTENT_TYPES, Outputs, PredictError, photo_files, write_outputs

# Real-time endpoints take 6 MB a request (SageMaker's limit, and the container's default cap).
REALTIME_MAX_BYTES = limits.DEFAULT_MAX_PAYLOAD_MB * 1024 * 1024
SERVERLESS_MAX_BYTES = limits.SERVERLESS_MAX_PAYLOAD_MB * 1024 * 1024
# SageMaker ends a serverless invocation at 60 s; a cold start (the container pulled and started, the model
# loaded) comes before it. botocore's default read timeout, 60 s, would give up on an answer still coming.
SERVERLESS_INVOCATION_S = 60
SERVERLESS_READ_TIMEOUT = 180

Say = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


class Request(NamedTuple):
    """One ``make predict ENDPOINT=`` run: the endpoint, its request limits, RESIZE's test size
    (MIN/MAX or a model folder) and how long an asynchronous one is waited for."""
    endpoint: str
    region: Optional[str] = None
    score_threshold: Optional[str] = None
    max_detections: Optional[str] = None
    resize: bool = False
    test_size: Optional[str] = None
    timeout: float = 3600.0


class Upload(NamedTuple):
    """What goes to the endpoint for one photo; when resized, ``size`` and ``sent`` are (height, width)
    of the photo and of what was sent."""
    path: str
    body: bytes
    content_type: str
    size: Optional[Tuple[int, int]] = None
    sent: Optional[Tuple[int, int]] = None
    warnings: Tuple[str, ...] = ()  # the damage the decoder read through, which the server would report


class Reporter(NamedTuple):
    """Where the run's lines go: ``say`` one summary per photo written, ``note`` the progress."""
    say: Say = _quiet
    note: Say = _quiet


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


def predict_photos(path: str, request: Request, outputs: Outputs, reporter: Reporter = Reporter()) -> List[str]:
    """``path`` (a photo, or a folder's photos) through the endpoint: the files written."""
    from botocore.exceptions import BotoCoreError, ClientError

    paths = photo_files(path)
    scale = model_test_size(request.test_size) if request.resize else None
    try:
        return _predict_photos(request, outputs, paths, scale, reporter)
    except ClientError as err:
        info = err.response.get("Error", {})
        raise PredictError("endpoint {}: {} failed: {}: {}".format(
            request.endpoint, err.operation_name, info.get("Code", "Error"), info.get("Message", ""))) from None
    except BotoCoreError as err:
        raise PredictError("endpoint {}: {}".format(request.endpoint, err)) from None


class Kind(NamedTuple):
    """A synchronous endpoint's request limit, as its error lines say it."""
    name: str
    max_mb: int

    @property
    def max_bytes(self) -> int:
        return self.max_mb * 1024 * 1024


REALTIME = Kind("real-time", limits.DEFAULT_MAX_PAYLOAD_MB)
SERVERLESS = Kind("serverless", limits.SERVERLESS_MAX_PAYLOAD_MB)


def endpoint_kind(config: Dict[str, Any]) -> Kind:
    """Serverless when a production variant has a ServerlessConfig, else real-time."""
    serverless = any(v.get("ServerlessConfig") for v in config.get("ProductionVariants", []))
    return SERVERLESS if serverless else REALTIME


def _predict_photos(request: Request, outputs: Outputs, paths: List[str], scale: Optional[Tuple[int, int, int]],
                    reporter: Reporter) -> List[str]:
    session = aws.make_session(request.region)
    sm = session.client("sagemaker")
    config = sm.describe_endpoint_config(
        EndpointConfigName=sm.describe_endpoint(EndpointName=request.endpoint)["EndpointConfigName"])
    kind = endpoint_kind(config)
    if scale is not None:
        refuse_tiles(sm, config, scale[2], kind)
    asynchronous = config.get("AsyncInferenceConfig")
    if asynchronous:
        return predict_async(session, request, outputs, paths, scale, asynchronous["OutputConfig"]["S3OutputPath"],
                             reporter)
    if scale is None:
        over = [p for p in paths if os.path.getsize(p) > kind.max_bytes]
        if over:
            raise PredictError(too_big(over[0], os.path.getsize(over[0]), len(over), len(paths), kind))
    client = runtime_client(session, kind)
    written = []  # type: List[str]
    for path in paths:
        upload = prepare(path, scale, reporter.note)
        if len(upload.body) > kind.max_bytes:
            raise PredictError("{} is {:.1f} MB even at the model's test scale, over the {} MB a {} endpoint "
                               "takes: deploy with ASYNC=1 (asynchronous, up to 1 GB)".format(
                                   path, len(upload.body) / 1024 / 1024, kind.max_mb, kind.name))
        written += finish(outputs, upload, invoke(client, request, upload, kind), reporter.say)
    return written


def invoke(client: Any, request: Request, upload: Upload, kind: Kind) -> Dict[str, Any]:
    from botocore.exceptions import ClientError

    try:
        return predict_endpoint(client, request.endpoint, upload.body, upload.content_type, request.score_threshold,
                                request.max_detections)
    except ClientError as err:
        if kind is not SERVERLESS or "timed out" not in str(err).lower():
            raise
        raise PredictError("{}: endpoint {} did not answer within the {} s a serverless invocation has ({}): pass "
                           "RESIZE=1 to send it at the model's test scale, or deploy on instances".format(
                               upload.path, request.endpoint, SERVERLESS_INVOCATION_S,
                               err.response.get("Error", {}).get("Message", ""))) from None


def runtime_client(session: Any, kind: Kind) -> Any:
    if kind is not SERVERLESS:
        return session.client("sagemaker-runtime")
    from botocore.config import Config

    return session.client("sagemaker-runtime", config=Config(read_timeout=SERVERLESS_READ_TIMEOUT))


def too_big(path: str, size: int, over: int, total: int, kind: Kind = REALTIME) -> str:
    limit = "the {} MB a {} endpoint takes".format(kind.max_mb, kind.name)
    what = ("{} is {:.1f} MB, over {}".format(path, size / 1024 / 1024, limit) if total == 1 else
            "{} of {} photos are over {} (first: {}, {:.1f} MB)".format(over, total, limit, path, size / 1024 / 1024))
    if kind is SERVERLESS:
        return what + ": pass RESIZE=1 to send them at the model's test scale, or deploy with ASYNC=1 (asynchronous, up to 1 GB)"
    return what + ": deploy with ASYNC=1 (asynchronous, up to 1 GB), or pass RESIZE=1 to send them at the model's test scale"


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


def refuse_tiles(sm: Any, config: Dict[str, Any], tile: int, kind: Kind = REALTIME) -> None:
    """Tiles are photo pixels: a resized photo would be cut into other tiles than the whole one."""
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
                           "pixels): send photos whole (ASYNC=1 for those over {} MB)".format(tile, kind.max_mb))


def prepare(path: str, scale: Optional[Tuple[int, int, int]], note: Say = _quiet) -> Upload:
    """The photo as sent: its own bytes, or (RESIZE) as the server would decode it for the model.

    The server's decoder (``photos.decode_scaled``) runs here, so a lossless PNG of its result
    hands the model the very pixels the whole photo would: the same boxes. Of the photo and that
    PNG the smaller goes. (A JPEG at the test scale moved boxes and counts on real photos.)
    """
    with open(path, "rb") as f:
        data = f.read()
    ctype = CONTENT_TYPES.get(os.path.splitext(path)[1].lower(), "application/x-image")
    if scale is None:
        photos.declared_pixels(data, path)  # a file that is no photo fails here, not on the endpoint
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


def finish(outputs: Outputs, upload: Upload, pred: Dict[str, Any], say: Say = _quiet) -> List[str]:
    """Writes the outputs as for the photo itself: boxes of a resized one scaled back to its pixels."""
    if upload.size and upload.sent:
        sy, sx = upload.size[0] / upload.sent[0], upload.size[1] / upload.sent[1]
        pred = dict(pred, image_height=upload.size[0], image_width=upload.size[1],
                    pred_boxes=[[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in pred["pred_boxes"]])
        if upload.warnings:
            pred["warnings"] = list(upload.warnings)
    with open(upload.path, "rb") as f:
        photo = photos.decode(f.read(), upload.path)
    return write_outputs(outputs, upload.path, photo, pred, say)


class _Pending(NamedTuple):
    upload: Upload
    output: str
    failure: Optional[str]


def predict_async(session: Any, request: Request, outputs: Outputs, paths: List[str],
                  scale: Optional[Tuple[int, int, int]], output_path: str, reporter: Reporter = Reporter()) -> List[str]:
    """Each photo to S3 beside the endpoint's outputs, invoke_endpoint_async, then its result or failure object."""
    s3 = session.client("s3")
    bucket, key = aws.split_s3(output_path)
    pending = _queue(session, request, paths, scale, output_path, reporter.note)
    written, failed = [], []  # type: List[str], List[str]
    poll = float(os.environ.get("SHELFDET_POLL_SECONDS", "5"))
    start = last = time.monotonic()
    shown = -1
    while True:
        written += _collect(s3, request.endpoint, outputs, pending, failed, reporter)
        if not pending:
            break
        waited = time.monotonic() - start
        if waited > request.timeout:
            raise PredictError("{} of {} results not there after {:.0f} s: they will be written to s3://{}/{}".format(
                len(pending), len(paths), waited, bucket, key))
        if len(pending) != shown or time.monotonic() - last >= 60:
            # An endpoint scaled to zero starts an instance first: minutes, not seconds.
            reporter.note("waiting for {} of {} results from endpoint {} ({:.0f} s)".format(
                len(pending), len(paths), request.endpoint, waited))
            shown, last = len(pending), time.monotonic()
        time.sleep(poll)
    if failed:
        raise PredictError("{} of {} photos failed on endpoint {} (first: {}); the reasons are above".format(
            len(failed), len(paths), request.endpoint, failed[0]))
    return written


def _queue(session: Any, request: Request, paths: List[str], scale: Optional[Tuple[int, int, int]],
           output_path: str, note: Say) -> Dict[str, _Pending]:
    """Uploads each photo and invokes the endpoint on it: where each one's result or failure will be."""
    s3, runtime = session.client("s3"), session.client("sagemaker-runtime")
    bucket, key = aws.split_s3(output_path)
    parent = key.rstrip("/").rsplit("/", 1)[0] + "/" if "/" in key.strip("/") else ""
    folder = "{}input/{}/".format(parent, aws.timestamp())
    pending = {}  # type: Dict[str, _Pending]
    for path in paths:
        upload = prepare(path, scale, note)
        location = "s3://{}/{}{}".format(bucket, folder, os.path.basename(path))
        s3.put_object(Bucket=bucket, Key=folder + os.path.basename(path), Body=upload.body,
                      ContentType=upload.content_type)
        answer = runtime.invoke_endpoint_async(**dict(
            {"EndpointName": request.endpoint, "InputLocation": location, "ContentType": upload.content_type,
             "Accept": "application/json"}, **custom_attributes(request.score_threshold, request.max_detections)))
        pending[path] = _Pending(upload._replace(body=b""), answer["OutputLocation"], answer.get("FailureLocation"))
        note("{}: queued on endpoint {} ({} of {})".format(path, request.endpoint, len(pending), len(paths)))
    return pending


def _collect(s3: Any, endpoint: str, outputs: Outputs, pending: Dict[str, _Pending], failed: List[str],
             reporter: Reporter) -> List[str]:
    """Writes the results there now and notes the failures, taking both off ``pending``."""
    written = []  # type: List[str]
    for path in sorted(pending):
        upload, output, failure = pending[path]
        body = s3_object(s3, output)
        if body is not None:
            written += finish(outputs, upload, parse_prediction(endpoint, body), reporter.say)
            del pending[path]
            continue
        reason = s3_object(s3, failure) if failure else None
        if reason is not None:
            text = " ".join(reason.decode("utf-8", "replace").split())[:300]
            reporter.note("{}: failed on endpoint {}: {} ({})".format(path, endpoint, text, failure))
            failed.append(path)
            del pending[path]
    return written


def s3_object(s3: Any, uri: str) -> Optional[bytes]:
    """The object's bytes, or None while it does not exist."""
    from botocore.exceptions import ClientError

    bucket, key = aws.split_s3(uri)
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return None
        raise
