"""Manifests -> Detectron2 dataset dicts (shelfdet.core.catalog): the boxes read at once, errors named as before."""
from __future__ import annotations

import json

import pytest
from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode

from shelfdet.core import catalog


def line(name, anns, width=100, height=80, label="sku"):
    return json.dumps({"source-ref": "s3://b/p/training/" + name,
                       label: {"annotations": anns, "image_size": [{"width": width, "height": height, "depth": 3}]},
                       label + "-metadata": {"class-map": {"0": "SKU", "1": "tag"}}}) + "\n"


def box(left, top, width, height, class_id=0):
    return {"class_id": class_id, "left": left, "top": top, "width": width, "height": height}


def write(tmp_path, *lines):
    m = tmp_path / "training.manifest"
    m.write_text("".join(lines))
    return str(m)


def test_dicts_are_detectron2_dicts_of_every_box(tmp_path):
    m = write(tmp_path,
              line("a.jpg", [box(1, 2, 29, 38), box(40.5, 2, 20, 38.25, 1), {"left": "3", "top": 4, "width": 5,
                                                                             "height": 6}]),
              "\n",
              line("b.jpg", [], width=64, height=48))
    dicts, names = catalog.load_manifest(m, "/imgs", check_images=False)
    assert names == ["SKU", "tag"]
    mode = BoxMode.XYWH_ABS
    assert dicts == [
        {"file_name": "/imgs/a.jpg", "image_id": 0, "height": 80, "width": 100, "annotations": [
            {"bbox": [1.0, 2.0, 29.0, 38.0], "bbox_mode": mode, "category_id": 0, "iscrowd": 0},
            {"bbox": [40.5, 2.0, 20.0, 38.25], "bbox_mode": mode, "category_id": 1, "iscrowd": 0},
            {"bbox": [3.0, 4.0, 5.0, 6.0], "bbox_mode": mode, "category_id": 0, "iscrowd": 0}]},
        {"file_name": "/imgs/b.jpg", "image_id": 1, "height": 48, "width": 64, "annotations": []},
    ]
    assert all(type(v) is float for d in dicts for a in d["annotations"] for v in a["bbox"])
    assert all(type(a["category_id"]) is int for d in dicts for a in d["annotations"])


@pytest.mark.parametrize("anns,message", [
    ([box(1, 2, 3, 4), box(1, "x", 3, 4)], ":1: annotation 1 needs numeric left/top/width/height"),
    ([box(1, 2, 3, 4), {"left": 1, "top": 2, "width": 3}], ":1: annotation 1 needs numeric"),
    ([box(1, 2, 3, 4), box(1, 2, 3, 4, class_id="one")], ":1: annotation 1 needs numeric"),
    ([box(1, 2, 3, 4), [1, 2, 3, 4]], ":1: annotation 1 needs numeric"),
    ([box(1, 2, 3, 4), box(1, 2, 3, 4), box(5, 6, 0, 4)], ":1: annotation 2 has no area (width 0.0, height 4.0)"),
    ([box(1, 2, 3, float("nan"))], ":1: annotation 0 has no area (width 3.0, height nan)"),
    ([box(1, 2, 3, 4, class_id=2)], "class_id 2 of a.jpg is not in the class map ['SKU', 'tag']"),
    ({"left": 1}, ":1: annotations must be a list of boxes"),
])
def test_a_bad_box_is_named_by_line_and_index(tmp_path, anns, message):
    m = write(tmp_path, line("a.jpg", anns))
    with pytest.raises(catalog.ManifestError) as err:
        catalog.load_manifest(m, "/imgs", check_images=False)
    assert message in str(err.value)


def test_registered_dataset_gives_new_dicts_on_every_get(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    m = write(tmp_path, line("a.jpg", [box(1, 2, 29, 38)]))
    catalog.register("catalog_test", m, str(tmp_path))
    first = DatasetCatalog.get("catalog_test")
    first[0]["annotations"][0]["bbox"][0] = 99.0  # what a mapper that works in place would do
    first[0]["annotations"].clear()
    again = DatasetCatalog.get("catalog_test")
    assert again[0]["annotations"][0]["bbox"] == [1.0, 2.0, 29.0, 38.0]
    DatasetCatalog.remove("catalog_test")
