"""Helpers for the serving tests: a tiny real model, tiny images, a real server process.

The model is a small Detectron2 Faster R-CNN (ResNet-18 FPN, 128 px test size)
with random weights, written through artefacts.write_manifest like training
does. Its classifier weights are scaled up so scores spread over (0, 1):
with near-equal scores a ranking would hinge on float noise.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
from PIL import Image

from conftest import ROOT, free_port, wait_for_port

TARGET_STD = 0.6


def make_tiny_model(base_dir: Path, seed: int = 0, score_thresh: float = 0.05, det_per_img: int = 300) -> str:
    """A random-init tiny Faster R-CNN model folder under ``base_dir``, built once per session."""
    model_dir = Path(base_dir) / "tiny-model-{}-{}-{}".format(seed, score_thresh, det_per_img)
    if (model_dir / "artefacts.json").is_file():
        return str(model_dir)
    from shelfdet.core import artefacts, inference, safeweights  # noqa: F401  (inference applies compat before detectron2)

    import torch
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("Base-RCNN-FPN.yaml"))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_thresh
    # Small heads keep a forward pass at a few ms on a busy CPU core.
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 128
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 300
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 100
    cfg.TEST.DETECTIONS_PER_IMAGE = det_per_img
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 128
    torch.manual_seed(seed)
    model = build_model(cfg)
    _spread_scores(model, cfg)
    model_dir.mkdir(parents=True, exist_ok=True)
    safeweights.save(model.state_dict(), str(model_dir / artefacts.WEIGHTS))
    (model_dir / artefacts.CONFIG).write_text(cfg.dump())
    artefacts.write_manifest(str(model_dir), ["SKU"], "faster_rcnn", {"det-per-img": str(det_per_img)})
    return str(model_dir)


def _spread_scores(model, cfg) -> None:
    """Rescales the random classifier so foreground logits have a std of TARGET_STD on a sample image."""
    import torch

    from shelfdet.core.inference import Detector

    seen = []
    cls = model.roi_heads.box_predictor.cls_score
    hook = cls.register_forward_hook(lambda mod, inp, out: seen.append(out[:, 0] - out[:, 1]))
    det = Detector.__new__(Detector)  # only for its input preparation
    Detector.__init__(det, cfg, "", ["SKU"])
    model.eval()
    with torch.no_grad():
        model([det._inputs(shelf_image(12345)[:, :, ::-1].copy())])
    hook.remove()
    std = float(torch.cat(seen).std())
    with torch.no_grad():
        cls.weight.mul_(TARGET_STD / max(std, 1e-12))
        cls.bias.zero_()


def shelf_image(seed: int, width: int = 96, height: int = 72) -> np.ndarray:
    """A small RGB 'shelf': coloured boxes on a grey background."""
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 200, np.uint8)
    for _ in range(8):
        w, h = int(rng.integers(8, width // 3)), int(rng.integers(10, height // 2))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        img[y:y + h, x:x + w] = rng.integers(0, 255, 3)
    return img


def encode(rgb: np.ndarray, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, quality=90)
    return buf.getvalue()


def png_bomb(width: int = 100000, height: int = 100000) -> bytes:
    """A valid PNG header declaring huge dimensions, with a tiny payload."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class ServerProcess:
    """``python -m shelfdet serve`` on 127.0.0.1, its log in a file."""

    def __init__(self, model_dir: str, log_path: Path, env: Optional[Dict[str, str]] = None,
                 extra_args: Optional[List[str]] = None, gate: Optional[Path] = None):
        """``gate``: a folder; the server then holds every forward pass until ``gate/open`` exists (_gated_serve)."""
        self.port = free_port()
        self.url = "http://127.0.0.1:{}".format(self.port)
        self.log_path = log_path
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = str(ROOT / "shared") + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.update(env or {})
        entry = ["-m", "shelfdet", "serve"] if gate is None else [str(ROOT / "tests" / "_gated_serve.py"), str(gate)]
        cmd = [sys.executable] + entry + ["--model-dir", model_dir, "--port", str(self.port),
                                          "--host", "127.0.0.1"] + list(extra_args or [])
        self._log = open(str(log_path), "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=str(ROOT))

    def wait_ready(self, timeout: float = 300.0) -> None:
        import httpx

        wait_for_port(self.port, timeout=timeout, proc=self.proc)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited with {}:\n{}".format(self.proc.returncode, self.log()))
            try:
                if httpx.get(self.url + "/ping", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("server not ready after {}s:\n{}".format(timeout, self.log()))

    @contextlib.contextmanager
    def running(self) -> Iterator["ServerProcess"]:
        """Ready inside the block; stopped after it, and it must have exited cleanly (SIGTERM: 0)."""
        try:
            self.wait_ready()
            yield self
        finally:
            code = self.stop()
            assert code == 0, "server exited with {}:\n{}".format(code, self.log())

    def log(self, tail: Optional[int] = 4000) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return text[-tail:] if tail else text

    def stop(self) -> Optional[int]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def write_dataset(root: Path, images: Dict[str, np.ndarray], boxes: Dict[str, List[List[float]]]) -> Path:
    """A Ground Truth test manifest + images; boxes are [x1, y1, x2, y2] per image."""
    img_dir = root / "test"
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    img_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, rgb in images.items():
        Image.fromarray(rgb).save(str(img_dir / name), quality=92)
        h, w = rgb.shape[:2]
        anns = [{"class_id": 0, "left": b[0], "top": b[1], "width": b[2] - b[0], "height": b[3] - b[1]}
                for b in boxes[name]]
        lines.append(json.dumps({
            "source-ref": "s3://bucket/detectron2/data/test/" + name,
            "sku": {"annotations": anns, "image_size": [{"width": w, "height": h, "depth": 3}]},
            "sku-metadata": {"job-name": "test", "class-map": {"0": "SKU"}, "human-annotated": "yes",
                             "objects": [{"confidence": 1.0} for _ in anns],
                             "type": "groundtruth/object-detection", "creation-date": "2026-01-01T00:00:00"},
        }))
    manifest = root / "annotations" / "test.manifest"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest
