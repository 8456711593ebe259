"""shelfdet: dense shelf-object detection with Detectron2, locally and on SageMaker.

The Python API (docs/python.md)::

    import shelfdet
    detector = shelfdet.load("runs/<run>/model")          # a model folder, as make train writes it
    result = detector.predict([detector.read("shelf.jpg")])[0]   # boxes, scores, class names

``load``/``Detector`` (a model folder: ``predict`` on photos read from paths or on HxWx3 BGR arrays),
``read_photo`` (a photo file as such an array), ``build_dataset`` (what ``make data`` does) and
``read_run`` (a run's final AP and the rest of its evaluation). Each is imported on first use:
``import shelfdet`` itself loads neither torch nor Detectron2.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional

__version__ = "0.1.0"
__all__ = ["Detector", "load", "read_photo", "build_dataset", "read_run", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from shelfdet.core.inference import Detector


def _detectron2_ready() -> None:
    """The API's process entry: this Detectron2 release's differences are patched before it is imported."""
    from shelfdet.core import compat

    compat.apply()


def __getattr__(name: str) -> Any:
    if name == "Detector":
        _detectron2_ready()
        from shelfdet.core.inference import Detector

        return Detector
    raise AttributeError("module 'shelfdet' has no attribute {!r}".format(name))


def __dir__() -> "list":
    return sorted(set(globals()) | {"Detector"})


def load(model_dir: str, device: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None,
         runtime: str = "torch") -> "Detector":
    """The model of a model folder (``runs/<run>/model``) as trained; ``device`` defaults to a GPU when one
    is there; ``overrides``: inference hyperparameters over the model's own, e.g. ``{"nms": "soft"}``.
    ``runtime``: ``"openvino"``, ``"onnx"`` or ``"auto"`` run the folder's export (``make export``) instead,
    with the same ``decode``/``read``/``predict``."""
    if runtime != "torch":
        from shelfdet.core import exported

        return exported.load(model_dir, runtime, overrides, device)
    _detectron2_ready()
    from shelfdet.core.inference import Detector

    return Detector.from_model_dir(model_dir, device, overrides)


def read_photo(path: str) -> "np.ndarray":
    """A JPEG or PNG file as an HxWx3 uint8 BGR array at full size, EXIF orientation applied."""
    from shelfdet.core import photos

    return photos.read(path)


def build_dataset(data_dir: str, src: Optional[str] = None, say: Optional[Callable[[str], None]] = None,
                  **options: Any) -> Dict[str, Any]:
    """What ``make data`` does: DATA_DIR's channels, manifests and report from ``src`` (a SKU110K_fixed folder,
    its tarball or URL; ``format="coco"``, ``"voc"``, ``"yolo"`` or ``"gt"`` for other labels) or, without
    ``src``, a synthetic SKU-110K. Returns the report (``report.json``). ``options`` are those of
    ``shelfdet.data.build.Request`` (make data's): ``max_side``, ``preset``, ``bucket``, ``prefix``,
    ``photos={"train": 8, ...}``, ``photo_size=(w, h)``, ``seed``, ``workers``, ``force``. ``say`` gets
    the summary lines make data prints (``say=print`` to see them)."""
    from shelfdet.data import build

    request = build.Request(data_dir, src=src, **options)
    return build.build(request, say=say) if say else build.build(request)


def read_run(run_dir: str) -> Dict[str, Any]:
    """A run folder's results (``runs/<run>``): ``complete``, ``algorithm`` and, once complete, its final
    evaluation: ``AP``, ``AP50``, ``AP75``, ``AR``, ``count_mae``, ``iterations``, ``train_seconds``, ..."""
    from shelfdet.core import metrics

    return metrics.read_run(run_dir)
