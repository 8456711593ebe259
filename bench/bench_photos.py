"""Real photos through the inference decoder: full decode + resize (before issue 21) vs the reduced-scale decode.

The 12 real SKU-110K photos of ``../shared/realdata`` (1920x2560 to
2988x5312, phone JPEGs; academic licence, so read from there and never
copied into the project), at the local test scale (256/320, the local
default of min-size/max-size) and at SageMaker's default (800/1333):

* decode + resize per photo, in this process, one thread. ``old`` is the
  decoder before issue 21: a full decode, ``ImageOps.exif_transpose``, the
  BGR copy, then Detectron2's ``ResizeTransform`` as ``Detector._inputs``
  applied it. ``new`` is ``photos.decode_scaled`` (libjpeg's reduced DCT
  scales, then the resize). Best of REPEATS each, the two alternated; and
  the mean absolute pixel difference between their outputs (grey levels).
* served: two ``python -m shelfdet serve`` processes on the same model, one
  decoding the old way (this file as a wrapper: the real ``server.main``,
  with ``Detector.decode`` swapped for the old full decode), one as shipped.
  Every photo is POSTed to both in turn, ROUNDS times, at concurrency 1:
  p50/p99 of each, and how far the boxes of the two answers lie apart.

The model is the serving benchmark's (R50-FPN, random weights, ~300 anchor
boxes a photo: the full JSON, but boxes that do not depend on the pixels);
``--model-dir`` serves a trained one instead, whose boxes do. Target: at
800/1333, decode + resize at least 3x faster on every photo. Writes
bench/results/photos.json; without the photos it says it skipped and why.
"""
from __future__ import annotations

import argparse
import glob
import io
import os
import signal
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "shared"))
sys.path.insert(0, HERE)
os.environ.setdefault("OMP_NUM_THREADS", "1")

from _common import write_result  # noqa: E402

PHOTOS = os.path.join(os.path.dirname(ROOT), "shared", "realdata")
SCALES = ((256, 320), (800, 1333))  # local default of min-size/max-size; SageMaker's (Detectron2's) default
REPEATS = 5
ROUNDS = 2
# Boxes compared: the ones a count would count (the model's scores are over it on these photos when trained).
COUNT_SCORE = 0.5


def old_decode(data: bytes) -> np.ndarray:
    """``photos.decode`` before issue 21: every pixel, then the orientation, then a BGR copy."""
    from PIL import Image, ImageOps

    img = Image.open(io.BytesIO(data))
    img.load()
    rgb = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def old_path(data: bytes, min_size: int, max_size: int) -> np.ndarray:
    from shelfdet.core.inference import inference_resize

    image = old_decode(data)
    return inference_resize(image.shape[0], image.shape[1], min_size, max_size).apply_image(image)


def new_path(data: bytes, min_size: int, max_size: int) -> np.ndarray:
    from shelfdet.core import photos

    return photos.decode_scaled(data, min_size, max_size).image


def decode_times(photos: dict) -> dict:
    out = {}
    for min_size, max_size in SCALES:
        rows = {}
        for name, data in photos.items():
            best = {"old": float("inf"), "new": float("inf")}
            for _ in range(REPEATS):
                for label, fn in (("old", old_path), ("new", new_path)):
                    t = time.perf_counter()
                    fn(data, min_size, max_size)
                    best[label] = min(best[label], time.perf_counter() - t)
            a = old_path(data, min_size, max_size).astype(np.int16)
            b = new_path(data, min_size, max_size).astype(np.int16)
            assert a.shape == b.shape, (name, a.shape, b.shape)
            rows[name] = {"old_ms": round(best["old"] * 1000, 1), "new_ms": round(best["new"] * 1000, 1),
                          "speedup": round(best["old"] / best["new"], 2),
                          "pixel_diff": round(float(np.abs(a - b).mean()), 3)}
        out["{}/{}".format(min_size, max_size)] = rows
    return out


def serve_old(argv: list) -> int:
    """``shelfdet serve`` decoding as before issue 21 (the Detector resizes the full photo itself)."""
    from shelfdet.core import inference
    from shelfdet.serving import server

    inference.Detector.decode = lambda self, data, name="image": old_decode(data)
    return server.main(argv)


def start(model_dir: str, log_path: str, old: bool):
    from bench_serving import start_server

    command = [sys.executable, os.path.abspath(__file__), "--serve-old"] if old else None
    return start_server(model_dir, log_path, command)


def box_shift(a: dict, b: dict) -> tuple:
    """Boxes of ``a`` scoring >= COUNT_SCORE: the share with a box of ``b`` at IoU >= 0.9, and the largest
    corner shift (original pixels) to their best match."""
    pa = np.reshape(a["pred_boxes"], (-1, 4))[np.asarray(a["scores"]) >= COUNT_SCORE]
    pb = np.reshape(b["pred_boxes"], (-1, 4))
    if not len(pa):
        return 1.0, 0.0
    if not len(pb):
        return 0.0, float("inf")
    lt = np.maximum(pa[:, None, :2], pb[None, :, :2])
    rb = np.minimum(pa[:, None, 2:], pb[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    iou = inter / (area(pa)[:, None] + area(pb)[None, :] - inter)
    best = iou.argmax(axis=1)
    matched = iou[np.arange(len(pa)), best] >= 0.9
    shift = np.abs(pa - pb[best]).max(axis=1)
    return float(matched.mean()), float(shift[matched].max()) if matched.any() else float("inf")


def served(photos: dict, model_dir: str, tmp: str, min_size: int, max_size: int) -> dict:
    import httpx
    import yaml

    from shelfdet.core import artefacts

    # The same model at this test size.
    scaled = os.path.join(tmp, "model-{}".format(min_size))
    os.makedirs(scaled, exist_ok=True)
    for f in os.listdir(model_dir):
        if not os.path.exists(os.path.join(scaled, f)):
            os.symlink(os.path.join(os.path.abspath(model_dir), f), os.path.join(scaled, f))
    config = os.path.join(scaled, artefacts.CONFIG)
    with open(os.path.join(model_dir, artefacts.CONFIG)) as f:
        cfg = yaml.safe_load(f)
    cfg["INPUT"]["MIN_SIZE_TEST"], cfg["INPUT"]["MAX_SIZE_TEST"] = min_size, max_size
    os.remove(config)
    with open(config, "w") as f:
        yaml.safe_dump(cfg, f)

    servers = {label: start(scaled, os.path.join(tmp, "{}-{}.log".format(label, min_size)), label == "old")
               for label in ("old", "new")}
    lat = {"old": [], "new": []}
    answers = {"old": {}, "new": {}}
    try:
        clients = {label: httpx.Client(base_url=url, timeout=600) for label, (_, url, _) in servers.items()}
        for label, client in clients.items():  # warm both
            client.post("/invocations", content=next(iter(photos.values())), headers={"Content-Type": "image/jpeg"})
        for _ in range(ROUNDS):
            for name, data in photos.items():
                for label, client in clients.items():
                    t = time.perf_counter()
                    r = client.post("/invocations", content=data, headers={"Content-Type": "image/jpeg"})
                    lat[label].append(time.perf_counter() - t)
                    r.raise_for_status()
                    answers[label][name] = r.json()
    finally:
        for proc, _, log in servers.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
            log.close()
    out = {}
    for label, values in lat.items():
        ms = np.asarray(values) * 1000.0
        out[label + "_p50_ms"] = round(float(np.percentile(ms, 50)), 1)
        out[label + "_p99_ms"] = round(float(np.percentile(ms, 99)), 1)
    shifts = [box_shift(answers["old"][n], answers["new"][n]) for n in photos]
    out["boxes_matched_pct_min"] = round(100 * min(s[0] for s in shifts), 1)
    out["box_shift_px_max"] = round(max(s[1] for s in shifts), 1)
    out["count_diff_max"] = max(abs(sum(s >= COUNT_SCORE for s in answers["old"][n]["scores"])
                                    - sum(s >= COUNT_SCORE for s in answers["new"][n]["scores"])) for n in photos)
    out["warnings"] = sorted(n for n in photos if answers["new"][n].get("warnings"))
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-old"]:
        return serve_old(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", help="a trained model folder (default: the serving benchmark's model)")
    args = ap.parse_args(argv)
    paths = sorted(glob.glob(os.path.join(PHOTOS, "*.jpg")))
    if not paths:
        write_result("photos", {}, "skipped: no photos in {} (real SKU-110K photos, not part of the project)"
                     .format(PHOTOS), skipped=True)
        return 0
    photos = {}
    for p in paths:
        with open(p, "rb") as f:
            photos[os.path.basename(p)] = f.read()
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    t0 = time.time()
    per_photo = decode_times(photos)
    metrics = {"photos": len(photos)}
    for scale, rows in per_photo.items():
        key = scale.replace("/", "_")
        speedups = [r["speedup"] for r in rows.values()]
        metrics.update({
            "decode_old_ms_median_" + key: round(float(np.median([r["old_ms"] for r in rows.values()])), 1),
            "decode_new_ms_median_" + key: round(float(np.median([r["new_ms"] for r in rows.values()])), 1),
            "decode_speedup_min_" + key: min(speedups),
            "decode_speedup_median_" + key: round(float(np.median(speedups)), 2),
            "pixel_diff_max_" + key: max(r["pixel_diff"] for r in rows.values()),
        })
    with tempfile.TemporaryDirectory() as tmp:
        if args.model_dir:
            model_dir = args.model_dir
        else:
            from bench_serving import build_model

            model_dir = build_model(os.path.join(tmp, "model"))
        for min_size, max_size in SCALES:
            key = "{}_{}".format(min_size, max_size)
            for k, v in served(photos, model_dir, tmp, min_size, max_size).items():
                metrics["serve_{}_{}".format(k, key)] = v
    metrics["bench_s"] = round(time.time() - t0, 1)
    met = metrics["decode_speedup_min_800_1333"] >= 3.0
    write_result("photos", metrics,
                 "decode + resize of every real photo at 800/1333 at least 3x faster than before: {} (slowest gain "
                 "{}x, median {}x); mean pixel difference at most {} grey levels".format(
                     "met" if met else "MISSED", metrics["decode_speedup_min_800_1333"],
                     metrics["decode_speedup_median_800_1333"],
                     max(metrics["pixel_diff_max_256_320"], metrics["pixel_diff_max_800_1333"])),
                 setup={"model": args.model_dir or "Faster R-CNN R50-FPN (random weights, anchor boxes)",
                        "device": "cpu", "intra_op_threads": torch.get_num_threads(), "repeats": REPEATS,
                        "rounds": ROUNDS, "scales": ["{}/{}".format(*s) for s in SCALES]},
                 per_photo=per_photo)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
