"""Build-time smoke check of the base image, on the CPU: every shelfdet module
imports; Faster R-CNN and RetinaNet build from shelfdet's own config, train one
step and predict through ``shelfdet.core.inference.Detector``; where Detectron2's ops
were compiled, they load, and the CUDA architectures inside ``detectron2._C``
are listed and must include every one in TORCH_CUDA_ARCH_LIST.
Also handy later: ``docker run IMAGE python /usr/local/lib/shelfdet/smoke.py``."""
import contextlib
import glob
import importlib
import os
import pkgutil
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import torch

import shelfdet
from shelfdet.core import compat

compat.apply()

import detectron2  # noqa: E402

def import_everything():
    names = [m.name for m in pkgutil.walk_packages(shelfdet.__path__, "shelfdet.")]
    for name in names:
        if name.rsplit(".", 1)[-1] != "__main__":
            importlib.import_module(name)
            continue
        # Importing __main__ runs the command line: give it --help, which must exit 0.
        argv, sys.argv = sys.argv, [name, "--help"]
        try:
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                importlib.import_module(name)
        except SystemExit as done:
            if done.code not in (0, None):
                raise SystemExit("smoke: python -m {} --help exited {}".format(name, done.code))
        finally:
            sys.argv = argv
    return len(names)


def train_step_and_predict(algo):
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances
    from detectron2.utils.events import EventStorage

    from shelfdet.core import hyperparameters
    from shelfdet.core.config import build_config
    from shelfdet.core.inference import Detector

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


def fatbin_entries(path):
    """(kind, arch) of each CUDA code object inside an ELF shared library: kind "sm" for
    machine code, "compute" for PTX. Read from the .nv_fatbin section's fatbinary
    headers (magic 0xBA55ED50; each entry's kind at offset 0, its arch at offset 28),
    so that no CUDA tool is needed in the final stage."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return []
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + k * shentsize) for k in range(shnum)]
    names_at = sections[shstrndx][4]
    entries = []
    for name, _, _, _, offset, size in sections:
        if data[names_at + name:names_at + name + 11] != b".nv_fatbin\x00":
            continue
        pos, end = offset, offset + size
        while pos + 16 <= end:
            magic, _, header, body = struct.unpack_from("<IHHQ", data, pos)
            if magic != 0xBA55ED50:
                pos += 8  # containers are 8-byte aligned
                continue
            entry, stop = pos + header, pos + header + body
            while entry < stop:
                kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, entry)
                arch, = struct.unpack_from("<I", data, entry + 28)
                if kind in (1, 2):
                    entries.append(("compute" if kind == 1 else "sm", arch))
                entry += entry_header + payload
            pos = stop
    return sorted(set(entries))


def compiled_archs():
    """The CUDA code inside detectron2._C as names like sm_70 (machine code) and
    compute_90 (PTX); None where nothing was compiled."""
    so = glob.glob(os.path.join(os.path.dirname(detectron2.__file__), "_C*.so"))
    if not so:
        return None, "no compiled extension"
    importlib.import_module("detectron2._C")  # its libraries (CUDA runtime, torch) resolve
    found = ["{}_{}".format(kind, arch) for kind, arch in fatbin_entries(so[0])]
    tool = shutil.which("cuobjdump") or next(iter(glob.glob(os.path.join(
        sys.prefix, "lib", "python3*", "site-packages", "triton", "backends", "nvidia", "bin", "cuobjdump"))), None)
    if tool and found:
        # Cross-check with NVIDIA's own reader where there is one (torch's triton ships it).
        listed = subprocess.run([tool, "--list-elf", "--list-ptx", so[0]], capture_output=True, text=True).stdout
        theirs = set(re.findall(r"\.(sm_\d+)\.cubin", listed)) | {
            "compute_" + m for m in re.findall(r"\.sm_(\d+)\.ptx", listed)}
        if theirs != set(found):
            raise SystemExit("smoke: {} lists {}, the fatbin headers {}".format(tool, sorted(theirs), found))
        return found, "fatbin headers, as cuobjdump lists"
    return found, "fatbin headers" if found else "no CUDA code in " + os.path.basename(so[0])


def check_archs(arch_list, archs):
    """Fails the build (SystemExit) when the compiled code lacks an architecture that
    TORCH_CUDA_ARCH_LIST asks for; "9.0+PTX" asks for sm_90 machine code and compute_90
    PTX (for GPUs after it). archs: names as compiled_archs() gives them, or None."""
    wanted = [a for a in arch_list.replace(" ", ";").split(";") if a]
    needed = ["sm_" + a.replace("+PTX", "").replace(".", "") for a in wanted]
    needed += ["compute_" + a.replace("+PTX", "").replace(".", "") for a in wanted if a.endswith("+PTX")]
    missing = [code for code in needed if not archs or code not in archs]
    if missing:
        raise SystemExit("smoke: detectron2._C lacks {} from TORCH_CUDA_ARCH_LIST={}".format(
            ", ".join(missing), arch_list))


def main():
    print("smoke: python {} torch {} detectron2 {}".format(sys.version.split()[0], torch.__version__,
                                                          detectron2.__version__), flush=True)
    print("smoke: imported {} shelfdet modules".format(import_everything()), flush=True)
    for algo in ("faster_rcnn", "retinanet"):
        print("smoke: " + train_step_and_predict(algo), flush=True)
    archs, source = compiled_archs()
    if archs is None:
        print("smoke: compiled ops: none ({}; torchvision's ops serve both models)".format(source))
    elif not archs:
        print("smoke: compiled ops: cpu only ({})".format(source))
    else:
        print("smoke: compiled ops: CUDA {} ({})".format(" ".join(archs), source))
    check_archs(os.environ.get("TORCH_CUDA_ARCH_LIST", ""), archs)
    print("smoke ok")


if __name__ == "__main__":
    main()
