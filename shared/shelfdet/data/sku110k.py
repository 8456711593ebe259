"""An extracted ``SKU110K_fixed`` folder -> ``DATA_DIR`` with channel folders, manifests and report.json.

Policy, applied in this order and counted per reason (the rules of boxes: :mod:`shelfdet.data.checks`):
- rows that do not parse (column count, numbers, class) are dropped;
- rows of photos that are corrupted, missing, or of no known split are dropped;
- a box with no area (x2 <= x1 or y2 <= y1) is dropped; one crossing the
  photo's border is clipped to it, or dropped when nothing is left inside;
- the photo file's size (after EXIF orientation) is the truth; a CSV size
  that disagrees is reported and the boxes are checked against the file;
- a photo left without boxes is left out of the manifest (a dense shelf
  with no labels would teach "background" and fail every detection in eval).
Nothing is dropped without a line in report.json.
"""
from __future__ import annotations

import datetime
import json
import os
import time
from collections import Counter
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from shelfdet.core import photo_files, safepath
from shelfdet.data import CHANNELS, CLASS_MAP, DEFAULT_LABEL, DataError, channel_of, checks, csvrows, manifests
from shelfdet.data.manifests import Entry, quiet, write_report
from shelfdet.data.written import Written

JOB_NAME = "shelfdet-sku110k"
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png")
FORMAT = "shelfdet-data-report/1"
# Why a photo's rows cannot be used ("" when they can); the names are report.json's reasons.
PHOTO_REASONS = ("", "image_corrupted", "image_missing", "unknown_split", "unsafe_name")


def find_csvs(root: str) -> List[str]:
    ann = os.path.join(root, "annotations")
    found = sorted(f for f in os.listdir(ann) if f.startswith("annotations_") and f.endswith(".csv")) \
        if os.path.isdir(ann) else []
    if not found:
        raise DataError("{}: no annotations/annotations_<split>.csv: not a SKU110K_fixed folder".format(root))
    return [os.path.join(ann, f) for f in found]


def stamp(root: str) -> List[List[Any]]:
    """Size and mtime of every CSV: the data is rebuilt when one changes."""
    return [[os.path.basename(c), os.path.getsize(c), int(os.path.getmtime(c))] for c in find_csvs(root)]


class _Manifest:
    """Formats manifest lines with one C-level ``%`` per photo instead of one json.dumps per box."""

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


class _Photos(NamedTuple):
    """Every photo named by a CSV or found in images/, by index: its size and why it cannot be used."""

    names: List[str]
    files: List[str]  # the photo files found (unsafe names left out)
    width: np.ndarray
    height: np.ndarray
    reason: np.ndarray  # int8 index into PHOTO_REASONS
    corrupted: List[Dict[str, Any]]
    unsafe: Dict[int, str]  # photo index -> why its name is refused


def _photos(rows: csvrows.Rows, photo_dir: str, sizes_from_csv: bool, workers: Optional[int]) -> _Photos:
    names = list(rows.names)
    index = {n: i for i, n in enumerate(names)}
    files = [] if sizes_from_csv else sorted(f for f in os.listdir(photo_dir) if f.lower().endswith(PHOTO_EXTENSIONS)) \
        if os.path.isdir(photo_dir) else []
    for f in files:
        if f not in index:
            index[f] = len(names)
            names.append(f)
    width, height = np.zeros(len(names), np.float64), np.zeros(len(names), np.float64)
    reason = np.zeros(len(names), np.int8)
    corrupted: List[Dict[str, Any]] = []
    # A CSV name that would lead out of images/ is never opened.
    unsafe: Dict[int, str] = {}
    for i, name in enumerate(names):
        try:
            safepath.inside(photo_dir, name, links=True)
        except safepath.UnsafeName as err:
            unsafe[i] = str(err)
            reason[i] = PHOTO_REASONS.index("unsafe_name")
    files = [f for f in files if index[f] not in unsafe]
    if sizes_from_csv:
        first = np.unique(rows.photo, return_index=True)[1]
        width[rows.photo[first]] = rows.values[first, 4]
        height[rows.photo[first]] = rows.values[first, 5]
    else:
        present = np.zeros(len(names), bool)
        checked = photo_files.check_all([os.path.join(photo_dir, f) for f in files], workers)
        for f in files:
            i = index[f]
            present[i] = True
            c = checked[os.path.join(photo_dir, f)]
            if c.error:
                reason[i] = PHOTO_REASONS.index("image_corrupted")
                corrupted.append({"image": f, "channel": channel_of(f), "reason": c.error})
            width[i], height[i] = c.width, c.height
        reason[~present & (reason == 0)] = PHOTO_REASONS.index("image_missing")
    for i, name in enumerate(names):
        if channel_of(name) is None and not reason[i]:
            reason[i] = PHOTO_REASONS.index("unknown_split")
    return _Photos(names, files, width, height, reason, corrupted, unsafe)


def _first_per_photo(idx: np.ndarray, photo_of: np.ndarray) -> List[int]:
    if not len(idx):
        return []
    return [int(idx[j]) for j in np.unique(photo_of[idx], return_index=True)[1]]


def _photo_problems(rows: csvrows.Rows, photos: _Photos, photo_dir: str, sizes_from_csv: bool) -> List[Dict[str, Any]]:
    """One problem per photo whose rows are dropped (with their count), then per CSV size mismatch."""
    photo_of = rows.photo
    row_reason = photos.reason[photo_of]

    def where(i: int) -> Dict[str, Any]:
        return {"file": rows.files[rows.file[i]], "line": int(rows.line[i]), "image": photos.names[photo_of[i]]}

    out = []
    for i in _first_per_photo(np.flatnonzero(row_reason == PHOTO_REASONS.index("unsafe_name")), photo_of):
        out.append(checks.problem(field="image_name", kind="unsafe_name", action="dropped",
                                  message="{}: its boxes are dropped".format(photos.unsafe[int(photo_of[i])]),
                                  rows=int(np.count_nonzero(photo_of == photo_of[i])), **where(i)))
    messages = {"image_corrupted": checks.PHOTO_CORRUPTED,
                "image_missing": "no such file in {}: its boxes are dropped".format(photo_dir),
                "unknown_split": checks.NO_PREFIX}
    for kind, message in messages.items():
        idx = np.flatnonzero(row_reason == PHOTO_REASONS.index(kind))
        counts = Counter(photo_of[idx].tolist())
        for i in _first_per_photo(idx, photo_of):
            out.append(checks.problem(field="image_name", kind=kind, action="dropped", message=message,
                                      rows=counts[int(photo_of[i])], **where(i)))
    W, H = photos.width[photo_of], photos.height[photo_of]
    csv_w, csv_h = rows.values[:, 4], rows.values[:, 5]
    mismatch = (row_reason == 0) & ((csv_w != W) | (csv_h != H))
    for i in _first_per_photo(np.flatnonzero(mismatch), photo_of):
        out.append(checks.problem(
            field="image_width" if csv_w[i] != W[i] else "image_height", kind="size_mismatch", action="kept",
            message=checks.size_mismatch("CSV says", (csv_w[i], csv_h[i]), (W[i], H[i]),
                                         "CSV sizes only" if sizes_from_csv else "image file",
                                         "first row" if sizes_from_csv else "file"),
            rows=int(np.count_nonzero(mismatch & (photo_of == photo_of[i]))), **where(i)))
    return out


def _check_rows(rows: csvrows.Rows, photos: _Photos) -> checks.Checked:
    photo_of = rows.photo
    x1, y1, x2, y2 = rows.values.T[:4]
    return checks.check_boxes(x1, y1, x2, y2, photos.width[photo_of], photos.height[photo_of],
                              usable=photos.reason[photo_of] == 0)


def _box_problems(rows: csvrows.Rows, photos: _Photos, checked: checks.Checked) -> List[Dict[str, Any]]:
    x1, y1, x2, y2 = rows.values.T[:4]

    def where(i: int) -> Any:
        return rows.files[rows.file[i]], int(rows.line[i]), photos.names[rows.photo[i]]

    def field(i: int, kind: str) -> str:
        if kind != "degenerate":
            return "box"
        return "x2" if x2[i] <= x1[i] else "y2"

    return [p for _, p in checks.box_problems(checked, where, field)]


def _entries(rows: csvrows.Rows, photos: _Photos, checked: checks.Checked, photo_dir: str, max_side: Optional[int],
             ) -> Tuple[Dict[str, List[str]], Dict[str, List[Entry]], List[Dict[str, Any]]]:
    """Kept boxes grouped by photo, in CSV order, as JSON number strings; the photos' sizes in the
    manifests; each channel's entries; and the photos left out (with why)."""
    photo_of, n_photos = rows.photo, len(photos.names)
    k = np.flatnonzero(checked.kept)
    k = k[np.lexsort((rows.line[k], rows.file[k], photo_of[k]))]
    cx1, cy1, cx2, cy2 = checked.clipped_boxes
    coords = np.column_stack([cx1[k], cy1[k], cx2[k] - cx1[k], cy2[k] - cy1[k]])
    out_w, out_h = photos.width.copy(), photos.height.copy()
    if max_side:
        for i in range(n_photos):
            if not photos.reason[i]:
                out_w[i], out_h[i] = photo_files.fit(int(photos.width[i]), int(photos.height[i]), max_side)
        # Boxes scale with their photo; two decimals are far below a pixel of the resized photo.
        sx = (out_w / np.maximum(photos.width, 1))[photo_of[k]]
        sy = (out_h / np.maximum(photos.height, 1))[photo_of[k]]
        coords = np.round(coords * np.column_stack([sx, sy, sx, sy]), 2)
    flat = _numbers(coords)
    counts = np.bincount(photo_of[k], minlength=n_photos)
    offsets = np.concatenate([[0], np.cumsum(counts)]) * 4
    dropped: List[Dict[str, Any]] = []
    per_channel: Dict[str, List[Entry]] = {c: [] for c in CHANNELS}
    boxes: Dict[str, List[str]] = {}
    for i, name in enumerate(photos.names):
        if photos.reason[i]:
            dropped.append({"image": name, "reason": PHOTO_REASONS[photos.reason[i]]})
        elif counts[i] == 0:
            dropped.append({"image": name, "reason": "no_boxes",
                            "message": "no usable box in any CSV: left out of the manifest"})
        else:
            boxes[name] = flat[offsets[i]:offsets[i + 1]]
            own = (int(photos.width[i]), int(photos.height[i]))
            per_channel[channel_of(name)].append(Entry(name, os.path.join(photo_dir, name),
                                                       (int(out_w[i]), int(out_h[i])), own, int(counts[i])))
    return boxes, per_channel, dropped


def convert(root: str, data_dir: str, bucket: Optional[str] = None, prefix: str = "detectron2/data",
            label: str = DEFAULT_LABEL, sizes_from_csv: bool = False, workers: Optional[int] = None,
            extra: Optional[Dict[str, Any]] = None, log: Callable[[str], None] = quiet,
            max_side: Optional[int] = None, written: Optional[Written] = None) -> Dict[str, Any]:
    """Converts and returns the report (also written to DATA_DIR/report.json); ``log`` gets its summary lines.

    ``sizes_from_csv`` trusts the CSV's photo sizes and neither reads nor
    links photos (the benchmark's CSV-only mode). ``max_side`` writes every
    photo whose longer side exceeds it resized once to that side (upright,
    boxes and sizes in the manifests scaled with it); smaller ones are linked.
    """
    if max_side and sizes_from_csv:
        raise ValueError("max_side needs the images; sizes_from_csv reads none")
    t = [time.time()]
    photo_dir = os.path.join(root, "images")
    rows, problems, n_rows = csvrows.read(find_csvs(root))
    t.append(time.time())
    photos = _photos(rows, photo_dir, sizes_from_csv, workers)
    t.append(time.time())
    checked = _check_rows(rows, photos)
    problems += _box_problems(rows, photos, checked) + _photo_problems(rows, photos, photo_dir, sizes_from_csv)
    t.append(time.time())
    boxes, per_channel, dropped = _entries(rows, photos, checked, photo_dir, max_side)
    fmt = _Manifest(label)

    def line(ch: str, e: Entry) -> str:
        return fmt.line(manifests.source_ref(bucket, prefix, ch, e.name, data_dir), e.size[0], e.size[1], boxes[e.name])

    written = written or Written(data_dir)
    channels, jobs = manifests.write_channels(data_dir, written, per_channel, line, photos=not sizes_from_csv)
    resized = manifests.resize(jobs, max_side, workers)
    t.append(time.time())
    by_reason: Counter = Counter()
    for p in problems:
        if p["action"] == "dropped":
            by_reason[p["kind"]] += p.get("rows", 1)
    n_kept = int(checked.kept.sum())
    report = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": os.path.abspath(root), "data_dir": os.path.abspath(data_dir), "label": label,
        "source_refs": "s3://{}/{}".format(bucket, prefix.strip("/")) if bucket else "local",
        "sizes_from": "csv" if sizes_from_csv else "image files",
        "channels": channels,
        "boxes": {"rows": int(n_rows), "kept": n_kept, "clipped": int(checked.masks["clipped"].sum()),
                  "dropped": int(n_rows - n_kept), "dropped_by_reason": dict(sorted(by_reason.items()))},
        "images": {"files": len(photos.files), "in_manifests": sum(c["images"] for c in channels.values()),
                   "corrupted": photos.corrupted, "dropped": dropped},
        "resized": resized,
        "problems": problems,
        "seconds": {"csv": round(t[1] - t[0], 3), "images": round(t[2] - t[1], 3), "validate": round(t[3] - t[2], 3),
                    "manifests": round(t[4] - t[3], 3), "total": round(time.time() - t[0], 3)},
    }
    report = write_report(report, data_dir, extra, log)
    written.finish()
    return report
