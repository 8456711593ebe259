"""The real GPU path: a short training with AMP and a batch of inferences, per detector.

Runs our training entry (R_50_FPN, batch 16, SKU-110K-like 1333x800 inputs,
from scratch since no weights can be downloaded on the test machines) and
times iterations and inference images/s. Skips (exit 0) without a GPU.
Writes bench/results/gpu.json; docs/benchmarks.md compares it with the reference's V100.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "shared"))

ITERS = int(os.environ.get("GPU_BENCH_ITERS", "60"))
# The reference solution's time: 3,000 iterations on one V100 (ml.p3.2xlarge), whole job wall time.
REFERENCE_V100_S = {"faster_rcnn": 2685 / 3000, "retinanet": 2636 / 3000}


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("[bench] gpu: no CUDA device here; skipped (results/gpu.json keeps the last GPU run)")
        return 0
    from shelfdet.core import hyperparameters
    from shelfdet.commands import train
    from shelfdet.data import build
    from shelfdet.core.inference import Detector
    from shelfdet.core import photos

    device = torch.cuda.get_device_name(0)
    tmp = tempfile.mkdtemp()
    data = os.path.join(tmp, "data")
    t0 = time.time()
    assert build.main(["--data-dir", data, "--train-images", "64", "--val-images", "8", "--test-images", "32",
                       "--image-size", "1333x800", "--workers", str(min(16, os.cpu_count() or 1))]) == 0
    metrics = {"data_s": round(time.time() - t0, 1)}
    for algo in ("faster_rcnn", "retinanet"):
        raw = {"model-type": algo, "backbone": "R_50_FPN", "weights": "none", "batch-size": "16", "num-iter": str(ITERS),
               "amp": "true", "min-size": "800", "max-size": "1333", "eval-period": "0", "checkpoint-period": "100000",
               "num-workers": "8", "log-period": "20", "augment": "flip"}
        hp = hyperparameters.parse(raw)
        root = os.path.join(tmp, algo)
        train.lay_out(root, data, hyperparameters.as_strings(hp))
        t0 = time.time()
        out = subprocess.run([sys.executable, "-m", "shelfdet", "sm-train", "--ml-root", root],
                             capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        log = out.stdout + out.stderr
        if out.returncode:
            print(log[-4000:])
            return 1
        speed = re.search(r"Overall training speed: (\d+) iterations in \S+ \(([0-9.]+) s / it\)", log)
        m = json.load(open(os.path.join(root, "model", "metrics.json")))
        metrics[algo + "_s_per_iter"] = float(speed.group(2))
        metrics[algo + "_images_per_s_train"] = round(16 / float(speed.group(2)), 1)
        metrics[algo + "_job_s"] = round(time.time() - t0, 1)
        metrics[algo + "_eval_s_32_images"] = m.get("eval_seconds")
        metrics[algo + "_speedup_vs_reference_v100"] = round(REFERENCE_V100_S[algo] / float(speed.group(2)), 2)
        det = Detector.from_model_dir(os.path.join(root, "model"))
        names = sorted(os.listdir(os.path.join(data, "test")))
        images = [photos.read(os.path.join(data, "test", n)) for n in names]
        det.predict(images[:8])  # warm-up: cuDNN autotune, allocator
        torch.cuda.synchronize()
        t0 = time.time()
        for i in range(0, len(images), 8):
            det.predict(images[i:i + 8])
        torch.cuda.synchronize()
        metrics[algo + "_infer_images_per_s_batch8"] = round(len(images) / (time.time() - t0), 1)
        t0 = time.time()
        for im in images:
            det.predict([im])
        torch.cuda.synchronize()
        metrics[algo + "_infer_images_per_s_batch1"] = round(len(images) / (time.time() - t0), 1)
    result = {
        "name": "gpu",
        "metrics": metrics,
        "target": "record the real GPU path (AMP training, batched inference); reference V100: {:.3f} / {:.3f} s per iteration".format(
            REFERENCE_V100_S["faster_rcnn"], REFERENCE_V100_S["retinanet"]),
        "machine": {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0]},
    }
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    out_dir = os.environ.get("OUT") or os.path.join(ROOT, "bench", "results")
    with open(os.path.join(out_dir, "gpu.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
