"""Serving soak on real shelf photos: 16 concurrent clients, 200 POSTs, twice in one run.

The 12 real SKU-110K photos of ``../shared/realdata`` (1920x2560 to
2988x5312, phone JPEGs; academic licence, so read from there and never
copied into the project) are posted raw to ``python -m shelfdet serve`` by
16 threads until 200 requests are done, against the serving benchmark's
model (R50-FPN, random weights, 300 boxes per image) at a 256 px test size.
The server runs 16 threads, as under batch transform with
MaxConcurrentTransforms=16, so all 16 requests may decode at once. Two
servers in turn, same requests:

* ``default``: the decoded-pixel budget as shipped (half the free memory,
  more than 16 photos here: in effect no cap);
* ``capped``: ``SHELFDET_PIXELS_IN_FLIGHT`` at two of the largest photos,
  what the default gives an instance with about 0.8 GB free.

Recorded per server: the server's peak RSS (VmHWM), p50/p99 latency,
photos/s, status counts (every non-200 counted; a 5xx fails the target),
and /ping polled throughout. The damaged ``test_22.jpg`` is one of the
photos: it is answered, not refused. Without the photos the result says
it was skipped and why.
"""
from __future__ import annotations

import glob
import os
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "shared"))
sys.path.insert(0, HERE)
os.environ.setdefault("OMP_NUM_THREADS", "1")

from _common import write_result  # noqa: E402
from bench_serving import build_model, start_server  # noqa: E402

import httpx  # noqa: E402

PHOTOS = os.path.join(os.path.dirname(ROOT), "shared", "realdata")
REQUESTS = 200
CONCURRENCY = 16


def peak_rss_mb(pid: int) -> float:
    with open("/proc/{}/status".format(pid)) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def soak(url: str, photos: list) -> dict:
    lat, codes, pings = [], [], []
    lock = threading.Lock()
    local = threading.local()
    done = threading.Event()

    def one(i):
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=600)
        t = time.perf_counter()
        r = local.client.post("/invocations", content=photos[i % len(photos)],
                              headers={"Content-Type": "image/jpeg"})
        with lock:
            lat.append(time.perf_counter() - t)
            codes.append(r.status_code)

    def ping():
        with httpx.Client(base_url=url, timeout=60) as client:
            while not done.is_set():
                pings.append(client.get("/ping").status_code)
                done.wait(1.0)

    poller = threading.Thread(target=ping)
    poller.start()
    start = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, range(REQUESTS)))
    wall = time.perf_counter() - start
    done.set()
    poller.join()
    ms = np.asarray(lat) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "photos_per_s": round(REQUESTS / wall, 2), "ok": codes.count(200),
            "not_200": len(codes) - codes.count(200), "5xx": sum(1 for c in codes if c >= 500),
            "pings": len(pings), "pings_not_200": sum(1 for p in pings if p != 200)}


def main() -> int:
    paths = sorted(glob.glob(os.path.join(PHOTOS, "*.jpg")))
    if not paths:
        write_result("soak", {}, "skipped: no photos in {} (real SKU-110K photos, not part of the project)"
                     .format(PHOTOS), skipped=True)
        return 0
    photos = []
    for p in paths:
        with open(p, "rb") as f:
            photos.append(f.read())
    largest = max(_pixels(p) for p in paths)
    metrics = {"photos": len(photos), "requests": REQUESTS, "concurrency": CONCURRENCY}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(os.path.join(tmp, "model"))
        os.environ["SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"] = str(CONCURRENCY)
        for label, env in (("default", {}), ("capped", {"SHELFDET_PIXELS_IN_FLIGHT": str(2 * largest)})):
            os.environ.pop("SHELFDET_PIXELS_IN_FLIGHT", None)
            os.environ.update(env)
            proc, url, log = start_server(model_dir, os.path.join(tmp, label + ".log"))
            try:
                result = soak(url, photos)
                result["peak_rss_mb"] = round(peak_rss_mb(proc.pid), 0)
            finally:
                proc.send_signal(signal.SIGTERM)
                result["exit_code"] = proc.wait(120)
                log.close()
            metrics.update({"{}_{}".format(label, k): v for k, v in result.items()})
    os.environ.pop("SHELFDET_PIXELS_IN_FLIGHT", None)
    metrics["bench_s"] = round(time.time() - t0, 1)
    clean = all(metrics[k + "_5xx"] == 0 and metrics[k + "_pings_not_200"] == 0 and metrics[k + "_exit_code"] == 0
                for k in ("default", "capped"))
    write_result("soak", metrics,
                 "16 concurrent clients x 200 real photos: no 5xx, /ping 200 throughout, clean exit: {}; "
                 "capped pixel budget lowers the peak RSS: {} ({:.0f} vs {:.0f} MB)".format(
                     "met" if clean else "MISSED",
                     "met" if metrics["capped_peak_rss_mb"] < metrics["default_peak_rss_mb"] else "MISSED",
                     metrics["capped_peak_rss_mb"], metrics["default_peak_rss_mb"]),
                 setup={"model": "Faster R-CNN R50-FPN (random weights), test size 256", "device": "cpu",
                        "threads": CONCURRENCY, "capped_pixels_in_flight": 2 * largest})
    return 0


def _pixels(path: str) -> int:
    from PIL import Image

    with Image.open(path) as im:
        return im.size[0] * im.size[1]


if __name__ == "__main__":
    raise SystemExit(main())
