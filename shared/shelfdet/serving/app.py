"""The ASGI app: ``/ping``, ``/invocations``, ``/execution-parameters`` (see ``shelfdet.serving``).

The model loads in a background thread so the port answers ``/ping`` (503)
at once; SageMaker polls it for up to 4 minutes. Decoding, inference and JSON
encoding run in a thread pool, so the event loop keeps answering ``/ping``
while a request is computed; the Detector's lock serialises the forward pass.
In front of the pool, a bounded line: a burst beyond it gets 503 with
``Retry-After`` at once, instead of memory and latency growing unseen.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import importlib.util
import itertools
import json
import logging
import math
import os
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Set, Tuple

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from shelfdet.core import photos, runtime
from shelfdet.serving import limits

log = logging.getLogger("shelfdet.serving")

RAW_TYPES = ("application/x-image", "image/jpeg", "image/jpg", "image/png")
JSON_TYPE = "application/json"
ACCEPTED_TYPES = RAW_TYPES + (JSON_TYPE,)
MAX_BATCH_IMAGES = 64
# Decoded pixels per request: bounds memory when a small payload holds many
# highly compressible large photos (each is already capped by photos.MAX_PIXELS).
MAX_BATCH_PIXELS = 2 * photos.MAX_PIXELS
DEFAULT_THREADS = 4
# auto (default): the export the model folder has (OpenVINO first, then ONNX), else the eager model.
RUNTIME_ENV = "SHELFDET_RUNTIME"


class RequestError(Exception):
    """A client error: becomes ``{"error": message, **extra}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: Optional[Dict[str, str]] = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        self.extra = extra


def error_response(status: int, message: str, headers: Optional[Dict[str, str]] = None, **extra: Any) -> JSONResponse:
    body = {"error": message}
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers)


def load_detector(model_dir: str, device: Optional[str] = None, overrides: Optional[Mapping[str, str]] = None) -> Any:
    """The model folder's exported model where SHELFDET_RUNTIME allows one, else the eager one."""
    # Imported here: a runtime, or torch + Detectron2 for the eager model, take seconds to
    # import, and the port should be open (answering 503) meanwhile. The slim image has no
    # torch: there, a folder without an export fails here, in one line naming `make export`.
    from shelfdet.core import compat, exported

    if importlib.util.find_spec("detectron2") is not None:
        compat.apply()  # before the eager model imports Detectron2, if no export serves
    return exported.load(model_dir, runtime=os.environ.get(RUNTIME_ENV), overrides=overrides, device=device)


def runtime_of(detector: Any) -> str:
    """What runs the model, for the logs: the exported model's runtime and precision, or "torch" (eager)."""
    return getattr(detector, "runtime", None) or "torch"


def _describe(options: Any) -> str:
    if options is None or options.plain:
        return ""
    parts = ["nms {}".format(options.nms)]
    if options.tile_size:
        parts.append("tiles {} px, overlap {:g}".format(options.tile_size, options.tile_overlap))
    return ", " + ", ".join(parts)


class InferencePool:
    """The threads that decode, predict and encode, with at most ``queue`` requests waiting for them.

    ``admitted`` counts requests from admission to response and is only touched
    on the event loop; ``pending`` holds the jobs handed to the threads and not
    yet finished, so a shutdown knows what it would cut.
    """

    def __init__(self, threads: int, queue: int):
        self.threads = threads
        self.queue = queue
        self.admitted = 0
        self.job_seconds = 1.0  # a running mean, for Retry-After
        self.cut_waiting = 0  # jobs cancelled before they started (uvicorn's graceful timeout)
        self.pending: Set[concurrent.futures.Future] = set()
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="infer")

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if self.admitted >= self.threads + self.queue:
            retry = max(1, int(math.ceil(self.job_seconds)))
            raise RequestError(503, "server busy: {} requests are computing or waiting, the most it takes ({} threads + "
                               "SHELFDET_MAX_QUEUE={}); retry after {} s".format(self.admitted, self.threads, self.queue,
                                                                                  retry),
                               headers={"Retry-After": str(retry)}, retry_after_seconds=retry)
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def run(self, fn: Callable[..., bytes], *args: Any) -> bytes:
        future = self._pool.submit(self._timed, fn, *args)
        with self._lock:
            self.pending.add(future)
        future.add_done_callback(self._finished)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # uvicorn's graceful timeout cancels the request; a job not yet started never starts.
            if future.cancel():
                self.cut_waiting += 1
            raise

    def _timed(self, fn: Callable[..., bytes], *args: Any) -> bytes:
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.job_seconds = 0.8 * self.job_seconds + 0.2 * (time.perf_counter() - start)

    def _finished(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            self.pending.discard(future)

    def close(self) -> Tuple[int, int]:
        """Stops the threads; returns the jobs cut: (computing, never started). Waits only when none is computing:
        uvicorn has already spent the graceful timeout on them."""
        with self._lock:
            pending = list(self.pending)
        waiting = sum(1 for f in pending if f.cancel())
        computing = len(pending) - waiting
        self._pool.shutdown(wait=computing == 0)
        return computing, waiting + self.cut_waiting


class PixelBudget:
    """Decoded pixels in flight across requests: a request's photos wait until they fit.

    A request takes what its image headers declare, all at once, so two batches
    never each hold a part and wait for the rest; one larger than the whole
    budget runs alone. Charged at the full declared size: an upper bound of what
    decoding holds, whatever the decoder does. First come, first served: were
    small photos let past a waiting large one, it could wait forever (a soak
    measured a p99 of 59 s against a p50 of 5 s).
    """

    def __init__(self, pixels: int):
        self.total = pixels
        self.free = pixels
        self._cond = threading.Condition()
        self._tickets = itertools.count()
        self._serving = 0
        self.waiting = 0

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        need = min(pixels, self.total)
        with self._cond:
            ticket = next(self._tickets)
            if self._serving != ticket or self.free < need:
                log.debug("pixel budget: a request waits for %d px (%d of %d in flight)", need,
                          self.total - self.free, self.total)
                self.waiting += 1
                self._cond.wait_for(lambda: self._serving == ticket and self.free >= need)
                self.waiting -= 1
            self.free -= need
            self._serving += 1
            self._cond.notify_all()  # the next ticket may fit too
        try:
            yield
        finally:
            with self._cond:
                self.free += need
                self._cond.notify_all()


class ModelHolder:
    """The Detector once loaded, or the reason it failed to load."""

    def __init__(self) -> None:
        self.detector: Any = None
        self.error: Optional[str] = None
        self.loaded_at: Optional[float] = None

    @property
    def ready(self) -> bool:
        return self.detector is not None


def create_app(model_dir: str, device: Optional[str] = None, settings: Optional[limits.Settings] = None,
               threads: int = DEFAULT_THREADS, loader: Optional[Callable[[str, Optional[str]], Any]] = None,
               on_load_error: Optional[Callable[[str], None]] = None,
               on_cut: Optional[Callable[[str], None]] = None) -> FastAPI:
    """The hosting app for the model folder ``model_dir`` (read through its artefacts.json).

    ``loader`` builds the predictor (tests inject a slow or failing one);
    ``on_load_error`` lets the server stop when the model cannot load;
    ``on_cut`` hears, at shutdown, of requests the graceful timeout cut.
    """
    settings = settings or limits.settings_from_env()
    if loader is None:
        inference = dict(settings.inference)

        def loader(model_dir: str, device: Optional[str]) -> Any:
            return load_detector(model_dir, device, inference)
    holder = ModelHolder()
    threads = max(1, threads)
    memory = runtime.available_memory()
    work = InferencePool(threads, limits.queue_size(settings, threads, memory))
    budget = PixelBudget(limits.pixels_in_flight(settings, memory, MAX_BATCH_PIXELS))
    load = _loading(model_dir, device, loader, holder, on_load_error)
    app = FastAPI(title="shelfdet", lifespan=_lifespan(load, work, on_cut), docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.model = holder
    app.state.settings = settings
    app.state.work = work
    app.state.budget = budget
    _add_error_handlers(app)
    _add_routes(app, holder, settings, work, budget)
    return app


def _loading(model_dir: str, device: Optional[str], loader: Callable[[str, Optional[str]], Any], holder: ModelHolder,
             on_load_error: Optional[Callable[[str], None]]) -> Callable[[], None]:
    """What the loader thread runs: the model into ``holder``, or its failure into ``holder.error``."""
    def load() -> None:
        start = time.time()
        try:
            detector = loader(model_dir, device)
        except Exception as err:  # any failure must surface in /ping and the log, not kill a thread silently
            holder.error = "model failed to load from {}: {}".format(model_dir, err)
            log.error(holder.error)
            if on_load_error is not None:
                on_load_error(holder.error)
            return
        holder.detector = detector
        holder.loaded_at = time.time()
        log.info("model loaded from %s (runtime %s) on %s in %.1fs (score threshold %g, max %d detections%s)",
                 model_dir, runtime_of(detector), getattr(detector, "device", "cpu"), holder.loaded_at - start,
                 *limits.model_limits(detector), _describe(getattr(detector, "options", None)))

    return load


def _lifespan(load: Callable[[], None], work: InferencePool, on_cut: Optional[Callable[[str], None]]) -> Any:
    """Loads the model in the background at startup; at shutdown, cuts what the graceful timeout left."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=load, name="model-loader", daemon=True).start()
        try:
            yield
        finally:
            # uvicorn has already waited for in-flight requests, up to --graceful-timeout; what is left is cut.
            computing, waiting = work.close()
            if computing or waiting:
                message = ("the graceful timeout passed with {} request(s) still computing and {} waiting for a thread:"
                           " cut, answered 503".format(computing, waiting))
                log.error(message)
                if on_cut is not None:
                    on_cut(message)

    return lifespan


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error: {}".format(type(exc).__name__))


def _add_routes(app: FastAPI, holder: ModelHolder, settings: limits.Settings, work: InferencePool,
                budget: PixelBudget) -> None:
    """The SageMaker hosting contract: /ping, /execution-parameters and /invocations."""
    @app.get("/ping")
    async def ping() -> Response:
        if holder.ready:
            return Response(status_code=200)
        if holder.error:
            return error_response(503, holder.error)
        return error_response(503, "model is loading")

    @app.get("/execution-parameters")
    async def execution_parameters() -> JSONResponse:
        return JSONResponse(settings.execution_parameters())

    @app.post("/invocations")
    async def invocations(request: Request) -> Response:
        try:
            kind = _content_kind(request.headers.get("content-type"))
            _check_accept(request.headers.get("accept"))
            if not holder.ready:
                raise RequestError(503, holder.error or "model is loading")
            detector = holder.detector
            thr, cap = _request_params(request, detector)
            # The body first, under its timeout, and only then a slot: an upload that is slow or has
            # stopped holds its own connection, never a place that requests ready to compute need.
            body = await _read_body(request, settings.max_payload_bytes, settings.body_timeout)
            with work.slot():
                content = await work.run(_handle, detector, kind, body, thr, cap, budget)
        except asyncio.CancelledError:
            # Only uvicorn's graceful timeout cancels a request: the caller learns it was cut, not a 500.
            return error_response(503, "the server is shutting down and its graceful timeout cut this request; "
                                  "retry on another instance")
        except RequestError as err:
            if err.status >= 500:
                log.warning("invocation refused: %s", err.message)
            return error_response(err.status, err.message, err.headers, **err.extra)
        return Response(content=content, media_type=JSON_TYPE)


def _content_kind(header: Optional[str]) -> str:
    ctype = (header or "").split(";", 1)[0].strip().lower()
    if ctype in RAW_TYPES:
        return "raw"
    if ctype == JSON_TYPE:
        return "json"
    raise RequestError(415, "unsupported Content-Type {!r}".format(header or ""), supported=list(ACCEPTED_TYPES))


def _check_accept(header: Optional[str]) -> None:
    if not header:
        return
    for part in header.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in ("*/*", "application/*", JSON_TYPE):
            return
    raise RequestError(406, "cannot answer Accept {!r}: responses are application/json".format(header))


def _request_params(request: Request, detector: Any) -> Tuple[Optional[float], Optional[int]]:
    query = request.query_params
    unknown = sorted(set(query.keys()) - set(limits.PARAMS))
    if unknown:
        raise RequestError(400, "unknown query parameter(s) {}".format(", ".join(unknown)), known=list(limits.PARAMS))
    # Query parameters win over the header: the header is what invoke_endpoint can carry.
    params = limits.parse_custom_attributes(request.headers.get(limits.CUSTOM_ATTRIBUTES_HEADER))
    params.update((k, query[k]) for k in limits.PARAMS if k in query)
    try:
        return limits.check_request_limits(params.get("score_threshold"), params.get("max_detections"),
                                           *limits.model_limits(detector))
    except limits.LimitError as err:
        raise RequestError(400, str(err)) from None


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refusing more than ``limit`` bytes without buffering them, and a body still arriving
    after ``timeout`` seconds (408; the connection is closed, as the rest of the body would follow).

    Answering early is safe: uvicorn discards the rest of an unread body.
    """
    try:
        return await asyncio.wait_for(_receive_body(request, limit), timeout)
    except asyncio.TimeoutError:
        raise RequestError(408, "the request body did not arrive within {:g} s (SHELFDET_BODY_TIMEOUT or serve "
                           "--body-timeout)".format(timeout), headers={"Connection": "close"}) from None


async def _receive_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError(400, "invalid Content-Length {!r}".format(declared)) from None
        if size > limit:
            raise _too_large(size, limit)
    chunks: List[bytes] = []
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise _too_large(received, limit, at_least=True)
            chunks.append(chunk)
    except ClientDisconnect:
        raise RequestError(400, "client disconnected before sending the whole body") from None
    return b"".join(chunks)


def _too_large(size: int, limit: int, at_least: bool = False) -> RequestError:
    return RequestError(413, "payload of {}{} bytes exceeds the {} byte limit (SAGEMAKER_MAX_PAYLOAD_IN_MB)".format(
        "over " if at_least else "", size, limit), limit_bytes=limit)


def _handle(detector: Any, kind: str, body: bytes, thr: Optional[float], cap: Optional[int],
            budget: PixelBudget) -> bytes:
    """Runs in the thread pool: decode, predict, encode, within the pixel budget."""
    if kind == "raw":
        with budget.hold(_declared(body, "image")):
            photo = _decode(detector, body, "image")
            result: Any = detector.predict([photo], thr, cap)[0]
    else:
        items = _batch_items(body)
        with budget.hold(_batch_pixels(items)):
            decoded = _decode_batch(detector, items)
            # One forward pass per photo: Detectron2 pads a batch to its largest
            # photo, so batching would make a photo's boxes depend on its neighbours.
            result = [detector.predict([photo], thr, cap)[0] for photo in decoded]
    return json.dumps(result).encode("utf-8")


def _declared(data: bytes, name: str, index: Optional[int] = None) -> int:
    extra = {} if index is None else {"index": index}
    try:
        return photos.declared_pixels(data, name)
    except photos.FormatNotAccepted as err:  # a WebP, TIFF, ... whatever the Content-Type said
        raise RequestError(415, str(err), supported=list(photos.ACCEPTED_FORMATS), **extra) from None
    except photos.ImageDecodeError as err:
        raise RequestError(400, str(err), **extra) from None


def _batch_pixels(items: List[bytes]) -> int:
    """The batch's declared pixels, refused (413) before anything is decoded when over MAX_BATCH_PIXELS."""
    pixels = 0
    for i, data in enumerate(items):
        pixels += _declared(data, "instance {}".format(i), i)
        if pixels > MAX_BATCH_PIXELS:
            raise RequestError(413, "batch decodes to over {} pixels at instance {}: send fewer images per request"
                               .format(MAX_BATCH_PIXELS, i), index=i)
    return pixels


def _decode(detector: Any, data: bytes, name: str, index: Optional[int] = None) -> Any:
    """The photo at the model's test scale; damaged JPEG data is served, with ``warnings`` in its answer."""
    extra = {} if index is None else {"index": index}
    try:
        return detector.decode(data, name)
    except photos.FormatNotAccepted as err:
        raise RequestError(415, str(err), supported=list(photos.ACCEPTED_FORMATS), **extra) from None
    except photos.ImageDecodeError as err:
        raise RequestError(400, str(err), **extra) from None


def _decode_batch(detector: Any, items: List[bytes]) -> List[Any]:
    return [_decode(detector, data, "instance {}".format(i), i) for i, data in enumerate(items)]


def _batch_items(body: bytes) -> List[bytes]:
    """The photos of a JSON batch, base64-decoded (not yet decoded as pixels)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(400, "body is not valid JSON ({})".format(err)) from None
    items = doc.get("instances") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise RequestError(400, 'expected {"instances": [<base64 image>, ...]} or a list of base64 images')
    if not 1 <= len(items) <= MAX_BATCH_IMAGES:
        raise RequestError(400, "a batch holds 1 to {} images, got {}".format(MAX_BATCH_IMAGES, len(items)))
    out = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get("b64"), str):
            item = item["b64"]  # the TF-Serving-style {"b64": ...} wrapper
        if not isinstance(item, str):
            raise RequestError(400, "instance {} is a {}, expected a base64 string".format(i, type(item).__name__),
                               index=i)
        try:
            data = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(400, "instance {} is not valid base64".format(i), index=i) from None
        out.append(data)
    return out

