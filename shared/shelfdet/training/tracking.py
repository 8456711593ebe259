"""Where a run's numbers go besides the log: TensorBoard event files in ``<run>/output/tensorboard``
(SageMaker's /opt/ml/output/tensorboard, which TensorBoardOutputConfig syncs to S3 while the job runs).

Two sub-runs, ``train`` and ``validation``, with the same tag for the same quantity (``total_loss``,
``loss_cls``, ...), so TensorBoard draws training and validation loss on one chart."""
from __future__ import annotations

import logging
import numbers
import os
from typing import Any, Dict, Optional

from .. import compat

compat.apply()

from detectron2.utils.events import EventWriter, get_event_storage  # noqa: E402

log = logging.getLogger("shelfdet.training")

# The validation hooks on the trainer; they keep their results out of the event storage so the printed
# lines SageMaker's metric regexes read keep their form.
VALIDATION_HOOKS = ("validation", "validation_ap")


class TensorBoard(EventWriter):
    """Detectron2's TensorboardXWriter for what the event storage holds (losses, lr, time, data_time), plus
    images/s beside it in ``train``, and the validation hooks' losses and AP in ``validation``."""

    def __init__(self, log_dir: str, trainer: Any, images_per_batch: int) -> None:
        from detectron2.utils.events import TensorboardXWriter
        from torch.utils.tensorboard import SummaryWriter

        self.training = TensorboardXWriter(os.path.join(log_dir, "train"))
        self.rate = SummaryWriter(os.path.join(log_dir, "train"), filename_suffix=".images_per_second")
        self.validation = SummaryWriter(os.path.join(log_dir, "validation"))
        self.trainer = trainer
        self.images_per_batch = images_per_batch
        self.written: Dict[str, int] = {}
        self.last_rate = -1

    def write(self) -> None:
        self.training.write()
        storage = get_event_storage()
        if "time" in storage.histories():
            history = storage.history("time")
            step = int(history.values()[-1][1])
            seconds = history.median(20)
            if step > self.last_rate and seconds > 0:
                self.rate.add_scalar("images_per_second", self.images_per_batch / seconds, step)
                self.last_rate = step
        for attribute in VALIDATION_HOOKS:
            hook = getattr(self.trainer, attribute, None)
            entries = getattr(hook, "history", None) or []
            for entry in entries[self.written.get(attribute, 0):]:
                step = int(entry["iteration"]) - 1  # the hooks count iterations from 1, the storage from 0
                for key, value in entry.items():
                    if key != "iteration" and isinstance(value, numbers.Number):
                        self.validation.add_scalar(key.replace("total_val_loss", "total_loss"), value, step)
            self.written[attribute] = len(entries)
        self.rate.flush()
        self.validation.flush()

    def close(self) -> None:
        self.training.close()
        self.rate.close()
        self.validation.close()


def tensorboard(log_dir: Optional[str], trainer: Any, images_per_batch: int) -> Optional[TensorBoard]:
    """The writer, or None with one warning where the release's SummaryWriter cannot be imported."""
    if not log_dir:
        return None
    try:
        writer = TensorBoard(log_dir, trainer, images_per_batch)
    except ImportError as err:
        log.warning("no TensorBoard event files: %s (the tensorboard package is missing)", err)
        return None
    log.info("TensorBoard event files in %s", log_dir)
    return writer
