"""``serve``: the hosting server's flags and environment (``SHELFDET_*``, ``SAGEMAKER_*``);
``shelfdet.serving.server`` says how it runs and stops."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

from shelfdet.core import artefacts
from shelfdet.serving import limits
from shelfdet.serving.server import DEFAULT_MODEL_DIR


def _default_port() -> str:
    return os.environ.get("SAGEMAKER_BIND_TO_PORT") or "8080"


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="shelfdet serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=os.environ.get("SM_MODEL_DIR") or DEFAULT_MODEL_DIR,
                    help="model folder with artefacts.json (default: $SM_MODEL_DIR or /opt/ml/model)")
    ap.add_argument("--port", default=_default_port(), help="default: $SAGEMAKER_BIND_TO_PORT or 8080")
    ap.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1: this machine only; the serving image "
                         "passes 0.0.0.0, as SageMaker requires)")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=None,
                    help="inference thread pool size (default: max(4, MaxConcurrentTransforms))")
    ap.add_argument("--graceful-timeout", type=float, default=30.0,
                    help="seconds in-flight requests get to finish after SIGTERM; then the rest are cut, exit 1")
    ap.add_argument("--body-timeout", type=float, default=None,
                    help="seconds a request's body may take to arrive before it is answered 408 "
                         "(default: $SHELFDET_BODY_TIMEOUT or {:g})".format(limits.DEFAULT_BODY_TIMEOUT))
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ap.add_argument("--no-access-log", action="store_true")
    return ap.parse_args(argv)


def fail(message: str) -> None:
    print("error: {}".format(message), file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        port = int(args.port)
        if not 0 < port < 65536:
            raise ValueError
    except ValueError:
        print("error: port {!r} is not a TCP port number (--port or SAGEMAKER_BIND_TO_PORT)".format(args.port),
              file=sys.stderr)
        return 2
    if not args.model_dir:
        print("error: no model folder: MODEL_DIR is empty and no runs/*/model has an artefacts.json; "
              "make train writes one, make train RUN_DIR=runs/<job> finishes an interrupted run", file=sys.stderr)
        return 2
    try:
        # Fail fast on a folder that is not a model; weights load in the background.
        artefacts.read(args.model_dir)
        settings = limits.settings_from_env()
        if args.body_timeout is not None:
            settings = settings._replace(body_timeout=limits.check_body_timeout(args.body_timeout, "--body-timeout"))
    except (artefacts.ArtefactError, limits.LimitError) as err:
        fail(str(err))
        return 2

    from shelfdet.serving import server

    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = server.Options(args.model_dir, port, args.host, args.device, args.threads, args.graceful_timeout,
                             args.log_level, not args.no_access_log)
    return server.serve(options, settings, fail)
