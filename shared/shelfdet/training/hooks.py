"""Training hooks: validation loss over a fixed sample, periodic validation AP, a starved-loader warning,
and a pause for kill-and-resume tests.

Both run inside their own ``EventStorage``: whatever the model records while
validating (``fast_rcnn/cls_accuracy``, ``rpn/num_pos_anchors``, ...) stays
out of the training metrics that the writers print and SageMaker scrapes.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from detectron2.data import transforms as T
from detectron2.engine import HookBase
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from shelfdet.core import evaluation, metrics
from shelfdet.core.inference import Detector, Options
from shelfdet.data.mapper import FastDatasetMapper
from shelfdet.training.distributed import broadcast_buffers

log = logging.getLogger("shelfdet.training")


def _is_due(trainer: Any, period: int) -> bool:
    nxt = trainer.iter + 1
    return nxt == trainer.max_iter or (period > 0 and nxt % period == 0)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


class ValidationLoss(HookBase):
    """Mean losses over a fixed validation sample, printed as ``total_val_loss: x  val_loss_cls: x ...``.

    The same images every time (not one random batch) so the tuning objective
    is comparable across evaluations. Losses need the model in training mode;
    norm layers are switched to eval so validation does not move BN statistics,
    and the RNG is forked so proposal sampling is repeatable.
    """

    def __init__(self, cfg: Any, dataset_dicts: Sequence[Dict[str, Any]], period: int, batch_size: int = 2):
        self.period = period
        self.batch_size = batch_size
        # The training mapper's decoder: JPEG and PNG only, as every photo shelfdet opens.
        mapper = FastDatasetMapper(is_train=True, augmentations=[
            T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)],
            image_format=cfg.INPUT.FORMAT)
        mine = list(dataset_dicts)[comm.get_rank()::comm.get_world_size()]
        # Mapped once: the sample is small and re-decoding it every period wastes time.
        self.inputs = [mapper(dict(d)) for d in mine]
        self.history: List[Dict[str, float]] = []

    def _losses(self) -> Dict[str, float]:
        model = self.trainer.model
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        sums: Dict[str, float] = {}
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices), EventStorage(self.trainer.iter):
            torch.manual_seed(0)
            for m in norms:
                m.eval()
            try:
                for i in range(0, len(self.inputs), self.batch_size):
                    batch = self.inputs[i:i + self.batch_size]
                    # Calling the unwrapped module avoids a DDP forward with no backward.
                    loss_dict = _unwrap(model)(batch)
                    for k, v in loss_dict.items():
                        sums[k] = sums.get(k, 0.0) + float(v) * len(batch)
            finally:
                for m in norms:
                    m.train()
        counts = comm.all_gather((sums, len(self.inputs)))
        total = sum(c for _, c in counts)
        keys = sorted({k for s, _ in counts for k in s})
        return {k: sum(s.get(k, 0.0) for s, _ in counts) / max(total, 1) for k in keys}

    def after_step(self) -> None:
        if not _is_due(self.trainer, self.period):
            return
        losses = self._losses()
        if comm.is_main_process():
            line = metrics.format_validation(losses)
            self.history.append(dict(losses, iteration=self.trainer.iter + 1, total_val_loss=sum(losses.values())))
            log.info("iter: %d  %s", self.trainer.iter + 1, line)


class ValidationAP(HookBase):
    """COCO AP on the validation channel, printed as ``validation_ap: x`` (the tuning objective)."""

    def __init__(self, cfg: Any, dataset_dicts: Sequence[Dict[str, Any]], class_names: Sequence[str], period: int,
                 fast: bool = True, options: Any = None):
        """``options``: the inference options (``inference.Options``) the final evaluation uses."""
        self.cfg = cfg
        self.options = options
        self.dicts = list(dataset_dicts)
        self.class_names = list(class_names)
        self.period = period
        self.fast = fast
        self.history: List[Dict[str, float]] = []

    def after_step(self) -> None:
        if not _is_due(self.trainer, self.period):
            return
        # Every rank predicts its share with its own replica, given rank 0's buffers; rank 0 scores.
        model = _unwrap(self.trainer.model)
        broadcast_buffers(model)
        detector = Detector.from_model(self.cfg, model, self.class_names, self.options or Options())
        try:
            with EventStorage(self.trainer.iter):
                result, _ = evaluation.evaluate(detector, self.dicts, self.class_names,
                                                self.cfg.TEST.DETECTIONS_PER_IMAGE, self.fast, log_every=10 ** 9)
        finally:
            model.train()
        if result is not None:
            self.history.append(dict(result, iteration=self.trainer.iter + 1))
            log.info("iter: %d  validation_ap: %.6f  validation_ap50: %.6f", self.trainer.iter + 1,
                     result["AP"], result["AP50"])
        # The others wait here while rank 0 scores: on the job's process group, whose timeout is sized
        # for scoring (distributed.timeout_for). Training on, they would wait in Detectron2's metric
        # gather instead, on its own gloo group with torch's 30-minute default.
        comm.synchronize()


class DataTimeWarning(HookBase):
    """One warning line when the data loader cannot keep up with the model.

    Detectron2's loop records ``data_time``, how long each iteration waited
    for its batch. After ``warmup`` iterations (workers starting), the hook
    sums it over windows of ``window`` iterations against the time of the
    iterations themselves, and warns once when the share exceeds
    ``threshold``: then the GPU idles for want of images.
    """

    def __init__(self, num_workers: int, warmup: int = 20, window: int = 20, threshold: float = 0.3,
                 clock: Callable[[], float] = time.perf_counter):
        self.num_workers = num_workers
        self.warmup = warmup
        self.window = window
        self.threshold = threshold
        self.clock = clock
        self.warned = False
        self._start = 0.0
        self._data = self._step = 0.0
        self._count = 0

    def before_step(self) -> None:
        self._start = self.clock()

    def after_step(self) -> None:
        step = self.clock() - self._start
        if self.warned or self.trainer.iter - self.trainer.start_iter < self.warmup:
            return
        try:
            data = self.trainer.storage.history("data_time").latest()
        except KeyError:  # Detectron2 records data time on the main process only
            return
        self._data += data
        self._step += step
        self._count += 1
        if self._count < self.window:
            return
        share = self._data / max(self._step, 1e-9)
        if share > self.threshold:
            self.warned = True
            log.warning("data loader too slow: %.0f%% of iterations %d-%d went waiting for data (%d worker(s) per "
                        "process); raise num-workers, use more CPUs per GPU, or train on a resized copy "
                        "(make data MAX_SIDE=1333)", 100 * share, self.trainer.iter + 2 - self._count,
                        self.trainer.iter + 1, self.num_workers)
        self._data = self._step = 0.0
        self._count = 0


PAUSE_ENV = "SHELFDET_TEST_PAUSE_AFTER_ITER"


class PauseAfterCheckpoint(HookBase):
    """Tests only: after the checkpoint of iteration ``iteration`` (0-based) is written, wait to be killed.

    A kill-and-resume test kills at a point the run announces itself
    (``last_checkpoint`` names that checkpoint), so the run can neither
    finish first on a fast machine nor be killed mid-write on a slow disk.
    Registered only when ``SHELFDET_TEST_PAUSE_AFTER_ITER`` is set.
    """

    def __init__(self, iteration: int):
        self.iteration = iteration

    def after_step(self) -> None:
        if self.trainer.iter == self.iteration:
            log.warning("%s=%d: checkpoint written, paused until killed", PAUSE_ENV, self.iteration)
            threading.Event().wait()

    @classmethod
    def from_env(cls) -> Optional["PauseAfterCheckpoint"]:
        value = os.environ.get(PAUSE_ENV, "").strip()
        return cls(int(value)) if value else None
