"""A deterministic synthetic SKU-110K in exactly the real layout (SPEC §2).

Scenes are rows of shelves packed with product facings: runs of identical
products touching each other (so boxes are separated only by their outlines),
bottles and boxes of varied size, colour and label, products cut by the image
border, price tags on the shelf edges as distractors. Like the real dataset it
ships a few truncated JPEGs and a few CSV rows of the real bad kinds
(degenerate box, box crossing the border, CSV size disagreeing with the file).

Every image is drawn from its own seeded generator, so the output does not
depend on the number of worker processes.
"""
from __future__ import annotations

import csv
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np

from . import ROOT_NAME, SPLITS, csv_name

# Sized for a from-scratch R-18-FPN on 2 CPU cores in minutes; the training
# owner tunes these, so they are the single place to change.
VERSION = 1  # bump when the drawing changes: build.py regenerates on a new version
DEFAULT_IMAGES = {"train": 160, "val": 30, "test": 30}
DEFAULT_SIZE = (320, 256)  # width, height
DEFAULT_SEED = 0
# Like the real set (4 train, 2 test): none in val, so validation stays whole.
DEFAULT_CORRUPT = {"train": 2, "val": 0, "test": 1}
JPEG_QUALITY = 90
MIN_VISIBLE = 4  # px: a sliver thinner than this at the border is not annotated

Box = Tuple[int, int, int, int]


class BadRow(NamedTuple):
    split: str
    image: str
    kind: str  # "degenerate" | "crosses_border" | "size_mismatch"


class Generated(NamedTuple):
    root: str  # .../SKU110K_fixed
    images: Dict[str, List[str]]  # split -> image names, corrupted included
    corrupted: List[str]
    boxes: Dict[str, int]  # image -> number of valid boxes drawn
    bad_rows: List[BadRow]


def _hsv_colour(rng: np.random.Generator, sat: Tuple[int, int], val: Tuple[int, int]) -> np.ndarray:
    hsv = np.array([[[rng.integers(0, 180), rng.integers(*sat), rng.integers(*val)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


class _Sku:
    """One product type; a shelf shows it as a run of identical facings."""

    def __init__(self, rng: np.random.Generator, scale: float, max_h: int):
        self.w = max(8, int(rng.uniform(13, 34) * scale))
        self.h = max(10, min(max_h, int(rng.uniform(0.55, 1.0) * max_h)))
        self.kind = rng.choice(["box", "box", "bottle", "can"])
        self.body = _hsv_colour(rng, (60, 256), (60, 250))
        self.label = _hsv_colour(rng, (0, 256), (120, 256))
        self.ink = _hsv_colour(rng, (0, 256), (0, 90))
        self.band = (rng.uniform(0.25, 0.45), rng.uniform(0.6, 0.85))
        self.stripes = int(rng.integers(0, 4))
        # Cylindrical products are lit in the middle, boxes more evenly.
        depth = 0.45 if self.kind != "box" else 0.15
        x = np.linspace(-1.0, 1.0, self.w, dtype=np.float32)
        self.shade = (1.0 - depth * x * x)[None, :, None]
        self.sprite = self._draw()

    def _draw(self) -> np.ndarray:
        w, h = self.w, self.h
        img = np.empty((h, w, 3), np.float32)
        img[:] = self.body
        top, bottom = int(h * self.band[0]), int(h * self.band[1])
        img[top:bottom, 1:w - 1] = self.label
        for k in range(self.stripes):
            y = top + 2 + k * max(2, (bottom - top) // 4)
            if y < bottom - 1:
                img[y, max(1, w // 5):w - max(1, w // 5)] = self.ink
        img *= self.shade
        # A dark outline is what separates two touching facings of one product.
        img[:, 0] *= 0.45
        img[:, -1] *= 0.45
        img[0] *= 0.6
        img[-1] *= 0.5
        alpha = np.ones((h, w), np.float32)
        if self.kind == "bottle":
            neck_h = max(2, int(h * 0.28))
            neck_w = max(3, w // 3)
            x0 = (w - neck_w) // 2
            alpha[:neck_h] = 0
            alpha[:neck_h, x0:x0 + neck_w] = 1
            img[neck_h - 1, :] *= 0.6
        elif self.kind == "can":
            r = max(1, w // 6)
            for c in ((0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)):
                cv2.circle(alpha, (c[1], c[0]), r, 0, -1)
            alpha[r:h - r] = 1
            alpha[:, r:w - r] = 1
        return np.dstack([img, alpha])


def _paste(canvas: np.ndarray, sprite: np.ndarray, x: int, y: int) -> None:
    h, w = sprite.shape[:2]
    H, W = canvas.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x0 >= x1 or y0 >= y1:
        return
    part = sprite[y0 - y:y1 - y, x0 - x:x1 - x]
    alpha = part[:, :, 3:]
    region = canvas[y0:y1, x0:x1]
    region[:] = region * (1 - alpha) + part[:, :, :3] * alpha


def draw_scene(rng: np.random.Generator, width: int, height: int) -> Tuple[np.ndarray, List[Box], List[Box]]:
    """Returns (BGR image, visible boxes clipped to the image, the same boxes unclipped)."""
    scale = rng.uniform(0.75, 1.3)  # camera distance: sets the boxes per image
    canvas = np.empty((height, width, 3), np.float32)
    canvas[:] = _hsv_colour(rng, (0, 60), (150, 235))
    canvas *= np.linspace(rng.uniform(0.8, 1.0), rng.uniform(0.8, 1.0), width, dtype=np.float32)[None, :, None]
    board_colour = _hsv_colour(rng, (0, 90), (70, 200))
    back_colour = board_colour * rng.uniform(0.35, 0.6)
    boxes: List[Box] = []
    raw: List[Box] = []
    y = -int(rng.integers(0, int(30 * scale)))  # the top row is often cut
    while y < height:
        row_h = int(rng.uniform(38, 60) * scale)
        board_h = max(3, int(rng.uniform(4, 8) * scale))
        base = y + row_h
        canvas[max(y, 0):max(min(base, height), 0)] = back_colour
        x = -int(rng.integers(0, int(22 * scale)))
        while x < width:
            sku = _Sku(rng, scale, row_h - 2)
            gap = int(rng.choice([0, 0, 1, 2, 3]))
            for _ in range(int(rng.integers(1, 6))):
                if x >= width:
                    break
                top = base - sku.h
                _paste(canvas, sku.sprite, x, top)
                box = (x, top, x + sku.w, base)
                clipped = (max(box[0], 0), max(box[1], 0), min(box[2], width), min(box[3], height))
                vis_w, vis_h = clipped[2] - clipped[0], clipped[3] - clipped[1]
                visible = vis_w * vis_h / float(sku.w * sku.h)
                if vis_w >= MIN_VISIBLE and vis_h >= MIN_VISIBLE and visible >= 0.25:
                    boxes.append(clipped)
                    raw.append(box)
                x += sku.w + gap
            x += int(rng.integers(0, 4))
        b0, b1 = max(base, 0), min(base + board_h, height)
        if b0 < b1:
            canvas[b0:b1] = board_colour
            canvas[b0:min(b0 + 1, b1)] *= 1.25
            for _ in range(int(rng.integers(0, 4))):  # price tags: white, box-like, not products
                tx = int(rng.integers(0, width))
                canvas[b0:b1, tx:tx + int(10 * scale)] = 235
        y = base + board_h
    noise = rng.normal(0, 4.0, canvas.shape).astype(np.float32)
    image = np.clip(cv2.GaussianBlur(canvas, (3, 3), 0.6) + noise, 0, 255).astype(np.uint8)
    return image, boxes, raw


def _render(job: Tuple[int, str, int, str, int, int, str]) -> Tuple[str, List[Box], List[Box]]:
    seed, split, index, name, width, height, out_dir = job
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    image, boxes, raw = draw_scene(rng, width, height)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("cv2 could not encode {}".format(name))
    with open(os.path.join(out_dir, name), "wb") as f:
        f.write(buf.tobytes())
    return name, boxes, raw


def _pick(rng: np.random.Generator, names: Sequence[str], k: int, avoid: Sequence[str] = ()) -> List[str]:
    pool = [n for n in names if n not in avoid]
    k = min(k, len(pool))
    return [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False))] if k else []


def generate(out_dir: str, images: Optional[Dict[str, int]] = None, size: Tuple[int, int] = DEFAULT_SIZE,
             seed: int = DEFAULT_SEED, corrupt: Optional[Dict[str, int]] = None, bad_rows: bool = True,
             workers: Optional[int] = None) -> Generated:
    """Writes ``out_dir/SKU110K_fixed/{images,annotations}``; the same arguments give the same bytes."""
    counts = dict(DEFAULT_IMAGES, **(images or {}))
    corrupt = dict(DEFAULT_CORRUPT, **(corrupt or {}))
    width, height = int(size[0]), int(size[1])
    root = os.path.join(out_dir, ROOT_NAME)
    img_dir = os.path.join(root, "images")
    ann_dir = os.path.join(root, "annotations")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)

    jobs = [(seed, split, i, "{}_{}.jpg".format(split, i), width, height, img_dir)
            for split in SPLITS for i in range(counts[split])]
    workers = workers or min(4, os.cpu_count() or 1)
    if workers > 1 and len(jobs) > 32:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_render, jobs, chunksize=8))
    else:
        results = [_render(j) for j in jobs]
    drawn = {name: (boxes, raw) for name, boxes, raw in results}

    rng = np.random.default_rng([seed, 99])
    names = {s: ["{}_{}.jpg".format(s, i) for i in range(counts[s])] for s in SPLITS}
    corrupted: List[str] = []
    for split in SPLITS:
        for name in _pick(rng, names[split], corrupt.get(split, 0)):
            path = os.path.join(img_dir, name)
            data = open(path, "rb").read()
            with open(path, "wb") as f:  # truncated mid-scan, like the real broken files
                f.write(data[:int(len(data) * 0.6)])
            corrupted.append(name)

    bad: List[BadRow] = []
    for split in SPLITS:
        rows: List[List[Any]] = []
        if bad_rows:
            # Border-crossing boxes need an image with a cut product; the first few qualify.
            crossing = [n for n in names[split] if n not in corrupted and drawn[n][0] != drawn[n][1]][:1]
            others = _pick(rng, names[split], 2, avoid=corrupted + crossing)
            degenerate, mismatch = others[:1], others[1:2]
            bad += [BadRow(split, n, "crosses_border") for n in crossing]
            bad += [BadRow(split, n, "degenerate") for n in degenerate]
            bad += [BadRow(split, n, "size_mismatch") for n in mismatch]
        else:
            crossing, degenerate, mismatch = [], [], []
        for name in names[split]:
            boxes, raw = drawn[name]
            w, h = (height, width) if name in mismatch else (width, height)
            for b in (raw if name in crossing else boxes):
                rows.append([name, b[0], b[1], b[2], b[3], "object", w, h])
            if name in degenerate and boxes:
                b = boxes[0]
                rows.append([name, b[0], b[1], b[0], b[3], "object", w, h])
        with open(os.path.join(ann_dir, csv_name(split)), "w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(rows)  # no header, as in the real set
    return Generated(root, names, corrupted, {n: len(v[0]) for n, v in drawn.items()}, bad)


def main() -> None:  # pragma: no cover - handy for eyeballing: python -m shelfdet.data.synthetic DIR
    import sys
    import time

    t0 = time.time()
    g = generate(sys.argv[1] if len(sys.argv) > 1 else "synthetic")
    n = sum(g.boxes.values())
    print("{}: {} images, {} boxes ({:.0f}/image), corrupted {}, bad rows {} in {:.1f}s".format(
        g.root, len(g.boxes), n, n / max(1, len(g.boxes)), g.corrupted, len(g.bad_rows), time.time() - t0))


if __name__ == "__main__":
    main()
