"""``python -m shelfdet convert-model MODEL_DIR --trust-pickle``: a model folder of format 1
(weights as a torch pickle, ``model_final.pth``) rewritten as format 2 (``model_final.safetensors``).

Unpickling runs whatever code the file's writer put in it, so this is the one
place that unpickles a model folder's weights, and only when asked to with
--trust-pickle. Where torch has ``weights_only`` the load is restricted to
tensors all the same. The ``.pth`` is left where it is; nothing reads it again.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from shelfdet.core import artefacts


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="shelfdet convert-model", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", help="a model folder whose artefacts.json names a .pth (format 1)")
    ap.add_argument("--trust-pickle", action="store_true",
                    help="unpickle its .pth: only for a folder you trust (one your own training wrote)")
    ap.add_argument("--device", default="cpu", help="where the converted model is loaded once to check it (cpu)")
    return ap.parse_args(argv)


def convert(model_dir: str, trust_pickle: bool, device: str = "cpu") -> str:
    """Writes WEIGHTS beside the folder's .pth and rewrites its manifest; returns a line saying what it did."""
    manifest = artefacts.read_manifest(model_dir)
    if manifest.get("format") == artefacts.FORMAT:
        from shelfdet.core import safeweights

        safeweights.load(artefacts.read(model_dir).weights)  # whole, and its weights readable
        return "{} already holds its weights as {}: nothing to convert".format(model_dir, artefacts.WEIGHTS)
    if manifest.get("format") != artefacts.LEGACY_FORMAT:
        raise artefacts.ArtefactError("{}: format {!r}, expected {!r} to convert".format(
            os.path.join(model_dir, artefacts.MANIFEST), manifest.get("format"), artefacts.LEGACY_FORMAT))
    name = (manifest.get("files") or {}).get("weights") or artefacts.LEGACY_WEIGHTS
    pth = os.path.join(model_dir, name)
    if os.path.dirname(os.path.normpath(name)) or not os.path.isfile(pth):
        raise artefacts.ArtefactError("{}: weights file {} is not a file in the folder".format(
            os.path.join(model_dir, artefacts.MANIFEST), name))
    if not trust_pickle:
        raise artefacts.ArtefactError(
            "convert-model would unpickle {}, and a pickle can run any code its writer put in it: pass --trust-pickle "
            "(TRUST_PICKLE=1) only for a model folder you trust, such as one your own training wrote".format(pth))

    out = os.path.join(model_dir, artefacts.WEIGHTS)
    if os.path.lexists(out):
        raise artefacts.ArtefactError("{} exists already and the manifest does not name it: move it away to convert "
                                      "{}".format(out, pth))

    from shelfdet.core import compat, safeweights
    from shelfdet.core.checkpoint import CheckpointMismatch, state_of

    try:
        blob = compat.torch_load(pth)
    except Exception as err:  # torch's unpickler raises several kinds, each for a file that is no checkpoint
        raise CheckpointMismatch("{}: torch could not load it as a checkpoint of tensors ({}: {})".format(
            pth, type(err).__name__, " ".join(str(err).split())[:300])) from None
    state = state_of(blob, pth)
    safeweights.save(state, out)
    # Loaded once as serving loads it (every tensor placed in the model its config builds) before the
    # manifest names it; a file that does not load is taken away again.
    from shelfdet.core.inference import Detector, load_config

    config = os.path.join(model_dir, (manifest.get("files") or {}).get("config") or artefacts.CONFIG)
    try:
        Detector(load_config(config, device, (manifest.get("detectron2") or {}).get("changed_config_keys")), out,
                 manifest.get("class_names") or [])
    except BaseException:
        os.remove(out)
        raise
    artefacts.convert_manifest(model_dir, name)
    return "{}: wrote {} ({} tensors) from {} and loaded it exactly; {} is no longer read".format(
        model_dir, artefacts.WEIGHTS, len(state), name, name)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        print(convert(args.model_dir, args.trust_pickle, args.device))
    except RuntimeError as err:  # ArtefactError, CheckpointMismatch, UnknownConfigKey
        print("error: {}".format(err), file=sys.stderr)
        return 2
    return 0
