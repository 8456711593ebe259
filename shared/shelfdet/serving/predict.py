"""Local prediction of one photo by a model folder, and the outputs ``make predict`` writes.

Outputs are named after the whole photo file name (``shelf.jpg`` ->
``shelf.jpg.json``, ``shelf.jpg.png``), like batch transform's
``shelf.jpg.out``: ``make evaluate`` matches predictions to the manifest by
photo file name, and an output never overwrites its input. An endpoint's
predictions (``shelfdet.launch.endpoint``) are written the same way.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional

from shelfdet.core import compat, photos
from shelfdet.serving import limits

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
RUNTIME_ENV = "SHELFDET_RUNTIME"  # the serving app's too (shelfdet.serving.app, which imports FastAPI)


class PredictError(RuntimeError):
    """A one-line, user-facing failure."""


class Outputs(NamedTuple):
    """Where and how a prediction is written: the folder, the PNG's score threshold (None: the model's
    count threshold, else 0.5) and the prediction's source (a model folder, or an endpoint's name)."""
    out: str
    score: Optional[float] = None
    model_dir: Optional[str] = None
    endpoint: Optional[str] = None


def _quiet(message: str) -> None:
    pass


def predict_local(model_dir: str, data: bytes, name: str, score_threshold: Optional[str],
                  max_detections: Optional[str], device: Optional[str], infer: str = "") -> Dict[str, Any]:
    """The photo's prediction by a local model, decoded as its endpoint decodes it (``Detector.decode``), run
    by the runtime its endpoint would run (SHELFDET_RUNTIME: the folder's export, else the eager model)."""
    from shelfdet.core import exported
    from shelfdet.core.artefacts import ArtefactError
    from shelfdet.core.checkpoint import CheckpointMismatch
    from shelfdet.core.hyperparameters import HyperparameterError, parse_inference

    compat.apply()  # a local model: Detectron2 may run in this process from here (an endpoint needs none)
    try:
        detector = exported.load(model_dir, runtime=os.environ.get(RUNTIME_ENV),
                                 overrides=parse_inference(infer, "INFER"), device=device)
    except (ArtefactError, CheckpointMismatch, HyperparameterError, exported.ExportMissing) as err:
        raise PredictError(str(err)) from None
    try:
        thr, cap = limits.check_request_limits(score_threshold, max_detections, *limits.model_limits(detector))
    except limits.LimitError as err:
        raise PredictError(str(err)) from None
    return detector.predict([detector.decode(data, name)], thr, cap)[0]


def predict_file(path: str, model_dir: Optional[str], outputs: Outputs, score_threshold: Optional[str] = None,
                 max_detections: Optional[str] = None, device: Optional[str] = None, infer: str = "",
                 say: Callable[[str], None] = _quiet) -> List[str]:
    """``path`` through the model folder: the JSON and PNG written (``say`` hears the one-line summary)."""
    if not os.path.isfile(path):
        raise PredictError("image not found: {}".format(path))
    if not model_dir:
        raise PredictError("no model: pass MODEL_DIR=<run>/model or ENDPOINT=<name>")
    with open(path, "rb") as f:
        data = f.read()
    photo = photos.decode(data, path)
    pred = predict_local(model_dir, data, path, score_threshold, max_detections, device, infer)
    return write_outputs(outputs, path, photo, pred, say)


def photo_files(path: str) -> List[str]:
    """The photo file, or a folder's photos by name."""
    if os.path.isdir(path):
        found = sorted(os.path.join(path, n) for n in os.listdir(path)
                       if os.path.splitext(n)[1].lower() in PHOTO_SUFFIXES and os.path.isfile(os.path.join(path, n)))
        if not found:
            raise PredictError("no images ({}) in folder {}".format(" ".join(PHOTO_SUFFIXES), path))
        return found
    if not os.path.isfile(path):
        raise PredictError("image not found: {}".format(path))
    return [path]


def write_outputs(outputs: Outputs, path: str, photo: Any, pred: Dict[str, Any],
                  say: Callable[[str], None] = _quiet) -> List[str]:
    """``<out>/<photo file>.json`` and ``.png``; ``photo`` is the decoded photo (the server's pixels)."""
    compat.apply()  # the drawing is Detectron2's Visualizer
    from shelfdet.core.visualize import DEFAULT_SCORE_THRESHOLD, default_score_threshold, draw_counted

    os.makedirs(outputs.out, exist_ok=True)
    base = os.path.join(outputs.out, os.path.basename(path))
    json_path, png_path = base + ".json", base + ".png"
    with open(json_path, "w") as f:
        json.dump(pred, f)
    # The picture shows what a count would count: every box down to the model's floor hides the shelf.
    if outputs.score is not None:
        threshold, why = outputs.score, "SCORE"
    elif outputs.model_dir:
        threshold, why = default_score_threshold(outputs.model_dir)
        why = "the model's count threshold" if why != "default" else why
    else:
        threshold, why = DEFAULT_SCORE_THRESHOLD, "default"
    draw_counted(photo, pred["pred_boxes"], pred["scores"], png_path, threshold, os.path.basename(path), why)
    source = "endpoint " + outputs.endpoint if outputs.endpoint else outputs.model_dir
    say("{}: {} boxes ({})".format(path, len(pred["scores"]), source))
    return [json_path, png_path]
