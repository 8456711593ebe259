"""The slim serving image (stack cpu-slim), for real: no torch in it; `docker run IMAGE serve` on a
model folder with an export (`python -m shelfdet export`) answers /ping and /invocations over HTTP
with the eager model's boxes (IoU >= 0.9, score within 0.01), in the serverless stand-in's limits
(--memory 6g --cpus 2); on a folder without an export it stops at once, in one line naming
`make export`. Its cold start and size against the cpu serving image: bench/bench_slim.py.

Needs a Docker daemon and the image (`make test` builds it and sets SHELFDET_SLIM_SERVING_IMAGE;
or `make build-serving STACK=cpu-slim`). Skips, saying why, when either is missing."""
from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

import numpy as np
import pytest

from _container_support import NO_DOCKER, ROOT, docker_answers, http, image, jpeg, scene

pytestmark = pytest.mark.skipif(not docker_answers(), reason=NO_DOCKER)

# The serverless stand-in: SageMaker Serverless Inference's largest memory size, and this machine's 2 CPUs.
SERVERLESS = ("--memory", "6g", "--cpus", "2")


@pytest.fixture(scope="module")
def slim() -> str:
    name = os.environ.get("SHELFDET_SLIM_SERVING_IMAGE")
    if name and subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0:
        return name
    return image("serving", "cpu-slim")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Dict[str, Path]:
    """The tiny serving-test model twice: as trained (no export) and with its OpenVINO export."""
    from _serving_support import make_tiny_model
    from shelfdet.core import artefacts

    plain = Path(make_tiny_model(tmp_path_factory.mktemp("slim-model")))
    # Its config keeps 100 proposals; its hyperparameters say so, as training writes them, so that the
    # export (made with the config's) serves with the settings the model folder states.
    artefacts.write_manifest(str(plain), ["SKU"], "faster_rcnn", {"det-per-img": "300", "proposals": "100"})
    exported = plain.parent / "with-export"
    shutil.copytree(str(plain), str(exported))
    out = subprocess.run([sys.executable, "-m", "shelfdet", "export", "--model-dir", str(exported), "--format",
                          "openvino"], capture_output=True, text=True, cwd=str(ROOT), timeout=600,
                         env=dict(os.environ, PYTHONPATH=str(ROOT / "shared")))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert (exported / "export" / "openvino" / "model.xml").is_file()
    # The container's user (uid 1000) reads the mounted folders.
    for folder in (plain, exported):
        for path in [folder] + list(folder.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
    return {"plain": plain, "exported": exported}


@contextlib.contextmanager
def started(image_name: str, model_dir: Path, name: str, docker_args: Sequence[str] = ()) -> Iterator[str]:
    """``docker run IMAGE serve`` on ``model_dir``; yields its base URL once /ping answers 200."""
    run = subprocess.run(["docker", "run", "-d", "--name", name, "-p", "127.0.0.1::8080", *docker_args,
                          "-v", "{}:/opt/ml/model:ro".format(model_dir), image_name, "serve"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    try:
        port = subprocess.run(["docker", "port", name, "8080/tcp"], capture_output=True, text=True,
                              check=True).stdout.split()[0].rsplit(":", 1)[1]
        base = "http://127.0.0.1:{}".format(port)
        deadline, status = time.time() + 240, None
        while time.time() < deadline:
            with contextlib.suppress(urllib.error.URLError, ConnectionError, OSError):
                status, _ = http(base + "/ping", timeout=2)
                if status == 200:
                    break
            state = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", name],
                                   capture_output=True, text=True).stdout.strip()
            assert state == "true", "the serving container exited:\n" + logs(name)[-4000:]
            time.sleep(0.5)
        assert status == 200, "/ping never answered 200"
        yield base
    finally:
        print(logs(name)[-3000:])
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def logs(name: str) -> str:
    out = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
    return out.stdout + out.stderr


def matched_share(eager: dict, served: dict) -> float:
    """The share of the eager boxes the served answer has too: IoU >= 0.9 and score within 0.01."""
    boxes = np.asarray(served["pred_boxes"], np.float64).reshape(-1, 4)
    scores = np.asarray(served["scores"], np.float64)
    classes = np.asarray(served["pred_classes"])
    used = np.zeros(len(scores), bool)
    found = 0
    for box, score, cls in zip(eager["pred_boxes"], eager["scores"], eager["pred_classes"]):
        if not len(boxes):
            break
        x1 = np.maximum(box[0], boxes[:, 0])
        y1 = np.maximum(box[1], boxes[:, 1])
        x2 = np.minimum(box[2], boxes[:, 2])
        y2 = np.minimum(box[3], boxes[:, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
        ok = (inter / np.maximum(union, 1e-9) >= 0.9) & (np.abs(scores - score) <= 0.01) & (classes == cls) & ~used
        if ok.any():
            used[int(np.argmax(ok))] = True
            found += 1
    return found / max(1, len(eager["scores"]))


def eager_predictions(model_dir: Path, photos: List[bytes]) -> List[dict]:
    from shelfdet.core.inference import Detector

    detector = Detector.from_model_dir(str(model_dir), "cpu")
    assert not hasattr(detector, "runtime") or detector.runtime == "torch"
    return [detector.predict([detector.decode(data, "photo {}".format(i))])[0] for i, data in enumerate(photos)]


def test_slim_image_holds_no_torch_detectron2_or_pycocotools(slim):
    out = subprocess.run(["docker", "run", "--rm", slim, "python", "-c",
                          "import importlib.util as u; print([m for m in ('torch', 'torchvision', 'detectron2', "
                          "'pycocotools') if u.find_spec(m)])"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_slim_serves_the_export_with_the_eager_boxes(slim, models):
    rng = np.random.default_rng(11)
    photos = [jpeg(scene(rng, 160, 128)[0]) for _ in range(3)]
    expected = eager_predictions(models["plain"], photos)
    assert sum(len(p["scores"]) for p in expected) > 10, "the tiny model answers boxes to compare"
    name = "shelfdet-test-slim-{}".format(os.getpid())
    with started(slim, models["exported"], name, SERVERLESS) as base:
        for data, eager in zip(photos, expected):
            status, body = http(base + "/invocations", data=data,
                                headers={"Content-Type": "image/jpeg", "Accept": "application/json"})
            assert status == 200, body[:1000]
            served = json.loads(body)
            assert (served["image_height"], served["image_width"]) == (eager["image_height"], eager["image_width"])
            assert matched_share(eager, served) >= 0.99, (len(eager["scores"]), len(served["scores"]))
        # The JSON batch and the decoder's refusals: the same HTTP API as the cpu serving image.
        batch = json.dumps({"instances": [base64.b64encode(p).decode() for p in photos[:2]]}).encode()
        status, body = http(base + "/invocations", data=batch, headers={"Content-Type": "application/json"})
        assert status == 200 and len(json.loads(body)) == 2, body[:500]
        status, body = http(base + "/invocations", data=b"not an image", headers={"Content-Type": "image/jpeg"})
        assert 400 <= status < 500, (status, body[:500])
        assert subprocess.run(["docker", "exec", name, "healthcheck"], capture_output=True).returncode == 0
        text = logs(name)
        assert "runtime openvino" in text, text[-3000:]
        assert "POST /invocations" in text and "[runtime openvino" in text, text[-3000:]


def test_slim_refuses_a_model_folder_without_an_export(slim, models):
    t0 = time.time()
    out = subprocess.run(["docker", "run", "--rm", *SERVERLESS, "-v",
                          "{}:/opt/ml/model:ro".format(models["plain"]), slim, "serve"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode != 0, out.stdout[-2000:] + out.stderr[-2000:]
    errors = [l for l in out.stderr.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1 and "make export" in errors[0], out.stderr[-3000:]
    assert time.time() - t0 < 120
