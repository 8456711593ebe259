"""Real photos, looked at (issue 22): `make bench BENCH=realphotos`, after `make bench BENCH=dense`.

Runs the dense bench's models (the recipe's, and the old recipe's beside them)
over the 12 real SKU-110K photos of ``../shared/realdata`` (no labels: this is
the qualitative check of synthetic-to-real transfer), each at the test size the
model saved. Per model: one PNG per photo (Detectron2's Visualizer, the boxes
at the count threshold the model fit on validation, the count in the title)
under runs/realphotos/<label>/, and a contact sheet of them, downscaled and
quantised under 1 MB, as docs/real-photos-<label>.png (the photos' licence is
academic: never the originals, only these small renderings). Counts per photo
go to bench/results/realphotos.json. Without the photos it says so and stops.
"""
from __future__ import annotations

import glob
import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "shared"))

from _common import update_readme, write_result  # noqa: E402

PHOTOS = os.path.join(os.path.dirname(ROOT), "shared", "realdata")
# label -> model folder, as bench_dense.py names its runs
MODELS = {
    "faster_rcnn": "runs/bench-dense-faster_rcnn-recipe/model",
    "faster_rcnn-old-recipe": "runs/bench-dense-faster_rcnn-zoo/model",
    "cascade_rcnn": "runs/bench-dense-cascade_rcnn-recipe/model",
    "retinanet": "runs/bench-dense-retinanet-recipe/model",
}
TILE = 400          # longest side of one photo on the sheet
COLUMNS = 4
DRAWN_SIDE = 1000   # the photo is downscaled to this before the boxes are drawn
MAX_BYTES = 1_000_000


def render(model_dir: str, label: str, paths: list) -> dict:
    import numpy as np
    from PIL import Image

    from shelfdet.core import photos, visualize
    from shelfdet.core.inference import Detector

    with open(os.path.join(model_dir, "metrics.json")) as f:
        threshold = float(json.load(f).get("count_threshold", 0.5))
    detector = Detector.from_model_dir(model_dir, "cpu")
    out_dir = os.path.join(ROOT, "runs", "realphotos", label)
    os.makedirs(out_dir, exist_ok=True)
    counts, tiles, seconds = {}, [], []
    for path in paths:
        name = os.path.basename(path)
        with open(path, "rb") as f:
            data = f.read()
        try:
            start = time.perf_counter()
            decoded = detector.decode(data, name)
            pred = detector.predict([decoded])[0]
            seconds.append(time.perf_counter() - start)
        except photos.ImageDecodeError as err:
            counts[name] = {"error": str(err)}
            tiles.append((name, None, str(err)))
            continue
        scores = pred["scores"]
        kept = sum(1 for s in scores if s >= threshold)
        counts[name] = {"boxes": kept, "in_json": len(scores), "warnings": list(getattr(decoded, "warnings", []) or [])}
        # Drawn on a downscaled copy of the photo (the boxes scaled with it): a sheet, not the original.
        image = photos.decode(data, name)  # full size, BGR
        h, w = image.shape[:2]
        s = min(1.0, DRAWN_SIDE / float(max(h, w)))
        small = np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, ::-1])).resize(
            (max(1, int(w * s)), max(1, int(h * s))), Image.BILINEAR))[:, :, ::-1]
        boxes = [[v * s for v in b] for b in pred["pred_boxes"]]
        png = os.path.join(out_dir, os.path.splitext(name)[0] + ".png")
        visualize.draw_counted(np.ascontiguousarray(small), boxes, scores, png, threshold, name, "fit on validation")
        tiles.append((name, png, None))
    sheet = os.path.join(ROOT, "docs", "real-photos-{}.png".format(label))
    contact_sheet(tiles, sheet, "{}: {}".format(label, model_dir))
    return {"model_dir": model_dir, "count_threshold": threshold, "counts": counts, "sheet": os.path.relpath(sheet, ROOT),
            "sheet_bytes": os.path.getsize(sheet),
            "seconds_per_photo": round(sum(seconds) / max(1, len(seconds)), 3)}


def contact_sheet(tiles: list, out: str, title: str) -> None:
    """Tiles in COLUMNS columns, each fit into TILE x TILE, a caption under each; a 256-colour PNG
    (shrunk until it is under MAX_BYTES)."""
    from PIL import Image, ImageDraw

    side = TILE
    while True:
        caption = 16
        rows = (len(tiles) + COLUMNS - 1) // COLUMNS
        sheet = Image.new("RGB", (COLUMNS * side, 24 + rows * (side + caption)), "white")
        draw = ImageDraw.Draw(sheet)
        draw.text((6, 5), title, fill="black")
        for k, (name, png, error) in enumerate(tiles):
            x, y = (k % COLUMNS) * side, 24 + (k // COLUMNS) * (side + caption)
            if png is None:
                draw.text((x + 6, y + side // 2), "{}: {}".format(name, error)[:60], fill="red")
                continue
            im = Image.open(png).convert("RGB")
            im.thumbnail((side - 4, side - 4))
            sheet.paste(im, (x + (side - im.width) // 2, y + (side - im.height) // 2))
            draw.text((x + 6, y + side), name, fill="black")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        sheet.quantize(colors=256).save(out, optimize=True)
        if os.path.getsize(out) < MAX_BYTES or side < 160:
            return
        side = int(side * 0.85)


def _natural(name: str) -> tuple:
    """test_2.jpg before test_10.jpg."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def readme_block(results: dict) -> str:
    """Counts per photo and model, then the old recipe's sheet beside the new one's."""
    labels = list(results)
    names = sorted({n for r in results.values() for n in r["counts"]}, key=_natural)
    lines = ["| photo | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for name in names:
        cells = []
        for label in labels:
            c = results[label]["counts"].get(name, {})
            cells.append(str(c["boxes"]) if "boxes" in c else "not decodable" if "error" in c else "")
        lines.append("| {} | {} |".format(name, " | ".join(cells)))
    lines.append("| s / photo (CPU) | " + " | ".join("{:.2f}".format(results[l]["seconds_per_photo"]) for l in labels) + " |")
    pair = [l for l in ("faster_rcnn-old-recipe", "faster_rcnn") if l in results]
    if len(pair) == 2:
        lines += ["", "| old recipe (Faster R-CNN) | dense recipe (Faster R-CNN) |", "|---|---|",
                  "| ![old recipe]({}) | ![dense recipe]({}) |".format(results[pair[0]]["sheet"], results[pair[1]]["sheet"])]
    return "\n".join(lines)


def main(argv: list) -> int:
    photos = sorted(glob.glob(os.path.join(PHOTOS, "*.jpg")))
    if not photos:
        print("[realphotos] skipped: no photos in {} (see its README)".format(PHOTOS))
        return 0
    labels = [a for a in argv if a in MODELS] or list(MODELS)
    results = {}
    for label in labels:
        model = os.path.join(ROOT, MODELS[label])
        if not os.path.isfile(os.path.join(model, "artefacts.json")):
            print("[realphotos] {}: no model at {} (run make bench BENCH=dense first)".format(label, MODELS[label]))
            continue
        print("[realphotos] {}: {} photos through {}".format(label, len(photos), MODELS[label]), flush=True)
        results[label] = render(model, label, photos)
        print("[realphotos] {}: {} ({} bytes)".format(label, results[label]["sheet"], results[label]["sheet_bytes"]))
    if not results:
        return 1
    metrics = {"{} boxes {}".format(label, name): c.get("boxes", -1)
               for label, r in results.items() for name, c in r["counts"].items()}
    update_readme("realphotos", readme_block(results))
    write_result("realphotos", metrics, "no labels: detection counts per real photo at each model's count threshold; "
                 "contact sheets under docs/ (under 1 MB each)", models=results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
