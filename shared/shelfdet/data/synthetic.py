"""A deterministic synthetic SKU-110K in exactly the real layout (images/, annotations/annotations_<split>.csv).

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

from shelfdet.data import ROOT_NAME, SPLITS, csv_name

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


# ---- the hard preset: SKU-110K-like statistics ----------------------------------
# Long-tailed objects per image (lognormal, median ~140, a few above 400), photo
# aspect (portrait or landscape, ~1000 px on the long side), bottles, boxes, cans,
# jars and stacked flat packs, a homography over the whole shelf (boxes are the
# axis-aligned bounds of the warped products, as SKU-110K annotates them),
# lighting gradients and reflections, blur, and price rails, shelf talkers and
# promotion signs in front of products: an occluded product keeps its full box,
# one hidden by more than HARD_MAX_OCCLUDED is not annotated.
HARD_IMAGES = {"train": 200, "val": 40, "test": 40}
HARD_SIZE = (1000, 750)  # long side x short side; each image is portrait or landscape
HARD_COUNT_MEDIAN = 140
HARD_COUNT_SIGMA = 0.55
HARD_COUNT_RANGE = (20, 700)
HARD_MAX_OCCLUDED = 0.6
HARD_PORTRAIT = 0.6  # share of portrait photos
# Flat area per product cell, relative to the shelf area per wanted product (fitted so the count lands on target).
_HARD_DENSITY = 1.45
# kind -> (weight, height as a share of the row, height / width)
_HARD_KINDS = {"bottle": (0.24, (0.72, 0.97), (2.3, 4.0)), "box": (0.3, (0.5, 0.95), (1.05, 2.0)),
               "can": (0.16, (0.42, 0.7), (1.3, 1.9)), "jar": (0.1, (0.35, 0.6), (0.8, 1.25)),
               "flat": (0.1, (0.8, 0.95), (0.3, 0.65))}  # flat: a stack of 2-3 wide packs filling this height
# `make data PRESET=...`: split sizes and image size (the hard preset's is the landscape one); a preset's
# own "version" (bump when its drawing changes) is recorded apart from VERSION, so the default set stays current.
PRESETS: Dict[str, Dict[str, Any]] = {"default": {"images": DEFAULT_IMAGES, "size": DEFAULT_SIZE},
                                      "hard": {"images": HARD_IMAGES, "size": HARD_SIZE, "version": 1}}


def hard_count(rng: np.random.Generator) -> int:
    """Objects wanted in one hard image: lognormal around HARD_COUNT_MEDIAN, long tail to the right."""
    n = HARD_COUNT_MEDIAN * np.exp(HARD_COUNT_SIGMA * rng.standard_normal())
    return int(np.clip(n, *HARD_COUNT_RANGE))


def _hard_sprite(rng: np.random.Generator, w: int, h: int, kind: str) -> np.ndarray:
    """BGR + alpha float32 sprite of one product facing, drawn with array slices only."""
    img = np.empty((h, w, 3), np.float32)
    img[:] = _hsv_colour(rng, (40, 256), (50, 250))
    top, bottom = int(h * rng.uniform(0.15, 0.45)), int(h * rng.uniform(0.55, 0.9))
    if bottom - top >= 2:
        img[top:bottom, 1:max(2, w - 1)] = _hsv_colour(rng, (0, 256), (110, 256))
        ink = _hsv_colour(rng, (0, 256), (0, 90))
        for _ in range(int(rng.integers(0, 4))):  # print: a few dark strokes on the label
            y = int(rng.integers(top, bottom))
            x0 = int(rng.integers(0, max(1, w // 2)))
            img[y:y + max(1, h // 30), x0:x0 + max(1, int(w * rng.uniform(0.2, 0.7)))] = ink
        if rng.random() < 0.5:  # a logo blob
            r = max(1, int(min(w, bottom - top) * rng.uniform(0.15, 0.35)))
            cv2.circle(img, (w // 2, (top + bottom) // 2), r, _hsv_colour(rng, (80, 256), (80, 256)).tolist(), -1)
    depth = {"bottle": 0.5, "can": 0.45, "jar": 0.35}.get(kind, 0.12)
    x = np.linspace(-1.0, 1.0, w, dtype=np.float32)
    img *= (1.0 - depth * x * x)[None, :, None]
    img[:, 0] *= 0.45
    img[:, -1] *= 0.45
    img[0] *= 0.6
    img[-1] *= 0.5
    alpha = np.ones((h, w), np.float32)
    if kind == "bottle":
        neck_h, neck_w = max(2, int(h * rng.uniform(0.2, 0.35))), max(2, int(w * rng.uniform(0.3, 0.5)))
        x0 = (w - neck_w) // 2
        alpha[:neck_h] = 0
        alpha[:neck_h, x0:x0 + neck_w] = 1
        img[:max(1, neck_h // 4), x0:x0 + neck_w] = _hsv_colour(rng, (0, 256), (30, 230))  # cap
    elif kind in ("can", "jar"):
        r = max(1, min(w, h) // 6)
        alpha[:r, :r] = alpha[:r, -r:] = alpha[-r:, :r] = alpha[-r:, -r:] = 0.0
    return np.dstack([img, alpha])


def _hard_lighting(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth gain field: a linear gradient, a vignette and a soft reflection, drawn small and resized."""
    gw, gh = 32, 32
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    xx, yy = xx / (gw - 1) - 0.5, yy / (gh - 1) - 0.5
    a = rng.uniform(0, 2 * np.pi)
    gain = 1.0 + rng.uniform(0.1, 0.45) * (np.cos(a) * xx + np.sin(a) * yy)
    gain *= 1.0 - rng.uniform(0.0, 0.5) * (xx * xx + yy * yy)
    if rng.random() < 0.6:  # a reflection of the store lights
        cx, cy = rng.uniform(-0.5, 0.5, 2)
        sx, sy = rng.uniform(0.05, 0.4), rng.uniform(0.03, 0.15)
        gain += rng.uniform(0.15, 0.5) * np.exp(-((xx - cx) ** 2 / (2 * sx * sx) + (yy - cy) ** 2 / (2 * sy * sy)))
    gain *= rng.uniform(0.7, 1.1)
    field = cv2.resize(gain.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    cast = (1.0 + rng.normal(0, 0.05, 3)).astype(np.float32)
    return field[:, :, None] * cast[None, None, :]


def _hard_quad(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Where the photo's corners fall on the flat shelf: camera tilt (keystone), yaw, roll and jitter."""
    w, h = float(width), float(height)
    tilt = rng.uniform(-0.12, 0.12)  # >0: top edge seen narrower
    yaw = rng.uniform(-0.1, 0.1)  # >0: left edge seen shorter
    roll = rng.uniform(-0.04, 0.04)
    quad = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64)
    quad[0, 0] += max(tilt, 0) * w
    quad[1, 0] -= max(tilt, 0) * w
    quad[3, 0] += max(-tilt, 0) * w
    quad[2, 0] -= max(-tilt, 0) * w
    quad[0, 1] += max(yaw, 0) * h
    quad[3, 1] -= max(yaw, 0) * h
    quad[1, 1] += max(-yaw, 0) * h
    quad[2, 1] -= max(-yaw, 0) * h
    quad += rng.uniform(0, 0.04, (4, 2)) * [w, h] * [[1, 1], [-1, 1], [-1, -1], [1, -1]]
    centre = quad.mean(axis=0)
    c, s = np.cos(roll), np.sin(roll)
    quad = (quad - centre) @ np.array([[c, -s], [s, c]]).T + centre
    return np.clip(quad, 0, [w, h]).astype(np.float32)  # the photo sees only the shelf


def _hard_row_products(rng: np.random.Generator, canvas: np.ndarray, rects: List[Box], base: int, row_h: int,
                       row_unit: float, w_row: np.ndarray) -> None:
    """Runs of product facings standing on one shelf (``base``), left to right; their rectangles into ``rects``."""
    width = canvas.shape[1]
    kinds = list(_HARD_KINDS)
    x = -int(rng.integers(0, int(row_unit) + 1))
    while x < width:
        kind = kinds[int(rng.choice(len(kinds), p=w_row / w_row.sum()))]
        _, hr, ar = _HARD_KINDS[kind]
        ph = max(6, int(row_h * rng.uniform(*hr)))
        stack = int(rng.integers(2, 4)) if kind == "flat" else 1
        ph_each = max(4, ph // stack)
        pw = max(4, int(ph_each / rng.uniform(*ar)))
        sprite = _hard_sprite(rng, pw, ph_each, kind)
        gap = int(rng.choice([0, 0, 0, 1, 2, 3]))
        for _ in range(int(rng.integers(1, 7))):
            if x >= width:
                break
            for k in range(stack):
                top = base - (k + 1) * ph_each
                _paste(canvas, sprite, x, top)
                rects.append((x, top, x + pw, top + ph_each))
            x += pw + gap
        x += int(rng.integers(0, 5))


def _hard_row_occluders(rng: np.random.Generator, canvas: np.ndarray, occluder: np.ndarray, base: int, row_h: int,
                        board_h: int, row_unit: float, board_colour: np.ndarray) -> None:
    """In front of a row's products: the price rail over their feet, tags on it and shelf talkers."""
    height, width = canvas.shape[:2]
    rail = int(row_h * rng.uniform(0.0, 0.22)) if rng.random() < 0.6 else 0
    b0, b1 = max(base - rail, 0), min(base + board_h, height)
    if b0 >= b1:
        return
    canvas[b0:b1] = board_colour
    canvas[b0:min(b0 + 2, b1)] *= 1.3
    occluder[b0:b1] = 1
    for _ in range(int(rng.integers(1, 6))):  # price tags on the rail
        tw = int(row_unit * rng.uniform(0.3, 0.8))
        tx = int(rng.integers(-tw, width))
        th = int(board_h * rng.uniform(0.6, 1.6))
        ty = min(b1, base + board_h) - th
        t0, t1, s0, s1 = max(ty, 0), min(ty + th, height), max(tx, 0), min(tx + tw, width)
        if t0 < t1 and s0 < s1:
            canvas[t0:t1, s0:s1] = _hsv_colour(rng, (0, 120), (200, 256))
            canvas[t0 + (t1 - t0) // 2:t0 + (t1 - t0) // 2 + 1, s0 + 2:s1 - 2] = 40
            occluder[t0:t1, s0:s1] = 1
    for _ in range(int(rng.poisson(0.7))):  # shelf talkers hanging over the row
        tw = int(row_unit * rng.uniform(0.4, 1.6))
        th = int(row_h * rng.uniform(0.15, 0.8))
        tx = int(rng.integers(-tw // 2, width))
        t0, t1, s0, s1 = max(base - th, 0), min(base, height), max(tx, 0), min(tx + tw, width)
        if t0 < t1 and s0 < s1:
            canvas[t0:t1, s0:s1] = _hsv_colour(rng, (100, 256), (150, 256))
            occluder[t0:t1, s0:s1] = 1


def _hard_shelf(rng: np.random.Generator, width: int, height: int,
                row_unit: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The flat shelf before the camera: (BGR float canvas, occluder mask, product rectangles)."""
    canvas = np.empty((height, width, 3), np.float32)
    canvas[:] = _hsv_colour(rng, (0, 60), (120, 235))
    occluder = np.zeros((height, width), np.uint8)
    board_colour = _hsv_colour(rng, (0, 90), (60, 220))
    back_colour = board_colour * rng.uniform(0.3, 0.6)
    weights = np.array([_HARD_KINDS[k][0] for k in _HARD_KINDS])
    rects: List[Box] = []
    y = -int(rng.integers(0, int(row_unit) + 1))
    while y < height:
        row_h = max(8, int(row_unit * rng.uniform(0.8, 1.25)))
        board_h = max(3, int(row_h * rng.uniform(0.1, 0.2)))
        base = y + row_h
        canvas[max(y, 0):max(min(base, height), 0)] = back_colour
        # A shelf leans to some kinds: one is favoured per row.
        w_row = weights.copy()
        w_row[rng.integers(len(weights))] += 0.6
        _hard_row_products(rng, canvas, rects, base, row_h, row_unit, w_row)
        _hard_row_occluders(rng, canvas, occluder, base, row_h, board_h, row_unit, board_colour)
        y = base + board_h
    if rng.random() < 0.3:  # a promotion sign hiding a few products
        sw, sh = int(width * rng.uniform(0.1, 0.25)), int(height * rng.uniform(0.08, 0.2))
        sx, sy = int(rng.integers(0, width - sw)), int(rng.integers(0, height - sh))
        canvas[sy:sy + sh, sx:sx + sw] = _hsv_colour(rng, (150, 256), (150, 256))
        canvas[sy + sh // 3:sy + sh // 3 + max(2, sh // 8), sx + sw // 6:sx + sw - sw // 6] = 250
        occluder[sy:sy + sh, sx:sx + sw] = 1
    return canvas, occluder, np.array(rects, np.int64).reshape(-1, 4)


def _occluded_share(r: np.ndarray, occluder: np.ndarray) -> np.ndarray:
    """Occluded share of each product (its full rectangle) from the occluder mask's integral image."""
    height, width = occluder.shape
    integ = cv2.integral(occluder)
    c = np.clip(r, 0, [width, height, width, height])
    area_in = np.maximum((c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1]), 1)
    covered = integ[c[:, 3], c[:, 2]] - integ[c[:, 1], c[:, 2]] - integ[c[:, 3], c[:, 0]] + integ[c[:, 1], c[:, 0]]
    return covered / area_in.astype(np.float64)


def _warped_boxes(r: np.ndarray, m: np.ndarray, width: int, height: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The products' rectangles through the homography ``m``: (axis-aligned bounds, the same clipped to the
    photo, whether enough of each is inside it to be annotated)."""
    corners = np.stack([r[:, [0, 1]], r[:, [2, 1]], r[:, [2, 3]], r[:, [0, 3]]], axis=1).astype(np.float64)
    pts = cv2.perspectiveTransform(corners.reshape(-1, 1, 2), m).reshape(-1, 4, 2)
    raw = np.column_stack([np.floor(pts[:, :, 0].min(1)), np.floor(pts[:, :, 1].min(1)),
                           np.ceil(pts[:, :, 0].max(1)), np.ceil(pts[:, :, 1].max(1))]).astype(np.int64)
    clip = np.clip(raw, 0, [width, height, width, height])
    vis_w, vis_h = clip[:, 2] - clip[:, 0], clip[:, 3] - clip[:, 1]
    full = np.maximum((raw[:, 2] - raw[:, 0]) * (raw[:, 3] - raw[:, 1]), 1)
    inside = (vis_w >= MIN_VISIBLE) & (vis_h >= MIN_VISIBLE) & (np.maximum(vis_w, 0) * np.maximum(vis_h, 0) >= 0.25 * full)
    return raw, clip, inside


def _hard_camera(rng: np.random.Generator, photo: np.ndarray) -> np.ndarray:
    """Lighting, focus blur, sometimes hand shake, and sensor noise; uint8."""
    height, width = photo.shape[:2]
    photo = photo * _hard_lighting(rng, width, height)
    sigma = rng.uniform(0.3, 1.5)
    photo = cv2.GaussianBlur(photo, (0, 0), sigma)
    if rng.random() < 0.25:  # hand shake
        n = int(rng.integers(3, 8))
        kernel = np.zeros((n, n), np.float32)
        kernel[n // 2] = 1.0 / n
        rot = cv2.getRotationMatrix2D(((n - 1) / 2.0, (n - 1) / 2.0), rng.uniform(0, 180), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (n, n))
        photo = cv2.filter2D(photo, -1, kernel / max(kernel.sum(), 1e-6))
    photo += rng.standard_normal(photo.shape, dtype=np.float32) * np.float32(rng.uniform(2.0, 7.0))
    return np.clip(photo, 0, 255).astype(np.uint8)


def draw_hard_scene(rng: np.random.Generator, width: int,
                    height: int) -> Tuple[np.ndarray, List[Box], List[Box], Dict[str, Any]]:
    """Returns (BGR photo, visible boxes clipped to the photo, the same unclipped, info for tests and stats)."""
    target = hard_count(rng)
    quad = _hard_quad(rng, width, height)
    qx, qy = quad[:, 0], quad[:, 1]
    quad_area = 0.5 * abs(float(np.dot(qx, np.roll(qy, 1)) - np.dot(qy, np.roll(qx, 1))))  # shoelace
    # The photo sees quad_area of the flat shelf: size the product cells so about `target` land in it.
    cell = _HARD_DENSITY * quad_area / target
    canvas, occluder, r = _hard_shelf(rng, width, height, np.sqrt(cell * 1.6))
    occluded = _occluded_share(r, occluder)
    dst = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float32)
    m = cv2.getPerspectiveTransform(quad, dst)
    warped = cv2.warpPerspective(canvas, m, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    raw, clip, inside = _warped_boxes(r, m, width, height)
    keep = inside & (occluded <= HARD_MAX_OCCLUDED)
    photo = _hard_camera(rng, warped)
    boxes = [tuple(int(v) for v in b) for b in clip[keep]]
    raws = [tuple(int(v) for v in b) for b in raw[keep]]
    info = {"target": target, "occluded": occluded[keep].tolist(),
            "dropped_occluded": int((inside & (occluded > HARD_MAX_OCCLUDED)).sum()), "quad": quad.tolist()}
    return photo, boxes, raws, info  # type: ignore[return-value]


def _render(job: Tuple[Any, ...]) -> Tuple[str, List[Box], List[Box], Tuple[int, int]]:
    seed, split, index, name, width, height, out_dir, preset = job
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    quality = JPEG_QUALITY
    if preset == "hard":
        if rng.random() < HARD_PORTRAIT:  # width x height given as landscape: a portrait photo swaps them
            width, height = min(width, height), max(width, height)
        else:
            width, height = max(width, height), min(width, height)
        image, boxes, raw, _ = draw_hard_scene(rng, width, height)
        quality = int(rng.integers(75, 93))  # phone photos: varied JPEG quality
    else:
        image, boxes, raw = draw_scene(rng, width, height)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2 could not encode {}".format(name))
    with open(os.path.join(out_dir, name), "wb") as f:
        f.write(buf.tobytes())
    return name, boxes, raw, (width, height)


def _pick(rng: np.random.Generator, names: Sequence[str], k: int, avoid: Sequence[str] = ()) -> List[str]:
    pool = [n for n in names if n not in avoid]
    k = min(k, len(pool))
    return [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False))] if k else []


def generate(out_dir: str, images: Optional[Dict[str, int]] = None, size: Optional[Tuple[int, int]] = None,
             seed: int = DEFAULT_SEED, corrupt: Optional[Dict[str, int]] = None, bad_rows: bool = True,
             workers: Optional[int] = None, preset: str = "default") -> Generated:
    """Writes ``out_dir/SKU110K_fixed/{images,annotations}``; the same arguments give the same bytes.

    ``preset`` is "default" (the main job's set) or "hard" (SKU-110K-like; ``size`` is then the
    landscape size and each image is drawn portrait or landscape). ``images`` and ``size`` default
    to the preset's.
    """
    if preset not in PRESETS:
        raise ValueError("unknown preset {!r}: one of {}".format(preset, ", ".join(PRESETS)))
    counts = dict(PRESETS[preset]["images"], **(images or {}))
    corrupt = dict(DEFAULT_CORRUPT, **(corrupt or {}))
    size = size or PRESETS[preset]["size"]
    width, height = int(size[0]), int(size[1])
    root = os.path.join(out_dir, ROOT_NAME)
    img_dir = os.path.join(root, "images")
    ann_dir = os.path.join(root, "annotations")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)

    jobs = [(seed, split, i, "{}_{}.jpg".format(split, i), width, height, img_dir, preset)
            for split in SPLITS for i in range(counts[split])]
    workers = workers or min(4, os.cpu_count() or 1)
    if workers > 1 and len(jobs) > 32:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_render, jobs, chunksize=8))
    else:
        results = [_render(j) for j in jobs]
    drawn = {name: (boxes, raw) for name, boxes, raw, _ in results}
    sizes = {name: wh for name, _, _, wh in results}

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
            w, h = sizes[name][::-1] if name in mismatch else sizes[name]
            for b in (raw if name in crossing else boxes):
                rows.append([name, b[0], b[1], b[2], b[3], "object", w, h])
            if name in degenerate and boxes:
                b = boxes[0]
                rows.append([name, b[0], b[1], b[0], b[3], "object", w, h])
        with open(os.path.join(ann_dir, csv_name(split)), "w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(rows)  # no header, as in the real set
    return Generated(root, names, corrupted, {n: len(v[0]) for n, v in drawn.items()}, bad)
