"""``make data SRC=<folder> FORMAT=coco|voc|yolo|gt``: labels from CVAT, Label Studio, Roboflow or
SageMaker Ground Truth, through the same checks and the same report as the SKU-110K CSV.

Each reader (:data:`READERS`, by format) takes its format's standard layout and yields photos with their
boxes (in pixels, x1 y1 x2 y2; YOLO's as fractions of the photo) and where each was declared (file, line,
field); :func:`convert` checks every photo (decodes, size) and box (:mod:`shelfdet.data.checks`: no area,
outside the photo, crossing its border, unknown class) and writes
the channels, the manifests (multi-class maps kept) and ``report.json``:

- coco: ``annotations/instances_<split>.json`` with the photos in ``<split>/`` (COCO 2017's
  ``train2017`` style, a year after the split, is allowed);
- voc: ``Annotations/<id>.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``;
- yolo: ``images/<split>/``, ``labels/<split>/<stem>.txt`` (class cx cy w h, normalised), class
  names from ``data.yaml``;
- gt: Ground Truth output manifests ``<split>.manifest`` (or ``output.manifest`` for one split given
  as ``<split>/output.manifest``), photo paths local (absolute or relative to SRC) or s3://.

Splits ``train``, ``val`` (or ``valid``) and ``test`` become the training, validation and test channels.
"""
from __future__ import annotations

import datetime
import glob
import json
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from shelfdet.core import photo_files, safepath
from shelfdet.data import CHANNELS, DataError, checks, manifests
from shelfdet.data.manifests import Entry, quiet, write_report
from shelfdet.data.written import Written

FORMATS = ("coco", "voc", "yolo", "gt")
SPLIT_TO_CHANNEL = {"train": "training", "val": "validation", "valid": "validation", "validation": "validation",
                    "test": "test"}
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
JOB_NAME = "labeling-job/converted"


class Box(NamedTuple):
    x1: float
    y1: float
    x2: float
    y2: float
    cls: str
    file: str
    line: int
    field: str


class Item(NamedTuple):
    channel: str
    name: str  # the file name in the channel folder
    path: str  # the photo file, or an s3:// URI
    boxes: List[Box]
    size: Optional[Tuple[float, float]]  # what the labels declare, checked against the file
    file: str  # where the photo is declared
    line: int


class Source(NamedTuple):
    items: List[Item]
    classes: List[str]
    problems: List[Dict[str, Any]]
    stamp_files: List[str]  # the label files: a rebuild is due when one changes


def _channel(split: str, where: str) -> str:
    channel = SPLIT_TO_CHANNEL.get(split)
    if channel is None:
        raise DataError("{}: split {!r} is not one of train, val (or valid), test".format(where, split))
    return channel


# ---- readers ---------------------------------------------------------------------------

def read_coco(root: str) -> Source:
    files = sorted(glob.glob(os.path.join(root, "annotations", "instances_*.json")))
    if not files:
        raise DataError("{}: no annotations/instances_<split>.json (COCO layout: annotations/instances_train2017.json "
                        "with the images in train2017/)".format(root))
    items, problems, categories = [], [], {}  # type: List[Item], List[Dict[str, Any]], Dict[int, str]
    loaded = []
    for path in files:
        folder = os.path.basename(path)[len("instances_"):-len(".json")]
        match = re.match(r"^([a-z]+?)(\d{4})?$", folder)
        channel = _channel(match.group(1) if match else folder, path)
        try:
            with open(path) as f:
                doc = json.load(f)
        except ValueError as err:
            raise DataError("{}: not valid JSON ({})".format(path, err)) from None
        for key in ("images", "annotations", "categories"):
            if not isinstance(doc.get(key), list):
                raise DataError("{}: no {!r} list (a COCO instances file has images, annotations, categories)".format(path, key))
        for i, c in enumerate(doc["categories"]):
            name = str(c.get("name", ""))
            if categories.get(c.get("id"), name) != name:
                raise DataError("{}: categories[{}]: id {} is {!r} here and {!r} in another split".format(
                    path, i, c.get("id"), name, categories[c["id"]]))
            categories[c["id"]] = name
        loaded.append((path, folder, channel, doc))
    for path, folder, channel, doc in loaded:
        photo_dir = os.path.join(root, folder)
        by_id, refused = {}, {}  # type: Dict[Any, Item], Dict[Any, Tuple[int, Exception]]
        for i, im in enumerate(doc["images"]):
            # Exports may name a folder in file_name; the photo is looked up by its file name in <split>/.
            file_name = im.get("file_name", "")
            try:
                safepath.check(file_name, subpath=True)
                name = os.path.basename(file_name)
                photo = safepath.inside(photo_dir, name, links=True)
            except safepath.UnsafeName as err:
                refused[im.get("id")] = (i + 1, err)
                name, photo = "", ""
            size = (float(im["width"]), float(im["height"])) if "width" in im and "height" in im else None
            by_id[im.get("id")] = Item(channel, name, photo, [], size, path, i + 1)
        for i, a in enumerate(doc["annotations"]):
            where = "annotations[{}]".format(i)
            item = by_id.get(a.get("image_id"))
            if item is None:
                problems.append(checks.problem(path, i + 1, "", where + ".image_id", "unknown_image", "dropped",
                                        "image_id {} is not in images".format(a.get("image_id"))))
                continue
            if a.get("iscrowd"):
                problems.append(checks.problem(path, i + 1, item.name, where + ".iscrowd", "crowd", "dropped",
                                        "a crowd region (iscrowd=1), not one object"))
                continue
            try:
                x, y, w, h = (float(v) for v in a["bbox"])
            except (KeyError, TypeError, ValueError):
                problems.append(checks.problem(path, i + 1, item.name, where + ".bbox", "bad_value", "dropped",
                                        "bbox {!r} is not [x, y, width, height]".format(a.get("bbox"))))
                continue
            cls = categories.get(a.get("category_id"))
            field = where + (".bbox" if cls is not None else ".category_id")
            item.boxes.append(Box(x, y, x + w, y + h, "#{}".format(a.get("category_id")) if cls is None else cls,
                                  path, i + 1, field))
        for image_id, (line, err) in refused.items():
            problems.append(checks.unsafe(path, line, "images[{}].file_name".format(line - 1), err, len(by_id.pop(image_id).boxes)))
        items += by_id.values()
    classes = [categories[k] for k in sorted(categories)]
    return Source(items, classes, problems, files)


def _object_lines(text: str) -> List[int]:
    """The line of each <object> element, in document order (ElementTree keeps no line numbers)."""
    return [text.count("\n", 0, m.start()) + 1 for m in re.finditer(r"<object[\s>]", text)]


def _line_of(text: str, tag: str) -> int:
    at = text.find(tag)
    return text.count("\n", 0, at) + 1 if at >= 0 else 1


def read_voc(root: str) -> Source:
    sets = sorted(glob.glob(os.path.join(root, "ImageSets", "Main", "*.txt")))
    sets = [s for s in sets if os.path.basename(s)[:-4] in SPLIT_TO_CHANNEL]
    if not sets:
        raise DataError("{}: no ImageSets/Main/<split>.txt (Pascal VOC layout: Annotations/*.xml, JPEGImages/, "
                        "ImageSets/Main/train.txt)".format(root))
    items, problems, names = [], [], set()  # type: List[Item], List[Dict[str, Any]], set
    stamp = list(sets)
    for split_file in sets:
        channel = _channel(os.path.basename(split_file)[:-4], split_file)
        with open(split_file) as f:
            ids = [(n + 1, line.split()[0]) for n, line in enumerate(f) if line.strip()]
        for line_no, image_id in ids:
            try:
                xml = safepath.inside(os.path.join(root, "Annotations"), image_id + ".xml", links=True)
            except safepath.UnsafeName as err:
                problems.append(checks.unsafe(split_file, line_no, "id", err))
                continue
            if not os.path.isfile(xml):
                problems.append(checks.problem(split_file, line_no, image_id, "id", "labels_missing", "dropped",
                                        "no {}".format(xml)))
                continue
            stamp.append(xml)
            with open(xml) as f:
                text = f.read()
            try:
                doc = ET.fromstring(text)
            except ET.ParseError as err:
                problems.append(checks.problem(xml, err.position[0], image_id, "xml", "bad_value", "dropped",
                                        "not valid XML ({})".format(err)))
                continue
            name = (doc.findtext("filename") or image_id + ".jpg").strip()
            size = doc.find("size")
            declared = None
            if size is not None and size.findtext("width") and size.findtext("height"):
                declared = (float(size.findtext("width")), float(size.findtext("height")))
            try:
                photo = safepath.inside(os.path.join(root, "JPEGImages"), name, links=True)
            except safepath.UnsafeName as err:
                problems.append(checks.unsafe(xml, _line_of(text, "<filename"), "filename", err, len(doc.findall("object"))))
                continue
            item = Item(channel, name, photo, [], declared, xml, 1)
            for obj, line in zip(doc.findall("object"), _object_lines(text)):
                cls = (obj.findtext("name") or "").strip()
                box = obj.find("bndbox")
                try:
                    # VOC counts pixels from 1 (Detectron2's own VOC loader subtracts 1 the same way).
                    x1, y1, x2, y2 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
                except (AttributeError, TypeError, ValueError):
                    problems.append(checks.problem(xml, line, name, "bndbox", "bad_value", "dropped",
                                            "object {!r} has no numeric xmin/ymin/xmax/ymax".format(cls)))
                    continue
                item.boxes.append(Box(x1 - 1, y1 - 1, x2, y2, cls, xml, line, "bndbox"))
            items.append(item)
            names.update(b.cls for b in item.boxes)
    return Source(items, sorted(names), problems, stamp)


def _yaml_names(path: str) -> List[str]:
    import yaml

    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    names = doc.get("names")
    if isinstance(names, dict):  # Ultralytics writes {0: name, 1: name}
        try:
            return [str(names[k]) for k in sorted(names, key=int)]
        except ValueError:
            raise DataError("{}: names keys must be class indices 0..N-1".format(path)) from None
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise DataError("{}: no class names (names: [a, b] or names: {{0: a, 1: b}})".format(path))


def read_yolo(root: str) -> Source:
    data_yaml = os.path.join(root, "data.yaml")
    if not os.path.isfile(data_yaml):
        raise DataError("{}: no data.yaml (YOLO layout as Ultralytics exports it: data.yaml, images/<split>/, "
                        "labels/<split>/)".format(root))
    classes = _yaml_names(data_yaml)
    splits = sorted(d for d in os.listdir(os.path.join(root, "images")) if d in SPLIT_TO_CHANNEL) \
        if os.path.isdir(os.path.join(root, "images")) else []
    if not splits:
        raise DataError("{}: no images/<split>/ folder (train, val or valid, test)".format(root))
    items, problems, stamp = [], [], [data_yaml]  # type: List[Item], List[Dict[str, Any]], List[str]
    for split in splits:
        channel = _channel(split, os.path.join(root, "images", split))
        for name in sorted(os.listdir(os.path.join(root, "images", split))):
            if not name.lower().endswith(PHOTO_EXTENSIONS):
                continue
            label = os.path.join(root, "labels", split, os.path.splitext(name)[0] + ".txt")
            # Names listed from the folder itself: bare file names; data.yaml's path/train/val/test
            # entries are never read as paths (the layout above is the one read).
            item = Item(channel, name, os.path.join(root, "images", split, name), [], None, label, 1)
            items.append(item)
            if not os.path.isfile(label):
                continue  # a photo without a label file has no objects (Ultralytics' convention)
            stamp.append(label)
            with open(label) as f:
                for line_no, line in enumerate(f, 1):
                    words = line.split()
                    if not words:
                        continue
                    try:
                        if len(words) != 5:
                            raise ValueError("{} values, expected 5 (class cx cy w h)".format(len(words)))
                        index = int(words[0])
                        cx, cy, w, h = (float(v) for v in words[1:])
                    except ValueError as err:
                        problems.append(checks.problem(label, line_no, name, "row", "bad_value", "dropped",
                                                "{!r}: {}".format(line.strip(), err)))
                        continue
                    cls = classes[index] if 0 <= index < len(classes) else "#{}".format(index)
                    # Normalised until the photo's size is known (the reader's `normalised`: convert scales them).
                    item.boxes.append(Box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, cls, label, line_no,
                                          "class" if cls.startswith("#") else "cx cy w h"))
    return Source(items, classes, problems, stamp)


def _gt_label(record: Dict[str, Any]) -> Optional[str]:
    for key, value in record.items():
        if isinstance(value, dict) and "annotations" in value and key + "-metadata" in record:
            return key
    return None


def read_gt(root: str) -> Source:
    files = []
    for split in SPLIT_TO_CHANNEL:
        for pattern in ("{}.manifest", "{}/output.manifest", "{}/manifests/output/output.manifest"):
            path = os.path.join(root, pattern.format(split))
            if os.path.isfile(path):
                files.append((split, path))
                break
    if not files:
        raise DataError("{}: no <split>.manifest (Ground Truth output manifests: train.manifest, val.manifest, "
                        "test.manifest, or <split>/output.manifest)".format(root))
    items, problems, class_map = [], [], {}  # type: List[Item], List[Dict[str, Any]], Dict[int, str]
    for split, path in files:
        channel = _channel(split, path)
        with open(path) as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as err:
                    problems.append(checks.problem(path, line_no, "", "json", "bad_value", "dropped",
                                            "not a JSON line ({})".format(err)))
                    continue
                ref = record.get("source-ref", "") if isinstance(record, dict) else ""
                ref = ref if isinstance(ref, str) else str(ref)
                label = _gt_label(record) if isinstance(record, dict) else None
                name = os.path.basename(ref)
                if not ref or label is None:
                    problems.append(checks.problem(path, line_no, name, "source-ref" if not ref else "label", "bad_value",
                                            "dropped", "no source-ref" if not ref else
                                            "no bounding-box label attribute (<name> with annotations, and <name>-metadata)"))
                    continue
                meta = record[label + "-metadata"]
                for k, v in (meta.get("class-map") or {}).items():
                    if class_map.setdefault(int(k), str(v)) != str(v):
                        raise DataError("{}:{}: class-map {} is {!r} here and {!r} on an earlier line".format(
                            path, line_no, k, v, class_map[int(k)]))
                sizes = record[label].get("image_size") or [{}]
                declared = (float(sizes[0]["width"]), float(sizes[0]["height"])) if "width" in sizes[0] else None
                try:
                    safepath.check(name)
                    # s3:// refs are checked where they are downloaded: their key becomes a path there.
                    local = ref if ref.startswith("s3://") else safepath.inside(root, ref, subpath=True, absolute=True, links=True)
                except safepath.UnsafeName as err:
                    problems.append(checks.unsafe(path, line_no, "source-ref", err, len(record[label].get("annotations") or [])))
                    continue
                item = Item(channel, name, local, [], declared, path, line_no)
                for i, a in enumerate(record[label]["annotations"]):
                    try:
                        x, y, w, h = (float(a[k]) for k in ("left", "top", "width", "height"))
                    except (KeyError, TypeError, ValueError):
                        problems.append(checks.problem(path, line_no, name, "annotations[{}]".format(i), "bad_value", "dropped",
                                                "{!r} is not left/top/width/height".format(a)))
                        continue
                    cid = a.get("class_id", 0)
                    item.boxes.append(Box(x, y, x + w, y + h, "#{}".format(cid), path, line_no, "annotations[{}]".format(i)))
                items.append(item)
    if not class_map:
        class_map = {0: "SKU"}
    classes = [class_map[k] for k in sorted(class_map)]
    by_id = {"#{}".format(k): v for k, v in class_map.items()}
    items = [i._replace(boxes=[b._replace(cls=by_id.get(b.cls, b.cls)) for b in i.boxes]) for i in items]
    return Source(items, classes, problems, [p for _, p in files])


class Reader(NamedTuple):
    """A format's reader, and what its boxes need before the common checks."""

    read: Callable[[str], Source]
    # Boxes given as fractions of the photo's size (YOLO): scaled to pixels once the file's size is known,
    # rounded to two decimals like resized boxes.
    normalised: bool = False


READERS: Dict[str, Reader] = {"coco": Reader(read_coco), "voc": Reader(read_voc),
                              "yolo": Reader(read_yolo, normalised=True), "gt": Reader(read_gt)}
FORMATS = tuple(READERS)


def stamp(root: str, fmt: str, files: Optional[List[str]] = None) -> List[List[Any]]:
    """Size and mtime of every label file (the data is rebuilt when one changes); ``files``: the reader's
    list when the labels were just read."""
    files = READERS[fmt].read(root).stamp_files if files is None else files
    return [[os.path.relpath(p, root), os.path.getsize(p), int(os.path.getmtime(p))] for p in files]


# ---- the common half: checks, channels, manifests, report ---------------------------------

def _download(s3: Any, item: Item, local: str, log: Callable[[str], None]) -> Tuple[str, bool]:
    """(the local file, whether it was downloaded); a photo that fails keeps its s3:// path (then missing)."""
    bucket, _, key = item.path[len("s3://"):].partition("/")
    try:
        size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
        if os.path.isfile(local) and os.path.getsize(local) == size:
            return local, False
        os.makedirs(os.path.dirname(local), exist_ok=True)
        s3.download_file(bucket, key, local)
        return local, True
    except Exception as err:  # reported per photo as missing, with the reason
        log("data: cannot download {}: {}".format(item.path, err))
        return item.path, False


def _s3_photos(items: List[Item], written: Written, problems: List[Dict[str, Any]],
               log: Callable[[str], None]) -> List[Item]:
    """Ground Truth's s3:// photos, downloaded once into DATA_DIR/source/s3/<bucket>/<key> (kept when the size
    matches); a bucket or key that would lead out of that folder is dropped and reported."""
    remote = [i for i in items if i.path.startswith("s3://")]
    if not remote:
        return items
    import boto3

    s3 = boto3.client("s3")
    work = written.claim_tree("source/s3")
    written.begin()
    out, fetched, refused = {}, 0, set()
    for item in remote:
        bucket, _, key = item.path[len("s3://"):].partition("/")
        try:
            local = safepath.inside(safepath.inside(work, bucket), key, subpath=True)
        except safepath.UnsafeName as err:
            problems.append(checks.unsafe(item.file, item.line, "source-ref", err, len(item.boxes), item.name))
            refused.add(id(item))
            continue
        out[id(item)], downloaded = _download(s3, item, local, log)
        fetched += downloaded
    log("data: {} image(s) from S3 ({} downloaded) into {}".format(len(remote) - len(refused), fetched, work))
    return [i._replace(path=out.get(id(i), i.path)) for i in items if id(i) not in refused]


def _number(v: float) -> Any:
    return int(v) if float(v).is_integer() else round(float(v), 2)


class _Tally:
    """What the checks found so far: the problems, dropped boxes per reason, rows, clipped boxes, photos."""

    def __init__(self, problems: List[Dict[str, Any]]):
        self.problems = problems
        # A label the reader could not use is a dropped box, as a malformed CSV row is (a missing label
        # file is not: it held no boxes to count); a photo refused for its name drops its boxes.
        self.by_reason: Counter = Counter()
        for p in problems:
            if p["kind"] != "labels_missing":
                self.by_reason[p["kind"]] += p.get("rows", 1)
        self.rows = sum(self.by_reason.values())
        self.clipped = 0
        self.corrupted: List[Dict[str, Any]] = []
        self.dropped: List[Dict[str, Any]] = []

    def drop(self, item: Item, kind: str, message: str) -> None:
        self.problems.append(checks.problem(item.file, item.line, item.name, "image", kind, "dropped", message))
        self.by_reason[kind] += len(item.boxes)
        self.dropped.append({"image": item.name, "reason": kind})


def _check_boxes(item: Item, size: Tuple[float, float], out: Tuple[int, int], classes: List[str],
                 reader: Reader, round_boxes: bool, tally: _Tally) -> List[List[Any]]:
    """The item's boxes through the common checks: its manifest annotations (class index, left, top,
    width, height at the ``out`` size); a problem per box dropped or clipped, in label order."""
    W, H = size
    index = {c: i for i, c in enumerate(classes)}
    n = len(item.boxes)
    xy = np.array([[b.x1, b.y1, b.x2, b.y2] for b in item.boxes], np.float64).reshape(-1, 4)
    if reader.normalised:
        xy = xy * np.array([W, H, W, H])
    known = np.array([b.cls in index for b in item.boxes], bool)
    checked = checks.check_boxes(xy[:, 0], xy[:, 1], xy[:, 2], xy[:, 3], np.full(n, W), np.full(n, H), usable=known)
    found = [(i, checks.problem(b.file, b.line, item.name, b.field, "unknown_class", "dropped",
                                checks.unknown_class(b.cls, classes)))
             for i, b in enumerate(item.boxes) if not known[i]]
    found += checks.box_problems(checked, lambda i: (item.boxes[i].file, item.boxes[i].line, item.name),
                                 lambda i, kind: item.boxes[i].field)
    for _, p in sorted(found, key=lambda f: f[0]):
        tally.problems.append(p)
        if p["action"] == "dropped":
            tally.by_reason[p["kind"]] += 1
    tally.clipped += int(checked.masks["clipped"].sum())
    sx, sy = out[0] / W, out[1] / H
    cx1, cy1, cx2, cy2 = (c.tolist() for c in checked.clipped_boxes)
    kept = []
    for i in np.flatnonzero(checked.kept).tolist():
        box = [cx1[i] * sx, cy1[i] * sy, (cx2[i] - cx1[i]) * sx, (cy2[i] - cy1[i]) * sy]
        kept.append([index[item.boxes[i].cls]] + [_number(round(v, 2) if round_boxes else v) for v in box])
    return kept


def _check_items(items: List[Item], checked: Dict[str, Any], classes: List[str], reader: Reader,
                 max_side: Optional[int], tally: _Tally) -> Dict[str, List[Tuple[Item, Entry, List[List[Any]]]]]:
    """Every item's photo (present once per channel, decoding) and boxes: each channel's entries."""
    per_channel = {c: [] for c in CHANNELS}  # type: Dict[str, List[Tuple[Item, Entry, List[List[Any]]]]]
    seen = {}  # type: Dict[Tuple[str, str], str]
    for item in items:
        tally.rows += len(item.boxes)
        if (item.channel, item.name) in seen:
            tally.drop(item, "duplicate_name", "{} is already in {} from {}: its boxes are dropped".format(
                item.name, item.channel, seen[item.channel, item.name]))
            continue
        seen[item.channel, item.name] = item.path
        c = checked.get(item.path)
        if c is None:
            tally.drop(item, "image_missing", "no such file {}: its boxes are dropped".format(item.path))
            continue
        if c.error:
            tally.corrupted.append({"image": item.name, "channel": item.channel, "reason": c.error})
            tally.drop(item, "image_corrupted", checks.PHOTO_CORRUPTED)
            continue
        W, H = float(c.width), float(c.height)
        if item.size and item.size != (W, H):
            tally.problems.append(checks.problem(item.file, item.line, item.name, "size", "size_mismatch", "kept",
                                                 checks.size_mismatch("labels say", item.size, (W, H))))
        out = photo_files.fit(int(W), int(H), max_side) if max_side else (int(W), int(H))
        kept = _check_boxes(item, (W, H), out, classes, reader, bool(max_side) or reader.normalised, tally)
        if not kept:
            tally.dropped.append({"image": item.name, "reason": "no_boxes",
                                  "message": "no usable box in the labels: left out of the manifest"})
            continue
        entry = Entry(item.name, item.path, out, (c.width, c.height), len(kept))
        per_channel[item.channel].append((item, entry, kept))
    return per_channel


def _line_writer(label: str, classes: List[str], created: str, bucket: Optional[str], prefix: str, data_dir: str,
                 annotations: Dict[Tuple[str, str], List[List[Any]]]) -> Callable[[str, Entry], str]:
    meta = {"job-name": JOB_NAME, "class-map": {str(i): c for i, c in enumerate(classes)}, "human-annotated": "yes",
            "type": "groundtruth/object-detection", "creation-date": created}

    def line(ch: str, e: Entry) -> str:
        kept = annotations[ch, e.name]
        record = {"source-ref": manifests.source_ref(bucket, prefix, ch, e.name, data_dir),
                  label: {"annotations": [{"class_id": k[0], "left": k[1], "top": k[2], "width": k[3], "height": k[4]}
                                          for k in kept], "image_size": [{"width": e.size[0], "height": e.size[1], "depth": 3}]},
                  label + "-metadata": dict(meta, objects=[{"confidence": 1.0}] * len(kept))}
        return json.dumps(record) + "\n"

    return line


def convert(root: str, fmt: str, data_dir: str, bucket: Optional[str] = None, prefix: str = "detectron2/data",
            label: str = "sku", workers: Optional[int] = None, extra: Optional[Dict[str, Any]] = None,
            log: Callable[[str], None] = quiet, max_side: Optional[int] = None,
            written: Optional[Written] = None) -> Dict[str, Any]:
    """Reads ``root`` in format ``fmt`` and writes DATA_DIR as the SKU-110K converter does; returns the report."""
    if fmt not in READERS:
        raise DataError("FORMAT={}: one of {}".format(fmt, ", ".join(FORMATS)))
    if not os.path.isdir(root):
        raise DataError("{}: not a folder (FORMAT={} reads a folder)".format(root, fmt))
    reader = READERS[fmt]
    source = reader.read(root)
    extra = dict(extra or {}, source_stamp=stamp(root, fmt, source.stamp_files))  # from this read, not another
    written = written or Written(data_dir)
    tally = _Tally(list(source.problems))
    items = _s3_photos(source.items, written, tally.problems, log)
    classes = list(source.classes)
    present = [i for i in items if os.path.isfile(i.path)]
    checked = photo_files.check_all([i.path for i in present], workers)
    per_channel = _check_items(items, checked, classes, reader, max_side, tally)
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")
    annotations = {(ch, e.name): kept for ch, entries in per_channel.items() for _, e, kept in entries}
    line = _line_writer(label, classes, created, bucket, prefix, data_dir, annotations)
    channels, jobs = manifests.write_channels(
        data_dir, written, {ch: [e for _, e, _ in entries] for ch, entries in per_channel.items()}, line)
    resized = manifests.resize(jobs, max_side, workers)
    n_kept = sum(c["boxes"] for c in channels.values())
    report = {
        "format": fmt, "created": created[:19] + "+00:00", "source": os.path.abspath(root),
        "data_dir": os.path.abspath(data_dir), "label": label, "classes": classes,
        "source_refs": "s3://{}/{}".format(bucket, prefix.strip("/")) if bucket else "local",
        "sizes_from": "image files", "channels": channels,
        "boxes": {"rows": tally.rows, "kept": n_kept, "clipped": tally.clipped, "dropped": tally.rows - n_kept,
                  "dropped_by_reason": dict(sorted((k, v) for k, v in tally.by_reason.items() if v))},
        "images": {"files": len(present), "in_manifests": sum(c["images"] for c in channels.values()),
                   "corrupted": tally.corrupted, "dropped": tally.dropped},
        "resized": resized, "problems": tally.problems,
    }
    report = write_report(report, data_dir, extra, log)
    written.finish()
    return report
