"""Exported models (``make export``) run with numpy, Pillow and OpenVINO or ONNX Runtime: no torch, no Detectron2.

The graph (``core.export``) stops before the score threshold and NMS; this
module does the rest the way Detectron2 does it (``fast_rcnn_inference``,
RetinaNet's ``inference_single_image``, ``detector_postprocess``): threshold,
clip to the resized photo, per-class NMS, cap, rescale to the photo's own
size, drop empty boxes. Soft-NMS and tiles are then the eager model's
(``core.inference``), on numpy arrays.

TorchScript exports are written for users who want one, but never loaded
here unless asked (``runtime="torchscript"``): a TorchScript file carries code,
and a model folder is data.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from shelfdet.core import artefacts, hyperparameters, photos

log = logging.getLogger(__name__)

EXPORT_DIR = "export"
FORMATS = ("openvino", "onnx", "torchscript")
RUNTIMES = ("auto", "openvino", "onnx", "torch")
RUNTIME_ENV = "SHELFDET_RUNTIME"
RECORD = "record.json"
GRAPH_FILES = {"openvino": "model.xml", "onnx": "model.onnx", "torchscript": "model.ts"}
# Everything an export writes (make export replaces exactly these).
OWN_FILES = frozenset([RECORD, "model.xml", "model.bin", "model.onnx", "model.ts"])
# A box close to a tile's inner edge (image pixels) is a cut fragment (core.postprocess).
EDGE_MARGIN = 2.0
# Precisions OpenVINO runs, fastest first, with the CPU capability each needs.
PRECISIONS = (("bf16", "BF16"), ("f32", "FP32"))


class ExportMissing(RuntimeError):
    """The model folder has no export the runtime can run (and no torch to run it eagerly)."""


class InputRule(NamedTuple):
    min_size: int
    max_size: int
    format: str  # the model's channel order, BGR or RGB
    pixel_mean: Tuple[float, ...]
    pixel_std: Tuple[float, ...]
    size_divisibility: int
    square_size: int

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> "InputRule":
        return cls(int(raw["min_size"]), int(raw["max_size"]), str(raw["format"]),
                   tuple(float(v) for v in raw["pixel_mean"]), tuple(float(v) for v in raw["pixel_std"]),
                   int(raw.get("size_divisibility", 0)), int(raw.get("square_size", 0)))


def network_input(pixels: np.ndarray, rule: InputRule) -> Tuple[np.ndarray, np.ndarray]:
    """An HxWx3 BGR photo at its test size -> (1x3xHpxWp float32 normalised and zero-padded, [h, w] float32),
    as Detectron2's ``preprocess_image`` and ``ImageList.from_tensors`` make it."""
    if rule.format == "RGB":
        pixels = pixels[:, :, ::-1]
    height, width = pixels.shape[:2]
    mean = np.asarray(rule.pixel_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(rule.pixel_std, dtype=np.float32)[:, None, None]
    chw = (np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(np.float32) - mean) / std
    padded_h, padded_w = height, width
    if rule.square_size:
        padded_h = padded_w = rule.square_size
    elif rule.size_divisibility > 1:
        step = rule.size_divisibility
        padded_h, padded_w = -(-height // step) * step, -(-width // step) * step
    tensor = np.zeros((1, 3, padded_h, padded_w), dtype=np.float32)
    tensor[0, :, :height, :width] = chw
    return tensor, np.asarray([height, width], dtype=np.float32)


def resized(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Detectron2's ``ResizeTransform`` on a uint8 photo: Pillow's bilinear."""
    if pixels.shape[:2] == (height, width):
        return pixels
    return np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).resize((width, height), Image.BILINEAR))


# ---- boxes in numpy ---------------------------------------------------------------------------------------

def iou_one(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with each of ``boxes`` (x0, y0, x1, y1), as torchvision's ``box_iou``."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = w * h
    return inter / (area + areas - inter)


def _apart(boxes: np.ndarray, classes: np.ndarray) -> np.ndarray:
    # Classes apart, as torchvision's batched_nms does it: boxes of other classes never overlap.
    if not len(boxes):
        return boxes
    return boxes + (classes.astype(boxes.dtype) * (boxes.max() + 1))[:, None]


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy per-class NMS: indices kept, best first (torchvision's ``batched_nms``)."""
    shifted = _apart(boxes, classes)
    order = np.argsort(-scores, kind="stable")
    alive = np.ones(len(order), dtype=bool)
    keep = []
    for rank, index in enumerate(order):
        if not alive[rank]:
            continue
        keep.append(index)
        rest = order[rank + 1:]
        alive[rank + 1:] &= iou_one(shifted[index], shifted[rest]) <= threshold
    return np.asarray(keep, dtype=np.int64)


def soft_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, sigma: float, min_score: float,
             max_keep: int) -> Tuple[np.ndarray, np.ndarray]:
    """Gaussian Soft-NMS per class (``core.postprocess.soft_nms`` on numpy arrays): (indices, decayed scores)."""
    shifted = _apart(boxes, classes)
    current = scores.astype(np.float32).copy()
    keep: List[int] = []
    kept: List[float] = []
    for _ in range(min(max_keep, len(boxes))):
        best = int(np.argmax(current))
        value = float(current[best])
        if value < min_score:
            break
        keep.append(best)
        kept.append(value)
        iou = iou_one(shifted[best], shifted)
        current = current * np.exp(-(iou * iou) / sigma).astype(np.float32)
        current[best] = -1.0
    return np.asarray(keep, dtype=np.int64), np.asarray(kept, dtype=np.float32)


def windows(height: int, width: int, size: int, overlap: float) -> List[Tuple[int, int, int, int]]:
    """Tiles of at most ``size`` px covering the photo (``core.postprocess.windows``, which this is)."""
    def starts(length: int) -> List[int]:
        if length <= size:
            return [0]
        step = max(1, int(size * (1.0 - overlap)))
        return list(range(0, length - size, step)) + [length - size]

    tw, th = min(size, width), min(size, height)
    return [(x, y, x + tw, y + th) for y in starts(height) for x in starts(width)]


def uncut(boxes: np.ndarray, tile: Tuple[int, int, int, int], height: int, width: int) -> np.ndarray:
    """Mask of boxes (photo coordinates) that touch none of the tile's inner edges."""
    x0, y0, x1, y1 = tile
    keep = np.ones(len(boxes), dtype=bool)
    if x0 > 0:
        keep &= boxes[:, 0] > x0 + EDGE_MARGIN
    if y0 > 0:
        keep &= boxes[:, 1] > y0 + EDGE_MARGIN
    if x1 < width:
        keep &= boxes[:, 2] < x1 - EDGE_MARGIN
    if y1 < height:
        keep &= boxes[:, 3] < y1 - EDGE_MARGIN
    return keep


def matched(reference: Mapping[str, Any], other: Mapping[str, Any], iou: float = 0.9, score: float = 0.01) -> int:
    """How many of ``reference``'s boxes (a predict dict) ``other`` has too: same class, IoU >= ``iou``,
    score within ``score``."""
    ref_boxes = np.asarray(reference["pred_boxes"], dtype=np.float64).reshape(-1, 4)
    boxes = np.asarray(other["pred_boxes"], dtype=np.float64).reshape(-1, 4)
    if not len(boxes):
        return 0
    scores = np.asarray(other["scores"], dtype=np.float64)
    classes = np.asarray(other["pred_classes"])
    hits = 0
    for box, s, c in zip(ref_boxes, reference["scores"], reference["pred_classes"]):
        ok = (iou_one(box, boxes) >= iou) & (np.abs(scores - s) < score) & (classes == c)
        hits += bool(ok.any())
    return hits


# ---- what the graph gives -> the model's answer -------------------------------------------------------------

class Options(NamedTuple):
    """What happens after the model's own forward (hyperparameters ``nms``, ``soft-nms-sigma``,
    ``tile-size``, ``tile-overlap``); the defaults are the model's plain output."""
    nms: str = "hard"
    soft_nms_sigma: float = 0.5
    tile_size: int = 0
    tile_overlap: float = 0.25

    @property
    def plain(self) -> bool:
        return self.nms == "hard" and not self.tile_size


class Settings(NamedTuple):
    """The score threshold, NMS and cap that Detectron2 applies inside the eager model."""
    score_threshold: float
    nms_threshold: float
    detections: int
    candidates: int


def _clip(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    out = boxes.copy()
    out[:, 0::2] = np.clip(out[:, 0::2], 0, width)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, height)
    return out


def rcnn_candidates(outputs: Sequence[np.ndarray], size: Tuple[int, int], threshold: float
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fast R-CNN's test-time filter: finite rows, boxes clipped, (proposal, class) pairs above the threshold."""
    boxes, scores = outputs[0], outputs[1]
    valid = np.isfinite(boxes).all(axis=1) & np.isfinite(scores).all(axis=1)
    boxes, scores = boxes[valid], scores[valid][:, :-1]
    per_box = boxes.shape[1] // 4
    boxes = _clip(boxes.reshape(-1, 4), *size).reshape(-1, per_box, 4)
    rows, classes = np.nonzero(scores > threshold)
    picked = boxes[rows, 0] if per_box == 1 else boxes[rows, classes]
    return picked, scores[rows, classes], classes


def retina_candidates(outputs: Sequence[np.ndarray], size: Tuple[int, int], threshold: float
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RetinaNet's: each level's top candidates above the threshold (not clipped, as Detectron2 leaves them)."""
    keep = outputs[1] > threshold
    return outputs[0][keep], outputs[1][keep], outputs[2][keep].astype(np.int64)


CANDIDATES = {"rcnn": rcnn_candidates, "retinanet": retina_candidates}


def finish(found: Tuple[np.ndarray, np.ndarray, np.ndarray], settings: Settings, resized_size: Tuple[int, int],
           size: Tuple[int, int], all_boxes: bool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NMS and cap (or, ``all_boxes``, the best ``candidates`` for Soft-NMS), then ``detector_postprocess``:
    boxes in the photo's own pixels, clipped, empty ones dropped."""
    boxes, scores, classes = found
    if all_boxes:
        keep = np.argsort(-scores, kind="stable")[:settings.candidates]
    else:
        keep = nms(boxes, scores, classes, settings.nms_threshold)[:settings.detections]
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    scale = np.asarray([size[1] / resized_size[1], size[0] / resized_size[0]] * 2, dtype=np.float32)
    boxes = _clip(boxes * scale, *size)
    kept = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[kept], scores[kept], classes[kept]


# ---- runtimes ---------------------------------------------------------------------------------------------

Runner = Callable[[np.ndarray, np.ndarray], List[np.ndarray]]


def _openvino(path: str, allowed: Sequence[str]) -> Tuple[Runner, str]:
    import openvino

    core = openvino.Core()
    capabilities = set(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    # A lower precision only where the record says it was measured within 0.005 AP, and the CPU has it.
    precision = next(p for p, cap in PRECISIONS if (p in allowed and cap in capabilities) or p == "f32")
    compiled = core.compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()
    outputs = compiled.outputs
    # RetinaNet's graph never reads image_size (it clips nothing), and the exporter drops an unused input.
    wanted = len(compiled.inputs)

    def run(image: np.ndarray, size: np.ndarray) -> List[np.ndarray]:
        answer = request.infer([image, size][:wanted])
        return [np.array(answer[o]) for o in outputs]

    return run, "openvino " + precision


def _onnx(path: str, allowed: Sequence[str]) -> Tuple[Runner, str]:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(image: np.ndarray, size: np.ndarray) -> List[np.ndarray]:
        return session.run(None, dict(zip(names, (image, size))))

    return run, "onnx f32"


def _torchscript(path: str, allowed: Sequence[str]) -> Tuple[Runner, str]:
    import torch
    import torchvision  # noqa: F401  (registers the nms and roi_align ops the graph calls)

    module = torch.jit.load(path, map_location="cpu")

    def run(image: np.ndarray, size: np.ndarray) -> List[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in module(torch.from_numpy(image), torch.from_numpy(size))]

    return run, "torchscript f32"


RUNNERS = {"openvino": _openvino, "onnx": _onnx, "torchscript": _torchscript}
# The Python package each format runs with, for auto's choice.
PACKAGES = {"openvino": "openvino", "onnx": "onnxruntime", "torchscript": "torch"}


def read_record(folder: str) -> Dict[str, Any]:
    path = os.path.join(folder, RECORD)
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as err:
        raise ExportMissing("{}: cannot read the export's record ({}): run `make export` again".format(path, err)) from None
    if record.get("kind") not in CANDIDATES:
        raise ExportMissing("{}: kind {!r} is not one this release runs ({}): run `make export` again".format(
            path, record.get("kind"), ", ".join(CANDIDATES)))
    return record


def available(model_dir: str) -> List[str]:
    """The formats exported in ``model_dir`` (complete folders only: graph file and record)."""
    found = []
    for fmt in FORMATS:
        folder = os.path.join(model_dir, EXPORT_DIR, fmt)
        if os.path.isfile(os.path.join(folder, RECORD)) and os.path.isfile(os.path.join(folder, GRAPH_FILES[fmt])):
            found.append(fmt)
    return found


def _installed(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


def choose(model_dir: str, runtime: str) -> Optional[str]:
    """The export format ``runtime`` runs in ``model_dir``; None: the eager model. auto: OpenVINO, then ONNX
    Runtime, whichever is exported and installed (TorchScript only when named: it carries code)."""
    if runtime not in RUNTIMES + ("torchscript",):
        raise ValueError("{}={}: choose one of {}".format(RUNTIME_ENV, runtime, ", ".join(RUNTIMES)))
    if runtime == "torch":
        return None
    have = available(model_dir)
    if runtime != "auto":
        if runtime not in have:
            raise ExportMissing("{} has no {} export: `make export MODEL_DIR={} FORMAT={}` writes it".format(
                model_dir, runtime, model_dir, runtime))
        return runtime
    return next((f for f in ("openvino", "onnx") if f in have and _installed(PACKAGES[f])), None)


def _given_again(folder: str, settings: Settings, options: Options, hp: hyperparameters.Inference,
                 names: set) -> Tuple[Settings, Options]:
    """The recorded settings with the hyperparameters ``names`` given again (INFER=, SHELFDET_INFER)."""
    candidates = settings.candidates
    if names & {"det-per-img", "proposals"}:
        candidates = hyperparameters.candidates(hp)
        if candidates != settings.candidates:
            # RPN's post-NMS cap and RetinaNet's per-level top-k are inside the graph.
            raise ExportMissing("{}: the export keeps {} candidates per photo, these settings want {} (proposals, "
                                "det-per-img): export again with them, or {}=torch".format(
                                    folder, settings.candidates, candidates, RUNTIME_ENV))
    settings = Settings(float(hp.pred_thr) if "pred-thr" in names else settings.score_threshold,
                        float(hp.nms_thr) if "nms-thr" in names else settings.nms_threshold,
                        int(hp.det_per_img) if "det-per-img" in names else settings.detections, candidates)
    # The eager model takes these from its hyperparameters (inference.options_of), given again or not.
    return settings, Options(hp.nms, float(hp.soft_nms_sigma), int(hp.tile_size), float(hp.tile_overlap))


class Decoding:
    """Photo bytes as a detector reads them (``options``, ``min_size``, ``max_size``: the detector's)."""
    options: Options
    min_size: int
    max_size: int

    def decode(self, data: bytes, name: str = "image") -> photos.Decoded:
        """Image bytes -> the photo at this model's test scale (``photos.decode_scaled``), for ``predict``.

        Tiles are cut from the photo at full size, each then resized as a
        whole photo is: a tiled model gets every pixel.
        """
        if self.options.tile_size:
            return photos.decode_scaled(data, 0, 0, name)
        return photos.decode_scaled(data, self.min_size, self.max_size, name)

    def read(self, path: str) -> photos.Decoded:
        with open(path, "rb") as f:
            return self.decode(f.read(), path)


class ExportedDetector(Decoding):
    """An exported model with its test-time resize and post-processing: ``core.inference.Detector``'s
    ``decode``/``read``/``predict`` for serving, ``make predict`` and ``make evaluate``."""

    def __init__(self, folder: str, record: Mapping[str, Any], settings: Settings, options: Options,
                 runner: Runner, runtime: str):
        self.folder = folder
        self.record = dict(record)
        self.kind = record["kind"]
        self.rule = InputRule.of(record["input"])
        self.min_size, self.max_size = self.rule.min_size, self.rule.max_size
        self.class_names = list(record["class_names"])
        self.settings = settings
        self.options = options
        self.runtime = runtime
        self._run = runner
        self._lock = threading.Lock()

    @classmethod
    def from_folder(cls, folder: str, fmt: str, inference: Optional[hyperparameters.Inference] = None,
                    names: Sequence[str] = ()) -> "ExportedDetector":
        """The export as recorded; ``inference``, ``names``: hyperparameters given again over it (the eager
        model sets the same ones again on its saved config, ``config.set_inference``)."""
        record = read_record(folder)
        post = record["postprocess"]
        settings = Settings(float(post["score_threshold"]), float(post["nms_threshold"]),
                            int(post["detections_per_image"]), int(post["candidates"]))
        options = Options(str(post["nms"]), float(post["soft_nms_sigma"]), int(post["tile_size"]),
                          float(post["tile_overlap"]))
        if inference is not None:
            settings, options = _given_again(folder, settings, options, inference, set(names))
        runner, runtime = RUNNERS[fmt](os.path.join(folder, GRAPH_FILES[fmt]), record.get("precisions") or ["f32"])
        return cls(folder, record, settings, options, runner, runtime)

    @classmethod
    def from_model_dir(cls, model_dir: str, runtime: str = "auto",
                       overrides: Optional[Mapping[str, Any]] = None) -> "ExportedDetector":
        fmt = choose(model_dir, runtime)
        if fmt is None:
            raise ExportMissing("{} has no export that runs here: `make export MODEL_DIR={}` writes one".format(
                model_dir, model_dir))
        saved = artefacts.read_manifest(model_dir).get("hyperparameters") or {}
        return cls.from_folder(os.path.join(model_dir, EXPORT_DIR, fmt), fmt,
                               hyperparameters.inference_of(saved, overrides), list(overrides or ()))

    def _forward(self, pixels: np.ndarray, height: int, width: int, all_boxes: bool
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One view (the photo or a tile) -> boxes in its own ``height`` x ``width`` pixels."""
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError("expected an HxWx3 image, got shape {}".format(pixels.shape))
        size = photos.inference_size(height, width, self.min_size, self.max_size)
        image, image_size = network_input(resized(pixels, *size), self.rule)
        with self._lock:
            outputs = self._run(image, image_size)
        found = CANDIDATES[self.kind](outputs, size, self.settings.score_threshold)
        return finish(found, self.settings, size, (height, width), all_boxes)

    def raw(self, photo: photos.Decoded) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes, scores, classes) of one photo in its own pixels, best first."""
        opt, s = self.options, self.settings
        if opt.plain:
            return self._forward(photo.image, photo.height, photo.width, False)
        soft = opt.nms == "soft"
        parts = [self._forward(photo.image, photo.height, photo.width, soft)]
        tiles = windows(photo.height, photo.width, opt.tile_size, opt.tile_overlap) if opt.tile_size else []
        if len(tiles) > 1:
            if photo.image.shape[:2] != (photo.height, photo.width):
                raise ValueError("tiles are cut from the photo at full size, got it at {}x{} of {}x{}: decode it with "
                                 "decode()".format(photo.image.shape[1], photo.image.shape[0], photo.width, photo.height))
            for tile in tiles:
                x0, y0, x1, y1 = tile
                b, sc, c = self._forward(photo.image[y0:y1, x0:x1], y1 - y0, x1 - x0, soft)
                b = b + np.asarray([x0, y0, x0, y0], dtype=b.dtype)
                whole = uncut(b, tile, photo.height, photo.width)
                parts.append((b[whole], sc[whole], c[whole]))
        boxes, scores, classes = (np.concatenate([p[i] for p in parts]) for i in range(3))
        if soft:
            keep, kept = soft_nms(boxes, scores, classes, opt.soft_nms_sigma, s.score_threshold, s.detections)
        else:
            keep = nms(boxes, scores, classes, s.nms_threshold)
            keep = keep[scores[keep] >= s.score_threshold][:s.detections]
            kept = scores[keep]
        return boxes[keep], kept, classes[keep]

    def predict(self, images: Sequence[Any], score_thr: Optional[float] = None,
                max_detections: Optional[int] = None) -> List[Dict[str, Any]]:
        """The serving answer's dicts (``core.inference.Detector.predict``'s keys), one per photo."""
        results = []
        for image in images:
            photo = image if isinstance(image, photos.Decoded) else photos.Decoded(image, image.shape[0], image.shape[1])
            boxes, scores, classes = self.raw(photo)
            order = np.argsort(-scores, kind="stable")
            if score_thr is not None:
                order = order[scores[order] >= score_thr]
            if max_detections is not None:
                order = order[:max_detections]
            result = {"image_height": int(photo.height), "image_width": int(photo.width),
                      "pred_boxes": boxes[order].tolist(), "scores": scores[order].tolist(),
                      "pred_classes": [int(c) for c in classes[order]],
                      "pred_class_names": [self.class_names[int(c)] for c in classes[order]],
                      "class_names": self.class_names}
            if photo.warnings:
                result["warnings"] = list(photo.warnings)
            results.append(result)
        return results


def load(model_dir: str, runtime: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None,
         device: Optional[str] = None) -> Any:
    """The detector to serve ``model_dir`` with: its export when ``runtime`` (default: ``SHELFDET_RUNTIME``,
    else auto) finds one that runs here, else the eager model, which needs torch and Detectron2."""
    runtime = runtime or os.environ.get(RUNTIME_ENV) or "auto"
    fmt = choose(model_dir, runtime)
    if fmt is not None:
        return ExportedDetector.from_model_dir(model_dir, fmt, overrides)
    try:
        from shelfdet.core.inference import Detector
    except ImportError as err:
        raise ExportMissing("{} has no export ({}) and this install has no {} to run the model as trained: "
                            "`make export MODEL_DIR={}` writes one".format(model_dir, EXPORT_DIR, err.name, model_dir)) from None
    return Detector.from_model_dir(model_dir, device, overrides)
