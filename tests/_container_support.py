"""Helpers for the container tests: /opt/ml laid out as SageMaker does, docker runs,
a serving container on a free local port. Images are named by tools/images.sh."""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TRAIN_TIMEOUT = 900


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=15).returncode == 0
    except subprocess.TimeoutExpired:
        return False


NO_DOCKER = "no Docker daemon answers (bash tools/docker_daemon.sh start; make test does it)"


def image(kind: str, stack: str = "cpu") -> str:
    """The built image of ``kind`` for ``stack``, or a skip that says how to build it.

    ``make test`` names the cpu images it just built in SHELFDET_<KIND>_IMAGE."""
    name = os.environ.get("SHELFDET_{}_IMAGE".format(kind.upper())) if stack == "cpu" else None
    if not name:
        name = subprocess.run(["bash", str(ROOT / "tools" / "images.sh"), "name", kind, stack],
                              capture_output=True, text=True, check=True).stdout.strip()
    if subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode != 0:
        pytest.skip("image {} is not built (make build STACK={})".format(name, stack))
    return name


def scene(rng: np.random.Generator, w: int = 160, h: int = 128):
    """A shelf-like picture: coloured boxes on a grey background, and their boxes."""
    img = np.full((h, w, 3), 90, np.uint8)
    boxes = []
    for row in range(2):
        x = 4
        while x < w - 30:
            bw, bh = int(rng.integers(14, 28)), int(rng.integers(30, 52))
            y = row * (h // 2) + 4
            img[y:y + bh, x:x + bw] = rng.integers(40, 255, 3)
            boxes.append([x, y, bw, bh])
            x += bw + int(rng.integers(2, 6))
    return img, boxes


def jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def lay_out_opt_ml(root: Path, hps: dict) -> None:
    """/opt/ml as SageMaker lays it out: channels with images, manifests in `annotation`."""
    rng = np.random.default_rng(0)
    data = root / "input" / "data"
    (data / "annotation").mkdir(parents=True)
    for channel, n in (("training", 6), ("validation", 2), ("test", 2)):
        (data / channel).mkdir()
        with open(data / "annotation" / (channel + ".manifest"), "w") as man:
            for i in range(n):
                img, boxes = scene(rng)
                name = "{}_{}.jpg".format(channel, i)
                (data / channel / name).write_bytes(jpeg(img))
                rec = {"source-ref": "s3://bucket/detectron2/data/{}/{}".format(channel, name),
                       "sku": {"annotations": [{"class_id": 0, "left": x, "top": y, "width": bw, "height": bh}
                                               for x, y, bw, bh in boxes],
                               "image_size": [{"width": img.shape[1], "height": img.shape[0], "depth": 3}]},
                       "sku-metadata": {"job-name": "labeling-job/sku", "class-map": {"0": "SKU"},
                                        "human-annotated": "yes", "objects": [{"confidence": 1.0}] * len(boxes),
                                        "type": "groundtruth/object-detection",
                                        "creation-date": "2026-01-01T00:00:00.000000"}}
                man.write(json.dumps(rec) + "\n")
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps({k: str(v) for k, v in hps.items()}))
    (config / "inputdataconfig.json").write_text(json.dumps(
        {c: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"}
         for c in ("training", "validation", "test", "annotation")}))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}))
    for d in ("model", "output", "checkpoints"):
        (root / d).mkdir()


TINY = {"model-type": "faster_rcnn", "backbone": "R_18_FPN", "weights": "none", "num-iter": 4, "batch-size": 2,
        "num-workers": 0, "min-size": 128, "max-size": 160, "eval-period": 0, "val-samples": 2,
        "checkpoint-period": 2, "log-period": 1, "augment": "none", "warmup-iters": 0}


def docker_run(image: str, ml: Path, *cmd: str, timeout: int = TRAIN_TIMEOUT, env: Optional[Dict[str, str]] = None,
               docker_args: Sequence[str] = ()) -> subprocess.CompletedProcess:
    # SageMaker gives the container 1 host's CPUs; the test machine is small: 2 threads.
    env_args = [a for k, v in (env or {}).items() for a in ("-e", "{}={}".format(k, v))]
    args = ["docker", "run", "--rm", "-v", "{}:/opt/ml".format(ml), "-e", "OMP_NUM_THREADS=2", *env_args,
            *docker_args, image] + list(cmd)
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def docker_start(image: str, ml: Path, *cmd: str, name: str,
                 env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """``docker run -d``: for runs the test kills."""
    env_args = [a for k, v in (env or {}).items() for a in ("-e", "{}={}".format(k, v))]
    args = ["docker", "run", "-d", "--name", name, "-v", "{}:/opt/ml".format(ml), "-e", "OMP_NUM_THREADS=2",
            *env_args, image] + list(cmd)
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def http(url: str, data: bytes = None, headers: dict = None, timeout: float = 60):
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@contextlib.contextmanager
def serving_container(image: str, model_dir: Path, name: str, env: Optional[Dict[str, str]] = None) -> Iterator[str]:
    """``docker run IMAGE serve`` on ``model_dir`` (with ``env``); yields its base URL once /ping answers 200."""
    env_args = [a for k, v in (env or {}).items() for a in ("-e", "{}={}".format(k, v))]
    run = subprocess.run(["docker", "run", "-d", "--name", name, "-p", "127.0.0.1::8080", *env_args,
                          "-v", "{}:/opt/ml/model:ro".format(model_dir), image, "serve"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    try:
        port = subprocess.run(["docker", "port", name, "8080/tcp"], capture_output=True, text=True,
                              check=True).stdout.split()[0].rsplit(":", 1)[1]
        base = "http://127.0.0.1:{}".format(port)
        deadline, status = time.time() + 240, None  # SageMaker waits up to 4 min for /ping
        while time.time() < deadline:
            try:
                status, _ = http(base + "/ping", timeout=2)
                if status == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            state = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", name],
                                   capture_output=True, text=True).stdout.strip()
            assert state == "true", "the serving container exited:\n" + subprocess.run(
                ["docker", "logs", name], capture_output=True, text=True).stderr[-4000:]
            time.sleep(1)
        assert status == 200, "/ping never answered 200"
        yield base
    finally:
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
        print(logs.stdout[-3000:], logs.stderr[-3000:])
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
