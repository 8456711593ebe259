"""An extracted ``SKU110K_fixed`` folder -> ``DATA_DIR`` with channel folders, manifests and report.json.

Policy (SPEC §2-3, §8), applied in this order and counted per reason:
- rows that do not parse (column count, numbers, class) are dropped;
- rows of images that are corrupted, missing, or of no known split are dropped;
- a box with no area (x2 <= x1 or y2 <= y1) is dropped; one crossing the
  image border is clipped to it, or dropped when nothing is left inside;
- the image file's size (after EXIF orientation) is the truth; a CSV size
  that disagrees is reported and the boxes are checked against the file;
- an image left without boxes is left out of the manifest (a dense shelf
  with no labels would teach "background" and fail every detection in eval).
Nothing is dropped without a line in report.json.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import time
from collections import Counter
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from shelfdet.core import safepath
from shelfdet.data import CHANNELS, CLASS_MAP, DEFAULT_LABEL, REPORT, DataError, channel_of, csvrows
from shelfdet.core import photo_files
from shelfdet.data.written import Written, temp_beside

JOB_NAME = "shelfdet-sku110k"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
FORMAT = "shelfdet-data-report/1"
IMAGE_REASONS = ("", "image_corrupted", "image_missing", "unknown_split", "unsafe_name")


def find_csvs(root: str) -> List[str]:
    ann = os.path.join(root, "annotations")
    found = sorted(f for f in os.listdir(ann) if f.startswith("annotations_") and f.endswith(".csv")) \
        if os.path.isdir(ann) else []
    if not found:
        raise DataError("{}: no annotations/annotations_<split>.csv: not a SKU110K_fixed folder".format(root))
    return [os.path.join(ann, f) for f in found]


def _natural(name: str) -> Any:
    stem = os.path.splitext(name)[0]
    head, _, num = stem.rpartition("_")
    return (head, int(num)) if num.isdigit() else (stem, -1)


def source_ref(bucket: Optional[str], prefix: str, channel: str, name: str, local_dir: str) -> str:
    if bucket:
        parts = [p for p in (prefix.strip("/"), channel, name) if p]
        return "s3://{}/{}".format(bucket, "/".join(parts))
    return os.path.join(os.path.abspath(local_dir), channel, name)


class _Manifest:
    """Formats manifest lines with one C-level ``%`` per image instead of one json.dumps per box."""

    BOX = '{"class_id": 0, "left": %s, "top": %s, "width": %s, "height": %s}, '

    def __init__(self, label: str):
        created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")
        self.box = self.BOX
        self.label = json.dumps(label)
        self.meta_key = json.dumps(label + "-metadata")
        self.meta_head = '{"job-name": %s, "class-map": %s, "human-annotated": "yes", "objects": [' % (
            json.dumps(JOB_NAME), json.dumps(CLASS_MAP))
        self.meta_tail = '], "type": "groundtruth/object-detection", "creation-date": %s}' % json.dumps(created)

    def line(self, src: str, width: int, height: int, boxes: List[Any]) -> str:
        n = len(boxes) // 4
        anns = (self.box * n % tuple(boxes))[:-2]
        objects = ", ".join(['{"confidence": 1.0}'] * n)
        return ('{"source-ref": %s, %s: {"annotations": [%s], "image_size": [{"width": %d, "height": %d, '
                '"depth": 3}]}, %s: %s%s%s}\n') % (json.dumps(src), self.label, anns, width, height,
                                                   self.meta_key, self.meta_head, objects, self.meta_tail)


def _numbers(coords: np.ndarray) -> List[str]:
    """Coordinates as JSON number strings: ints when all are whole (SKU-110K's are), else floats.

    Whole pixel values go through a lookup table of their strings: about twice
    as fast as ``%d`` on 7M numbers.
    """
    if len(coords) and np.all(coords == np.round(coords)) and 0 <= coords.min() and coords.max() < 1e6:
        table = np.array([str(i) for i in range(int(coords.max()) + 1)], dtype=object)
        return table[coords.astype(np.int64).ravel()].tolist()
    return [repr(v) for v in coords.ravel().tolist()]


def _link(src: str, rel: str, written: Written) -> None:
    """Links (or copies) ``src`` to ``rel`` in the record's folder; what is there already goes only when
    the record names it (a link to an original is removed as a link: the original is never written)."""
    dst = written.path(rel)
    if os.path.lexists(dst):
        if os.path.exists(dst) and os.path.samefile(src, dst):
            return
        written.remove(rel)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def convert(root: str, data_dir: str, bucket: Optional[str] = None, prefix: str = "detectron2/data",
            label: str = DEFAULT_LABEL, sizes_from_csv: bool = False, workers: Optional[int] = None,
            extra: Optional[Dict[str, Any]] = None, log: Callable[[str], None] = print,
            max_side: Optional[int] = None, written: Optional[Written] = None) -> Dict[str, Any]:
    """Converts and returns the report (also written to DATA_DIR/report.json).

    ``sizes_from_csv`` trusts the CSV's image sizes and neither reads nor
    links images (the benchmark's CSV-only mode). ``max_side`` writes every
    image whose longer side exceeds it resized once to that side (upright,
    boxes and sizes in the manifests scaled with it); smaller ones are linked.
    """
    if max_side and sizes_from_csv:
        raise ValueError("max_side needs the images; sizes_from_csv reads none")
    t0 = time.time()
    csvs = find_csvs(root)
    img_dir = os.path.join(root, "images")
    rows, problems, n_rows = csvrows.read(csvs)
    t_csv = time.time()

    names = list(rows.names)
    index = {n: i for i, n in enumerate(names)}
    files = [] if sizes_from_csv else sorted(f for f in os.listdir(img_dir) if f.lower().endswith(IMAGE_EXTENSIONS)) \
        if os.path.isdir(img_dir) else []
    for f in files:
        if f not in index:
            index[f] = len(names)
            names.append(f)
    n_img = len(names)
    width = np.zeros(n_img, np.float64)
    height = np.zeros(n_img, np.float64)
    # Why an image's rows cannot be used ("" when they can).
    reason = np.zeros(n_img, np.int8)  # index into IMAGE_REASONS
    corrupted: List[Dict[str, Any]] = []
    # A CSV name that would lead out of images/ is never opened.
    unsafe: Dict[int, str] = {}
    for i, name in enumerate(names):
        try:
            safepath.inside(img_dir, name, links=True)
        except safepath.UnsafeName as err:
            unsafe[i] = str(err)
            reason[i] = IMAGE_REASONS.index("unsafe_name")
    files = [f for f in files if index[f] not in unsafe]
    if sizes_from_csv:
        first = np.unique(rows.image, return_index=True)[1]
        width[rows.image[first]] = rows.values[first, 4]
        height[rows.image[first]] = rows.values[first, 5]
    else:
        present = np.zeros(n_img, bool)
        checked = photo_files.check_all([os.path.join(img_dir, f) for f in files], workers)
        for f in files:
            i = index[f]
            present[i] = True
            c = checked[os.path.join(img_dir, f)]
            if c.error:
                reason[i] = IMAGE_REASONS.index("image_corrupted")
                corrupted.append({"image": f, "channel": channel_of(f), "reason": c.error})
            width[i], height[i] = c.width, c.height
        reason[~present & (reason == 0)] = IMAGE_REASONS.index("image_missing")
    channel = [channel_of(n) for n in names]
    for i, ch in enumerate(channel):
        if ch is None and not reason[i]:
            reason[i] = IMAGE_REASONS.index("unknown_split")
    t_img = time.time()

    img = rows.image
    x1, y1, x2, y2, csv_w, csv_h = rows.values.T
    W, H = width[img], height[img]
    row_reason = reason[img]
    image_ok = row_reason == 0
    degenerate = image_ok & ((x2 <= x1) | (y2 <= y1))
    cx1, cy1 = np.clip(x1, 0, W), np.clip(y1, 0, H)
    cx2, cy2 = np.clip(x2, 0, W), np.clip(y2, 0, H)
    outside = image_ok & ~degenerate & ((cx2 <= cx1) | (cy2 <= cy1))
    kept = image_ok & ~degenerate & ~outside
    clipped = kept & ((cx1 != x1) | (cy1 != y1) | (cx2 != x2) | (cy2 != y2))
    mismatch = image_ok & ((csv_w != W) | (csv_h != H))

    def where(i: int) -> Dict[str, Any]:
        return {"file": rows.files[rows.file[i]], "line": int(rows.line[i]), "image": names[img[i]]}

    for kind, field, action, mask, text in (
            ("degenerate", None, "dropped", degenerate, "box (%g,%g,%g,%g) has no area"),
            ("outside_image", "box", "dropped", outside, "box (%g,%g,%g,%g) lies outside the %gx%g image"),
            ("clipped", "box", "clipped", clipped,
             "box (%g,%g,%g,%g) crosses the %gx%g image border: clipped to (%g,%g,%g,%g)")):
        idx = np.flatnonzero(mask)
        cols = [x1, y1, x2, y2, W, H, cx1, cy1, cx2, cy2][:text.count("%")]
        # One C-level format for all rows: real data can have 100k+ clipped boxes.
        values = np.column_stack([c[idx] for c in cols]).ravel().tolist()
        messages = ((text + "\0") * len(idx) % tuple(values)).split("\0")
        for j, i in enumerate(idx.tolist()):
            f = field or ("x2" if x2[i] <= x1[i] else "y2")
            problems.append({"file": rows.files[rows.file[i]], "line": int(rows.line[i]), "image": names[img[i]],
                             "field": f, "kind": kind, "action": action, "message": messages[j]})
    for i in _first_per_image(np.flatnonzero(row_reason == IMAGE_REASONS.index("unsafe_name")), img):
        problems.append(csvrows.problem(field="image_name", kind="unsafe_name", action="dropped",
                                        message="{}: its boxes are dropped".format(unsafe[int(img[i])]),
                                        rows=int(np.count_nonzero(img == img[i])), **_w(where(i))))
    for kind in ("image_corrupted", "image_missing", "unknown_split"):
        _per_image(problems, np.flatnonzero(row_reason == IMAGE_REASONS.index(kind)), img, kind, "dropped", where, names,
                   {"image_corrupted": "image does not decode: its boxes are dropped",
                    "image_missing": "no such file in {}: its boxes are dropped".format(img_dir),
                    "unknown_split": "name has no train_/val_/test_ prefix: its boxes are dropped"}[kind])
    for i in _first_per_image(np.flatnonzero(mismatch), img):
        swapped = csv_w[i] == H[i] and csv_h[i] == W[i]
        problems.append(csvrows.problem(
            field="image_width" if csv_w[i] != W[i] else "image_height", kind="size_mismatch", action="kept",
            message="CSV says {:g}x{:g}, the {} is {:g}x{:g}{}; boxes checked against the {}".format(
                csv_w[i], csv_h[i], "CSV sizes only" if sizes_from_csv else "image file", W[i], H[i],
                " (swapped: EXIF orientation?)" if swapped else "", "first row" if sizes_from_csv else "file"),
            rows=int(np.count_nonzero(mismatch & (img == img[i]))), **_w(where(i))))

    t_val = time.time()
    # Group kept boxes by image, in CSV order.
    k = np.flatnonzero(kept)
    k = k[np.lexsort((rows.line[k], rows.file[k], img[k]))]
    coords = np.column_stack([cx1[k], cy1[k], cx2[k] - cx1[k], cy2[k] - cy1[k]])
    out_w, out_h = width.copy(), height.copy()
    if max_side:
        for i in range(n_img):
            if not reason[i]:
                out_w[i], out_h[i] = photo_files.fit(int(width[i]), int(height[i]), max_side)
        # Boxes scale with their image; two decimals are far below a pixel of the resized image.
        sx, sy = (out_w / np.maximum(width, 1))[img[k]], (out_h / np.maximum(height, 1))[img[k]]
        coords = np.round(coords * np.column_stack([sx, sy, sx, sy]), 2)
    flat = _numbers(coords)
    counts = np.bincount(img[k], minlength=n_img)
    offsets = np.concatenate([[0], np.cumsum(counts)]) * 4
    fmt = _Manifest(label)

    dropped_images: List[Dict[str, Any]] = []
    per_channel: Dict[str, List[int]] = {c: [] for c in CHANNELS}
    for i, name in enumerate(names):
        if reason[i]:
            dropped_images.append({"image": name, "reason": IMAGE_REASONS[reason[i]]})
            continue
        if counts[i] == 0:
            dropped_images.append({"image": name, "reason": "no_boxes",
                                   "message": "no usable box in any CSV: left out of the manifest"})
            continue
        per_channel[channel[i]].append(i)

    # Every file this run writes is claimed before the first is written: one that is not the
    # project's, in the way, stops the run with nothing changed.
    written = written or Written(data_dir)
    for ch in CHANNELS:
        if per_channel[ch]:
            written.claim("annotations/{}.manifest".format(ch))
            if not sizes_from_csv:
                for i in per_channel[ch]:
                    written.claim("{}/{}".format(ch, names[i]))
    written.claim(REPORT)
    written.begin()
    ann_dir = os.path.join(data_dir, "annotations")
    os.makedirs(ann_dir, exist_ok=True)
    channels: Dict[str, Dict[str, int]] = {}
    resize_jobs: List[Any] = []
    for ch in CHANNELS:
        ids = sorted(per_channel[ch], key=lambda i: _natural(names[i]))
        ch_dir = os.path.join(data_dir, ch)
        manifest = os.path.join(ann_dir, ch + ".manifest")
        if not ids:
            # An earlier run's manifest of a missing channel (it would look current) goes with the record's
            # other leftovers.
            channels[ch] = {"images": 0, "boxes": 0}
            continue
        tmp = temp_beside(manifest)
        with open(tmp, "w") as f:
            for i in ids:
                src = source_ref(bucket, prefix, ch, names[i], data_dir)
                f.write(fmt.line(src, int(out_w[i]), int(out_h[i]), flat[offsets[i]:offsets[i + 1]]))
        os.replace(tmp, manifest)
        if not sizes_from_csv:
            os.makedirs(ch_dir, exist_ok=True)
            for i in ids:
                src_file, dst_file = os.path.join(img_dir, names[i]), os.path.join(ch_dir, names[i])
                if (out_w[i], out_h[i]) != (width[i], height[i]):
                    resize_jobs.append((src_file, dst_file, (int(out_w[i]), int(out_h[i]))))
                else:
                    _link(src_file, "{}/{}".format(ch, names[i]), written)
        channels[ch] = {"images": len(ids), "boxes": int(counts[ids].sum())}
    resized = None
    if max_side:
        sizes = photo_files.resize_all(resize_jobs, workers)
        resized = {"max_side": max_side, "images": len(resize_jobs),
                   "bytes_before": sum(os.path.getsize(j[0]) for j in resize_jobs), "bytes_after": sum(sizes)}

    t_out = time.time()
    by_reason = Counter()
    for p in problems:
        if p["action"] == "dropped":
            by_reason[p["kind"]] += p.get("rows", 1)
    n_kept = int(kept.sum())
    report = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": os.path.abspath(root),
        "data_dir": os.path.abspath(data_dir),
        "label": label,
        "source_refs": "s3://{}/{}".format(bucket, prefix.strip("/")) if bucket else "local",
        "sizes_from": "csv" if sizes_from_csv else "image files",
        "channels": channels,
        "boxes": {"rows": int(n_rows), "kept": n_kept, "clipped": int(clipped.sum()),
                  "dropped": int(n_rows - n_kept), "dropped_by_reason": dict(sorted(by_reason.items()))},
        "images": {"files": len(files), "in_manifests": sum(c["images"] for c in channels.values()),
                   "corrupted": corrupted, "dropped": dropped_images},
        "resized": resized,
        "problems": problems,
        "seconds": {"csv": round(t_csv - t0, 3), "images": round(t_img - t_csv, 3),
                    "validate": round(t_val - t_img, 3), "manifests": round(t_out - t_val, 3),
                    "total": round(time.time() - t0, 3)},
    }
    report = write_report(report, data_dir, extra, log)
    written.finish()
    return report


def write_report(report: Dict[str, Any], data_dir: str, extra: Optional[Dict[str, Any]],
                 log: Callable[[str], None]) -> Dict[str, Any]:
    """DATA_DIR/report.json, after the box accounting adds up; the summary lines; the report."""
    report.update(extra or {})
    if sum(report["boxes"]["dropped_by_reason"].values()) != report["boxes"]["dropped"]:
        raise AssertionError("box accounting is off: {}".format(report["boxes"]))  # a bug here, not bad data
    path = os.path.join(data_dir, REPORT)
    tmp = temp_beside(path)
    with open(tmp, "w") as f:
        f.write(_dump(report))
    os.replace(tmp, path)
    summarize(report, log)
    return report


def _dump(report: Dict[str, Any]) -> str:
    """Readable, and fast with 100k problems: json.dump with indent uses the pure-Python encoder."""
    head = dict(report, problems=[])
    text = json.dumps(head, indent=1)
    body = ",\n  ".join(map(json.dumps, report["problems"]))
    marker = '"problems": []'
    return text.replace(marker, '"problems": [\n  ' + body + "\n ]" if body else marker, 1) + "\n"


def _w(d: Dict[str, Any]) -> Dict[str, Any]:
    return {"path": d["file"], "line": d["line"], "image": d["image"]}


def _first_per_image(idx: np.ndarray, img: np.ndarray) -> List[int]:
    if not len(idx):
        return []
    return [int(idx[j]) for j in np.unique(img[idx], return_index=True)[1]]


def _per_image(problems: List[Dict[str, Any]], idx: np.ndarray, img: np.ndarray, kind: str, action: str,
               where: Callable[[int], Dict[str, Any]], names: List[str], message: str) -> None:
    counts = Counter(img[idx].tolist())
    for i in _first_per_image(idx, img):
        problems.append(csvrows.problem(field="image_name", kind=kind, action=action, message=message,
                                        rows=counts[int(img[i])], **_w(where(i))))


def summarize(report: Dict[str, Any], log: Callable[[str], None] = print, examples: int = 5) -> None:
    ch = report["channels"]
    b = report["boxes"]
    log("data: " + ", ".join("{} {} images / {} boxes".format(c, v["images"], v["boxes"]) for c, v in ch.items()))
    log("boxes: {} rows, {} kept ({} clipped to the image), {} dropped{}".format(
        b["rows"], b["kept"], b["clipped"], b["dropped"],
        "" if not b["dropped"] else " (" + ", ".join("{} {}".format(v, k) for k, v in b["dropped_by_reason"].items()) + ")"))
    r = report.get("resized")
    if r:
        log("resized: {} images to a longer side of at most {} px ({:.1f} MB -> {:.1f} MB)".format(
            r["images"], r["max_side"], r["bytes_before"] / 1e6, r["bytes_after"] / 1e6))
    for c in report["images"]["corrupted"]:
        log("corrupted image dropped: {} ({})".format(c["image"], c["reason"]))
    probs = [p for p in report["problems"] if p["kind"] != "clipped"]
    for p in probs[:examples]:
        log("  {}:{}: {}: {}{}".format(p["file"], p["line"], p["field"], p["message"],
                                      " ({} rows)".format(p["rows"]) if p.get("rows", 1) > 1 else ""))
    if len(probs) > examples:
        log("  ... {} more problems in {}".format(len(probs) - examples, os.path.join(report["data_dir"], REPORT)))
