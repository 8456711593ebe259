"""Serving settings from the SageMaker environment and per-request limits.

Kept free of web-framework and torch imports: ``make predict`` and the server
validate the same way.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

from shelfdet.core.hyperparameters import HyperparameterError, parse_inference

DEFAULT_MAX_PAYLOAD_MB = 6  # SageMaker real-time endpoints' own request limit
SERVERLESS_MAX_PAYLOAD_MB = 4  # SageMaker serverless endpoints' request limit (make deploy SERVERLESS=1)
# An asynchronous endpoint hands /invocations its S3 input whole, up to 1 GB (make deploy ASYNC=1 sets this).
# 200 MB holds any photo the decoder takes (60 MP as uncompressed 8-bit RGB is 180 MB) while four
# concurrent bodies stay well inside an instance's memory; a larger body is a 413 in the failure object.
ASYNC_MAX_PAYLOAD_MB = 200
MAX_PAYLOAD_MB = 1024  # asynchronous inference's maximum; batch transform's is 100, real-time's 6
BATCH_MAX_PAYLOAD_MB = 100
DEFAULT_MAX_CONCURRENT_TRANSFORMS = 1
# Seconds a request's body may take to arrive, read before the request queues for a thread: 6 MB
# over a 1 Mbit/s uplink takes under 50 s. SageMaker hands the server whole bodies; a slow or
# stalled upload comes from a client on the network that a local server listens on.
DEFAULT_BODY_TIMEOUT = 60.0
BATCH_STRATEGIES = {"singlerecord": "SINGLE_RECORD", "multirecord": "MULTI_RECORD"}
PARAMS = ("score_threshold", "max_detections")
CUSTOM_ATTRIBUTES_HEADER = "x-amzn-sagemaker-custom-attributes"


class LimitError(ValueError):
    """A setting or request parameter is malformed or outside its allowed range."""


class Settings(NamedTuple):
    max_payload_mb: float
    max_concurrent_transforms: int
    batch_strategy: str
    # SHELFDET_INFER: inference hyperparameters over the model's own (tiles, Soft-NMS, ...), typed.
    inference: Mapping[str, Any] = {}
    # SHELFDET_MAX_QUEUE: requests waiting for a thread beyond those computing; None: see queue_size.
    max_queue: Optional[int] = None
    # SHELFDET_PIXELS_IN_FLIGHT: decoded pixels all requests may hold together; None: see pixels_in_flight.
    pixels_in_flight: Optional[int] = None
    # SHELFDET_BODY_TIMEOUT (or serve --body-timeout): seconds a body may take to arrive, else 408.
    body_timeout: float = DEFAULT_BODY_TIMEOUT

    @property
    def max_payload_bytes(self) -> int:
        return int(self.max_payload_mb * 1024 * 1024)

    def execution_parameters(self) -> Dict[str, object]:
        payload = self.max_payload_mb
        return {
            "MaxConcurrentTransforms": self.max_concurrent_transforms,
            "BatchStrategy": self.batch_strategy,
            # SageMaker's field is an integer number of MB.
            "MaxPayloadInMB": min(BATCH_MAX_PAYLOAD_MB, int(payload) if float(payload).is_integer()
                                  else max(1, int(math.floor(payload)))),
        }


def settings_from_env(env: Optional[Mapping[str, str]] = None) -> Settings:
    """Reads ``SAGEMAKER_*``; a malformed value is an error at start-up, not a silent default."""
    env = os.environ if env is None else env
    payload = _number(env, "SAGEMAKER_MAX_PAYLOAD_IN_MB", DEFAULT_MAX_PAYLOAD_MB, float)
    if not 0 < payload <= MAX_PAYLOAD_MB:
        raise LimitError("SAGEMAKER_MAX_PAYLOAD_IN_MB={} is outside (0, {}]".format(payload, MAX_PAYLOAD_MB))
    concurrent = _number(env, "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", DEFAULT_MAX_CONCURRENT_TRANSFORMS, int)
    if concurrent < 1:
        raise LimitError("SAGEMAKER_MAX_CONCURRENT_TRANSFORMS={} must be >= 1".format(concurrent))
    raw = (env.get("SAGEMAKER_BATCH_STRATEGY") or "SINGLE_RECORD").strip()
    strategy = BATCH_STRATEGIES.get(raw.replace("_", "").replace("-", "").lower())
    if strategy is None:
        raise LimitError("SAGEMAKER_BATCH_STRATEGY={!r}: expected SINGLE_RECORD or MULTI_RECORD".format(raw))
    try:
        inference = parse_inference(env.get("SHELFDET_INFER") or "", "SHELFDET_INFER")
    except HyperparameterError as err:
        raise LimitError(str(err)) from None
    queue = None
    if (env.get("SHELFDET_MAX_QUEUE") or "").strip():
        queue = _number(env, "SHELFDET_MAX_QUEUE", None, int)
        if queue < 0:
            raise LimitError("SHELFDET_MAX_QUEUE={} must be >= 0 (empty: sized from the threads and memory)".format(queue))
    pixels = None
    if (env.get("SHELFDET_PIXELS_IN_FLIGHT") or "").strip():
        pixels = _number(env, "SHELFDET_PIXELS_IN_FLIGHT", None, int)
        if pixels < 1:
            raise LimitError("SHELFDET_PIXELS_IN_FLIGHT={} must be >= 1 (empty: half the free memory)".format(pixels))
    body_timeout = check_body_timeout(_number(env, "SHELFDET_BODY_TIMEOUT", DEFAULT_BODY_TIMEOUT, float),
                                      "SHELFDET_BODY_TIMEOUT")
    return Settings(payload, concurrent, strategy, inference, queue, pixels, body_timeout)


def check_body_timeout(seconds: float, origin: str) -> float:
    if not 0 < seconds <= 3600:
        raise LimitError("{}={:g} is outside (0, 3600] seconds".format(origin, seconds))
    return seconds


# Bytes a decoded pixel costs while a request is computed: PIL's 4-byte buffer, its RGB copy, and the
# BGR array made from it, at their peak together.
BYTES_PER_DECODED_PIXEL = 12


def pixels_in_flight(settings: "Settings", memory_bytes: Optional[int], largest_request: int) -> int:
    """How many decoded pixels all requests together may hold: half the memory left at start-up, at
    least one largest request (which then runs alone). SHELFDET_PIXELS_IN_FLIGHT overrides."""
    if settings.pixels_in_flight is not None:
        return settings.pixels_in_flight
    if memory_bytes is None:
        return 8 * largest_request
    return max(largest_request, memory_bytes // 2 // BYTES_PER_DECODED_PIXEL)


def queue_size(settings: Settings, threads: int, memory_bytes: Optional[int]) -> int:
    """How many requests may wait for one of ``threads`` busy inference threads.

    A waiting request holds its body (at most the payload limit); a computing
    one also its decoded photos. A quarter of the memory left at start-up goes
    to waiting bodies, with at most four waiting per thread: beyond that a
    caller learns sooner from a 503 than from a request that times out.
    """
    if settings.max_queue is not None:
        return settings.max_queue
    most = 4 * threads
    if memory_bytes is None:
        return most
    return max(1, min(most, memory_bytes // 4 // settings.max_payload_bytes))


def _number(env: Mapping[str, str], key: str, default, kind):
    raw = env.get(key)
    if raw is None or not raw.strip():
        return default
    try:
        value = kind(raw.strip())
    except ValueError:
        raise LimitError("{}={!r} is not a valid {}".format(key, raw, kind.__name__)) from None
    if kind is float and not math.isfinite(value):
        raise LimitError("{}={!r} is not a finite number".format(key, raw))
    return value


def parse_custom_attributes(header: Optional[str]) -> Dict[str, str]:
    """``k=v;k=v`` -> dict, keeping only our keys: other tools share this header."""
    out = {}
    for part in (header or "").split(";"):
        key, sep, value = part.partition("=")
        key = key.strip()
        if sep and key in PARAMS:
            out[key] = value.strip()
    return out


def model_limits(detector: Any) -> Tuple[float, int]:
    """The model's own score threshold and detections per image, which a request may only tighten: the eager
    model's, or an exported model's settings (its record's, or the model folder's inference settings)."""
    if hasattr(detector, "min_score"):
        return float(detector.min_score), int(detector.max_detections)
    return float(detector.settings.score_threshold), int(detector.settings.detections)


def check_request_limits(score_threshold: Optional[str], max_detections: Optional[str], min_score: float,
                         max_cap: int) -> Tuple[Optional[float], Optional[int]]:
    """Validates raw parameter strings against the model's limits; None means "the model's own"."""
    thr = None
    if score_threshold is not None:
        try:
            thr = float(score_threshold)
        except ValueError:
            raise LimitError("score_threshold={!r} is not a number".format(score_threshold)) from None
        if not math.isfinite(thr) or not min_score <= thr <= 1.0:
            raise LimitError("score_threshold={} is outside [{:g}, 1] (the model's threshold is the minimum)"
                             .format(score_threshold, min_score))
    cap = None
    if max_detections is not None:
        try:
            cap = int(max_detections)
        except ValueError:
            raise LimitError("max_detections={!r} is not an integer".format(max_detections)) from None
        if not 1 <= cap <= max_cap:
            raise LimitError("max_detections={} is outside [1, {}] (the model's detections per image)"
                             .format(max_detections, max_cap))
    return thr, cap
