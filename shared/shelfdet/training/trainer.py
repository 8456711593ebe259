"""Detectron2's DefaultTrainer, made CPU-distributed-aware and given our hooks and writers."""
from __future__ import annotations

import os
import weakref
from typing import Any, Dict, List, Optional, Sequence

import torch
from detectron2.data import build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter
from torch.nn.parallel import DistributedDataParallel

from shelfdet.core.checkpoint import Checkpointer
from shelfdet.data.mapper import FastDatasetMapper
from shelfdet.training import tracking
from shelfdet.training.hooks import DataTimeWarning, PauseAfterCheckpoint, ValidationAP, ValidationLoss


def wrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """DDP on GPU (one device per process) and on CPU (gloo; Detectron2 0.6 assumes CUDA)."""
    if comm.get_world_size() == 1:
        return model
    if next(model.parameters()).is_cuda:
        return DistributedDataParallel(model, device_ids=[comm.get_local_rank()], broadcast_buffers=False)
    return DistributedDataParallel(model, broadcast_buffers=False)


class Trainer(DefaultTrainer):
    """Same loop, scheduler and checkpointing as DefaultTrainer; hooks built from our cfg.

    ``val_dicts`` is the fixed validation-loss sample; ``ap_dicts`` (optional)
    the validation set for periodic AP, scored like the final evaluation
    (``fast_eval``: faster-coco-eval or pycocotools, the same numbers).
    """

    def __init__(self, cfg: Any, class_names: Sequence[str], val_dicts: Sequence[Dict[str, Any]],
                 ap_dicts: Optional[Sequence[Dict[str, Any]]] = None, log_period: int = 20,
                 fast_eval: bool = True, options: Any = None, crop: Any = None, tensorboard_dir: Optional[str] = None,
                 mlflow: Optional[tracking.MLflow] = None):
        TrainerBase.__init__(self)
        self.class_names = list(class_names)
        self.val_dicts = list(val_dicts)
        self.ap_dicts = list(ap_dicts) if ap_dicts else None
        self.log_period = log_period
        self.fast_eval = fast_eval
        self.options = options
        self.tensorboard_dir = tensorboard_dir
        self.mlflow = mlflow
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg, crop)
        model = wrap_ddp(model)
        loop = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = loop(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = Checkpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.validation: Optional[ValidationLoss] = None
        self.validation_ap: Optional[ValidationAP] = None
        self.register_hooks(self.build_hooks())

    def build_hooks(self) -> List[Any]:
        cfg = self.cfg
        period = cfg.TEST.EVAL_PERIOD
        # DataTimeWarning before the validation hooks: their time is not the loader's business.
        ret: List[Any] = [hooks.IterationTimer(), hooks.LRScheduler(), DataTimeWarning(cfg.DATALOADER.NUM_WORKERS)]
        if comm.is_main_process():
            # Two kept checkpoints are enough to resume and halve the S3 sync of spot jobs.
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, max_to_keep=2))
            pause = PauseAfterCheckpoint.from_env()
            if pause is not None:
                ret.append(pause)
        if self.val_dicts:
            self.validation = ValidationLoss(cfg, self.val_dicts, period)
            ret.append(self.validation)
        if self.ap_dicts:
            self.validation_ap = ValidationAP(cfg, self.ap_dicts, self.class_names, period, self.fast_eval, self.options)
            ret.append(self.validation_ap)
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=self.log_period))
        return ret

    @classmethod
    def build_train_loader(cls, cfg: Any, crop: Any = None) -> Any:
        # Detectron2's loader and sampler; our mapper decodes photo-size JPEGs at reduced scale,
        # and cuts the crops of crop training (data.crops) from the header alone.
        return build_detection_train_loader(cfg, mapper=FastDatasetMapper(cfg, is_train=True, crop=crop))

    def build_writers(self) -> List[Any]:
        # The printed lines are what SageMaker's metric regexes scrape; TensorBoard gets the same scalars.
        writers = [CommonMetricPrinter(self.max_iter), JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"))]
        board = tracking.tensorboard(self.tensorboard_dir, self, self.cfg.SOLVER.IMS_PER_BATCH)
        if self.mlflow:
            self.mlflow.trainer = self
        return writers + [w for w in (board, self.mlflow) if w]

    @property
    def model(self) -> torch.nn.Module:
        return self._trainer.model

    def bare_model(self) -> torch.nn.Module:
        return getattr(self.model, "module", self.model)
