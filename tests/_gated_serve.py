"""``shelfdet serve`` with gates that tests open, for requests held in flight by construction.

    python tests/_gated_serve.py GATE_DIR <serve arguments>

The real ``serve.main`` runs; three of the app's steps are wrapped:
- each body read first creates ``GATE_DIR/read-<n>``: the server has the request;
- each request that takes a place in the line for a thread creates ``GATE_DIR/admitted-<n>``;
- each forward pass creates ``GATE_DIR/held-<n>``, then waits until ``GATE_DIR/open`` exists.
So a test knows a request is being computed, signals the server, and only then lets it finish.
"""
from __future__ import annotations

import contextlib
import itertools
import sys
import threading
import time
from pathlib import Path

from shelfdet.commands import serve
from shelfdet.serving import app


def _announce(gate: Path, kind: str, counter: "itertools.count[int]", lock: threading.Lock) -> None:
    with lock:
        n = next(counter)
    (gate / "{}-{}".format(kind, n)).touch()


def install(gate: Path) -> None:
    lock = threading.Lock()
    reads, holds, admits = itertools.count(), itertools.count(), itertools.count()
    read_body, load_detector, slot = app._read_body, app.load_detector, app.InferencePool.slot

    async def gated_read(request, *args):
        _announce(gate, "read", reads, lock)
        return await read_body(request, *args)

    def gated_load(*args, **kwargs):
        detector = load_detector(*args, **kwargs)
        predict = detector.predict

        def held(*p_args, **p_kwargs):
            _announce(gate, "held", holds, lock)
            while not (gate / "open").exists():
                time.sleep(0.01)
            return predict(*p_args, **p_kwargs)

        detector.predict = held
        return detector

    @contextlib.contextmanager
    def gated_slot(pool):
        with slot(pool):  # a refused request raises here, unannounced
            _announce(gate, "admitted", admits, lock)
            yield

    app._read_body, app.load_detector, app.InferencePool.slot = gated_read, gated_load, gated_slot


if __name__ == "__main__":
    install(Path(sys.argv[1]))
    sys.exit(serve.main(sys.argv[2:]))
