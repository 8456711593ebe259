"""A model folder's weights as a safetensors file, written and read without pickle.

A ``.pth`` is a pickle: unpickling it can run any code its writer put in it,
and torch 1.6 (cu101) has no ``weights_only`` to refuse that. A safetensors
file is a JSON header and raw tensor bytes, nothing else. The numpy reader and
writer are used on every stack: they need no particular torch, so torch 1.6,
1.8 and 2.x read and write the same file.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping

import numpy as np

from shelfdet.core.artefacts import ArtefactError

# What the header's metadata says about the file (informative only; tensors load without it).
METADATA = {"format": "pt", "content": "shelfdet model state dict"}


def _array(name: str, tensor) -> np.ndarray:
    import torch

    # Newer safetensors writers read the array's memory as it lies, so it must be contiguous
    # (np.ascontiguousarray would turn a 0-d tensor such as num_batches_tracked into 1-d).
    tensor = tensor.detach().cpu().contiguous()
    # numpy has no bfloat16; float32 holds every bfloat16 value exactly, and
    # load_state_dict copies it back into a bfloat16 parameter unchanged.
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    try:
        return tensor.numpy()
    except TypeError as err:
        raise ArtefactError("cannot write tensor {} ({}) as safetensors: {}".format(name, tensor.dtype, err)) from None


def save(state: Mapping[str, object], path: str) -> None:
    """Writes ``state`` (name -> tensor) to ``path``, through a temporary file beside it."""
    from safetensors.numpy import save_file

    arrays = {name: _array(name, tensor) for name, tensor in state.items()}
    tmp = path + ".tmp"
    save_file(arrays, tmp, metadata=dict(METADATA))
    # safetensors 0.8 creates the file owner-only (0600); the serving image runs as another user
    # than training, so the weights get the mode open() would have given them.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def load(path: str) -> Dict[str, object]:
    """The tensors of ``path`` as torch tensors on the CPU (name -> tensor)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    # safetensors reports an unreadable file as "No such file or directory": open it first for the real reason.
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise ArtefactError("cannot read weights file {}: {}".format(path, err.strerror or err)) from None
    try:
        arrays = load_file(path)
    except (SafetensorError, KeyError, TypeError, ValueError) as err:
        # KeyError: a dtype numpy lacks (BF16, F8...), which shelfdet never writes.
        raise ArtefactError("{} is not a safetensors weights file shelfdet can read ({})".format(
            path, " ".join(str(err).split()) or type(err).__name__)) from None
    # Copies: the reader's arrays are read-only views of the file, and a model's tensors are written to.
    return {name: torch.from_numpy(np.array(array)) for name, array in arrays.items()}
