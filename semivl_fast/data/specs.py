"""Dataset specs: classes, text class set, label transform, resize policy, validation preprocessing and layout.

One ``DatasetSpec`` per supported dataset (``voc``, ``coco``, ``ade``, ``cityscapes``, ``synthetic``). Everything the
readers, transforms and split tools need to know about a dataset lives here; nothing else names a dataset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IGNORE_INDEX = 255

#: resize policies: mmseg ``Resize(img_scale=(4·base, base), ratio_range, keep_ratio)`` or UniMatch long-side resize
RESIZE_POLICIES = ("mmseg", "long_side")


@dataclass(frozen=True)
class DatasetSpec:
    """What the data pipeline needs to know about one dataset.

    ``class_set`` is a built-in class-set name for ``semivl_fast.text.load_class_set``, or a file relative to the data
    root (the synthetic world's ``classes.yaml``). ``split_names`` are the folder names tried under a split directory
    (``voc`` lists live in ``pascal/``). ``image_prefixes``/``mask_prefix``/``image_suffix``/``mask_suffix`` describe
    the layout: a mask path is its image path with the prefix and suffix swapped. ``scan_glob`` lists the training
    images for split generation.
    """

    name: str
    num_classes: int
    class_set: str
    split_names: tuple[str, ...]
    resize: str  # one of RESIZE_POLICIES
    val_resize: bool  # validation: resize the image (not the mask) so its short side equals the resize base
    reduce_zero_label: bool
    crop_size: int
    image_prefixes: tuple[str, ...]
    mask_prefix: str
    image_suffix: str
    mask_suffix: str
    scan_glob: str
    standard_splits: tuple[str, ...]

    def label_transform(self, mask: np.ndarray) -> np.ndarray:
        """Raw mask (uint8) → training labels: identity, or ADE's ``reduce_zero_label`` (0 → 255, then −1)."""
        if not self.reduce_zero_label:
            return mask
        out = mask.astype(np.uint8, copy=True)
        out[mask == 0] = 255
        out -= 1  # uint8: 255 wraps to 254
        out[out == 254] = IGNORE_INDEX
        return out

    def mask_path_for(self, image_rel: str) -> str:
        """The mask path (relative to the data root) belonging to an image path, by the layout rule."""
        for prefix in self.image_prefixes:
            if image_rel.startswith(prefix) and image_rel.endswith(self.image_suffix):
                stem = image_rel[len(prefix):len(image_rel) - len(self.image_suffix)]
                return self.mask_prefix + stem + self.mask_suffix
        raise ValueError(f"{self.name}: image path {image_rel!r} does not follow the layout "
                         f"{'|'.join(self.image_prefixes)}…{self.image_suffix}; give explicit image/mask pairs instead")

    def class_set_source(self, data_root: str | os.PathLike | None = None) -> str:
        """What to pass to ``load_class_set``: the built-in name, or the class file inside ``data_root``."""
        if self.class_set.endswith((".yaml", ".yml")):
            if data_root is None:
                raise ValueError(f"dataset {self.name!r} keeps its classes in <data_root>/{self.class_set}; "
                                 "pass data_root")
            return str(Path(data_root) / self.class_set)
        return self.class_set


_VOC_LAYOUT = dict(image_prefixes=("JPEGImages/",), mask_prefix="SegmentationClass/", image_suffix=".jpg",
                   mask_suffix=".png", scan_glob="JPEGImages/*.jpg")

SPECS: dict[str, DatasetSpec] = {
    "voc": DatasetSpec("voc", 21, "voc", ("voc", "pascal"), "mmseg", True, False, 512,
                       standard_splits=("92", "183", "366", "732", "1464"), **_VOC_LAYOUT),
    "coco": DatasetSpec("coco", 81, "coco", ("coco",), "long_side", False, False, 512,
                        image_prefixes=("train2017/", "val2017/"), mask_prefix="masks/", image_suffix=".jpg",
                        mask_suffix=".png", scan_glob="train2017/*.jpg",
                        standard_splits=("1_512", "1_256", "1_128", "1_64", "1_32")),
    "ade": DatasetSpec("ade", 150, "ade", ("ade", "ade20k"), "mmseg", True, True, 512,
                       image_prefixes=("images/",), mask_prefix="annotations/", image_suffix=".jpg",
                       mask_suffix=".png", scan_glob="images/training/*.jpg",
                       standard_splits=("1_128", "1_64", "1_32", "1_16", "1_8")),
    "cityscapes": DatasetSpec("cityscapes", 19, "cityscapes", ("cityscapes",), "long_side", False, False, 801,
                              image_prefixes=("leftImg8bit/",), mask_prefix="gtFine/",
                              image_suffix="_leftImg8bit.png", mask_suffix="_gtFine_labelTrainIds.png",
                              scan_glob="leftImg8bit/train/*/*_leftImg8bit.png",
                              standard_splits=("1_30", "1_16", "1_8", "1_4", "1_2")),
    "synthetic": DatasetSpec("synthetic", 9, "classes.yaml", ("synthetic",), "mmseg", True, False, 96,
                             image_prefixes=("JPEGImages/",), mask_prefix="SegmentationClass/", image_suffix=".png",
                             mask_suffix=".png", scan_glob="JPEGImages/train_*.png",
                             standard_splits=("8", "16", "32", "64")),
}
_ALIASES = {"pascal": "voc", "ade20k": "ade", "city": "cityscapes"}


def get_spec(dataset: str | DatasetSpec) -> DatasetSpec:
    """A dataset's spec by name: ``voc``/``pascal``, ``coco``, ``ade``/``ade20k``, ``cityscapes``, ``synthetic``."""
    if isinstance(dataset, DatasetSpec):
        return dataset
    key = str(dataset).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in SPECS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(SPECS)}")
    return SPECS[key]
