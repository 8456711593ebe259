"""Start-up, readiness and shutdown of the hosting app, over real HTTP."""
from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from _serving_support import ROOT, ServerProcess, encode, make_tiny_model, shelf_image
from conftest import free_port, wait_for_port


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.getbasetemp())


def _listens_on_every_interface(port: int) -> bool:
    """Whether a server on ``port`` also answers at 127.0.0.2 (Linux routes all of 127/8 to the loopback
    interface): a socket bound to 0.0.0.0 does, one bound to 127.0.0.1 does not."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.2", port)) == 0


def test_the_listening_probe_tells_every_interface_from_loopback_only():
    for host, expected in (("0.0.0.0", True), ("127.0.0.1", False)):
        with socket.socket() as listener:
            listener.bind((host, 0))
            listener.listen(1)
            assert _listens_on_every_interface(listener.getsockname()[1]) is expected, host


def _refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _wait_for(path, what: str, srv, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert srv.proc.poll() is None, "server exited before {}:\n{}".format(what, srv.log())
        assert time.time() < deadline, "{} never happened:\n{}".format(what, srv.log())
        time.sleep(0.02)


def test_sigterm_lets_in_flight_requests_finish_then_exits_0(model_dir, tmp_path):
    """SIGTERM while one request is still uploading and another is held inside the forward pass.

    The server holds every forward pass until the test opens its gate (tests/_gated_serve.py), so
    both requests are in flight when the signal lands, on any machine. Both complete with 200, new
    connections are refused meanwhile, and the process exits 0 (uvicorn alone would re-raise
    SIGTERM and die with 143).
    """
    gate = tmp_path / "gate"
    gate.mkdir()
    srv = ServerProcess(model_dir, tmp_path / "server.log", env={"OMP_NUM_THREADS": "1"}, gate=gate)
    try:
        srv.wait_ready()
        batch = [base64.b64encode(encode(shelf_image(i, 160, 120))).decode() for i in range(3)]
        batch_result = {}

        def post_batch():
            try:
                batch_result["response"] = httpx.post(srv.url + "/invocations", json={"instances": batch},
                                                      timeout=300)
            except httpx.HTTPError as err:
                batch_result["error"] = err

        batch_thread = threading.Thread(target=post_batch)
        batch_thread.start()
        _wait_for(gate / "held-0", "the batch reaching the forward pass", srv)
        data = encode(shelf_image(5))
        events = {}

        def body():
            yield data[:100]
            _wait_for(gate / "read-1", "the server reading the second request", srv)
            srv.proc.send_signal(signal.SIGTERM)
            deadline = time.time() + 60
            while time.time() < deadline and not _refused(srv.port):
                time.sleep(0.05)
            events["refused_new_connections"] = _refused(srv.port)
            events["batch_pending_at_sigterm"] = batch_thread.is_alive()
            (gate / "open").touch()
            yield data[100:]

        r = httpx.post(srv.url + "/invocations", content=body(), headers={"Content-Type": "image/jpeg"}, timeout=300)
        batch_thread.join(300)
        assert r.status_code == 200, r.text
        assert len(r.json()["scores"]) > 0
        assert events["refused_new_connections"], "server kept accepting connections after SIGTERM"
        assert events["batch_pending_at_sigterm"], "the batch was answered while its forward pass was held"
        assert "error" not in batch_result, "the held batch was cut by the shutdown: {!r}\n{}".format(
            batch_result.get("error"), srv.log())
        assert batch_result["response"].status_code == 200, batch_result["response"].text
        assert len(batch_result["response"].json()) == 3
        assert srv.proc.wait(60) == 0, srv.log()
        assert "Shutting down" in srv.log(tail=None)
    finally:
        srv.stop()


def _post_in_thread(srv, data: bytes, results: dict, key: str) -> threading.Thread:
    def post():
        try:
            results[key] = httpx.post(srv.url + "/invocations", content=data, headers={"Content-Type": "image/jpeg"},
                                      timeout=300)
        except httpx.HTTPError as err:
            results[key] = err

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


def _hold_one(srv, gate, key: str):
    """Posts one image and waits until its forward pass is held at the gate: (image, results, threads)."""
    data = encode(shelf_image(5))
    results = {}
    threads = [_post_in_thread(srv, data, results, key)]
    _wait_for(gate / "held-0", "the first request reaching the forward pass", srv)
    return data, results, threads


def test_a_burst_beyond_the_queue_gets_503_with_retry_after_while_ping_stays_200(model_dir, tmp_path):
    """One thread, SHELFDET_MAX_QUEUE=2: one request computes (held at the gate), two wait, the fourth is
    refused at once; after the gate opens all three are answered and the server takes new work."""
    gate = tmp_path / "gate"
    gate.mkdir()
    srv = ServerProcess(model_dir, tmp_path / "server.log", env={"OMP_NUM_THREADS": "1", "SHELFDET_MAX_QUEUE": "2"},
                        extra_args=["--threads", "1"], gate=gate)
    try:
        srv.wait_ready()
        assert "1 threads, up to 2 more requests waiting (SHELFDET_MAX_QUEUE)" in srv.log()
        data, results, threads = _hold_one(srv, gate, "computing")
        for n in (1, 2):
            threads.append(_post_in_thread(srv, data, results, "waiting-{}".format(n)))
            _wait_for(gate / "admitted-{}".format(n), "waiting request {} taking its place".format(n), srv)
        r = httpx.post(srv.url + "/invocations", content=data, headers={"Content-Type": "image/jpeg"}, timeout=60)
        assert r.status_code == 503, r.text
        assert int(r.headers["Retry-After"]) >= 1
        assert "server busy" in r.json()["error"] and "SHELFDET_MAX_QUEUE=2" in r.json()["error"], r.json()
        assert r.json()["retry_after_seconds"] == int(r.headers["Retry-After"])
        assert httpx.get(srv.url + "/ping", timeout=60).status_code == 200
        # Its body was read first (a body arrives before its request queues), and it took no place.
        assert (gate / "read-3").exists() and not (gate / "admitted-3").exists()
        (gate / "open").touch()
        for t in threads:
            t.join(300)
        for key in ("computing", "waiting-1", "waiting-2"):
            assert isinstance(results[key], httpx.Response) and results[key].status_code == 200, (key, results[key])
        after = [httpx.post(srv.url + "/invocations", content=data, headers={"Content-Type": "image/jpeg"},
                            timeout=300).status_code for _ in range(3)]
        assert after == [200, 200, 200]
    finally:
        assert srv.stop() == 0, srv.log()


def test_decoded_pixels_in_flight_are_capped_across_requests(model_dir, tmp_path):
    """SHELFDET_PIXELS_IN_FLIGHT holds one 96x72 image: with two threads, the second request waits for the
    first one's pixels (it says so in the log) instead of decoding beside it; both are answered."""
    gate = tmp_path / "gate"
    gate.mkdir()
    srv = ServerProcess(model_dir, tmp_path / "server.log", gate=gate,
                        env={"OMP_NUM_THREADS": "1", "SHELFDET_PIXELS_IN_FLIGHT": "10000"},
                        extra_args=["--threads", "2", "--log-level", "debug"])
    try:
        srv.wait_ready()
        assert "0 MP decoded in flight (SHELFDET_PIXELS_IN_FLIGHT)" in srv.log(tail=None)
        data, results, threads = _hold_one(srv, gate, "first")
        threads.append(_post_in_thread(srv, data, results, "second"))
        deadline = time.time() + 120
        while "pixel budget: a request waits for 6912 px (6912 of 10000 in flight)" not in srv.log(tail=None):
            assert time.time() < deadline, srv.log()
            time.sleep(0.05)
        assert not (gate / "held-1").exists(), "the second request reached the model while the first held the budget"
        (gate / "open").touch()
        for t in threads:
            t.join(300)
        assert [results[k].status_code for k in ("first", "second")] == [200, 200], results
        # A batch over the whole budget is not refused: it runs alone.
        batch = [base64.b64encode(encode(shelf_image(i))).decode() for i in range(3)]
        r = httpx.post(srv.url + "/invocations", json={"instances": batch}, timeout=300)
        assert r.status_code == 200 and len(r.json()) == 3, r.text
    finally:
        assert srv.stop() == 0, srv.log()


def test_the_graceful_timeout_bounds_shutdown_and_names_what_it_cut(model_dir, tmp_path):
    """A forward pass held forever: SIGTERM must still end the process once --graceful-timeout has passed,
    with status 1 and a line saying what was cut (waiting for the thread would never return)."""
    gate = tmp_path / "gate"
    gate.mkdir()
    srv = ServerProcess(model_dir, tmp_path / "server.log", env={"OMP_NUM_THREADS": "1"},
                        extra_args=["--threads", "1", "--graceful-timeout", "2"], gate=gate)
    try:
        srv.wait_ready()
        data, results, threads = _hold_one(srv, gate, "computing")
        threads.append(_post_in_thread(srv, data, results, "waiting"))
        _wait_for(gate / "read-1", "the second request being read", srv)
        srv.proc.send_signal(signal.SIGTERM)
        try:
            code = srv.proc.wait(240)
        except subprocess.TimeoutExpired:
            pytest.fail("the server did not exit within 240 s of SIGTERM with a 2 s graceful timeout:\n" + srv.log())
        assert code == 1, srv.log()
        log = srv.log(tail=None)
        assert "1 request(s) still computing and 1 waiting for a thread: cut" in log, log[-3000:]
        assert not (gate / "held-1").exists(), "the waiting request was started after the timeout"
        for t in threads:
            t.join(60)
        for key in ("computing", "waiting"):
            assert isinstance(results[key], httpx.Response) and results[key].status_code == 503, (key, results[key])
            assert "graceful timeout cut this request" in results[key].json()["error"]
        assert "Traceback" not in log, log[-3000:]
    finally:
        srv.stop()


def test_not_a_model_folder_fails_fast_with_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "shared"))
    out = subprocess.run([sys.executable, "-m", "shelfdet", "serve", "--model-dir", str(tmp_path), "--port",
                          str(free_port())], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "artefacts.json" in out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1


@pytest.mark.parametrize("env,needle", [({"SAGEMAKER_BIND_TO_PORT": "http"}, "not a TCP port"),
                                        ({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "lots"}, "SAGEMAKER_MAX_PAYLOAD_IN_MB"),
                                        ({"SAGEMAKER_BATCH_STRATEGY": "ALL"}, "SAGEMAKER_BATCH_STRATEGY"),
                                        ({"SHELFDET_INFER": "--lr 0.1"}, "SHELFDET_INFER: 'lr' is a training"),
                                        ({"SHELFDET_MAX_QUEUE": "-1"}, "SHELFDET_MAX_QUEUE=-1 must be >= 0"),
                                        ({"SHELFDET_MAX_QUEUE": "many"}, "SHELFDET_MAX_QUEUE='many' is not"),
                                        ({"SHELFDET_PIXELS_IN_FLIGHT": "0"}, "SHELFDET_PIXELS_IN_FLIGHT=0 must be"),
                                        ({"SHELFDET_BODY_TIMEOUT": "0"}, "SHELFDET_BODY_TIMEOUT=0 is outside (0, 3600]"),
                                        ({"SHELFDET_BODY_TIMEOUT": "soon"}, "SHELFDET_BODY_TIMEOUT='soon' is not")])
def test_bad_environment_fails_fast(model_dir, env, needle):
    full = dict(os.environ, PYTHONPATH=str(ROOT / "shared"), **env)
    args = [] if "SAGEMAKER_BIND_TO_PORT" in env else ["--port", str(free_port())]
    out = subprocess.run([sys.executable, "-m", "shelfdet", "serve", "--model-dir", model_dir] + args,
                         capture_output=True, text=True, timeout=60, env=full)
    assert out.returncode == 2 and needle in out.stderr and "Traceback" not in out.stderr


def test_port_and_model_dir_from_sagemaker_environment(model_dir, tmp_path):
    port = free_port()
    env = {"SAGEMAKER_BIND_TO_PORT": str(port), "SM_MODEL_DIR": model_dir, "OMP_NUM_THREADS": "1"}
    log = open(str(tmp_path / "log"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "shelfdet", "serve"], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT / "shared"), **env))
    try:
        wait_for_port(port, timeout=120, proc=proc)
        # 127.0.0.1 without --host: this machine only (the serving image passes --host 0.0.0.0).
        text = _wait_log(tmp_path / "log", "Uvicorn running")
        assert "127.0.0.1:{}".format(port) in text and "0.0.0.0" not in text
        assert _listens_on_every_interface(port) is False
        # What it runs on, before it serves: the first line to read when an endpoint misbehaves.
        import torch

        from shelfdet.core import compat

        env_line = next(line for line in text.splitlines() if "environment: " in line)
        assert "torch " + torch.__version__ in env_line and "detectron2 " + compat.detectron2_version() in env_line
        assert text.index("environment: ") < text.index("Uvicorn running")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        log.close()


def _wait_log(path, needle, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = path.read_text(errors="replace")
        if needle in text:
            return text
        time.sleep(0.1)
    raise AssertionError("{!r} not in log:\n{}".format(needle, path.read_text(errors="replace")))


class _InProcessServer:
    """The app under uvicorn in a thread, with an injected model loader."""

    def __init__(self, loader, on_load_error=None):
        import uvicorn

        from shelfdet.serving import limits
        from shelfdet.serving.app import create_app

        self.port = free_port()
        self.url = "http://127.0.0.1:{}".format(self.port)
        app = create_app("unused", settings=limits.settings_from_env({}), loader=loader, on_load_error=on_load_error)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        wait_for_port(self.port)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


class _FakeDetector:
    min_score = 0.1
    max_detections = 10
    device = "cpu"

    def decode(self, data, name="image"):
        from shelfdet.core import photos

        return photos.decode(data, name)

    def predict(self, images, score_thr=None, max_detections=None):
        return [{"image_height": im.shape[0], "image_width": im.shape[1], "pred_boxes": [], "scores": [],
                 "pred_classes": [], "pred_class_names": [], "class_names": ["SKU"]} for im in images]


def test_ping_answers_503_while_the_model_loads_then_200():
    release = threading.Event()

    def slow_loader(model_dir, device):
        release.wait(300)
        return _FakeDetector()

    with _InProcessServer(slow_loader) as srv:
        # The loader is held until release.set(): a ping that waited for the model would time out here.
        r = httpx.get(srv.url + "/ping", timeout=60)
        assert r.status_code == 503 and r.json()["error"] == "model is loading"
        r = httpx.post(srv.url + "/invocations", content=encode(shelf_image(1)), headers={"Content-Type": "image/jpeg"},
                       timeout=60)
        assert r.status_code == 503
        assert httpx.get(srv.url + "/execution-parameters", timeout=60).json() == {
            "MaxConcurrentTransforms": 1, "BatchStrategy": "SINGLE_RECORD", "MaxPayloadInMB": 6}
        release.set()
        deadline = time.time() + 60
        while httpx.get(srv.url + "/ping", timeout=60).status_code != 200:
            assert time.time() < deadline
            time.sleep(0.05)
        r = httpx.post(srv.url + "/invocations", content=encode(shelf_image(1)), headers={"Content-Type": "image/jpeg"},
                       timeout=60)
        assert r.status_code == 200 and r.json()["image_width"] == 96


def test_load_failure_is_reported_by_ping_and_stops_the_server():
    reported = []

    def broken_loader(model_dir, device):
        raise RuntimeError("weights do not match the config")

    with _InProcessServer(broken_loader, on_load_error=reported.append) as srv:
        deadline = time.time() + 60
        while not reported:
            assert time.time() < deadline
            time.sleep(0.05)
        r = httpx.get(srv.url + "/ping", timeout=60)
        assert r.status_code == 503 and "weights do not match" in r.json()["error"]
    assert "weights do not match" in reported[0]


def test_settings_defaults_and_normalisation():
    from shelfdet.serving import limits

    s = limits.settings_from_env({})
    assert s.execution_parameters() == {"MaxConcurrentTransforms": 1, "BatchStrategy": "SINGLE_RECORD",
                                        "MaxPayloadInMB": 6}
    assert s.max_payload_bytes == 6 * 1024 * 1024
    s = limits.settings_from_env({"SAGEMAKER_BATCH_STRATEGY": "MultiRecord", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "16",
                                  "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "4"})
    assert s.execution_parameters() == {"MaxConcurrentTransforms": 4, "BatchStrategy": "MULTI_RECORD",
                                        "MaxPayloadInMB": 16}
    for bad in ({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "0"}, {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "inf"},
                {"SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "0"}, {"SAGEMAKER_BATCH_STRATEGY": "x"}):
        with pytest.raises(limits.LimitError):
            limits.settings_from_env(bad)


def test_the_queue_is_sized_from_threads_and_memory_unless_set():
    from shelfdet.core import runtime
    from shelfdet.serving import limits

    gib = 1024 ** 3
    auto = limits.settings_from_env({})  # 6 MB payloads
    assert limits.queue_size(auto, 4, 64 * gib) == 16  # four per thread
    assert limits.queue_size(auto, 4, 48 * 1024 ** 2) == 2  # a quarter of 48 MB holds two 6 MB bodies
    assert limits.queue_size(auto, 4, 1024) == 1  # never zero by default: one request may always wait
    assert limits.queue_size(auto, 4, None) == 16
    big = limits.settings_from_env({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "100"})
    assert limits.queue_size(big, 8, 2 * gib) == 5
    assert limits.queue_size(limits.settings_from_env({"SHELFDET_MAX_QUEUE": "0"}), 4, 64 * gib) == 0
    assert limits.queue_size(limits.settings_from_env({"SHELFDET_MAX_QUEUE": " 300 "}), 4, 1024) == 300
    free = runtime.available_memory()
    assert free is None or free > 0
    # Decoded pixels in flight: half the memory at 12 bytes a pixel, never under one largest request.
    assert limits.pixels_in_flight(auto, 24 * gib, 120_000_000) == 12 * gib // 12
    assert limits.pixels_in_flight(auto, gib, 120_000_000) == 120_000_000
    assert limits.pixels_in_flight(limits.settings_from_env({"SHELFDET_PIXELS_IN_FLIGHT": "5"}), gib, 9) == 5


def test_the_pixel_budget_serves_in_arrival_order():
    """A large request waiting for pixels is not overtaken by smaller ones that would fit: it could starve."""
    from shelfdet.serving.app import PixelBudget

    budget = PixelBudget(10)
    order, release = [], threading.Event()

    def run(name, pixels, hold=None):
        with budget.hold(pixels):
            order.append(name)
            if hold is not None:
                hold.wait(60)

    def until(condition):
        deadline = time.time() + 60
        while not condition():
            assert time.time() < deadline
            time.sleep(0.01)

    first = threading.Thread(target=run, args=("first", 6, release))
    first.start()
    until(lambda: order == ["first"])
    threads = [threading.Thread(target=run, args=("large", 8))]
    threads[0].start()
    until(lambda: budget.waiting == 1)
    threads.append(threading.Thread(target=run, args=("small", 2)))
    threads[1].start()
    until(lambda: budget.waiting == 2)
    assert order == ["first"], "the small request went past the large one"
    release.set()
    for t in [first] + threads:
        t.join(60)
    assert order == ["first", "large", "small"]
    assert budget.free == 10 and budget.waiting == 0
