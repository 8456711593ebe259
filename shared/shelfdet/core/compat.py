"""Every difference between the Detectron2 releases our stacks pin, in one place.

The stacks run Detectron2 v0.4.1 (cu101: the newest release for torch 1.6),
0.6 (local and cpu) and commit 2dde706 (cu12). Elsewhere shelfdet uses the
names below instead of asking which release it runs on.

The local stack installs Detectron2's pure-Python package without its compiled
ops (Faster R-CNN and RetinaNet only need torchvision's); ``apply`` then gives
``detectron2._C`` and ``torch.ops.detectron2`` named placeholders that fail
only when an op is called. The GPU images compile the real ops, and then
``apply`` changes nothing there.

Call :func:`apply` before importing any ``detectron2`` module, once at each process
entry: ``shelfdet.commands.cli`` for the commands that run Detectron2, the Python API
(``shelfdet.load``/``shelfdet.Detector``), tests/conftest.py, bench/_common.py, and the
training processes Detectron2's launch spawns. It is idempotent, and a second call costs
nothing. No shelfdet module calls it when imported: this one imports torch, PIL and
Detectron2 inside its functions, so that a launcher importing it loads none of them.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any, Dict, Iterable, List, Optional

_applied = False


class CompiledOpsMissing(RuntimeError):
    """A Detectron2 op that exists only in its compiled extension was used."""


def _missing(qualname: str) -> CompiledOpsMissing:
    return CompiledOpsMissing(
        "{} is a compiled Detectron2 op, and this Detectron2 has no compiled extension "
        "(shelfdet.core.compat placeholder). Use the images, which build it, or an option that "
        "avoids it (e.g. evaluation uses pycocotools).".format(qualname))


class _MissingOp:
    """Importable and assignable like an op; raises :class:`CompiledOpsMissing` when called."""

    def __init__(self, qualname: str) -> None:
        self.qualname = qualname

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _missing(self.qualname)

    def __repr__(self) -> str:
        return "<missing compiled op {}>".format(self.qualname)


class _MissingCompiledOps(types.ModuleType):
    """Stands in for ``detectron2._C``: module-level attribute use fails with the op's name."""

    def __init__(self) -> None:
        super().__init__("detectron2._C")
        self.__file__ = __file__
        self.IS_SHELFDET_STUB = True

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise _missing("detectron2._C." + name)


class _MissingOpsNamespace(types.ModuleType):
    """Stands in for ``torch.ops.detectron2``: older releases look ops up there at import
    (v0.4.1's ``nms_rotated``), so lookups give placeholders and calls fail."""

    def __init__(self) -> None:
        super().__init__("torch.ops.detectron2")
        self.IS_SHELFDET_STUB = True

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _MissingOp("torch.ops.detectron2." + name)


# Names Pillow 10 removed that the pinned Detectron2 releases still use, and what they meant.
# v0.4.1, 0.6 and 2dde706 use exactly one: ``Image.LINEAR``, the default ``interp`` of
# ``ExtentTransform`` in detectron2/data/transforms/transform.py, read when that module is
# imported (every other ``Image.<NAME>`` they use is still in Pillow 10 to 13; tests/test_compat.py
# checks that on the pinned sources).
PILLOW_REMOVED = {"LINEAR": "BILINEAR"}


def restore_pillow_names() -> List[str]:
    """Puts back the :data:`PILLOW_REMOVED` names this Pillow lacks; returns those it put back.

    Older Pillows keep them (9.x with a deprecation warning), and then nothing changes.
    """
    import warnings

    from PIL import Image

    restored = []
    for name, same in sorted(PILLOW_REMOVED.items()):
        with warnings.catch_warnings():  # Pillow 9 answers these through a module __getattr__ that warns
            warnings.simplefilter("ignore", DeprecationWarning)
            present = hasattr(Image, name)
        if not present:
            setattr(Image, name, getattr(Image, same))
            restored.append(name)
    return restored


def has_compiled_ops() -> bool:
    mod = sys.modules.get("detectron2._C")
    if mod is not None:
        return not getattr(mod, "IS_SHELFDET_STUB", False)
    return importlib.util.find_spec("detectron2._C") is not None


def apply() -> None:
    """Idempotent. Patches only what is missing."""
    global _applied
    if _applied:
        return
    import warnings

    # Detectron2's model_zoo imports pkg_resources (hence setuptools<81 in versions.env).
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

    restore_pillow_names()

    if importlib.util.find_spec("detectron2") is None:
        raise ImportError("detectron2 is not installed: run `make setup` (or use the project's images)")
    if not has_compiled_ops():
        import torch

        sys.modules["detectron2._C"] = _MissingCompiledOps()
        import detectron2

        detectron2._C = sys.modules["detectron2._C"]  # type: ignore[attr-defined]
        torch.ops.detectron2 = _MissingOpsNamespace()  # type: ignore[attr-defined]
    _applied = True


# --- release facts ----------------------------------------------------------


def detectron2_version() -> str:
    apply()
    import detectron2

    return str(detectron2.__version__)


# --- configs ------------------------------------------------------------------


class UnknownConfigKey(KeyError):
    """A config key this Detectron2 release does not have."""

    def __str__(self) -> str:
        return str(self.args[0])


def config_leaves(node: Any, prefix: str = "") -> Dict[str, Any]:
    """``{"MODEL.RPN.NMS_THRESH": 0.7, ...}`` for a CfgNode or a plain nested dict."""
    out: Dict[str, Any] = {}
    for k, v in node.items():
        key = prefix + k
        if isinstance(v, dict):
            out.update(config_leaves(v, key + "."))
        else:
            out[key] = v
    return out


def has_key(cfg: Any, key: str) -> bool:
    node = cfg
    for name in key.split("."):
        if not isinstance(node, dict) or name not in node:
            return False
        node = node[name]
    return True


def set_key(cfg: Any, key: str, value: Any) -> None:
    """Sets a config key, or raises :class:`UnknownConfigKey` naming it and this release.

    Never drops a value: callers leave keys alone where the user asked for
    Detectron2's default behaviour.
    """
    if not has_key(cfg, key):
        raise UnknownConfigKey("Detectron2 {} has no config key {} (needed for {!r})".format(
            detectron2_version(), key, value))
    *parents, leaf = key.split(".")
    node = cfg
    for name in parents:
        node = node[name]
    node[leaf] = value


def unknown_keys(cfg: Any, leaves: Dict[str, Any]) -> List[str]:
    return sorted(k for k in leaves if not has_key(cfg, k))


# Model buffers that some releases save in checkpoints and others rebuild from the
# config (v0.4.1 saves pixel_mean/pixel_std; 0.6 does not).
CONFIG_BUFFERS = ("pixel_mean", "pixel_std")


def torch_load(path: str) -> Any:
    """``torch.load`` onto the CPU, tensors and plain containers only where torch can
    refuse the rest (``weights_only`` arrived in torch 1.13; cu101 has 1.6)."""
    import inspect

    import torch

    if "weights_only" in inspect.signature(torch.load).parameters:
        return torch.load(path, map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu")


def changed_config_keys(cfg: Any) -> List[str]:
    """Keys whose value differs from this release's default (saved with a model, so that
    another release can tell which of its unknown keys were left at their default)."""
    from detectron2.config import get_cfg

    defaults = config_leaves(get_cfg())
    return sorted(k for k, v in config_leaves(cfg).items() if k not in defaults or defaults[k] != v)


def _translate(leaves: Dict[str, Any], defaults: Dict[str, Any]) -> Dict[str, Any]:
    """Values whose meaning is spelt differently by another release."""
    out = dict(leaves)
    # 0.6 writes None for "the same as SOLVER.WEIGHT_DECAY"; v0.4.1 wants that number.
    if out.get("SOLVER.WEIGHT_DECAY_BIAS", 0) is None and defaults.get("SOLVER.WEIGHT_DECAY_BIAS") is not None:
        out["SOLVER.WEIGHT_DECAY_BIAS"] = out.get("SOLVER.WEIGHT_DECAY", defaults.get("SOLVER.WEIGHT_DECAY"))
    return out


def merge_saved_config(cfg: Any, saved: Dict[str, Any], changed_keys: Optional[Iterable[str]], where: str) -> List[str]:
    """Merges a config written by (possibly) another release into ``cfg``, strictly.

    Every key this release knows takes the saved value. A key it does not know
    is an error when the saved model changed it from its release's default
    (``changed_keys``, saved with the model) or when that list is absent;
    keys left at their default are skipped and returned: Detectron2 adds keys
    whose defaults keep the earlier behaviour (2dde706's USE_FED_LOSS=False...).
    """
    from detectron2.config import CfgNode

    defaults = config_leaves(cfg)
    leaves = _translate(config_leaves(saved), defaults)
    unknown = unknown_keys(cfg, leaves)
    changed = None if changed_keys is None else set(changed_keys)
    blocking = unknown if changed is None else [k for k in unknown if k in changed]
    if blocking:
        raise UnknownConfigKey("{}: Detectron2 {} has no config key(s) {}; serve this model on the stack that "
                               "trained it".format(where, detectron2_version(), ", ".join(blocking)))
    nested: Dict[str, Any] = {}
    for key, value in leaves.items():
        if key in unknown:
            continue
        node = nested
        *parents, leaf = key.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    cfg.merge_from_other_cfg(CfgNode(nested))
    return unknown
