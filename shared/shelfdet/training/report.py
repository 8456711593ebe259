"""PNGs people look at after a run: the loss curve and predictions on a few images."""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Mapping, Sequence

from shelfdet.core import photos
from shelfdet.core.visualize import draw_errors

log = logging.getLogger("shelfdet.training")


def _read_jsonlines(path: str) -> List[Dict[str, Any]]:
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by an interruption
    return rows


def loss_curve(train_metrics: str, val_history: Sequence[Mapping[str, float]], out_png: str) -> None:
    """Training total_loss (Detectron2's JSONWriter lines) and validation loss against iteration."""
    # matplotlib where it draws: heavy to import, and its backend is chosen before pyplot is imported.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in _read_jsonlines(train_metrics) if "total_loss" in r]
    os.makedirs(os.path.dirname(out_png), exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    if rows:
        ax.plot([r["iteration"] + 1 for r in rows], [r["total_loss"] for r in rows], label="training total_loss")
    if val_history:
        ax.plot([h["iteration"] for h in val_history], [h["total_val_loss"] for h in val_history], "o-",
                label="validation total_val_loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    log.info("loss curve: %s", out_png)


def prediction_pngs(dicts: Sequence[Mapping[str, Any]], predictions: Mapping[str, Mapping[str, Any]],
                    out_dir: str, score_threshold: float = 0.5) -> List[str]:
    """Error pictures of a few images: predictions scoring at least ``score_threshold`` matched to
    ground truth, true positives, false positives and misses in their colours, counts in the title.

    Evaluation keeps every box down to pred-thr for AP; drawn, those bury the picture,
    so the final evaluation passes its count threshold.
    """
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for d in dicts:
        name = os.path.basename(d["file_name"])
        pred = predictions.get(name)
        if pred is None:
            continue
        gt = [[x, y, x + w, y + h] for x, y, w, h in (o["bbox"] for o in d["annotations"])]
        out = os.path.join(out_dir, os.path.splitext(name)[0] + "_pred.png")
        _, title = draw_errors(photos.read(d["file_name"]), gt, pred["pred_boxes"], pred["scores"], out,
                               score_threshold, name)
        log.info("%s: %s", out, title)
        written.append(out)
    if written:
        log.info("prediction PNGs: %s", out_dir)
    return written
