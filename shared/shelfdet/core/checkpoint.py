"""Exact loading of our own checkpoints (resume) and model folders' weights (evaluation, serving).

Detectron2's checkpointer only logs tensors it could not place, which is right
for ImageNet or COCO initial weights and wrong for a trained model: a model
served with a head left at random answers 200 with wrong boxes. Here every
tensor of the checkpoint must land in the model and every model tensor must
come from the checkpoint, or loading fails with one line naming the rest.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

import torch
from detectron2.checkpoint import DetectionCheckpointer

from shelfdet.core import compat, safeweights


class CheckpointMismatch(RuntimeError):
    """The checkpoint and the model built from its config do not hold the same tensors."""


def _names(keys: List[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (" and {} more".format(len(keys) - limit) if len(keys) > limit else "")


def mismatch(where: str, missing: List[str], unexpected: List[str], shapes: List[str]) -> CheckpointMismatch:
    parts = []
    if missing:
        parts.append("{} model tensor(s) not in the checkpoint ({})".format(len(missing), _names(missing)))
    if unexpected:
        parts.append("{} checkpoint tensor(s) the model has no place for ({})".format(len(unexpected), _names(unexpected)))
    if shapes:
        parts.append("{} with another shape ({})".format(len(shapes), _names(shapes)))
    return CheckpointMismatch("{} does not match the model built from its config: {}".format(where, "; ".join(parts)))


def _config_buffers_agree(model: torch.nn.Module, state: Dict[str, Any], where: str) -> None:
    """Drops buffers that some releases save and others rebuild from the config, once they agree."""
    for name in compat.CONFIG_BUFFERS:
        if name in state and name not in model.state_dict():
            own = getattr(model, name, None)
            saved = torch.as_tensor(state[name])
            if own is None or own.shape != saved.shape or not torch.allclose(own.detach().cpu().float(), saved.float()):
                raise CheckpointMismatch("{}: checkpoint {} {} differs from the config's {}".format(
                    where, name, saved.flatten().tolist(), None if own is None else own.flatten().tolist()))
            del state[name]


def state_of(blob: Any, path: str) -> Dict[str, Any]:
    """The state dict of a loaded ``.pth`` (``{"model": state_dict}`` or a bare state dict)."""
    state = blob.get("model", blob) if isinstance(blob, Mapping) else None
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointMismatch("{} is not a model checkpoint (expected a state dict of tensors)".format(path))
    return dict(state)


def load_exact(model: torch.nn.Module, path: str) -> None:
    """Loads the model folder's safetensors weights file ``path`` into ``model``.

    Read as safetensors whatever its name: a model folder's file is never unpickled."""
    state = safeweights.load(path)
    _config_buffers_agree(model, state, path)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state and k not in compat.CONFIG_BUFFERS)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        raise mismatch(path, missing, unexpected, shapes)
    # Non-strict only for config buffers this release saves and the checkpoint's did not.
    model.load_state_dict(state, strict=False)


class Checkpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, exact when it resumes from one of our own checkpoints.

    Initial weights (model zoo, ImageNet) keep Detectron2's lenient matching:
    their class heads differ from ours by design.
    """

    _exact = False

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        self._exact = bool(resume and self.has_checkpoint())
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._exact = False

    def _load_file(self, filename: str) -> Dict[str, Any]:
        # A model folder's weights as initial weights (fine-tuning a trained model): read as
        # safetensors, never unpickled, then matched like any checkpoint of ours.
        if filename.endswith(".safetensors"):
            return {"model": safeweights.load(filename)}
        return super()._load_file(filename)

    def _load_model(self, checkpoint: Any) -> Any:
        if self._exact:
            model = getattr(self.model, "module", self.model)
            _config_buffers_agree(model, checkpoint["model"], "checkpoint in " + str(self.save_dir))
        incompatible = super()._load_model(checkpoint)
        if self._exact:
            shapes = [k for k, *_ in incompatible.incorrect_shapes]
            # Detectron2 also lists a tensor it skipped for its shape as missing: name it once, as reshaped.
            missing = [k for k in incompatible.missing_keys if k not in compat.CONFIG_BUFFERS and k not in shapes]
            if missing or incompatible.unexpected_keys or shapes:
                raise mismatch("the checkpoint in {}".format(self.save_dir), missing,
                               list(incompatible.unexpected_keys), shapes)
        return incompatible
