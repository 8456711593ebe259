"""Build-time smoke check of the base image, on the CPU: every shelfdet module
imports; Faster R-CNN and RetinaNet build from shelfdet's own config, train one
step and predict through ``shelfdet.inference.Detector``; where Detectron2's ops
were compiled, they load, and the CUDA architectures inside ``detectron2._C``
are listed and must include every one in TORCH_CUDA_ARCH_LIST.
Also handy later: ``docker run IMAGE python /usr/local/lib/shelfdet/smoke.py``."""
import glob
import importlib
import os
import pkgutil
import re
import shutil
import subprocess
import sys

import numpy as np
import torch

import shelfdet
from shelfdet import compat

compat.apply()

import detectron2  # noqa: E402

ARCH_RECORD = os.path.join(sys.prefix, "share", "shelfdet", "detectron2-archs.txt")


def import_everything():
    # __main__ runs the command line when imported: everything it uses is imported here anyway.
    names = [m.name for m in pkgutil.walk_packages(shelfdet.__path__, "shelfdet.") if not m.name.endswith("__main__")]
    for name in names:
        importlib.import_module(name)
    return len(names)


def train_step_and_predict(algo):
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    from shelfdet import hyperparameters
    from shelfdet.config import build_config
    from shelfdet.inference import Detector

    hp = hyperparameters.parse({"model-type": algo, "min-size": "128", "max-size": "160"}, profile="local")
    cfg = build_config(hp, ["SKU"], "smoke", None, "/tmp/smoke")
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    image = torch.randint(0, 255, (3, 128, 160), dtype=torch.uint8)
    gt = Instances((128, 160), gt_boxes=Boxes(torch.tensor([[10.0, 10.0, 40.0, 50.0], [60.0, 20.0, 100.0, 90.0]])),
                   gt_classes=torch.tensor([0, 0]))
    batch = [{"image": image, "instances": gt, "height": 128, "width": 160}] * 2
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with EventStorage(0):
        losses = model(batch)
    total = sum(losses.values())
    if not torch.isfinite(total):
        raise SystemExit("smoke: {} loss is not finite: {}".format(algo, losses))
    total.backward()
    optimizer.step()
    pred = Detector.from_model(cfg, model, ["SKU"]).predict([np.zeros((128, 160, 3), np.uint8)])[0]
    return "{} ({}): loss {:.3f}, {} detections".format(algo, cfg.MODEL.META_ARCHITECTURE, float(total.detach()),
                                                       len(pred["scores"]))


def compiled_archs():
    """sm_XX codes inside detectron2._C: cuobjdump when present, else the builder's record."""
    so = glob.glob(os.path.join(os.path.dirname(detectron2.__file__), "_C*.so"))
    if not so:
        return None, "no compiled extension"
    importlib.import_module("detectron2._C")  # its libraries (CUDA runtime, torch) resolve
    tool = shutil.which("cuobjdump")
    if tool:
        out = subprocess.run([tool, "--list-elf", so[0]], capture_output=True, text=True).stdout
        source = "cuobjdump"
    elif os.path.isfile(ARCH_RECORD):
        out = open(ARCH_RECORD).read()
        source = ARCH_RECORD
    else:
        out, source = "", "no CUDA code"
    return sorted(set(re.findall(r"sm_\d+", out))), source


def main():
    print("smoke: python {} torch {} detectron2 {}".format(sys.version.split()[0], torch.__version__,
                                                          detectron2.__version__), flush=True)
    print("smoke: imported {} shelfdet modules".format(import_everything()), flush=True)
    for algo in ("faster_rcnn", "retinanet"):
        print("smoke: " + train_step_and_predict(algo), flush=True)
    wanted = [a for a in os.environ.get("TORCH_CUDA_ARCH_LIST", "").replace(" ", ";").split(";") if a]
    archs, source = compiled_archs()
    if archs is None:
        print("smoke: compiled ops: none ({}; torchvision's ops serve both models)".format(source))
    elif not archs:
        print("smoke: compiled ops: cpu only ({})".format(source))
    else:
        print("smoke: compiled ops: CUDA {} ({})".format(" ".join(archs), source))
    missing = ["sm_" + a.replace("+PTX", "").replace(".", "") for a in wanted]
    missing = [sm for sm in missing if not archs or sm not in archs]
    if missing:
        raise SystemExit("smoke: detectron2._C lacks {} from TORCH_CUDA_ARCH_LIST={}".format(
            ", ".join(missing), os.environ.get("TORCH_CUDA_ARCH_LIST")))
    print("smoke ok")


if __name__ == "__main__":
    main()
