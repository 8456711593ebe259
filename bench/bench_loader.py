"""Photo-size training data path: Detectron2's DatasetMapper vs ours, per worker and in the real DataLoader.

Writes bench/results/loader.json. The images are generated SKU-110K-like
photos: 2448x3264 and 3264x2448 JPEGs of about 1.1 MB (SKU-110K's ~13 GB over
11,762 images), about 150 boxes each, every fourth stored sideways with an
EXIF orientation. Both mappers run the whole per-image path at the training
scale (shorter side 800, longer at most 1333, random flip): read, decode,
EXIF, resize, flip, boxes, tensor; one process with one torch thread, as in
a DataLoader worker, on the same random draws so their outputs are compared
too. Then Detectron2's DataLoader with our mapper (the trainer's own
build_train_loader) at 1, 2 and all cores' workers, and the effect of a
resized copy (``make data MAX_SIDE=1333``) on bytes and decode time.
Target (issue 12): >= 4x images/s per worker over Detectron2's mapper.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "shared"))
sys.path.insert(0, str(ROOT / "bench"))

from _common import write_result  # noqa: E402
from shelfdet.core import compat  # noqa: E402

compat.apply()

import torch  # noqa: E402
from detectron2.data import DatasetCatalog, DatasetMapper  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402
from PIL import Image  # noqa: E402

from shelfdet.core import hyperparameters  # noqa: E402
from shelfdet.core.config import build_config  # noqa: E402
from shelfdet.core import photo_files
from shelfdet.data import synthetic  # noqa: E402
from shelfdet.data.mapper import FastDatasetMapper  # noqa: E402

N_IMAGES = 16
PHOTO = (2448, 3264)  # width, height of a portrait SKU-110K photo
# The scene is drawn this many times smaller, then enlarged: about 150 products per photo.
DRAW_SCALE = 6.5
NOISE = 2.0  # sensor noise (grey levels): brings the JPEGs to the real photos' ~1.1 MB at quality 90
ROTATED = {3: 6, 7: 8}  # image index -> EXIF orientation (stored sideways)
PASSES = 2
LOADER_BATCHES = 12
BATCH = 4
MAX_SIDE = 1333
TARGET = 4.0


def make_photos(out_dir: Path, seed: int = 0) -> List[Dict[str, Any]]:
    """Writes N_IMAGES photo-size JPEGs; returns their Detectron2 dataset dicts (as catalog.py makes them)."""
    dicts = []
    for i in range(N_IMAGES):
        rng = np.random.default_rng([seed, i])
        w, h = PHOTO if i % 2 == 0 else PHOTO[::-1]
        sw, sh = int(round(w / DRAW_SCALE)), int(round(h / DRAW_SCALE))
        small, boxes, _ = synthetic.draw_scene(rng, sw, sh)
        big = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        big += rng.standard_normal(big.shape, dtype=np.float32) * NOISE
        rgb = Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)[:, :, ::-1])
        path = out_dir / "train_{}.jpg".format(i)
        orientation = ROTATED.get(i % 8)
        if orientation:
            # Stored sideways; the EXIF tag turns it back upright (6: 90 degrees clockwise, 8: counter-clockwise).
            exif = Image.Exif()
            exif[photo_files.EXIF_ORIENTATION] = orientation
            stored = rgb.transpose(Image.ROTATE_90 if orientation == 6 else Image.ROTATE_270)
            stored.save(path, "JPEG", quality=synthetic.JPEG_QUALITY, exif=exif.tobytes())
        else:
            rgb.save(path, "JPEG", quality=synthetic.JPEG_QUALITY)
        sx, sy = w / float(sw), h / float(sh)
        annos = [{"bbox": [x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy], "bbox_mode": BoxMode.XYWH_ABS,
                  "category_id": 0, "iscrowd": 0} for x1, y1, x2, y2 in boxes]
        dicts.append({"file_name": str(path), "image_id": i, "height": h, "width": w, "annotations": annos})
    return dicts


def config(dataset: str, workers: int) -> Any:
    hp = hyperparameters.parse({"min-size": "800", "max-size": "1333", "augment": "flip", "batch-size": str(BATCH),
                                "num-workers": str(workers)}, profile="local")
    return build_config(hp, ["SKU"], dataset, None, tempfile.gettempdir())


def per_worker(mapper: Any, dicts: List[Dict[str, Any]]) -> Tuple[float, List[Dict[str, Any]]]:
    """Images/s of one process mapping every dict PASSES times; the first pass's outputs."""
    outputs = []
    t0 = time.perf_counter()
    for p in range(PASSES):
        for i, d in enumerate(dicts):
            np.random.seed(i)  # the same resize and flip draws for both mappers
            out = mapper(d)
            if p == 0:
                outputs.append(out)
    return len(dicts) * PASSES / (time.perf_counter() - t0), outputs


def compare(old: List[Dict[str, Any]], new: List[Dict[str, Any]]) -> Dict[str, float]:
    pixel, worst_pixel, box = [], 0, 0.0
    for a, b in zip(old, new):
        assert a["image"].shape == b["image"].shape and len(a["instances"]) == len(b["instances"])
        diff = (a["image"].int() - b["image"].int()).abs()
        pixel.append(diff.float().mean().item())
        worst_pixel = max(worst_pixel, int(diff.max()))
        box = max(box, (a["instances"].gt_boxes.tensor - b["instances"].gt_boxes.tensor).abs().max().item())
    return {"pixel_mean_abs_diff": round(float(np.mean(pixel)), 3), "pixel_max_abs_diff": worst_pixel,
            "box_max_abs_diff_px": round(box, 5)}


def loader(dataset: str, workers: int) -> float:
    """Images/s out of the trainer's DataLoader (our mapper), after its first batch (workers starting)."""
    from shelfdet.training.trainer import Trainer

    it = iter(Trainer.build_train_loader(config(dataset, workers)))
    next(it)
    t0 = time.perf_counter()
    n = sum(len(next(it)) for _ in range(LOADER_BATCHES))
    rate = n / (time.perf_counter() - t0)
    del it  # stops the workers
    return rate


def decode_ms(paths: List[str]) -> float:
    t0 = time.perf_counter()
    for p in paths:
        with Image.open(p) as im:
            im.load()
    return 1000 * (time.perf_counter() - t0) / len(paths)


def resized_copy(dicts: List[Dict[str, Any]], out_dir: Path) -> List[Dict[str, Any]]:
    """What ``make data MAX_SIDE=1333`` writes: each photo once at a longer side of 1333, boxes scaled."""
    out = []
    for d in dicts:
        w, h = photo_files.fit(d["width"], d["height"], MAX_SIDE)
        dst = str(out_dir / os.path.basename(d["file_name"]))
        photo_files.write_resized(d["file_name"], dst, (w, h))
        s = w / float(d["width"]), h / float(d["height"])
        annos = [dict(a, bbox=[a["bbox"][0] * s[0], a["bbox"][1] * s[1], a["bbox"][2] * s[0], a["bbox"][3] * s[1]])
                 for a in d["annotations"]]
        out.append(dict(d, file_name=dst, width=w, height=h, annotations=annos))
    return out


def main() -> int:
    torch.set_num_threads(1)  # as in a DataLoader worker
    tmp = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        t0 = time.time()
        (tmp / "photos").mkdir()
        dicts = make_photos(tmp / "photos")
        sizes = [os.path.getsize(d["file_name"]) for d in dicts]
        m: Dict[str, Any] = {
            "photo_size": "2448x3264 and 3264x2448 ({} images, {} EXIF-rotated)".format(
                len(dicts), sum(1 for i in range(N_IMAGES) if i % 8 in ROTATED)),
            "photo_mb": round(float(np.mean(sizes)) / 1e6, 2),
            "boxes_per_image": round(float(np.mean([len(d["annotations"]) for d in dicts])), 1),
            "generate_s": round(time.time() - t0, 1),
        }
        cfg = config("bench_photos", 0)
        old_rate, old_out = per_worker(DatasetMapper(cfg, is_train=True), dicts)
        new_rate, new_out = per_worker(FastDatasetMapper(cfg, is_train=True), dicts)
        m.update({"d2_mapper_images_per_s_1w": round(old_rate, 1), "ours_images_per_s_1w": round(new_rate, 1),
                  "speedup_per_worker": round(new_rate / old_rate, 2)})
        m.update(compare(old_out, new_out))
        del old_out, new_out

        DatasetCatalog.register("bench_photos", lambda: list(dicts))
        cpus = os.cpu_count() or 1
        for workers in sorted({1, 2, cpus}):
            m["loader_images_per_s_{}w".format(workers)] = round(loader("bench_photos", workers), 1)

        (tmp / "resized").mkdir()
        small = resized_copy(dicts, tmp / "resized")
        small_sizes = [os.path.getsize(d["file_name"]) for d in small]
        m.update({
            "resized_1333_mb": round(float(np.mean(small_sizes)) / 1e6, 2),
            "resized_1333_bytes_ratio": round(sum(sizes) / float(sum(small_sizes)), 1),
            "decode_ms_photo": round(decode_ms([d["file_name"] for d in dicts]), 1),
            "decode_ms_resized_1333": round(decode_ms([d["file_name"] for d in small]), 1),
            "ours_images_per_s_1w_resized_1333": round(per_worker(FastDatasetMapper(cfg, is_train=True), small)[0], 1),
        })
        m["bench_s"] = round(time.time() - t0, 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    met = m["speedup_per_worker"] >= TARGET
    write_result("loader", m, "photo-size data path >= {:.0f}x images/s per worker over Detectron2's DatasetMapper: "
                 "{} ({:.1f}x; pixels within {:.2f} grey levels on average, boxes within {:g} px)".format(
                     TARGET, "met" if met else "missed", m["speedup_per_worker"], m["pixel_mean_abs_diff"],
                     m["box_max_abs_diff_px"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
