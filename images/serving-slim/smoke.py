"""Build-time check of the slim serving image: the server and both runtimes import, and
nothing of the eager stack (torch, Detectron2, pycocotools) is there to import."""
import importlib
import importlib.util
import sys

for name in ("shelfdet.commands.cli", "shelfdet.commands.serve", "shelfdet.serving.app", "shelfdet.core.exported",
             "openvino", "onnxruntime", "numpy", "PIL.Image"):
    importlib.import_module(name)
present = [m for m in ("torch", "torchvision", "detectron2", "pycocotools", "cv2") if importlib.util.find_spec(m)]
if present:
    sys.exit("error: the slim serving image holds {}".format(", ".join(present)))
if any(m in sys.modules for m in ("torch", "detectron2")):
    sys.exit("error: importing the server imported torch or Detectron2")
import openvino  # noqa: E402
import onnxruntime  # noqa: E402

print("[smoke] slim serving: python {}, openvino {}, onnxruntime {}; no torch, no Detectron2".format(
    sys.version.split()[0], openvino.__version__, onnxruntime.__version__))
