"""Objects per photo and box sizes of a built dataset (``python -m shelfdet data-stats``).

Read from the manifests (what training sees), so it works on the synthetic
presets and on a converted SKU-110K alike; :func:`markdown` gives the README's table rows.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Sequence

import numpy as np

from shelfdet.data import CHANNELS, DEFAULT_LABEL

ASPECT_PERCENTILES = (5, 25, 50, 75, 95)


def read_manifest(path: str, label: str = DEFAULT_LABEL) -> List[Dict[str, Any]]:
    """One dict per photo: width, height and an (N, 4) array of left, top, width, height."""
    out = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)[label]
            size = rec["image_size"][0]
            boxes = np.array([[a["left"], a["top"], a["width"], a["height"]] for a in rec["annotations"]],
                             np.float64).reshape(-1, 4)
            out.append({"width": int(size["width"]), "height": int(size["height"]), "boxes": boxes})
    return out


def compute(photos: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Objects per photo, box side (sqrt of its area) in px and as a share of sqrt(photo area), w/h aspect."""
    if not photos:
        return {"images": 0}
    counts = np.array([len(r["boxes"]) for r in photos], np.float64)
    boxes = np.concatenate([r["boxes"] for r in photos]) if counts.sum() else np.zeros((0, 4))
    photo_side = np.concatenate([np.full(len(r["boxes"]), np.sqrt(r["width"] * r["height"])) for r in photos])
    w, h = boxes[:, 2], boxes[:, 3]
    side = np.sqrt(w * h)
    aspect = w / np.maximum(h, 1e-9)
    widths = np.array([r["width"] for r in photos])
    heights = np.array([r["height"] for r in photos])

    def r(x: float, n: int = 1) -> float:
        return round(float(x), n)

    return {
        "images": len(photos),
        "objects": int(counts.sum()),
        "objects_per_image": {"mean": r(counts.mean()), "median": r(np.median(counts)),
                              "p90": r(np.percentile(counts, 90)), "min": int(counts.min()), "max": int(counts.max()),
                              "above_400": int((counts > 400).sum())},
        "image_size": {"portrait": int((heights > widths).sum()), "landscape": int((widths > heights).sum()),
                       "square": int((widths == heights).sum()),
                       "long_side_median": int(np.median(np.maximum(widths, heights)))},
        "box_side_px": {"median": r(np.median(side)), "p10": r(np.percentile(side, 10)),
                        "p90": r(np.percentile(side, 90))} if len(side) else {},
        "box_side_fraction": {"median": r(np.median(side / photo_side), 4), "p10": r(np.percentile(side / photo_side, 10), 4),
                              "p90": r(np.percentile(side / photo_side, 90), 4)} if len(side) else {},
        "aspect_w_over_h": {"p{}".format(p): r(np.percentile(aspect, p), 2) for p in ASPECT_PERCENTILES}
        if len(aspect) else {},
        "tall_share": r((aspect < 0.5).mean(), 3) if len(aspect) else 0.0,  # w/h < 0.5: bottles
        "wide_share": r((aspect > 1.5).mean(), 3) if len(aspect) else 0.0,  # w/h > 1.5: flat packs
    }


def of_data_dir(data_dir: str, label: str = DEFAULT_LABEL, channels: Sequence[str] = CHANNELS) -> Dict[str, Any]:
    photos: List[Dict[str, Any]] = []
    for ch in channels:
        path = os.path.join(data_dir, "annotations", ch + ".manifest")
        if os.path.isfile(path):
            photos += read_manifest(path, label)
    return compute(photos)


def markdown(s: Dict[str, Any], name: str) -> str:
    """Two table rows (objects per image; box sizes) in the README's layout."""
    o, b, f, a = s["objects_per_image"], s["box_side_px"], s["box_side_fraction"], s["aspect_w_over_h"]
    return ("| {} | {} | {} | {} | {} | {} | {} ({} portrait, {} landscape) |\n"
            "| {} | {} px ({:.1%} of the image side) | {:.2f} / {:.2f} / {:.2f} / {:.2f} / {:.2f} | {:.0%} | {:.0%} |").format(
        name, s["images"], o["mean"], o["median"], o["p90"], o["max"], s["image_size"]["long_side_median"],
        s["image_size"]["portrait"], s["image_size"]["landscape"],
        name, b["median"], f["median"], a["p5"], a["p25"], a["p50"], a["p75"], a["p95"], s["tall_share"], s["wide_share"])
