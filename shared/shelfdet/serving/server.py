"""``serve``: the hosting app under uvicorn, one process and one model.

One process because a second would hold a second copy of the model (and on
GPU, a second CUDA context); concurrency comes from the app's thread pool.
SIGTERM stops accepting connections, lets in-flight requests finish (up to
``--graceful-timeout`` seconds) and exits 0; when the timeout cuts requests,
it says how many and exits 1 at once, however long their forward passes
would still take.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, List, NamedTuple, Optional

import uvicorn

from shelfdet.serving import limits

DEFAULT_MODEL_DIR = "/opt/ml/model"
log = logging.getLogger("shelfdet.serving")


class Options(NamedTuple):
    """How ``serve`` runs the app: the model folder, where it listens, and uvicorn's settings."""
    model_dir: str
    port: int
    host: str = "127.0.0.1"
    device: Optional[str] = None
    threads: Optional[int] = None  # default: max(4, MaxConcurrentTransforms)
    graceful_timeout: float = 30.0
    log_level: str = "info"
    access_log: bool = True


def serve(options: Options, settings: limits.Settings, fail: Callable[[str], None]) -> int:
    """Runs the app until a stop: the exit status. ``fail`` hears why a run ends badly (the model did not
    load, or the graceful timeout cut requests: then the process exits 1 at once)."""
    from shelfdet.serving.app import create_app

    threads = options.threads or max(4, settings.max_concurrent_transforms)
    failed: List[str] = []
    cut: List[str] = []
    server: Optional[_Server] = None

    def on_load_error(message: str) -> None:
        failed.append(message)
        if server is not None:
            server.should_exit = True  # read by uvicorn's main loop; exits with status 1 below

    app = create_app(options.model_dir, device=options.device, settings=settings, threads=threads,
                     on_load_error=on_load_error, on_cut=cut.append)
    config = uvicorn.Config(app, host=options.host, port=options.port, workers=1, lifespan="on",
                            log_level=options.log_level, access_log=options.access_log,
                            timeout_graceful_shutdown=options.graceful_timeout, log_config=None)
    server = _Server(config)
    _log_start(options, settings, app, threads)
    access = logging.getLogger("uvicorn.access")
    named = _RuntimeNamed(app.state.model)
    access.addFilter(named)
    try:
        server.run()
    finally:
        access.removeFilter(named)
    if cut:
        fail(cut[0])
        sys.stderr.flush()
        logging.shutdown()
        # The cut jobs' threads still run their forward passes, and Python's exit would join them.
        os._exit(1)
    if failed:
        fail(failed[0])
        return 1
    return 0 if server.started else 1


def _log_start(options: Options, settings: limits.Settings, app: Any, threads: int) -> None:
    import importlib.util
    import platform

    from shelfdet.core import runtime
    from shelfdet.serving.app import RUNTIME_ENV

    if importlib.util.find_spec("torch") is not None:
        log.info(runtime.summary())
    else:  # the slim image: exported models only
        log.info("environment: python %s, no torch (exported models only), %d CPUs", platform.python_version(),
                 runtime.available_cpus())
    log.info(
        "serving %s with runtime %s (%s) on %s:%d (%d threads, up to %d more requests waiting (SHELFDET_MAX_QUEUE%s), "
        "%.0f MP decoded in flight (SHELFDET_PIXELS_IN_FLIGHT%s), max payload %g MB, bodies within %g s, %s)",
        options.model_dir, os.environ.get(RUNTIME_ENV) or "auto", RUNTIME_ENV, options.host, options.port, threads,
        app.state.work.queue,
        "" if settings.max_queue is not None else ": from the threads and free memory",
        app.state.budget.total / 1e6, "" if settings.pixels_in_flight is not None else ": half the free memory",
        settings.max_payload_mb, settings.body_timeout, settings.batch_strategy)


class _RuntimeNamed(logging.Filter):
    """Ends each line of uvicorn's access log (one a response) with the runtime that runs the model."""

    def __init__(self, holder: Any):
        super().__init__()
        self.holder = holder

    def filter(self, record: logging.LogRecord) -> bool:
        from shelfdet.serving.app import runtime_of

        if self.holder.detector is not None:
            record.msg = "{} [runtime {}]".format(record.msg, runtime_of(self.holder.detector).replace("%", "%%"))
        return True


class _Server(uvicorn.Server):
    """uvicorn.Server that exits normally after a signal-triggered graceful shutdown.

    uvicorn >= 0.29 re-raises the captured SIGTERM once it has shut down,
    which kills the process with status 143; SageMaker and ``docker stop``
    asked for a stop, so a clean stop is status 0.
    """

    async def shutdown(self, sockets=None) -> None:
        await super().shutdown(sockets=sockets)
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            del captured[:]
