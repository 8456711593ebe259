"""The training data path: Detectron2's DatasetMapper, made fast on photo-size JPEGs.

SKU-110K photos are about 2448x3264 and training shrinks them to a shorter
side near 800. Detectron2's mapper decodes every pixel, copies the full-size
image twice on its way to a PIL resize, and transforms each of the ~150
boxes with its own numpy and torch calls: about 0.3 s per photo on one core.

:class:`FastDatasetMapper` produces the same dataset dict (same keys, same
random resize and flip, boxes within 1e-3 px, pixels within about one grey
level on photos: ``tests/test_data_mapper.py``) by

- reading the size and EXIF orientation from the header first, so the
  augmentations are sampled before any pixel is decoded;
- letting libjpeg decode at 1/2, 1/4 or 1/8 scale (``Image.draft``) when
  that still leaves a margin over the final size (``images.DRAFT_MARGINS``),
  then resizing exactly to it over the area the reduced image covers;
- applying EXIF orientation to the small resized image, not the full one;
- transforming all boxes with one ``apply_box`` on an (N, 4) array;
- with crop training (``data.crops``), sampling the crop from the header and
  the boxes, and decoding only the window's source pixels.

PNGs and JPEGs too small to draft take the same steps without the reduced
decode and give Detectron2's pixels exactly. Anything this path does not
cover (masks, keypoints, proposals, semantic segmentation, other
augmentations) goes through Detectron2's own ``__call__``. Both paths take
JPEG and PNG only (``photos.open_image``); another format raises
``photos.FormatNotAccepted`` naming the file before any decoder sees it.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.file_io import PathManager

from shelfdet.core import photos
from shelfdet.data.crops import ObjectCrop
from shelfdet.core.photo_files import SWAPS_SIDES, decode_crop, decode_resized, exif_transpose_method

# Augmentations whose transforms depend on the image size only, so they can be sampled from the header.
SHAPE_ONLY_AUGMENTATIONS = (T.ResizeShortestEdge, T.RandomFlip)


def _shape_only(height: int, width: int) -> np.ndarray:
    # A (H, W, 3) array that owns no memory: size-only augmentations and checks read nothing but .shape.
    return np.broadcast_to(np.zeros((), np.uint8), (height, width, 3))


class FastDatasetMapper(DatasetMapper):
    """Detectron2's DatasetMapper with a reduced-scale JPEG decode and vectorised boxes.

    Built like DatasetMapper: ``FastDatasetMapper(cfg, is_train=True)`` or
    with explicit ``augmentations`` and ``image_format``; ``crop`` (a
    ``crops.Crop``) trains on crops instead of whole resized images.
    """

    @configurable
    def __init__(self, *args: Any, min_visible: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Crop training: a box the crop cuts is kept when this fraction of its area is inside.
        self.min_visible = float(min_visible)

    @classmethod
    def from_config(cls, cfg: Any, is_train: bool = True, crop: Any = None) -> Dict[str, Any]:
        ret = super().from_config(cfg, is_train)
        if crop is not None and is_train:
            # The crop's scale replaces the shorter-edge resize; the flips stay.
            flips = [a for a in ret["augmentations"] if isinstance(a, T.RandomFlip)]
            ret["augmentations"] = [ObjectCrop(crop.size, crop.scales)] + flips
            ret["min_visible"] = crop.min_visible
        return ret

    def fast_path(self, dataset_dict: Dict[str, Any]) -> bool:
        """Whether this dict goes through the fast path (else Detectron2's own ``__call__``)."""
        augs = self.augmentations.augs
        sizing = [i for i, a in enumerate(augs) if isinstance(a, (T.ResizeShortestEdge, ObjectCrop))]
        return (self.image_format in ("BGR", "RGB") and not self.use_instance_mask and not self.use_keypoint
                and self.proposal_topk is None and not getattr(self, "recompute_boxes", False)
                and "sem_seg_file_name" not in dataset_dict
                and all(isinstance(a, SHAPE_ONLY_AUGMENTATIONS + (ObjectCrop,)) for a in augs)
                # One resize or crop, before the flips: the decode produces its pixels.
                and sizing in ([], [0]))

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        if not self.fast_path(dataset_dict):
            # Detectron2's read_image opens whatever Pillow knows: the header is checked here first.
            with PathManager.open(dataset_dict["file_name"], "rb") as f:
                photos.open_image(f, dataset_dict["file_name"]).close()
            return super().__call__(dataset_dict)
        # Shallow: the annotations are read, never changed (DatasetMapper deep-copies ~150 box dicts).
        dataset_dict = dict(dataset_dict)
        annos = dataset_dict.pop("annotations", None)
        boxes = None
        if annos is not None and self.is_train:
            annos, boxes = self.xyxy(annos)
        with PathManager.open(dataset_dict["file_name"], "rb") as f:
            image = photos.open_image(f, dataset_dict["file_name"])
            method = exif_transpose_method(image)
            width, height = image.size
            if method in SWAPS_SIDES:
                width, height = height, width
            utils.check_image_size(dataset_dict, _shape_only(height, width))
            transforms = self.sample_transforms(height, width, boxes)
            resize = transforms[0] if transforms and isinstance(transforms[0], T.ResizeTransform) else None
            crop = transforms[1] if resize and len(transforms) > 1 and isinstance(transforms[1], T.CropTransform) else None
            size = (resize.new_w, resize.new_h) if resize else None
            if crop is not None:
                image = decode_crop(image, size, (crop.x0, crop.y0, crop.w, crop.h), method)
            else:
                image = decode_resized(image, size, method)
        array = np.asarray(image)
        if self.image_format == "BGR":
            array = array[:, :, ::-1]
        for t in transforms[(resize is not None) + (crop is not None):]:
            array = t.apply_image(array)  # flips: numpy views
        image_shape = array.shape[:2]
        # The one copy into the CHW tensor the model reads (DataLoader workers share tensors cheaply).
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(array.transpose(2, 0, 1)))
        if not self.is_train:
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict
        if annos is not None:
            min_visible = self.min_visible if crop is not None else 0.0
            dataset_dict["instances"] = self.instances(annos, T.TransformList(transforms), image_shape,
                                                       boxes, min_visible)
        return dataset_dict

    def sample_transforms(self, height: int, width: int, boxes: Optional[np.ndarray] = None) -> List[T.Transform]:
        """Samples each augmentation in order, as ``AugmentationList`` would, from the image size
        (and for a crop, the XYXY boxes) alone; a crop gives its Resize and Crop transforms."""
        transforms: List[T.Transform] = []
        for aug in self.augmentations.augs:
            if isinstance(aug, ObjectCrop):
                t = aug.get_transform(_shape_only(height, width), boxes)
            else:
                t = aug.get_transform(_shape_only(height, width))
            for one in (t.transforms if isinstance(t, T.TransformList) else [t]):
                if isinstance(one, T.ResizeTransform):
                    height, width = one.new_h, one.new_w
                elif isinstance(one, T.CropTransform):
                    height, width = one.h, one.w
                transforms.append(one)
        return transforms

    @staticmethod
    def xyxy(annos: List[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], np.ndarray]:
        """The non-crowd annotations and their boxes as an (N, 4) XYXY_ABS array."""
        annos = [obj for obj in annos if obj.get("iscrowd", 0) == 0]
        boxes = np.array([obj["bbox"] for obj in annos], dtype=np.float64).reshape(-1, 4)
        modes = np.array([int(obj["bbox_mode"]) for obj in annos], dtype=np.int64)
        for mode in np.unique(modes).tolist():
            rows = modes == mode
            if mode == BoxMode.XYWH_ABS:  # the manifests' mode: plain numpy, no torch round trip
                boxes[rows, 2:] += boxes[rows, :2]
            elif mode != BoxMode.XYXY_ABS:
                boxes[rows] = BoxMode.convert(boxes[rows], BoxMode(mode), BoxMode.XYXY_ABS)
        return annos, boxes

    @classmethod
    def instances(cls, annos: List[Dict[str, Any]], transforms: T.TransformList, image_shape: Tuple[int, int],
                  boxes: Optional[np.ndarray] = None, min_visible: float = 0.0) -> Instances:
        """Annotations -> Instances, as transform_instance_annotations + annotations_to_instances +
        filter_empty_instances, with one ``apply_box`` over all boxes (``boxes``: their XYXY array
        from :meth:`xyxy`, if already made). ``min_visible`` > 0 also drops boxes with less than
        that fraction of their transformed area inside the image (a crop's cut boxes)."""
        if boxes is None:
            annos, boxes = cls.xyxy(annos)
        boxes = transforms.apply_box(boxes)
        whole = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        h, w = image_shape
        boxes = np.minimum(boxes.clip(min=0), [w, h, w, h])
        classes = np.array([int(obj["category_id"]) for obj in annos], dtype=np.int64)
        if min_visible > 0:
            inside = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            keep = inside >= min_visible * whole
            boxes, classes = boxes[keep], classes[keep]
        target = Instances(image_shape)
        target.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
        target.gt_classes = torch.as_tensor(classes, dtype=torch.int64)
        return utils.filter_empty_instances(target)
