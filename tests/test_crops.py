"""Crop training (shelfdet.data.crops): the fast mapper's crops are Detectron2's resize-then-crop,
placed around a box, with the cut boxes kept or dropped by their visible area."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from shelfdet.core import hyperparameters
from shelfdet.core.config import inference_sizes
from shelfdet.data.crops import ObjectCrop, crop_of
from shelfdet.data.mapper import FastDatasetMapper
from test_data_mapper import PHOTO, STORED, write_photo  # noqa: F401

MIN_VISIBLE = 0.5


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    d = tmp_path_factory.mktemp("crop-photos")
    return {
        "photo": write_photo(d / "photo.jpg", PHOTO),
        "exif6": write_photo(d / "exif6.jpg", PHOTO, orientation=6, seed=1),
        "png": write_photo(d / "shelf.png", (1000, 750), fmt="PNG", seed=3),
        "hard": write_photo(d / "hard.jpg", (1000, 750), seed=4),
    }


def mapper(size, scales, flip=0.5):
    return FastDatasetMapper(is_train=True, augmentations=[ObjectCrop(size, scales), T.RandomFlip(prob=flip)],
                             image_format="BGR", min_visible=MIN_VISIBLE)


def reference(d, transforms):
    """Detectron2's own pixels and boxes for the same transforms: the whole image resized, then
    cropped and flipped; boxes through transform_instance_annotations, kept by visible area."""
    image = utils.read_image(d["file_name"], format="BGR")
    tl = T.TransformList(transforms)
    pixels = tl.apply_image(image)
    h, w = pixels.shape[:2]
    kept = []
    for obj in d["annotations"]:
        whole = tl.apply_box(np.array([utils.BoxMode.convert(obj["bbox"], obj["bbox_mode"], utils.BoxMode.XYXY_ABS)]))[0]
        clipped = utils.transform_instance_annotations(dict(obj), tl, (h, w))["bbox"]
        area = lambda b: max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])  # noqa: E731
        if area(clipped) > 0 and area(clipped) >= MIN_VISIBLE * area(whole):
            kept.append(clipped)
    return pixels, np.array(kept, dtype=np.float32).reshape(-1, 4)


@pytest.mark.parametrize("name,scales", [("photo", (0.3, 0.4)), ("photo", (0.9, 1.1)), ("exif6", (0.3, 0.4)),
                                         ("png", (0.8, 1.5)), ("hard", (0.5, 0.8))])
def test_a_crop_is_detectron2s_resize_then_crop_with_the_cut_boxes_kept_by_visible_area(scenes, name, scales):
    d = scenes[name]
    m = mapper(320, scales)
    for seed in range(3):
        np.random.seed(seed)
        _, boxes = m.xyxy(d["annotations"])
        transforms = m.sample_transforms(d["height"], d["width"], boxes)
        assert isinstance(transforms[0], T.ResizeTransform) and isinstance(transforms[1], T.CropTransform)
        np.random.seed(seed)
        out = m(d)
        pixels, kept = reference(d, transforms)
        assert tuple(out["image"].shape) == (3, 320, 320) == (3,) + pixels.shape[:2]
        diff = np.abs(out["image"].numpy().transpose(1, 2, 0).astype(int) - pixels.astype(int)).mean()
        print("{} {} seed {}: scale {:.3f}, mean abs pixel difference {:.3f}, {} boxes kept".format(
            name, scales, seed, transforms[0].new_w / d["width"], diff, len(kept)))
        assert diff < 1.0
        got = out["instances"].gt_boxes.tensor
        assert len(got) == len(kept) > 0
        torch.testing.assert_close(got, torch.as_tensor(kept), rtol=0, atol=1e-3)


def test_every_crop_holds_a_box_centre_and_its_scale_stays_in_range(scenes):
    d = scenes["hard"]
    m = mapper(200, (0.5, 0.8), flip=0.0)
    _, boxes = m.xyxy(d["annotations"])
    scales = []
    np.random.seed(0)
    for _ in range(200):
        resize, crop = m.sample_transforms(d["height"], d["width"], boxes)[:2]
        scale = resize.new_w / d["width"]
        scales.append(scale)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2 * [resize.new_w / d["width"], resize.new_h / d["height"]]
        inside = ((centres[:, 0] >= crop.x0) & (centres[:, 0] <= crop.x0 + crop.w)
                  & (centres[:, 1] >= crop.y0) & (centres[:, 1] <= crop.y0 + crop.h))
        assert inside.any()
        assert 0 <= crop.x0 <= resize.new_w - crop.w and 0 <= crop.y0 <= resize.new_h - crop.h
    assert 0.5 - 1e-3 <= min(scales) < 0.55 and 0.75 < max(scales) <= 0.8 + 1e-3


def test_a_crop_larger_than_the_image_takes_all_of_it(scenes):
    d = scenes["png"]
    np.random.seed(0)
    out = mapper(4096, (0.5, 0.5), flip=0.0)(d)
    assert tuple(out["image"].shape) == (3, 375, 500)
    assert len(out["instances"]) == len(d["annotations"])


def test_detectron2s_own_mapper_takes_the_crop_without_boxes(scenes):
    """Paths the fast mapper hands to Detectron2 (masks, other formats) still crop, uniformly placed."""
    from detectron2.data import DatasetMapper

    np.random.seed(0)
    out = DatasetMapper(is_train=True, augmentations=[ObjectCrop(256, (0.5, 0.8))], image_format="BGR")(scenes["hard"])
    assert tuple(out["image"].shape) == (3, 256, 256)


def test_the_test_scale_follows_the_crops_unless_given():
    dicts = [{"height": 750, "width": 1000}] * 3 + [{"height": 1000, "width": 750}, {"height": 600, "width": 800}]
    hp = hyperparameters.parse({"recipe": "dense", "crop-scales": "0.5,0.8"}, profile="local")
    middle = (0.5 * 0.8) ** 0.5
    assert inference_sizes(hp, dicts) == (round(750 * middle), round(1000 * middle))
    hp = hyperparameters.parse({"recipe": "dense", "min-size": "600"}, profile="local")
    assert inference_sizes(hp, dicts) == (600, round(1000 * middle))
    assert crop_of(hp).size == 320 and crop_of(hp).scales == (0.5, 0.8) and crop_of(hp).min_visible == 0.5
    assert crop_of(hyperparameters.parse({}, profile="local")) is None


def test_the_recipe_sets_its_defaults_and_each_one_can_be_overridden():
    hp = hyperparameters.parse({"recipe": "dense", "nms": "hard", "crop_size": "256"}, profile="local")
    assert (hp.crop_size, hp.nms, hp.anchors, hp.proposals, hp.det_per_img) == (256, "hard", "auto", 3000, 400)
    assert hp.min_size == hp.max_size == "auto"
    line = hyperparameters.recipe_line(hp)
    assert line.startswith("recipe dense: crop-size 256, crop-scales 0.5,0.8") and "nms hard" in line
    sm = hyperparameters.parse({"recipe": "dense"})
    assert (sm.crop_size, sm.crop_scales) == (800, (0.4, 0.8))
    # Stored resolved: reading the stored form back gives the same run.
    assert hyperparameters.parse(hyperparameters.as_strings(hp)) == hp
    assert hyperparameters.recipe_line(hyperparameters.parse({})) == ""


@pytest.mark.parametrize("raw,expected", [
    ({"min-size": "auto"}, "auto follows the crops; set crop-size"),
    ({"crop-scales": "2,1"}, "'crop-scales': '2,1' is not valid"),
    ({"crop-size": "-1"}, "'crop-size': -1 is below its minimum 0"),
    ({"recipe": "sparse"}, "'recipe': 'sparse' is not one of none, dense"),
    ({"model-type": "cascade_rcnn", "backbone": "R_50_C4"}, "Cascade R-CNN needs an FPN backbone"),
])
def test_bad_crop_settings_fail_in_one_line_naming_them(raw, expected):
    with pytest.raises(hyperparameters.HyperparameterError, match=expected.replace("(", r"\(")):
        hyperparameters.parse(raw, profile="local")
