"""Every channel's class map is the training channel's, or registration stops naming both manifests."""
from __future__ import annotations

import json
import shutil

import pytest
from detectron2.data import DatasetCatalog

from conftest import make_ml_root, run_train
from shelfdet.core import catalog


def line(name, class_map):
    return json.dumps({"source-ref": "s3://b/p/x/" + name,
                       "sku": {"annotations": [{"class_id": 0, "left": 1, "top": 2, "width": 3, "height": 4}],
                               "image_size": [{"width": 10, "height": 10, "depth": 3}]},
                       "sku-metadata": {"class-map": class_map}}) + "\n"


def channels(tmp_path, maps):
    ann = tmp_path / "annotations"
    ann.mkdir()
    dirs = {}
    for channel, class_map in maps.items():
        (tmp_path / channel).mkdir()
        (tmp_path / channel / "a.jpg").write_bytes(b"")
        (ann / (channel + ".manifest")).write_text(line("a.jpg", class_map))
        dirs[channel] = str(tmp_path / channel)
    return str(ann), dirs


@pytest.mark.parametrize("test_map, says", [
    ({"0": "object"}, "id 0 is 'object' in test, 'SKU' in training"),
    ({"0": "SKU", "1": "tag"}, "id 1 is 'tag' in test, absent in training"),
])
def test_a_channel_with_another_class_map_stops_registration(tmp_path, test_map, says):
    ann, dirs = channels(tmp_path, {"training": {"0": "SKU"}, "validation": {"0": "SKU"}, "test": test_map})
    with pytest.raises(catalog.ManifestError) as err:
        catalog.register_channels("cmap", ann, dirs)
    message = str(err.value)
    assert message.startswith("{}/test.manifest: class-map differs from {}/training.manifest's: ".format(ann, ann))
    assert message.endswith(says), message
    assert not [n for n in DatasetCatalog.list() if n.startswith("cmap_")]  # nothing half-registered


def test_the_training_channel_is_the_reference_whatever_the_order(tmp_path):
    ann, dirs = channels(tmp_path, {"validation": {"0": "object"}, "training": {"0": "SKU"}})
    with pytest.raises(catalog.ManifestError, match="validation.manifest: class-map differs from .*training.manifest"):
        catalog.register_channels("cmap", ann, dict(sorted(dirs.items(), key=lambda kv: kv[0] != "validation")))


def test_equal_class_maps_register(tmp_path):
    ann, dirs = channels(tmp_path, {c: {"0": "SKU", "1": "tag"} for c in catalog.CHANNELS})
    names = catalog.register_channels("cmap_ok", ann, dirs)
    try:
        from detectron2.data import MetadataCatalog

        assert all(MetadataCatalog.get(n).thing_classes == ["SKU", "tag"] for n in names.values())
    finally:
        for n in names.values():
            DatasetCatalog.remove(n)


def test_sm_train_reports_another_class_map_in_one_line(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(str(tiny_dataset), str(data))
    test_manifest = data / "annotations" / "test.manifest"
    lines = [json.loads(x) for x in test_manifest.read_text().splitlines() if x.strip()]
    for rec in lines:
        rec["sku-metadata"]["class-map"] = {"0": "object"}  # the SKU-110K CSV's name for the one class
    test_manifest.write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    root = make_ml_root(tmp_path / "ml", data, evaluation_type="none")

    out = run_train(root)
    assert out.returncode == 1, out.stderr[-3000:]
    errors = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    ann = root / "input" / "data" / "annotation"
    want = "error: {}/test.manifest: class-map differs from {}/training.manifest's: id 0 is 'object' in test, " \
           "'SKU' in training".format(ann, ann)
    assert errors == [want], out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert (root / "output" / "failure").read_text().strip() == want[len("error: "):]
    assert not (root / "model" / "artefacts.json").exists()
