"""Makes Detectron2 0.6 importable on stacks it was not built for, in one place.

The local stack installs Detectron2's pure-Python package without its compiled
``_C`` extension (Faster R-CNN and RetinaNet only need torchvision's ops), and
uses a Pillow that dropped ``Image.LINEAR``. The GPU images compile the real
extension, and then nothing here changes anything.

Call :func:`apply` before importing any ``detectron2`` module.
"""
from __future__ import annotations

import importlib.util
import sys
import types

_applied = False


class CompiledOpsMissing(RuntimeError):
    """A Detectron2 op that exists only in the compiled ``detectron2._C`` was used."""


class _MissingCompiledOps(types.ModuleType):
    """Stands in for ``detectron2._C`` when the extension was not built.

    Importing it works (some Detectron2 modules import it at import time);
    using any op raises :class:`CompiledOpsMissing` with the op's name.
    """

    def __init__(self) -> None:
        super().__init__("detectron2._C")
        self.__file__ = __file__
        self.IS_SHELFDET_STUB = True

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise CompiledOpsMissing(
            "detectron2._C.{} is a compiled Detectron2 op, and this Detectron2 has no compiled "
            "extension (shelfdet.compat stub). Use the GPU images, which build it, or an "
            "option that avoids it (e.g. evaluation uses pycocotools).".format(name)
        )


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

    from PIL import Image

    # Detectron2 0.6's model_zoo imports pkg_resources (hence setuptools<81 in versions.env).
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

    # Pillow 10 removed the alias; Detectron2 0.6 uses it as a default argument.
    if not hasattr(Image, "LINEAR"):
        Image.LINEAR = Image.BILINEAR  # type: ignore[attr-defined]

    if importlib.util.find_spec("detectron2") is None:
        raise ImportError("detectron2 is not installed: run `make setup` (or use the project's images)")
    if not has_compiled_ops():
        sys.modules["detectron2._C"] = _MissingCompiledOps()
        import detectron2

        detectron2._C = sys.modules["detectron2._C"]  # type: ignore[attr-defined]
    _applied = True
