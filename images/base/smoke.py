"""Build-time smoke check of the base image: Detectron2 imports (through
shelfdet.compat) and a Faster R-CNN model builds and runs one image on the CPU.
Also handy later: ``docker run IMAGE python /usr/local/lib/shelfdet/smoke.py``."""
import sys

import torch

from shelfdet import compat

compat.apply()

import detectron2  # noqa: E402
from detectron2 import model_zoo  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

cfg = get_cfg()
cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"))
cfg.MODEL.DEVICE = "cpu"
cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
model = build_model(cfg).eval()
with torch.no_grad():
    out = model([{"image": torch.zeros(3, 64, 64), "height": 64, "width": 64}])
assert "instances" in out[0], out
print("smoke ok: python {} torch {} detectron2 {} (compiled ops: {}), {} parameters".format(
    sys.version.split()[0], torch.__version__, detectron2.__version__, compat.has_compiled_ops(),
    sum(p.numel() for p in model.parameters())))
