"""Batched inference on raw images, shared by evaluation, ``make predict`` and serving."""
from __future__ import annotations

import logging
import threading
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from . import compat

compat.apply()

import torch  # noqa: E402
import yaml  # noqa: E402
from detectron2.config import CfgNode, get_cfg  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from . import artefacts, modeling  # noqa: E402,F401  (modeling registers our architectures)
from .checkpoint import load_exact  # noqa: E402

log = logging.getLogger(__name__)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_config(path: str, device: Optional[str] = None, changed_keys: Optional[Iterable[str]] = None) -> CfgNode:
    """The saved config on this release's defaults; a key this release lacks is an error
    unless the model left it at its default (see ``compat.merge_saved_config``)."""
    cfg = get_cfg()
    with open(path) as f:
        saved = yaml.safe_load(f) or {}
    skipped = compat.merge_saved_config(cfg, saved, changed_keys, path)
    if skipped:
        log.info("%s: skipped %s, left at their defaults by a newer Detectron2 (this is %s)", path,
                 ", ".join(skipped), compat.detectron2_version())
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device or default_device()
    cfg.freeze()
    return cfg


def score_threshold(cfg: CfgNode) -> float:
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        return float(cfg.MODEL.RETINANET.SCORE_THRESH_TEST)
    return float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)


class Detector:
    """A Detectron2 model in eval mode with its test-time resize.

    ``predict`` is safe to call from several threads: the forward pass is
    serialised by a lock (one model, one device), pre/post-processing is not.
    """

    def __init__(self, cfg: CfgNode, weights: str, class_names: Sequence[str], model: Optional[torch.nn.Module] = None):
        self.cfg = cfg
        self.class_names = list(class_names)
        self.model = model if model is not None else build_model(cfg)
        self.model.eval()
        if weights:
            load_exact(self.model, weights)
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        self.max_detections = int(cfg.TEST.DETECTIONS_PER_IMAGE)
        self.min_score = score_threshold(cfg)
        self._lock = threading.Lock()

    @classmethod
    def from_model_dir(cls, model_dir: str, device: Optional[str] = None) -> "Detector":
        art = artefacts.read(model_dir)
        return cls(load_config(art.config, device, art.changed_config_keys), art.weights, art.class_names)

    @classmethod
    def from_model(cls, cfg: CfgNode, model: torch.nn.Module, class_names: Sequence[str]) -> "Detector":
        """Wraps a model being trained (switches it to eval mode; the caller switches back)."""
        return cls(cfg, "", class_names, model=model)

    @property
    def device(self) -> str:
        return str(self.cfg.MODEL.DEVICE)

    def _inputs(self, image_bgr: np.ndarray) -> Dict[str, Any]:
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
            raise ValueError("expected an HxWx3 image, got shape {}".format(image_bgr.shape))
        height, width = image_bgr.shape[:2]
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        image = self.resize.get_transform(image).apply_image(image)
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return {"image": tensor, "height": height, "width": width}

    def raw(self, images_bgr: Sequence[np.ndarray]) -> List[Any]:
        """Detectron2 ``Instances`` per image, in original image coordinates."""
        inputs = [self._inputs(im) for im in images_bgr]
        with self._lock, torch.no_grad():
            outputs = self.model(inputs)
        return [o["instances"].to("cpu") for o in outputs]

    def predict(self, images_bgr: Sequence[np.ndarray], score_thr: Optional[float] = None,
                max_detections: Optional[int] = None) -> List[Dict[str, Any]]:
        """SPEC §4 response dicts, one per image, boxes in original pixels, best first."""
        results = []
        for image, inst in zip(images_bgr, self.raw(images_bgr)):
            results.append(self.to_response(inst, image.shape[0], image.shape[1], score_thr, max_detections))
        return results

    def to_response(self, inst: Any, height: int, width: int, score_thr: Optional[float] = None,
                    max_detections: Optional[int] = None) -> Dict[str, Any]:
        scores = inst.scores.numpy()
        order = np.argsort(-scores, kind="stable")
        if score_thr is not None:
            order = order[scores[order] >= score_thr]
        if max_detections is not None:
            order = order[:max_detections]
        boxes = inst.pred_boxes.tensor.numpy()[order]
        classes = inst.pred_classes.numpy()[order]
        return {
            "image_height": int(height),
            "image_width": int(width),
            "pred_boxes": boxes.tolist(),
            "scores": scores[order].tolist(),
            "pred_classes": [int(c) for c in classes],
            "pred_class_names": [self.class_names[int(c)] for c in classes],
            "class_names": self.class_names,
        }
