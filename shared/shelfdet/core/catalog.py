"""Augmented manifests (Ground Truth's JSON Lines) + image folders -> registered Detectron2 datasets."""
from __future__ import annotations

import gc
import json
import os
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

import numpy as np

from shelfdet.core import CHANNELS  # noqa: F401 - read as catalog.CHANNELS beside the datasets it names


class ManifestError(ValueError):
    """A manifest is missing, empty or malformed; the message names file and line."""


def class_names_from_map(class_map: Mapping[str, str], where: str) -> List[str]:
    try:
        ids = sorted(int(k) for k in class_map)
    except (TypeError, ValueError):
        raise ManifestError("{}: class-map keys must be integers, got {}".format(where, list(class_map))) from None
    if ids != list(range(len(ids))):
        raise ManifestError("{}: class-map ids must be 0..N-1, got {}".format(where, ids))
    return [str(class_map[str(i)]) for i in ids]


class Record(NamedTuple):
    """One manifest line, compact: the boxes of the whole SKU-110K train set (1.2M) fit in ~50 MB."""

    file_name: str
    height: int
    width: int
    boxes: np.ndarray  # (N, 4) float64, XYWH_ABS
    classes: np.ndarray  # (N,) int64


def _bad_box(anns: List[Any], where: str) -> ManifestError:
    """The first annotation that does not read as four numbers and a class id, named (the slow path)."""
    for k, box in enumerate(anns):
        try:
            [float(box[n]) for n in ("left", "top", "width", "height")]
            int(box.get("class_id", 0))
        except (AttributeError, KeyError, TypeError, ValueError):
            break
    else:
        k = 0  # numpy refused what float() takes one by one (ragged values): blame the first
    return ManifestError("{}: annotation {} needs numeric left/top/width/height".format(where, k))


def _boxes(anns: Any, where: str) -> Tuple[np.ndarray, np.ndarray]:
    """A line's annotations -> (boxes, class ids), validated with numpy over all boxes at once."""
    if not anns:
        return np.zeros((0, 4)), np.zeros(0, np.int64)
    if not isinstance(anns, list):
        raise ManifestError("{}: annotations must be a list of boxes".format(where))
    try:
        boxes = np.array([(b["left"], b["top"], b["width"], b["height"]) for b in anns], dtype=np.float64)
        classes = np.array([b.get("class_id", 0) for b in anns]).astype(np.int64)
    except (AttributeError, KeyError, TypeError, ValueError):
        raise _bad_box(anns, where) from None
    # "not > 0" also catches NaN, which a plain "<= 0" would let through.
    empty = np.flatnonzero(~((boxes[:, 2] > 0) & (boxes[:, 3] > 0)))
    if len(empty):
        k = int(empty[0])
        raise ManifestError("{}: annotation {} has no area (width {}, height {})".format(
            where, k, boxes[k, 2], boxes[k, 3]))
    return boxes, classes


def read_manifest(manifest: str, image_dir: str, label: str = "sku",
                  check_images: bool = True) -> Tuple[List[Record], List[str]]:
    """Reads and validates one channel's manifest into compact records and its class names.

    Images are looked up by file name in ``image_dir`` (the channel folder), so
    the same manifest works with S3 or local ``source-ref`` values.
    """
    if not os.path.isfile(manifest):
        raise ManifestError("manifest not found: {}".format(manifest))
    records: List[Record] = []
    class_names: Optional[List[str]] = None
    meta_key = label + "-metadata"
    with open(manifest) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = "{}:{}".format(manifest, lineno)
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError("{}: not valid JSON ({})".format(where, err.msg)) from None
            src = rec.get("source-ref")
            if not isinstance(src, str) or not src:
                raise ManifestError("{}: missing 'source-ref'".format(where))
            ann = rec.get(label)
            if not isinstance(ann, dict):
                keys = [k for k in rec if k != "source-ref" and not k.endswith("-metadata")]
                raise ManifestError("{}: no label '{}' (labels here: {}); set label-name".format(where, label, keys))
            meta = rec.get(meta_key) or {}
            if "class-map" in meta:
                names = class_names_from_map(meta["class-map"], where)
                if class_names is None:
                    class_names = names
                elif names != class_names:
                    raise ManifestError("{}: class-map {} differs from earlier lines {}".format(where, names, class_names))
            try:
                size = ann["image_size"][0]
                width, height = int(size["width"]), int(size["height"])
            except (KeyError, IndexError, TypeError, ValueError):
                raise ManifestError("{}: '{}.image_size' must be [{{\"width\": W, \"height\": H, ...}}]".format(where, label)) from None
            file_name = os.path.join(image_dir, os.path.basename(src))
            if check_images and not os.path.isfile(file_name):
                raise ManifestError("{}: image {} not found in {}".format(where, os.path.basename(src), image_dir))
            boxes, classes = _boxes(ann.get("annotations"), where)
            records.append(Record(file_name, height, width, boxes, classes))
    if not records:
        raise ManifestError("manifest is empty: {}".format(manifest))
    class_names = class_names or ["SKU"]
    for r in records:
        bad = r.classes[(r.classes < 0) | (r.classes >= len(class_names))]
        if len(bad):
            raise ManifestError("{}: class_id {} of {} is not in the class map {}".format(
                manifest, int(bad[0]), os.path.basename(r.file_name), class_names))
    return records, class_names


def dataset_dicts(records: List[Record]) -> List[Dict[str, Any]]:
    """Records -> new Detectron2 dataset dicts (XYWH_ABS boxes); every call builds fresh ones."""
    # Detectron2 here, not at the top: reading and checking manifests needs neither it nor torch.
    from detectron2.structures import BoxMode

    mode = BoxMode.XYWH_ABS
    # Millions of new dicts and lists set off the cyclic garbage collector again and again
    # (1.2M boxes: 6.4 s with it, 0.6 s without); none of them can form a cycle.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return [{"file_name": r.file_name, "image_id": i, "height": r.height, "width": r.width,
                 "annotations": [{"bbox": b, "bbox_mode": mode, "category_id": c, "iscrowd": 0}
                                 for b, c in zip(r.boxes.tolist(), r.classes.tolist())]}
                for i, r in enumerate(records)]
    finally:
        if collecting:
            gc.enable()


def load_manifest(manifest: str, image_dir: str, label: str = "sku",
                  check_images: bool = True) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Reads one channel's manifest into Detectron2 dataset dicts and its class names."""
    records, class_names = read_manifest(manifest, image_dir, label, check_images)
    return dataset_dicts(records), class_names


def _register(name: str, records: List[Record], names: List[str], manifest: str, image_dir: str) -> None:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: dataset_dicts(records))
    MetadataCatalog.get(name).set(thing_classes=list(names), manifest=manifest, image_root=image_dir,
                                  evaluator_type="coco")


def register(name: str, manifest: str, image_dir: str, label: str = "sku",
             class_names: Optional[List[str]] = None) -> List[str]:
    """Registers ``name`` in Detectron2's DatasetCatalog/MetadataCatalog; returns its class names.

    The manifest is read once here (errors surface at start-up, not in a data
    loader worker); each ``DatasetCatalog.get`` builds new dicts from the
    compact records (a deep copy of 1.2M box dicts took 11 s, this 0.5 s).
    """
    records, names = read_manifest(manifest, image_dir, label)
    names = class_names or names
    _register(name, records, names, manifest, image_dir)
    return list(names)


def _class_map_difference(names: List[str], reference: List[str], channel: str, ref_channel: str) -> str:
    """The ids whose names differ, e.g. "id 0 is 'object' in test, 'SKU' in training"."""
    out = []
    for i in range(max(len(names), len(reference))):
        a = repr(names[i]) if i < len(names) else "absent"
        b = repr(reference[i]) if i < len(reference) else "absent"
        if a != b:
            out.append("id {} is {} in {}, {} in {}".format(i, a, channel, b, ref_channel))
    return "; ".join(out)


def read_channels(annotation_dir: str, image_dirs: Mapping[str, str], label: str = "sku",
                  check_images: bool = True) -> Dict[str, Tuple[str, List[Record], List[str]]]:
    """Reads every channel's manifest: channel -> (manifest, records, class names).

    Every class map must be the training channel's (the first channel's when
    there is no training channel): class ids are indices into one list, so a
    test set whose id 0 means another class would be scored against the wrong
    names without a word.
    """
    out = {}
    for channel, image_dir in image_dirs.items():
        manifest = os.path.join(annotation_dir, channel + ".manifest")
        records, names = read_manifest(manifest, image_dir, label, check_images)
        out[channel] = (manifest, records, names)
    if out:
        ref = "training" if "training" in out else next(iter(out))
        ref_manifest, _, ref_names = out[ref]
        for channel, (manifest, _, names) in out.items():
            if names != ref_names:
                raise ManifestError("{}: class-map differs from {}'s: {}".format(
                    manifest, ref_manifest, _class_map_difference(names, ref_names, channel, ref)))
    return out


def register_channels(dataset_name: str, annotation_dir: str, image_dirs: Mapping[str, str], label: str = "sku",
                      class_names: Optional[List[str]] = None) -> Dict[str, str]:
    """Registers ``<dataset_name>_<channel>`` for each channel given; returns channel -> dataset name.

    ``annotation_dir`` holds ``<channel>.manifest`` files (the SageMaker
    ``annotation`` channel, or ``DATA_DIR/annotations``). All manifests are
    read and their class maps compared before any channel is registered.
    """
    out = {}
    for channel, (manifest, records, names) in read_channels(annotation_dir, image_dirs, label).items():
        name = "{}_{}".format(dataset_name, channel)
        _register(name, records, class_names or names, manifest, image_dirs[channel])
        out[channel] = name
    return out
