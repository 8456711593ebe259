"""The one table of training hyperparameters: names, types, defaults, ranges.

SageMaker passes every value as a string (``hyperparameters.json``); the
launcher, the tuner and ``make train HP='--lr 0.01'`` use the same names.
Two default columns: ``default`` is for SageMaker GPU jobs starting from the
model zoo's pretrained weights; ``local`` is for from-scratch CPU runs on this
kind of laptop, where pretrained weights cannot be downloaded.

Strings are read once, where they come in (the CLI, a job's hyperparameters.json, a
saved model's record), into a frozen :class:`Hyperparameters` that is passed down as
is; :func:`as_strings` writes them back only where SageMaker or a record needs strings.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from typing import Any, Callable, Dict, Iterable, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

ALGORITHMS = ("faster_rcnn", "retinanet", "cascade_rcnn")
# R_18_FPN is not in the model zoo: a from-scratch backbone for CPU runs.
BACKBONES = ("R_18_FPN", "R_50_C4", "R_50_DC5", "R_50_FPN", "R_101_C4", "R_101_DC5", "R_101_FPN", "X_101_32x8d_FPN")
RETINANET_BACKBONES = ("R_18_FPN", "R_50_FPN", "R_101_FPN", "X_101_32x8d_FPN")
# Cascade R-CNN pools its stages from the FPN levels: the FPN backbones only.
CASCADE_BACKBONES = RETINANET_BACKBONES


class HyperparameterError(ValueError):
    """A hyperparameter is unknown, malformed or out of range. The message names it."""


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true/false")


def _bool_text(value: bool) -> str:
    return "true" if value else "false"


def _classes(text: str) -> Optional[Tuple[str, ...]]:
    if text.strip() in ("", "auto"):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = [c.strip() for c in text.split(",") if c.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError("expected a JSON list of class names, e.g. [\"SKU\"]")
    return tuple(value)


def _list_text(value: Sequence[str]) -> str:
    return json.dumps(list(value))


def _schedule(text: str) -> str:
    low = text.strip().lower()
    low = low if low.endswith("x") else low + "x"
    if low not in ("1x", "3x"):
        raise ValueError("expected 1x or 3x")
    return low


# Workers per process that num-workers=auto never exceeds: 16 photo-size loaders outrun
# any one GPU, and each worker is a process with its own memory.
MAX_AUTO_WORKERS = 16
MAX_WORKERS = 64


def _auto_or_int(low: int, high: int, what: str) -> Callable[[str], Any]:
    """A parser of ``auto`` or an integer in [low, high] (``what`` it counts, for the error)."""
    def parse(text: str) -> Any:
        word = text.strip().lower()
        if word == "auto":
            return "auto"
        try:
            value = int(word)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise ValueError("expected auto or a number of {} from {} to {}".format(what, low, high))
        return value

    return parse


_workers = _auto_or_int(0, MAX_WORKERS, "workers")
_proposals = _auto_or_int(1, 100000, "candidates")
_min_size = _auto_or_int(32, 4096, "pixels")
_max_size = _auto_or_int(32, 8192, "pixels")


def _scales(text: str) -> Tuple[float, float]:
    """``low,high``: scale factors on the stored image size (``1``: one value, a fixed scale)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or not 0.05 <= values[0] <= values[1] <= 8.0:
        raise ValueError("expected low,high scale factors from 0.05 to 8 with low <= high, e.g. 0.5,0.8")
    # The saved form keeps six digits ({:g}): the value trained on is the one a resumed run reads back.
    low, high = ("{:g}".format(v) for v in values)
    return float(low), float(high)


def _scales_text(value: Tuple[float, float]) -> str:
    return "{:g},{:g}".format(*value)


def _fractions(text: str) -> Tuple[float, ...]:
    """``lr-steps``: increasing fractions of num-iter inside (0, 1), comma-separated (empty: no decay)."""
    try:
        fractions = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise HyperparameterError("hyperparameter 'lr-steps': {!r} is not a list of fractions".format(text)) from None
    if any(not 0.0 < f < 1.0 for f in fractions) or list(fractions) != sorted(fractions):
        raise HyperparameterError("hyperparameter 'lr-steps': {!r} must be increasing fractions inside (0, 1)".format(text))
    return fractions


def _fractions_text(value: Tuple[float, ...]) -> str:
    return ",".join(repr(f) for f in value)


class Param(NamedTuple):
    """One hyperparameter: ``parse`` reads its string form (SageMaker's) into the typed value,
    ``text`` writes it back; ``default``/``local`` are as the table shows them."""
    name: str
    parse: Callable[[str], Any]
    default: Any
    local: Any
    help: str
    choices: Optional[Tuple[str, ...]] = None
    low: Optional[float] = None
    high: Optional[float] = None
    # Tuning range: (kind, low, high, scaling)
    tune: Optional[Tuple[str, float, float, str]] = None
    text: Callable[[Any], str] = str


SAME = object()  # the local default equals the SageMaker default

PARAMS: Tuple[Param, ...] = (
    Param("model-type", str, "faster_rcnn", SAME, "Detector: faster_rcnn, retinanet or cascade_rcnn (Cascade R-CNN: "
          "three box stages at IoU 0.5/0.6/0.7; FPN backbones).", ALGORITHMS),
    Param("recipe", str, "none", SAME, "A named set of defaults, each overridable: dense = crop training at native scale "
          "(crop-size, crop-scales), test scale from the crops, anchors auto, proposals 3000, det-per-img 400, "
          "Soft-NMS; locally also lr-steps 0.8,0.95 and bbox-head-pos-fraction 0.5 (printed at start).", ("none", "dense")),
    Param("backbone", str, "R_50_FPN", "R_18_FPN", "Backbone from the Detectron2 model zoo (R_18_FPN: from-scratch, BN).", BACKBONES),
    Param("lr-schedule", _schedule, "1x", SAME, "Model-zoo schedule whose config and weights are used (1x or 3x)."),
    Param("weights", str, "zoo", "none", "Initial weights: zoo (model-zoo pretrained), none (from scratch), a .pth/.pkl "
          "path or URL, or a model folder's model_final.safetensors."),
    Param("norm", str, "auto", SAME, "Backbone norm; auto = FrozenBN with pretrained weights, BN from scratch (SyncBN on several GPUs).",
          ("auto", "FrozenBN", "BN", "SyncBN", "GN")),
    Param("lr", float, 0.005, {"faster_rcnn": 0.02, "retinanet": 0.01, "cascade_rcnn": 0.02}, "Base learning rate (for the whole batch).", low=1e-7, high=1.0, tune=("continuous", 0.0005, 0.1, "Logarithmic")),
    Param("num-iter", int, 3000, {"faster_rcnn": 120, "retinanet": 300, "cascade_rcnn": 120}, "Training iterations.", low=1, high=10_000_000),
    Param("warmup-iters", int, 100, 50, "Linear warm-up iterations (capped at a tenth of num-iter).", low=0),
    Param("lr-steps", _fractions, "0.67,0.89", SAME, "LR decay points as fractions of num-iter (x0.1 each).",
          text=_fractions_text),
    Param("batch-size", int, 16, 4, "Images per iteration over all GPUs and hosts.", low=1, high=4096),
    Param("num-workers", _workers, "auto", SAME, "Data-loader workers per training process (one process per GPU, one per "
          "CPU host); auto = the host's CPUs divided by its training processes, minus one for the training loop "
          "(at least 1, at most {}; e.g. 11 on a p4d, 7 on a p3.2xlarge, 1 on 2 cores); 0 loads in the training "
          "process.".format(MAX_AUTO_WORKERS)),
    Param("num-rpn", int, 512, 256, "Faster R-CNN: RoIs sampled per image for the box head.", low=16, high=8192),
    Param("rpn-pos-fraction", float, 0.5, SAME, "Faster R-CNN: positive fraction of the RPN minibatch.", low=0.01, high=1.0, tune=("continuous", 0.1, 0.5, "Linear")),
    Param("bbox-head-pos-fraction", float, 0.25, SAME, "Faster R-CNN: positive fraction of the RoI minibatch.", low=0.01, high=1.0, tune=("continuous", 0.1, 0.5, "Linear")),
    Param("reg-loss-type", str, "smooth_l1", SAME, "Box regression loss.", ("smooth_l1", "giou")),
    Param("bbox-reg-loss-weight", float, 1.0, SAME, "Weight of the box regression loss.", low=0.0, high=100.0),
    Param("focal-loss-gamma", float, 2.0, SAME, "RetinaNet: focal loss gamma.", low=0.0, high=10.0, tune=("continuous", 2.5, 5.0, "Linear")),
    Param("focal-loss-alpha", float, 0.25, SAME, "RetinaNet: focal loss alpha.", low=0.0, high=1.0, tune=("continuous", 0.3, 1.0, "Linear")),
    Param("det-per-img", int, 300, SAME, "Detections kept per image (dense scenes: 100 kills recall).", low=1, high=5000),
    Param("proposals", _proposals, "auto", SAME, "Test-time candidates: Faster R-CNN's RPN proposals after NMS, RetinaNet's "
          "per pyramid level; auto = max(1000, 2 x det-per-img)."),
    Param("anchors", str, "zoo", SAME, "Anchor sizes and aspect ratios: zoo (the model zoo's, 32-512 px, h/w 0.5/1/2) or auto "
          "(the zoo's ladder scaled to the training boxes at the test scale, aspect ratios by k-means; logged at start).",
          ("zoo", "auto")),
    Param("nms-thr", float, 0.5, SAME, "NMS IoU threshold at inference.", low=0.0, high=1.0),
    Param("nms", str, "hard", "soft", "Duplicate removal at inference: hard (NMS at nms-thr) or soft (Gaussian Soft-NMS: "
          "overlapping boxes lose score instead of being dropped; measured locally: AP +0.008 on both presets).",
          ("hard", "soft")),
    Param("soft-nms-sigma", float, 0.5, SAME, "Soft-NMS: score x exp(-IoU^2 / sigma) per better overlapping box.",
          low=0.01, high=10.0),
    Param("tile-size", int, 0, SAME, "Sliced inference (0: off): square tiles of this many image pixels, each resized "
          "as a whole image is, run with the whole image and merged; for photos much larger than min-size.",
          low=0, high=65536),
    Param("tile-overlap", float, 0.25, SAME, "Sliced inference: overlap of neighbouring tiles, a fraction of tile-size "
          "(make it larger than the largest product).", low=0.0, high=0.9),
    Param("pred-thr", float, 0.05, SAME, "Minimum score kept at inference.", low=0.0, high=1.0),
    Param("min-size", _min_size, 800, 256, "Shorter image side at test time (and the centre of training scales); auto "
          "(with crop-size): the training images' median shorter side times the crops' middle scale."),
    Param("max-size", _max_size, 1333, 320, "Cap on the longer image side; auto (with crop-size): the median longer "
          "side times the crops' middle scale."),
    Param("augment", str, "flip-scale", "flip", "Training augmentation (without crop-size: flip-scale resizes "
          "around min-size; with it, crop-scales set the scale).", ("none", "flip", "flip-scale")),
    Param("crop-size", int, 0, SAME, "Crop training (0: off): square crops of this many pixels, cut from the image "
          "resized by a random factor in crop-scales, each around a random box; the test sees the whole image.",
          low=0, high=4096),
    Param("crop-scales", _scales, "0.5,1", SAME, "Crop training: the range of scale factors on the stored image size "
          "(log-uniform), e.g. 0.5,0.8.", text=_scales_text),
    Param("crop-min-visible", float, 0.5, SAME, "Crop training: a box cut by the crop is kept when at least this "
          "fraction of its area is inside, else dropped.", low=0.0, high=1.0),
    Param("amp", _bool, True, False, "Mixed precision (GPU only; ignored on CPU).", text=_bool_text),
    Param("evaluation-type", str, "fast", SAME, "Final evaluation: fast (faster-coco-eval, C++; on every stack, "
          "else the job stops at start), coco (pycocotools; same numbers, slower), none.", ("coco", "fast", "none")),
    Param("export", str, "none", SAME, "After training, also write the model as a graph that serves without torch "
          "(model/export/<format>/, as make export does; checked on validation photos): none, openvino, onnx or "
          "torchscript.", ("none", "openvino", "onnx", "torchscript")),
    Param("eval-period", int, 500, 100, "Iterations between validation-loss passes (0: only at the end).", low=0),
    Param("val-samples", int, 64, 16, "Fixed validation images used for the validation loss.", low=1),
    Param("val-ap", _bool, False, SAME, "Also compute validation AP every eval-period (printed as validation_ap: x; tuning objective).",
          text=_bool_text),
    Param("checkpoint-period", int, 500, 100, "Iterations between checkpoints in the checkpoint dir.", low=1),
    Param("log-period", int, 20, 10, "Iterations between log lines.", low=1),
    Param("classes", _classes, None, SAME, "Class names as a JSON list; default: the manifest's class map.",
          text=_list_text),
    Param("dataset-name", str, "sku110k", SAME, "Prefix of the registered Detectron2 datasets."),
    Param("label-name", str, "sku", SAME, "Label attribute name in the augmented manifests."),
    Param("d2-opts", str, "", SAME, "Expert escape hatch: Detectron2 'KEY VALUE ...' pairs merged last, as tools/train_net.py's opts."),
    Param("seed", int, 42, SAME, "Random seed (-1: random).", low=-1),
    Param("dist-port", int, 55555, SAME, "TCP port of the distributed rendezvous on the first host.", low=1024, high=65535),
)
BY_NAME: Dict[str, Param] = {p.name: p for p in PARAMS}

# Named sets of defaults (hyperparameter ``recipe``), each value (SageMaker, local); None leaves that
# profile's own default. ``dense`` is the
# SKU-110K records' method: train on crops near native resolution, test on the whole photo at the
# crops' scale, with anchors fitted to the boxes and room for a few hundred products per photo.
# SageMaker: ~3264x2448 photos, 800 px crops at 0.4-0.8x, so the test runs near 1400x1850.
# Local: the hard preset's ~1000x750 photos, crops of about the old recipe's pixels per image; for
# 120 iterations from scratch, the LR decays late and half the sampled RoIs are products (measured
# on the hard preset: AP 0.290 -> 0.341).
RECIPES: Dict[str, Dict[str, Tuple[Optional[str], Optional[str]]]] = {
    "dense": {
        "crop-size": ("800", "320"),
        "crop-scales": ("0.4,0.8", "0.5,0.8"),
        "min-size": ("auto", "auto"),
        "max-size": ("auto", "auto"),
        "anchors": ("auto", "auto"),
        "proposals": ("3000", "3000"),
        "det-per-img": ("400", "400"),
        "nms": ("soft", "soft"),
        "lr-steps": (None, "0.8,0.95"),
        "bbox-head-pos-fraction": (None, "0.5"),
    },
}


def recipe_values(name: str, profile: str = "sagemaker") -> Dict[str, str]:
    """The defaults recipe ``name`` sets for ``profile`` (strings, as SageMaker passes them)."""
    values = {k: v[1 if profile == "local" else 0] for k, v in RECIPES.get(name, {}).items()}
    return {k: v for k, v in values.items() if v is not None}


def attr(name: str) -> str:
    """The field of :class:`Hyperparameters` that holds hyperparameter ``name``."""
    return name.replace("-", "_")


# A number, or the word "auto" (num-workers, proposals, min-size, max-size).
AutoInt = Union[int, str]


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
    """Every hyperparameter of :data:`PARAMS`, typed and validated; built by :func:`parse` where the
    values come in (CLI, hyperparameters.json) and passed down unchanged (``dataclasses.replace``
    derives a changed copy). Field ``a_b`` holds hyperparameter ``a-b``; the fields are the table's
    rows in its order (checked below)."""
    model_type: str
    recipe: str
    backbone: str
    lr_schedule: str
    weights: str
    norm: str
    lr: float
    num_iter: int
    warmup_iters: int
    lr_steps: Tuple[float, ...]
    batch_size: int
    num_workers: AutoInt
    num_rpn: int
    rpn_pos_fraction: float
    bbox_head_pos_fraction: float
    reg_loss_type: str
    bbox_reg_loss_weight: float
    focal_loss_gamma: float
    focal_loss_alpha: float
    det_per_img: int
    proposals: AutoInt
    anchors: str
    nms_thr: float
    nms: str
    soft_nms_sigma: float
    tile_size: int
    tile_overlap: float
    pred_thr: float
    min_size: AutoInt
    max_size: AutoInt
    augment: str
    crop_size: int
    crop_scales: Tuple[float, float]
    crop_min_visible: float
    amp: bool
    evaluation_type: str
    export: str
    eval_period: int
    val_samples: int
    val_ap: bool
    checkpoint_period: int
    log_period: int
    classes: Optional[Tuple[str, ...]]
    dataset_name: str
    label_name: str
    d2_opts: str
    seed: int
    dist_port: int


# Read at inference from the model's saved hyperparameters; serving, `make predict` and
# `make evaluate` may override them (INFER=) without retraining.
INFERENCE = ("det-per-img", "proposals", "nms-thr", "pred-thr", "nms", "soft-nms-sigma", "tile-size", "tile-overlap")


@dataclasses.dataclass(frozen=True)
class Inference:
    """A saved model's :data:`INFERENCE` hyperparameters (:func:`inference_of`), typed as in
    :class:`Hyperparameters`, which has the same fields."""
    det_per_img: int
    proposals: AutoInt
    nms_thr: float
    pred_thr: float
    nms: str
    soft_nms_sigma: float
    tile_size: int
    tile_overlap: float


def _check_fields(cls: type, names: Iterable[str]) -> None:
    fields = tuple(f.name for f in dataclasses.fields(cls))
    wanted = tuple(attr(n) for n in names)
    if fields != wanted:
        raise TypeError("{}'s fields {} are not the table's {}".format(cls.__name__, fields, wanted))


_check_fields(Hyperparameters, (p.name for p in PARAMS))
_check_fields(Inference, INFERENCE)


def _local(p: Param, algo: str) -> Any:
    value = p.local
    if isinstance(value, dict):  # per-algorithm local default
        value = value.get(algo, SAME)
    return p.default if value is SAME else value


def _typed(p: Param, value: Any) -> Any:
    """A table default as its typed value (the table writes some in their string form)."""
    return p.parse(value) if isinstance(value, str) else value


def defaults(profile: str = "sagemaker", algo: str = "faster_rcnn") -> Dict[str, Any]:
    """Every hyperparameter's default, typed; ``local`` = from-scratch CPU runs, per algorithm."""
    if profile not in ("sagemaker", "local"):
        raise ValueError(profile)
    out = {p.name: _typed(p, _local(p, algo) if profile == "local" else p.default) for p in PARAMS}
    out["model-type"] = algo
    return out


def parse_inference(text: str, where: str = "INFER") -> Dict[str, Any]:
    """``--tile-size 512 --nms soft`` (or ``tile-size=512 nms=soft``) into validated, typed inference
    hyperparameters; anything else is an error that names it and ``where`` it came from."""
    try:
        raw = parse_cli(text.split()) if text and text.strip() else {}
    except HyperparameterError as err:
        raise HyperparameterError("{}: {}".format(where, err)) from None
    out = {}
    for key, value in raw.items():
        name = key.replace("_", "-")
        try:
            typed = convert(name, value)
        except HyperparameterError as err:
            raise HyperparameterError("{}: {}".format(where, err)) from None
        if name not in INFERENCE:
            raise HyperparameterError("{}: '{}' is a training hyperparameter; at inference only {} apply".format(
                where, name, ", ".join(INFERENCE)))
        out[name] = typed
    return out


def inference_of(saved: Mapping[str, Any], overrides: Optional[Mapping[str, Any]] = None) -> Inference:
    """The inference hyperparameters of a model: its saved record's (strings), then ``overrides``
    (:func:`parse_inference`'s); one saved before an option existed gets the option's default (what it
    did then)."""
    overrides = overrides or {}
    values = {}
    for name in INFERENCE:
        raw = overrides[name] if name in overrides else saved.get(name)
        if raw is None:
            values[name] = _typed(BY_NAME[name], BY_NAME[name].default)
        else:
            values[name] = convert(name, raw) if isinstance(raw, str) else raw
    return Inference(**{attr(k): v for k, v in values.items()})


def candidates(hp: Union[Hyperparameters, Inference]) -> int:
    """``proposals``; auto: the zoo's 1000, or twice the detections kept so dense shelves can fill them."""
    return int(hp.proposals) if hp.proposals != "auto" else max(1000, 2 * hp.det_per_img)


def convert(name: str, raw: Any) -> Any:
    """One hyperparameter's value from its string form, validated; the error names it."""
    _check_known(name, name)
    return _convert(BY_NAME[name], raw)


def _check_known(name: str, as_given: str) -> None:
    if name not in BY_NAME:
        near = difflib.get_close_matches(name, list(BY_NAME), n=1)
        hint = " (did you mean '{}'?)".format(near[0]) if near else ""
        raise HyperparameterError("unknown hyperparameter '{}'{}".format(as_given, hint))


def _convert(p: Param, raw: Any) -> Any:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raw = json.dumps(raw) if isinstance(raw, list) else p.text(raw) if isinstance(raw, (tuple, bool)) else str(raw)
    try:
        value = p.parse(raw)
    except HyperparameterError:
        raise
    except (TypeError, ValueError) as err:
        kind = {int: "an integer", float: "a number"}.get(p.parse, "valid")
        detail = "" if kind != "valid" else ": {}".format(err)
        raise HyperparameterError("hyperparameter '{}': {!r} is not {}{}".format(p.name, raw, kind, detail)) from None
    if p.choices and value not in p.choices:
        raise HyperparameterError("hyperparameter '{}': {!r} is not one of {}".format(p.name, value, ", ".join(p.choices)))
    if p.low is not None and value < p.low:
        raise HyperparameterError("hyperparameter '{}': {} is below its minimum {}".format(p.name, value, p.low))
    if p.high is not None and value > p.high:
        raise HyperparameterError("hyperparameter '{}': {} is above its maximum {}".format(p.name, value, p.high))
    return value


def _check_combination(values: Mapping[str, Any]) -> None:
    """What no single value shows: the detector, backbone and test size must fit together."""
    if values["model-type"] == "cascade_rcnn" and values["backbone"] not in CASCADE_BACKBONES:
        raise HyperparameterError(
            "hyperparameter 'backbone': Cascade R-CNN needs an FPN backbone; use one of {}".format(
                ", ".join(CASCADE_BACKBONES)))
    if "auto" in (values["min-size"], values["max-size"]) and not values["crop-size"]:
        raise HyperparameterError("hyperparameters 'min-size'/'max-size': auto follows the crops; set crop-size "
                                  "(or RECIPE=dense), or give the test size in pixels")
    if values["model-type"] == "retinanet" and values["backbone"] not in RETINANET_BACKBONES:
        raise HyperparameterError(
            "hyperparameter 'backbone': {} has no RetinaNet config; use one of {}".format(
                values["backbone"], ", ".join(RETINANET_BACKBONES)))


def parse(raw: Mapping[str, Any], profile: str = "sagemaker") -> Hyperparameters:
    """Every hyperparameter from a mapping of their string forms (hyperparameters.json, :func:`parse_cli`),
    validated; the rest from ``profile``'s defaults and the recipe's."""
    algo = str(raw.get("model-type", raw.get("model_type", "faster_rcnn")))
    values = defaults(profile, algo if algo in ALGORITHMS else "faster_rcnn")
    recipe = raw.get("recipe")
    if recipe is not None:
        given = {key.replace("_", "-") for key in raw}
        for name, text in recipe_values(_convert(BY_NAME["recipe"], recipe), profile).items():
            if name not in given:  # a hyperparameter given explicitly beats the recipe's default
                values[name] = _convert(BY_NAME[name], text)
    for key, text in raw.items():
        name = key.replace("_", "-")
        if key.startswith(("sagemaker_", "_")) or name.startswith("sagemaker-"):
            continue  # set by SageMaker itself (job name, tuning objective, ...)
        _check_known(name, key)
        values[name] = _convert(BY_NAME[name], text)
    _check_combination(values)
    return Hyperparameters(**{attr(k): v for k, v in values.items()})


def value(hp: Hyperparameters, name: str) -> Any:
    """Hyperparameter ``name``'s typed value in ``hp``."""
    return getattr(hp, attr(name))


def text(name: str, typed: Any) -> str:
    """Hyperparameter ``name``'s value in its string form (what :func:`parse` reads back)."""
    return BY_NAME[name].text(typed)


def recipe_line(hp: Hyperparameters) -> str:
    """What the run's recipe set, as printed at start (empty without one)."""
    if hp.recipe == "none":
        return ""
    names = RECIPES[hp.recipe]
    return "recipe {}: {} (each overridable: HP='--name value')".format(
        hp.recipe, ", ".join("{} {}".format(n, text(n, value(hp, n))) for n in names))


def as_strings(hp: Hyperparameters) -> Dict[str, str]:
    """The hyperparameters.json form SageMaker passes (every value a string; lists as JSON; unset
    ones left out); :func:`parse` reads it back to ``hp``."""
    return {p.name: p.text(value(hp, p.name)) for p in PARAMS if value(hp, p.name) is not None}


def parse_cli(argv: Sequence[str]) -> Dict[str, str]:
    """``--lr 0.01 --num-iter 500`` or ``lr=0.01`` into a raw mapping (validated later by :func:`parse`)."""
    raw: Dict[str, str] = {}
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith("--"):
            key = item[2:]
            if "=" in key:
                key, value = key.split("=", 1)
            elif i + 1 < len(items):
                i += 1
                value = items[i]
            else:
                raise HyperparameterError("hyperparameter '{}' has no value".format(key))
        elif "=" in item:
            key, value = item.split("=", 1)
        else:
            raise HyperparameterError("cannot read {!r} as a hyperparameter: use --name value or name=value".format(item))
        raw[key] = value
        i += 1
    return raw


def markdown_table() -> str:
    rows = ["| name | SageMaker default | local default | meaning |", "|---|---|---|---|"]
    for p in PARAMS:
        if isinstance(p.local, dict):
            local = ", ".join("{}: {}".format(a, _local(p, a)) for a in ALGORITHMS)
        else:
            local = _local(p, "faster_rcnn")
        extra = " One of: {}.".format(", ".join(p.choices)) if p.choices else ""
        rows.append("| `{}` | {} | {} | {}{} |".format(p.name, p.default, local, p.help, extra))
    return "\n".join(rows)
