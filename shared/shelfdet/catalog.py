"""Augmented manifests (SPEC §3) + image folders -> registered Detectron2 datasets."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from . import compat

CHANNELS = ("training", "validation", "test")


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


def load_manifest(manifest: str, image_dir: str, label: str = "sku",
                  check_images: bool = True) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Reads one channel's manifest into Detectron2 dataset dicts and its class names.

    Images are looked up by file name in ``image_dir`` (the channel folder), so
    the same manifest works with S3 or local ``source-ref`` values.
    """
    compat.apply()
    from detectron2.structures import BoxMode

    if not os.path.isfile(manifest):
        raise ManifestError("manifest not found: {}".format(manifest))
    dicts: List[Dict[str, Any]] = []
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
            objs = []
            for k, box in enumerate(ann.get("annotations") or []):
                try:
                    x, y, w, h = (float(box[n]) for n in ("left", "top", "width", "height"))
                    cid = int(box.get("class_id", 0))
                except (KeyError, TypeError, ValueError):
                    raise ManifestError("{}: annotation {} needs numeric left/top/width/height".format(where, k)) from None
                if w <= 0 or h <= 0:
                    raise ManifestError("{}: annotation {} has no area (width {}, height {})".format(where, k, w, h))
                objs.append({"bbox": [x, y, w, h], "bbox_mode": BoxMode.XYWH_ABS, "category_id": cid, "iscrowd": 0})
            dicts.append({"file_name": file_name, "image_id": len(dicts), "height": height, "width": width,
                          "annotations": objs})
    if not dicts:
        raise ManifestError("manifest is empty: {}".format(manifest))
    class_names = class_names or ["SKU"]
    for d in dicts:
        for o in d["annotations"]:
            if not 0 <= o["category_id"] < len(class_names):
                raise ManifestError("{}: class_id {} of {} is not in the class map {}".format(
                    manifest, o["category_id"], os.path.basename(d["file_name"]), class_names))
    return dicts, class_names


def register(name: str, manifest: str, image_dir: str, label: str = "sku",
             class_names: Optional[List[str]] = None) -> List[str]:
    """Registers ``name`` in Detectron2's DatasetCatalog/MetadataCatalog; returns its class names.

    The manifest is read once here (errors surface at start-up, not in a data
    loader worker) and the catalog returns copies of those dicts.
    """
    compat.apply()
    import copy

    from detectron2.data import DatasetCatalog, MetadataCatalog

    dicts, names = load_manifest(manifest, image_dir, label)
    names = class_names or names
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: copy.deepcopy(dicts))
    MetadataCatalog.get(name).set(thing_classes=list(names), manifest=manifest, image_root=image_dir,
                                  evaluator_type="coco")
    return list(names)


def register_channels(dataset_name: str, annotation_dir: str, image_dirs: Mapping[str, str], label: str = "sku",
                      class_names: Optional[List[str]] = None) -> Dict[str, str]:
    """Registers ``<dataset_name>_<channel>`` for each channel given; returns channel -> dataset name.

    ``annotation_dir`` holds ``<channel>.manifest`` files (the SageMaker
    ``annotation`` channel, or ``DATA_DIR/annotations``).
    """
    out = {}
    for channel, image_dir in image_dirs.items():
        manifest = os.path.join(annotation_dir, channel + ".manifest")
        name = "{}_{}".format(dataset_name, channel)
        class_names = register(name, manifest, image_dir, label, class_names)
        out[channel] = name
    return out
