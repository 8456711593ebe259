"""``make export``: a trained model as a graph that runs without Detectron2 (OpenVINO, ONNX, TorchScript).

The graph takes the photo already resized, normalised and padded (numpy does
that in ``core.exported``) and stops before the score threshold and NMS:

- ``rcnn`` (Faster and Cascade R-CNN): per proposal, the boxes of every class
  and the class probabilities (background last), as Detectron2's box predictor
  gives them to its own ``fast_rcnn_inference``;
- ``retinanet``: per pyramid level, the best ``TOPK_CANDIDATES_TEST`` anchor x
  class scores with their decoded boxes and classes.

What Detectron2 would do next (threshold, clip, NMS, cap, rescale) is done in
numpy, so Soft-NMS and tiles work the same on every runtime and one exported
graph serves any NMS setting. Padding stays out of the graph as well: OpenVINO
rounds Detectron2's ``(size + 31) // 32 * 32`` the wrong way for some widths.
Detectron2's own ``detectron2.export`` is not used: the 0.6 release we install
imports caffe2 there and fails, and its graphs end after NMS.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import warnings
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from shelfdet.core import artefacts, compat, exported
from shelfdet.core.inference import Detector, _retina

log = logging.getLogger(__name__)

OPSET = 17
# The share of the eager boxes an export must find again (IoU >= 0.9, score within 0.01) to be kept.
# A trained model's f32 exports find them all (make bench BENCH=export); on a barely trained one,
# float differences between runtimes flip a few NMS decisions between near-equal boxes. A graph
# that is wrong (a size frozen at the traced photo, a padding rounded the other way) loses far more.
MIN_AGREEMENT = 0.9
# Photos the export is checked on (make export, training's export=): a handful, as each runs both models.
CHECK_PHOTOS = 4
INPUTS = ("image", "image_size")
OUTPUTS = {"rcnn": ("boxes", "scores"), "retinanet": ("boxes", "scores", "classes")}


class ExportError(RuntimeError):
    """The model cannot be exported as asked (format, runtime missing, graph check failed)."""


def _instances(size: torch.Tensor) -> Any:
    # Detectron2 clips boxes to image_sizes; tensors (not ints) keep the traced graph valid at any size.
    return [(size[0], size[1])]


def _boxes_and_probs(predictor: nn.Module, predictions: Any, proposals: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    """The box predictor's ``predict_boxes`` and ``predict_probs`` for one photo, without their split into
    photos, whose sizes (Python ints) a trace would freeze at the example's proposal count."""
    logits, deltas = predictions[0], predictions[1]
    boxes = predictor.box2box_transform.apply_deltas(deltas, proposals[0].proposal_boxes.tensor)
    probs = logits.sigmoid() if getattr(predictor, "use_sigmoid_ce", False) else torch.softmax(logits, dim=-1)
    return boxes, probs


class RCNNGraph(nn.Module):
    """Backbone, RPN and box head(s) of a (Cascade) R-CNN, up to the box predictor's boxes and probabilities."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, size: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        from detectron2.structures import ImageList

        model = self.model
        features = model.backbone(image)
        images = ImageList(image, _instances(size))
        proposals, _ = model.proposal_generator(images, features, None)
        heads = model.roi_heads
        feats = [features[f] for f in heads.box_in_features]
        if isinstance(heads.box_predictor, nn.ModuleList):
            return self._cascade(heads, feats, proposals)
        boxes_features = heads.box_head(heads.box_pooler(feats, [p.proposal_boxes for p in proposals]))
        return _boxes_and_probs(heads.box_predictor, heads.box_predictor(boxes_features), proposals)

    @staticmethod
    def _cascade(heads: nn.Module, feats: List[torch.Tensor], proposals: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        # CascadeROIHeads._forward_box at test time, without its final fast_rcnn_inference.
        image_sizes = [p.image_size for p in proposals]
        scores = []
        boxes = None
        for stage in range(heads.num_cascade_stages):
            if stage > 0:
                proposals = heads._create_proposals_from_boxes([boxes], image_sizes)
            # Not heads._run_stage: it scales the features' gradient with an autograd Function, which a
            # TorchScript file cannot hold.
            pooled = heads.box_pooler(feats, [p.proposal_boxes for p in proposals])
            predictions = heads.box_predictor[stage](heads.box_head[stage](pooled))
            boxes, probs = _boxes_and_probs(heads.box_predictor[stage], predictions, proposals)
            scores.append(probs)
        return boxes, sum(scores) * (1.0 / heads.num_cascade_stages)


class RetinaGraph(nn.Module):
    """RetinaNet's backbone and head, up to each level's top candidates (scores not thresholded)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, size: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from detectron2.modeling.meta_arch.retinanet import permute_to_N_HWA_K

        model = self.model
        features = model.backbone(image)
        features = [features[f] for f in model.head_in_features]
        anchors = model.anchor_generator(features)
        logits, deltas = model.head(features)
        out_boxes, out_scores, out_classes = [], [], []
        for level_logits, level_deltas, level_anchors in zip(logits, deltas, anchors):
            scores = permute_to_N_HWA_K(level_logits, model.num_classes)[0].sigmoid().flatten()
            # A tensor k: min(TOPK, n) written with Python's min is frozen at the traced photo's n.
            k = torch.clamp(torch._shape_as_tensor(scores)[0], max=model.test_topk_candidates)
            top, index = scores.topk(k)
            anchor = torch.div(index, model.num_classes, rounding_mode="floor")
            level = permute_to_N_HWA_K(level_deltas, 4)[0]
            out_boxes.append(model.box2box_transform.apply_deltas(level[anchor], level_anchors.tensor[anchor]))
            out_scores.append(top)
            out_classes.append(index % model.num_classes)
        return torch.cat(out_boxes), torch.cat(out_scores), torch.cat(out_classes)


# What writing each format imports (OpenVINO converts the ONNX graph).
NEEDS = {"openvino": ("onnx", "openvino"), "onnx": ("onnx",), "torchscript": ()}


def missing_packages(fmt: str) -> List[str]:
    import importlib.util

    return [p for p in NEEDS[fmt] if importlib.util.find_spec(p) is None]


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_of(detector: Detector, art: artefacts.ModelArtefacts, fmt: str, kind: str) -> Dict[str, Any]:
    """What ``core.exported`` needs to run the graph as the eager model runs: its record.json."""
    cfg = detector.cfg
    model = detector.model
    square = int((getattr(model.backbone, "padding_constraints", None) or {}).get("square_size", 0) or 0)
    options = detector.options
    return {
        "format": fmt,
        "kind": kind,
        "model_type": art.model_type,
        "inputs": list(INPUTS),
        "outputs": list(OUTPUTS[kind]),
        "input": {"min_size": detector.min_size, "max_size": detector.max_size, "format": detector.input_format,
                  "pixel_mean": [float(v) for v in cfg.MODEL.PIXEL_MEAN],
                  "pixel_std": [float(v) for v in cfg.MODEL.PIXEL_STD],
                  "size_divisibility": int(model.backbone.size_divisibility), "square_size": square},
        "class_names": detector.class_names,
        "postprocess": {"score_threshold": detector.min_score, "nms_threshold": detector.nms_thresh,
                        "detections_per_image": detector.max_detections, "nms": options.nms,
                        "soft_nms_sigma": options.soft_nms_sigma, "tile_size": options.tile_size,
                        "tile_overlap": options.tile_overlap, "candidates": _candidates(detector)},
        "weights_sha256": sha256(art.weights),
        # f32 only until a lower precision is measured within 0.005 AP of it (make bench BENCH=export).
        "precisions": ["f32"],
        "versions": _versions(fmt),
    }


def _candidates(detector: Detector) -> int:
    cfg = detector.cfg
    return int(cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST if _retina(cfg) else cfg.MODEL.RPN.POST_NMS_TOPK_TEST)


def _versions(fmt: str) -> Dict[str, str]:
    import shelfdet

    out = {"shelfdet": getattr(shelfdet, "__version__", "0"), "torch": torch.__version__,
           "detectron2": compat.detectron2_version()}
    if fmt == "openvino":
        import openvino

        out["openvino"] = openvino.__version__
    return out


@contextlib.contextmanager
def _quiet_tracing() -> Iterator[None]:
    # Each Python branch on a tensor warns once per call site; the graph's checks come after (``check``).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _example_photo(detector: Detector) -> np.ndarray:
    """A photo at the model's test size, 4:3, of random pixels (the same every time)."""
    height = detector.min_size or 800
    width = min(detector.max_size or height, height * 4 // 3)
    return np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def example(detector: Detector) -> Tuple[torch.Tensor, torch.Tensor]:
    """The graph's input for tracing: the example photo normalised and padded."""
    tensor, size = exported.network_input(_example_photo(detector), exported.InputRule.of(_input_rule(detector)))
    return torch.from_numpy(tensor), torch.from_numpy(size)


def _input_rule(detector: Detector) -> Dict[str, Any]:
    cfg = detector.cfg
    return {"min_size": detector.min_size, "max_size": detector.max_size, "format": detector.input_format,
            "pixel_mean": list(cfg.MODEL.PIXEL_MEAN), "pixel_std": list(cfg.MODEL.PIXEL_STD),
            "size_divisibility": int(detector.model.backbone.size_divisibility), "square_size": 0}


def graph_of(detector: Detector) -> Tuple[nn.Module, str]:
    model = detector.model
    if hasattr(model, "roi_heads"):
        return RCNNGraph(model).eval(), "rcnn"
    if hasattr(model, "head_in_features"):
        return RetinaGraph(model).eval(), "retinanet"
    raise ExportError("{} has no exporter: Faster R-CNN, Cascade R-CNN and RetinaNet do".format(type(model).__name__))


def _onnx(graph: nn.Module, inputs: Tuple[torch.Tensor, torch.Tensor], kind: str, path: str) -> None:
    dynamic = {"image": {2: "height", 3: "width"}}
    dynamic.update({name: {0: "candidates"} for name in OUTPUTS[kind]})
    # The TorchScript-based exporter, the one whose graphs OpenVINO and ONNX Runtime take as they are: torch
    # 2.9 and later default to the dynamo one (dynamo=False asks for it), earlier releases have no other.
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with _quiet_tracing(), torch.no_grad():
        torch.onnx.export(graph, inputs, path, input_names=list(INPUTS), output_names=list(OUTPUTS[kind]),
                          dynamic_axes=dynamic, opset_version=OPSET, **legacy)


def _write_graph(graph: nn.Module, inputs: Tuple[torch.Tensor, torch.Tensor], kind: str, fmt: str, folder: str) -> str:
    if fmt == "torchscript":
        with _quiet_tracing(), torch.no_grad():
            traced = torch.jit.trace(graph, inputs, check_trace=False)
        path = os.path.join(folder, exported.GRAPH_FILES[fmt])
        traced.save(path)
        return path
    if fmt == "onnx":
        path = os.path.join(folder, exported.GRAPH_FILES[fmt])
        _onnx(graph, inputs, kind, path)
        return path
    import openvino

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = os.path.join(tmp, "model.onnx")
        _onnx(graph, inputs, kind, onnx_path)
        converted = openvino.convert_model(onnx_path)
        path = os.path.join(folder, exported.GRAPH_FILES[fmt])
        # Kept in f32: the precision is chosen when it runs (exported.py), from the record and the CPU.
        openvino.save_model(converted, path, compress_to_fp16=False)
    return path


def export(model_dir: str, fmt: str = "openvino", photos: Sequence[np.ndarray] = ()) -> Tuple[str, Optional[float]]:
    """Writes ``<model_dir>/export/<fmt>/`` (graph + record.json), checked against the eager model on
    ``photos`` (HxWx3 BGR) and the traced example; (the folder, the share of eager boxes found again)."""
    if fmt not in exported.FORMATS:
        raise ExportError("FORMAT={}: choose one of {}".format(fmt, ", ".join(exported.FORMATS)))
    missing = missing_packages(fmt)
    if missing:
        raise ExportError("FORMAT={} needs the Python package(s) {}, not installed here (make setup installs them "
                          "in .venv)".format(fmt, ", ".join(missing)))
    detector = Detector.from_model_dir(model_dir, device="cpu")
    graph, kind = graph_of(detector)
    inputs = example(detector)
    final = os.path.join(model_dir, exported.EXPORT_DIR, fmt)
    foreign = sorted(set(os.listdir(final)) - exported.OWN_FILES) if os.path.isdir(final) else []
    if foreign:
        raise ExportError("{} holds {}, which make export did not write: move them away, then export again (an "
                          "export replaces only its own files)".format(final, ", ".join(foreign)))
    os.makedirs(os.path.dirname(final), exist_ok=True)
    # Written beside, then moved in: an interrupted export never leaves a half folder that serving would load.
    work = tempfile.mkdtemp(prefix="." + fmt + "-", dir=os.path.dirname(final))
    os.chmod(work, 0o755)  # mkdtemp makes it private; a serving container may run as another user
    try:
        _write_graph(graph, inputs, kind, fmt, work)
        record = record_of(detector, artefacts.read(model_dir), fmt, kind)
        with open(os.path.join(work, exported.RECORD), "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
        agreement = check(detector, work, fmt, list(photos) + [_example_photo(detector)])
        record["agreement"] = agreement
        with open(os.path.join(work, exported.RECORD), "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
        log.info("export %s: %s of the eager boxes found again (IoU >= 0.9, score within 0.01)", fmt,
                 "{:.3f}".format(agreement) if agreement is not None else "none to compare:")
        if os.path.isdir(final):
            _remove_export(final)
        os.replace(work, final)
    finally:
        if os.path.isdir(work):
            shutil.rmtree(work)
    return final, agreement


def _remove_export(folder: str) -> None:
    """Removes an earlier export: its own files only (``export`` refused a folder holding others)."""
    for name in os.listdir(folder):
        if name in exported.OWN_FILES:
            os.remove(os.path.join(folder, name))
    os.rmdir(folder)


def check(detector: Detector, folder: str, fmt: str, photos: Sequence[np.ndarray]) -> Optional[float]:
    """Share of the eager model's boxes that the exported graph finds again; an error below MIN_AGREEMENT."""
    run = exported.ExportedDetector.from_folder(folder, fmt)
    found, total = 0, 0
    for pixels in photos:
        eager = detector.predict([pixels])[0]
        found += exported.matched(eager, run.predict([pixels])[0])
        total += len(eager["scores"])
    if not total:
        return None
    share = found / total
    if share < MIN_AGREEMENT:
        raise ExportError("the exported graph found {:.1%} of the eager model's boxes again (IoU >= 0.9, score within "
                          "0.01), below {:.0%}: it is not kept".format(share, MIN_AGREEMENT))
    return share
