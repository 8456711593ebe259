"""The model folder's contract between training and serving.

Training writes ``artefacts.json`` naming every file it put in the model dir;
serving reads exactly those files and nothing else (never "the last .pth").
The weights are a safetensors file: a model folder holds data, never code, so
nothing in it is unpickled (format 1 folders, whose weights were a torch
pickle, are refused until ``shelfdet convert-model`` rewrites them).
"""
from __future__ import annotations

import datetime
import json
import os
from typing import Any, Dict, List, NamedTuple, Optional

FORMAT = "shelfdet-model/2"
# Format 1 named a torch pickle as its weights (LEGACY_WEIGHTS); format 2 a safetensors file.
LEGACY_FORMAT = "shelfdet-model/1"
MANIFEST = "artefacts.json"
WEIGHTS = "model_final.safetensors"
LEGACY_WEIGHTS = "model_final.pth"
CONFIG = "config.yaml"
METRICS = "metrics.json"


class ArtefactError(RuntimeError):
    """The model folder is missing a file or its manifest is malformed."""


class ModelArtefacts(NamedTuple):
    model_dir: str
    weights: str
    config: str
    class_names: List[str]
    model_type: str
    manifest: Dict[str, Any]

    @property
    def changed_config_keys(self) -> Optional[List[str]]:
        """Config keys the model set away from its Detectron2's defaults (None: not recorded)."""
        return (self.manifest.get("detectron2") or {}).get("changed_config_keys")


def write_manifest(model_dir: str, class_names: List[str], model_type: str,
                   hyperparameters: Optional[Dict[str, Any]] = None, extra_files: Optional[Dict[str, str]] = None,
                   detectron2: Optional[Dict[str, Any]] = None) -> str:
    """Writes artefacts.json after checking that the files it names exist."""
    files = {"weights": WEIGHTS, "config": CONFIG}
    if os.path.exists(os.path.join(model_dir, METRICS)):
        files["metrics"] = METRICS
    files.update(extra_files or {})
    for role, name in files.items():
        if not os.path.isfile(os.path.join(model_dir, name)):
            raise ArtefactError("cannot write {}: {} file {} is missing in {}".format(MANIFEST, role, name, model_dir))
    manifest = {
        "format": FORMAT,
        "files": files,
        "class_names": list(class_names),
        "model_type": model_type,
        "hyperparameters": hyperparameters or {},
        # The release that trained it and the config keys it changed (see inference.load_config).
        "detectron2": detectron2 or {},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = os.path.join(model_dir, MANIFEST)
    _write_json(path, manifest)
    return path


def _write_json(path: str, manifest: Dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def convert_manifest(model_dir: str, old_weights: str) -> str:
    """Rewrites a format 1 ``artefacts.json`` as format 2, naming WEIGHTS (already written) in place of
    ``old_weights``; every other entry is kept as training wrote it."""
    manifest = read_manifest(model_dir)
    if not os.path.isfile(os.path.join(model_dir, WEIGHTS)):
        raise ArtefactError("cannot write {}: weights file {} is missing in {}".format(MANIFEST, WEIGHTS, model_dir))
    manifest["format"] = FORMAT
    manifest["files"] = dict(manifest.get("files") or {}, weights=WEIGHTS)
    manifest["converted"] = {"from": old_weights,
                             "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    path = os.path.join(model_dir, MANIFEST)
    _write_json(path, manifest)
    return path


def pickled_weights(model_dir: str, name: str) -> ArtefactError:
    return ArtefactError(
        "{} holds its weights as a pickle ({}), which shelfdet never loads: if you trust where it came from, convert "
        "it once with `python -m shelfdet convert-model {} --trust-pickle` (make convert-model MODEL_DIR={} "
        "TRUST_PICKLE=1)".format(model_dir, name, model_dir, model_dir))


def read_manifest(model_dir: str) -> Dict[str, Any]:
    """``artefacts.json`` as written, of either format (convert-model reads format 1 too)."""
    path = os.path.join(model_dir, MANIFEST)
    if not os.path.isfile(path):
        raise ArtefactError("{} not found: {} is not a model folder written by shelfdet training".format(path, model_dir))
    try:
        with open(path) as f:
            manifest = json.load(f)
    except json.JSONDecodeError as err:
        raise ArtefactError("{}: not valid JSON ({})".format(path, err)) from None
    if not isinstance(manifest, dict):
        raise ArtefactError("{}: not a JSON object".format(path))
    return manifest


def read(model_dir: str) -> ModelArtefacts:
    path = os.path.join(model_dir, MANIFEST)
    manifest = read_manifest(model_dir)
    files = manifest.get("files") or {}
    if manifest.get("format") == LEGACY_FORMAT:
        raise pickled_weights(model_dir, files.get("weights") or LEGACY_WEIGHTS)
    if manifest.get("format") != FORMAT:
        raise ArtefactError("{}: format {!r}, expected {!r}".format(path, manifest.get("format"), FORMAT))
    resolved = {}
    for role in ("weights", "config"):
        name = files.get(role)
        if not name:
            raise ArtefactError("{}: no '{}' entry in files".format(path, role))
        if role == "weights" and not str(name).endswith(".safetensors"):
            raise ArtefactError("{}: weights file {} is not a .safetensors file, the only kind shelfdet loads".format(
                path, name))
        full = os.path.join(model_dir, name)
        if not os.path.isfile(full):
            raise ArtefactError("{}: {} file {} does not exist".format(path, role, full))
        resolved[role] = full
    names = manifest.get("class_names")
    if not isinstance(names, list) or not names:
        raise ArtefactError("{}: class_names must be a non-empty list".format(path))
    return ModelArtefacts(model_dir, resolved["weights"], resolved["config"], names,
                          manifest.get("model_type", ""), manifest)
