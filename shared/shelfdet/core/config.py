"""Hyperparameters (``shelfdet.core.hyperparameters``) -> a Detectron2 config.

Starts from the model zoo's config for the algorithm/backbone/schedule, then
applies the hyperparameters. The LR schedule is scaled to ``num-iter`` so the
decay steps fall inside the run (the reference's steps lay beyond it).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg

from shelfdet.core import anchors, compat, hyperparameters, runtime
from shelfdet.core.hyperparameters import MAX_AUTO_WORKERS, Hyperparameters, Inference
from shelfdet.core.modeling import LEVEL_NORM_RETINANET

log = logging.getLogger(__name__)

# Schedules the zoo has per (algorithm, backbone); missing ones fall back.
ZOO_SCHEDULES = {
    ("faster_rcnn", "R_50_C4"): ("1x", "3x"), ("faster_rcnn", "R_50_DC5"): ("1x", "3x"),
    ("faster_rcnn", "R_50_FPN"): ("1x", "3x"), ("faster_rcnn", "R_101_C4"): ("3x",),
    ("faster_rcnn", "R_101_DC5"): ("3x",), ("faster_rcnn", "R_101_FPN"): ("3x",),
    ("faster_rcnn", "X_101_32x8d_FPN"): ("3x",),
    ("retinanet", "R_50_FPN"): ("1x", "3x"), ("retinanet", "R_101_FPN"): ("3x",),
}
# Norms that keep batch statistics: RetinaNet's head needs them per pyramid level.
_BATCH_NORMS = ("BN", "SyncBN", "naiveSyncBN", "nnSyncBN")
# ResNeXt settings of the zoo's X_101_32x8d_FPN, for RetinaNet (no zoo config of its own).
_X101 = ["MODEL.RESNETS.DEPTH", 101, "MODEL.RESNETS.NUM_GROUPS", 32, "MODEL.RESNETS.WIDTH_PER_GROUP", 8,
         "MODEL.RESNETS.STRIDE_IN_1X1", False, "MODEL.PIXEL_STD", [57.375, 57.120, 58.395]]
_X101_IMAGENET = "detectron2://ImageNetPretrained/FAIR/X-101-32x8d.pkl"
# What model_zoo.get_checkpoint_url and detectron2:// paths point at.
ZOO_HOST = "https://dl.fbaipublicfiles.com/detectron2/"


class ConfigError(ValueError):
    """The hyperparameters do not give a buildable model; the message says which."""


def _set(cfg: CfgNode, key: str, value: object) -> None:
    try:
        compat.set_key(cfg, key, value)
    except compat.UnknownConfigKey as err:
        raise ConfigError(str(err)) from None


def zoo_config_name(algo: str, backbone: str, schedule: str) -> Tuple[str, bool]:
    """The model-zoo config file to start from, and whether its checkpoint matches the model."""
    if algo == "cascade_rcnn":
        # The zoo has no box-only Cascade config: Faster R-CNN's, with cascade heads (build_config).
        return zoo_config_name("faster_rcnn", backbone, schedule)
    if backbone == "R_18_FPN":
        base = "Base-RetinaNet.yaml" if algo == "retinanet" else "Base-RCNN-FPN.yaml"
        return base, False
    key = (algo, backbone)
    if algo == "retinanet" and backbone == "X_101_32x8d_FPN":
        return "COCO-Detection/retinanet_R_50_FPN_3x.yaml", False
    if key not in ZOO_SCHEDULES:
        raise ConfigError("no model-zoo config for {} with backbone {}".format(algo, backbone))
    available = ZOO_SCHEDULES[key]
    if schedule not in available:
        log.warning("the model zoo has %s %s only with schedule %s; using it", algo, backbone, available[0])
        schedule = available[0]
    return "COCO-Detection/{}_{}_{}.yaml".format(algo, backbone, schedule), True


def cascade_weights(backbone: str, schedule: str, fallback: str) -> str:
    """The zoo checkpoint a Cascade R-CNN starts from: the zoo's Cascade Mask R-CNN for R_50_FPN
    (backbone, RPN and the three box stages; its mask head is left unused), else ``fallback``
    (the backbone's Faster R-CNN: backbone and RPN)."""
    if backbone != "R_50_FPN":
        return fallback
    return model_zoo.get_checkpoint_url("Misc/cascade_mask_rcnn_R_50_FPN_{}.yaml".format(schedule))


def zoo_weights(algo: str, backbone: str, schedule: str) -> str:
    """The checkpoint ``weights=zoo`` starts from (a URL under ZOO_HOST, or a detectron2:// path)."""
    if backbone == "R_18_FPN":
        raise ConfigError("hyperparameter 'weights': R_18_FPN has no model-zoo weights; use none or a file")
    zoo_name, match = zoo_config_name(algo, backbone, schedule)
    if not match:
        return _X101_IMAGENET
    url = model_zoo.get_checkpoint_url(zoo_name)
    return cascade_weights(backbone, schedule, url) if algo == "cascade_rcnn" else url


def zoo_key(url: str) -> str:
    """A zoo checkpoint's path below the zoo's host: where `make weights` stores it under PRETRAINED."""
    for host in (ZOO_HOST, "detectron2://"):
        if url.startswith(host):
            return url[len(host):]
    raise ConfigError("{} is not a model-zoo checkpoint".format(url))


def pretrained_file(hp: Hyperparameters, folder: str) -> str:
    """``weights=zoo`` read from a folder holding the zoo's files at their zoo paths (the ``pretrained``
    channel, for jobs that cannot download: network isolation)."""
    key = zoo_key(zoo_weights(hp.model_type, hp.backbone, hp.lr_schedule))
    path = os.path.join(folder, key)
    if not os.path.isfile(path):
        raise ConfigError("weights=zoo and a pretrained channel, but {} is not in it: run `make weights "
                          "ALGO={}` for this algorithm and backbone".format(path, hp.model_type))
    return path


def inference_sizes(hp: Hyperparameters, train_dicts: Optional[Sequence[Mapping[str, Any]]]) -> Tuple[int, int]:
    """``min-size``/``max-size``, with ``auto`` (crop training) resolved: the training images' median
    shorter and longer sides times the crops' geometric middle scale, so the test sees products at the
    size training saw them. Without the training set (a check before launch) auto stands in as 800/1333."""
    if "auto" not in (hp.min_size, hp.max_size):
        return int(hp.min_size), int(hp.max_size)
    low, high = hp.crop_scales
    middle = (low * high) ** 0.5
    if train_dicts:
        sides = np.array([sorted((float(d["height"]), float(d["width"]))) for d in train_dicts])
        short, long_ = np.median(sides[:, 0]) * middle, np.median(sides[:, 1]) * middle
    else:
        short, long_ = 800.0, 1333.0
    min_size = int(round(short)) if hp.min_size == "auto" else int(hp.min_size)
    max_size = int(round(long_)) if hp.max_size == "auto" else int(hp.max_size)
    return max(32, min_size), max(32, min_size, max_size)


def lr_steps(num_iter: int, fractions: Sequence[float]) -> Tuple[int, ...]:
    steps = sorted({int(round(f * num_iter)) for f in fractions})
    return tuple(s for s in steps if 0 < s < num_iter)


def num_workers(value: object, procs_per_host: int = 1, cpus: Optional[int] = None) -> int:
    """The ``num-workers`` hyperparameter for one of ``procs_per_host`` training processes.

    ``auto``: the process's share of the host's CPUs, less one for the
    process itself (it runs the training loop and collates batches), at
    least 1 and at most MAX_AUTO_WORKERS; e.g. 11 per GPU on a p4d (96 vCPUs,
    8 GPUs), 7 on a p3.2xlarge (8 vCPUs, 1 GPU), 1 on a 2-core laptop.
    """
    if value != "auto":
        return int(value)  # type: ignore[call-overload]
    if cpus is None:
        cpus = runtime.available_cpus()
    return max(1, min(MAX_AUTO_WORKERS, cpus // max(1, procs_per_host) - 1))


def set_inference(cfg: CfgNode, hp: Union[Hyperparameters, Inference], names: Optional[Iterable[str]] = None) -> None:
    """The config keys of the inference hyperparameters ``names`` (default: all of them); training sets
    them all, serving or ``make evaluate`` set the ones INFER= gives again on a saved config."""
    names = set(hyperparameters.INFERENCE if names is None else names)
    if "pred-thr" in names:
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = cfg.MODEL.RETINANET.SCORE_THRESH_TEST = hp.pred_thr
    if "nms-thr" in names:
        cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = cfg.MODEL.RETINANET.NMS_THRESH_TEST = hp.nms_thr
    if "det-per-img" in names:
        cfg.TEST.DETECTIONS_PER_IMAGE = hp.det_per_img
    if names & {"det-per-img", "proposals"}:
        cfg.MODEL.RPN.POST_NMS_TOPK_TEST = cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST = hyperparameters.candidates(hp)


def build_config(hp: Hyperparameters, class_names: Sequence[str], train_dataset: str, val_dataset: Optional[str],
                 output_dir: str, device: str = "cpu", world_size: int = 1, procs_per_host: int = 1,
                 train_dicts: Optional[Sequence[Mapping[str, Any]]] = None) -> CfgNode:
    """``procs_per_host``: training processes on this host (GPUs used; 1 on CPU), for ``num-workers=auto``;
    ``train_dicts``: the training set, which ``anchors=auto`` fits the anchors to (None: not fitted)."""
    cfg = _zoo_config(hp)
    weights = _set_weights(cfg, hp, device, world_size)
    _set_heads(cfg, hp, len(class_names))
    _set_input(cfg, hp, train_dicts)
    cfg.DATASETS.TRAIN = (train_dataset,)
    cfg.DATASETS.TEST = (val_dataset,) if val_dataset else ()
    cfg.DATALOADER.NUM_WORKERS = num_workers(hp.num_workers, procs_per_host)
    _set_solver(cfg, hp, bool(weights), device)
    cfg.TEST.EVAL_PERIOD = hp.eval_period
    cfg.SEED = hp.seed
    cfg.MODEL.DEVICE = device
    cfg.OUTPUT_DIR = output_dir
    _set_last(cfg, hp, train_dicts)
    return cfg


def _zoo_config(hp: Hyperparameters) -> CfgNode:
    """The model zoo's config for the detector and backbone, with what the zoo has no file for."""
    cfg = get_cfg()
    zoo_name, _ = zoo_config_name(hp.model_type, hp.backbone, hp.lr_schedule)
    cfg.merge_from_file(model_zoo.get_config_file(zoo_name))
    if hp.backbone == "R_18_FPN":
        # A light from-scratch model for CPUs: R-18 needs 64 res2 channels;
        # narrower FPN and box head keep an iteration around a second on 2 cores.
        # A fixed 2x2 RoIAlign sampling grid: the adaptive one makes its CPU backward the top cost.
        cfg.merge_from_list(["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
                             "MODEL.FPN.OUT_CHANNELS", 128, "MODEL.ROI_BOX_HEAD.FC_DIM", 512,
                             "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", 2])
    if hp.model_type == "retinanet" and hp.backbone == "X_101_32x8d_FPN":
        cfg.merge_from_list(_X101)
    return cfg


def _set_weights(cfg: CfgNode, hp: Hyperparameters, device: str, world_size: int) -> str:
    """The initial weights and the backbone norm that goes with them; returns the weights ('' from scratch)."""
    weights = hp.weights
    if weights == "zoo":
        weights = zoo_weights(hp.model_type, hp.backbone, hp.lr_schedule)
    elif weights == "none":
        weights = ""
    cfg.MODEL.WEIGHTS = weights

    norm = hp.norm
    if norm == "auto":
        norm = "FrozenBN" if weights else ("SyncBN" if world_size > 1 and device == "cuda" else "BN")
    cfg.MODEL.RESNETS.NORM = norm
    if not weights:
        # Frozen stages of a random network never learn.
        cfg.MODEL.BACKBONE.FREEZE_AT = 0
        if hp.model_type == "retinanet":
            # From scratch, RetinaNet's head needs a norm: measured on the synthetic set
            # (R-18, 300 iterations), AP 0.04 without, 0.66 with per-level BN.
            _set(cfg, "MODEL.RETINANET.NORM", "SyncBN" if norm == "SyncBN" else "BN")
    return weights


def _set_heads(cfg: CfgNode, hp: Hyperparameters, num_classes: int) -> None:
    """The heads: classes, sampling, losses, and what they keep at inference."""
    if hp.model_type == "cascade_rcnn":
        # Detectron2's Cascade R-CNN settings (its Misc/cascade_mask_rcnn configs): three stages,
        # class-agnostic boxes, 2000 training proposals.
        cfg.MODEL.ROI_HEADS.NAME = "CascadeROIHeads"
        cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
        cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 2000

    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = hp.num_rpn
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = hp.bbox_head_pos_fraction
    cfg.MODEL.RPN.POSITIVE_FRACTION = hp.rpn_pos_fraction
    _set(cfg, "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", hp.reg_loss_type)
    _set(cfg, "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT", hp.bbox_reg_loss_weight)
    _set(cfg, "MODEL.RPN.BBOX_REG_LOSS_TYPE", hp.reg_loss_type)
    _set(cfg, "MODEL.RETINANET.BBOX_REG_LOSS_TYPE", hp.reg_loss_type)
    cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA = hp.focal_loss_gamma
    cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA = hp.focal_loss_alpha
    set_inference(cfg, hp)


def _set_input(cfg: CfgNode, hp: Hyperparameters, train_dicts: Optional[Sequence[Mapping[str, Any]]]) -> None:
    """Image sizes at test and training time, and the flip."""
    min_size, max_size = inference_sizes(hp, train_dicts)
    cfg.INPUT.MIN_SIZE_TEST = min_size
    cfg.INPUT.MAX_SIZE_TEST = max_size
    if hp.augment == "flip-scale" and not hp.crop_size:
        cfg.INPUT.MIN_SIZE_TRAIN = tuple(int(min_size * s) for s in (0.8, 0.9, 1.0, 1.1, 1.2))
        cfg.INPUT.MAX_SIZE_TRAIN = int(max_size * 1.2)
    else:
        # With crops the training loader takes its scales from crop-scales (data.crops); these
        # are for Detectron2's own mapper, which never trains here.
        cfg.INPUT.MIN_SIZE_TRAIN = (min_size,)
        cfg.INPUT.MAX_SIZE_TRAIN = max_size
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.RANDOM_FLIP = "none" if hp.augment == "none" else "horizontal"


def _set_solver(cfg: CfgNode, hp: Hyperparameters, pretrained: bool, device: str) -> None:
    """Batch, learning-rate schedule, checkpoints, mixed precision, clipping."""
    cfg.SOLVER.IMS_PER_BATCH = hp.batch_size
    cfg.SOLVER.BASE_LR = hp.lr
    cfg.SOLVER.MAX_ITER = hp.num_iter
    cfg.SOLVER.STEPS = lr_steps(hp.num_iter, hp.lr_steps)
    cfg.SOLVER.WARMUP_ITERS = min(hp.warmup_iters, hp.num_iter // 10)
    cfg.SOLVER.CHECKPOINT_PERIOD = hp.checkpoint_period
    _set(cfg, "SOLVER.AMP.ENABLED", bool(hp.amp and device == "cuda"))
    if not pretrained:
        # From scratch, early gradients spike; clipping keeps BN training stable.
        cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
        cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 5.0


def _set_last(cfg: CfgNode, hp: Hyperparameters, train_dicts: Optional[Sequence[Mapping[str, Any]]]) -> None:
    """What reads the finished config: anchors fitted at its test size, the expert's d2-opts over
    everything, and the per-level RetinaNet for whatever norm that left."""
    if hp.anchors == "auto" and train_dicts is not None:
        try:
            anchors.apply(cfg, train_dicts)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    opts = hp.d2_opts.split()
    if opts:
        if len(opts) % 2:
            raise ConfigError("hyperparameter 'd2-opts': expected KEY VALUE pairs, got {!r}".format(hp.d2_opts))
        try:
            cfg.merge_from_list(opts)
        except (KeyError, AssertionError, ValueError) as err:
            raise ConfigError("hyperparameter 'd2-opts': {}".format(err)) from None
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet" and cfg.MODEL.RETINANET.NORM in _BATCH_NORMS:
        # Never a BN shared across levels (v0.4.1's RetinaNetHead): same model, per-level head.
        cfg.MODEL.META_ARCHITECTURE = LEVEL_NORM_RETINANET
