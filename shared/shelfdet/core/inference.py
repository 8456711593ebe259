"""Batched inference on raw images, shared by evaluation, ``make predict`` and serving."""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from shelfdet.core import artefacts, compat, hyperparameters, modeling, photos, postprocess  # noqa: F401  (modeling registers our architectures)
from shelfdet.core.checkpoint import load_exact
from shelfdet.core.exported import Decoding, Options
from shelfdet.core.config import set_inference
from shelfdet.core.hyperparameters import Hyperparameters, Inference

log = logging.getLogger(__name__)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def inference_hyperparameters(saved: Mapping[str, Any], overrides: Optional[Mapping[str, Any]] = None) -> Inference:
    """The inference hyperparameters of a model: its saved record's, then ``overrides``
    (``hyperparameters.inference_of``)."""
    return hyperparameters.inference_of(saved, overrides)


def options_of(hp: Union[Hyperparameters, Inference]) -> Options:
    return Options(hp.nms, float(hp.soft_nms_sigma), int(hp.tile_size), float(hp.tile_overlap))


def load_config(path: str, device: Optional[str] = None, changed_keys: Optional[Iterable[str]] = None,
                inference: Optional[Inference] = None, names: Iterable[str] = ()) -> CfgNode:
    """The saved config on this release's defaults; a key this release lacks is an error
    unless the model left it at its default (see ``compat.merge_saved_config``).
    ``inference``, ``names``: inference hyperparameters whose config keys are set again (``config.set_inference``)."""
    cfg = get_cfg()
    with open(path) as f:
        saved = yaml.safe_load(f) or {}
    skipped = compat.merge_saved_config(cfg, saved, changed_keys, path)
    if skipped:
        log.info("%s: skipped %s, left at their defaults by a newer Detectron2 (this is %s)", path,
                 ", ".join(skipped), compat.detectron2_version())
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device or default_device()
    names = list(names)
    if inference is not None and names:
        set_inference(cfg, inference, names)
    cfg.freeze()
    return cfg


def _retina(cfg: CfgNode) -> bool:
    """RetinaNet or our LevelNormRetinaNet: its test-time keys are under MODEL.RETINANET."""
    return "RetinaNet" in cfg.MODEL.META_ARCHITECTURE


def _candidates(cfg: CfgNode) -> int:
    return int(cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST if _retina(cfg) else cfg.MODEL.RPN.POST_NMS_TOPK_TEST)


@contextlib.contextmanager
def _without_nms(model: torch.nn.Module, active: bool, keep: int) -> Iterator[None]:
    """While active, the model's final NMS keeps every box (IoU never exceeds 1) and its cap is ``keep``.

    The attributes are the same on every release we run (v0.4.1 to 0.6 and past): Fast R-CNN's
    box predictor and RetinaNet hold ``test_nms_thresh`` and their per-image cap.
    """
    if not active:
        yield
        return
    bare = getattr(model, "module", model)
    stage = bare.roi_heads.box_predictor if hasattr(bare, "roi_heads") else bare
    if isinstance(stage, torch.nn.ModuleList):  # Cascade R-CNN: the last stage's boxes and NMS
        stage = stage[-1]
    cap = "test_topk_per_image" if hasattr(stage, "test_topk_per_image") else "max_detections_per_image"
    saved = stage.test_nms_thresh, getattr(stage, cap)
    stage.test_nms_thresh = 1.0
    setattr(stage, cap, keep)
    try:
        yield
    finally:
        stage.test_nms_thresh = saved[0]
        setattr(stage, cap, saved[1])


def score_threshold(cfg: CfgNode) -> float:
    if _retina(cfg):
        return float(cfg.MODEL.RETINANET.SCORE_THRESH_TEST)
    return float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)


def inference_resize(height: int, width: int, min_size: int, max_size: int) -> T.Transform:
    """Detectron2's test-time ``ResizeShortestEdge``, with no side below 1 px.

    Same arithmetic as Detectron2's (so every ordinary image gets its pixels
    exactly), but a very elongated image (2000x1, 3x20000) would reach 0 px
    there and fail; its ``ResizeTransform`` takes any size of at least 1, and
    the model pads the input to its size divisibility anyway.
    """
    if min_size <= 0:
        return T.NoOpTransform()
    return T.ResizeTransform(height, width, *photos.inference_size(height, width, min_size, max_size))


# What Detector reads: a decoded photo, or a full-size HxWx3 BGR array.
Photo = Union[photos.Decoded, np.ndarray]


def as_decoded(image: Photo) -> photos.Decoded:
    if isinstance(image, photos.Decoded):
        return image
    return photos.Decoded(image, image.shape[0], image.shape[1])


class Detector(Decoding):
    """A Detectron2 model in eval mode with its test-time resize.

    ``predict`` is safe to call from several threads: the forward pass is
    serialised by a lock (one model, one device), pre/post-processing is not.
    """

    runtime = "torch"  # what serving logs name (core.exported.ExportedDetector names its own)

    def __init__(self, cfg: CfgNode, weights: str, class_names: Sequence[str], model: Optional[torch.nn.Module] = None,
                 options: Options = Options()):
        self.cfg = cfg
        self.options = options
        self.class_names = list(class_names)
        self.model = model if model is not None else build_model(cfg)
        self.model.eval()
        if weights:
            load_exact(self.model, weights)
        self.min_size, self.max_size = int(cfg.INPUT.MIN_SIZE_TEST), int(cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        self.max_detections = int(cfg.TEST.DETECTIONS_PER_IMAGE)
        self.nms_thresh = float(cfg.MODEL.RETINANET.NMS_THRESH_TEST if _retina(cfg) else cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST)
        self.min_score = score_threshold(cfg)
        self._lock = threading.Lock()

    @classmethod
    def from_model_dir(cls, model_dir: str, device: Optional[str] = None,
                       overrides: Optional[Mapping[str, Any]] = None) -> "Detector":
        """The model of a model folder as trained (its config), with ``overrides`` of its inference
        hyperparameters applied."""
        art = artefacts.read(model_dir)
        hp = inference_hyperparameters(art.manifest.get("hyperparameters") or {}, overrides)
        cfg = load_config(art.config, device, art.changed_config_keys, hp, (overrides or {}).keys())
        return cls(cfg, art.weights, art.class_names, options=options_of(hp))

    @classmethod
    def from_model(cls, cfg: CfgNode, model: torch.nn.Module, class_names: Sequence[str],
                   options: Options = Options()) -> "Detector":
        """Wraps a model being trained (switches it to eval mode; the caller switches back)."""
        return cls(cfg, "", class_names, model=model, options=options)

    @property
    def device(self) -> str:
        return str(self.cfg.MODEL.DEVICE)

    def _inputs(self, image: Photo) -> Dict[str, Any]:
        photo = as_decoded(image)
        pixels = photo.image
        if pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError("expected an HxWx3 image, got shape {}".format(pixels.shape))
        pixels = pixels[:, :, ::-1] if self.input_format == "RGB" else pixels
        # The size comes from the photo's own; a photo decoded at the test scale is there already.
        size = photos.inference_size(photo.height, photo.width, self.min_size, self.max_size)
        if pixels.shape[:2] != size:
            pixels = T.ResizeTransform(pixels.shape[0], pixels.shape[1], *size).apply_image(pixels)
        tensor = torch.as_tensor(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
        return {"image": tensor, "height": photo.height, "width": photo.width}

    def raw(self, images: Sequence[Photo]) -> List[Any]:
        """Detectron2 ``Instances`` per image, in original image coordinates."""
        if not self.options.plain:
            return [self._merged(as_decoded(im)) for im in images]
        return self._forward([self._inputs(im) for im in images])

    def _forward(self, inputs: List[Dict[str, Any]], candidates: bool = False) -> List[Any]:
        """``candidates``: the model's boxes before its NMS (for Soft-NMS), as many as ``proposals``."""
        with self._lock, torch.no_grad(), _without_nms(self.model, candidates, _candidates(self.cfg)):
            outputs = self.model(inputs)
        return [o["instances"].to("cpu") for o in outputs]

    def _merged(self, photo: photos.Decoded) -> Any:
        """Soft-NMS and/or tiles: candidates of the whole image and of each tile, merged into one set."""
        opt = self.options
        height, width = photo.height, photo.width
        soft = opt.nms == "soft"
        views = [self._forward([self._inputs(photo)], candidates=soft)[0]]
        boxes, scores, classes = [views[0].pred_boxes.tensor], [views[0].scores], [views[0].pred_classes]
        tiles = postprocess.windows(height, width, opt.tile_size, opt.tile_overlap) if opt.tile_size else []
        if len(tiles) > 1:
            if photo.image.shape[:2] != (height, width):
                raise ValueError("tiles are cut from the photo at full size, got it at {}x{} of {}x{}: decode it with "
                                 "Detector.decode".format(photo.image.shape[1], photo.image.shape[0], width, height))
            image_bgr = photo.image
            # Equal-sized tiles: one batch, no padding between them.
            found = self._forward([self._inputs(image_bgr[y0:y1, x0:x1]) for x0, y0, x1, y1 in tiles], candidates=soft)
            for tile, inst in zip(tiles, found):
                b = inst.pred_boxes.tensor + torch.tensor([tile[0], tile[1], tile[0], tile[1]], dtype=torch.float32)
                whole = postprocess.uncut(b, tile, height, width)
                boxes.append(b[whole])
                scores.append(inst.scores[whole])
                classes.append(inst.pred_classes[whole])
        b, s, c = torch.cat(boxes), torch.cat(scores), torch.cat(classes)
        keep, kept_scores = postprocess.merge(b, s, c, opt.nms, self.nms_thresh, opt.soft_nms_sigma, self.min_score,
                                              self.max_detections)
        return Instances((height, width), pred_boxes=Boxes(b[keep]), scores=kept_scores, pred_classes=c[keep])

    def predict(self, images: Sequence[Photo], score_thr: Optional[float] = None,
                max_detections: Optional[int] = None) -> List[Dict[str, Any]]:
        """The serving answer's dicts, one per image, boxes in original pixels, best first; a damaged
        photo's dict adds ``warnings`` (a list of what the decoder found)."""
        results = []
        for image, inst in zip(images, self.raw(images)):
            photo = as_decoded(image)
            result = self.to_response(inst, photo.height, photo.width, score_thr, max_detections)
            if photo.warnings:
                result["warnings"] = list(photo.warnings)
            results.append(result)
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
