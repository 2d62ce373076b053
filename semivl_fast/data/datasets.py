"""``SemiDataset``: the labeled, unlabeled and validation sets of UniMatch/SemiVL over split files, and
``build_datasets`` to make all three from (dataset, data root, split dir, split).

Modes and what ``__getitem__`` returns (S = crop size):

- ``train_l``: ``(img (3,S,S) float32, mask (S,S) int64)``; padding is 255 (ignore) in the mask.
- ``train_u``: ``(img_w, img_s1, img_s2 (3,S,S) float32, ignore (S,S) uint8, box1, box2 (4,) int64)``; ``ignore`` is
  1 where the crop was padded; boxes are CutMix boxes ``[y0, x0, y1, x1)`` in crop pixels, ``(0,0,0,0)`` for none.
  The weak view is geometric only; s1 and s2 are independent strong photometric views of the same crop. The
  unlabeled mask file is not read (the reference uses it only to locate the 254 padding).
- ``val``: ``(img (3,h,w) float32 after the validation resize, mask (H0,W0) int64 at the original size, name str)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from semivl_fast.data import transforms as T
from semivl_fast.data.specs import DatasetSpec, get_spec
from semivl_fast.data.splits import Pair, read_split, split_path, unlabeled_pairs

MODES = ("train_l", "train_u", "val")


class SemiDataset(Dataset):
    """One split file of a dataset in one mode (``train_l``, ``train_u`` or ``val``); see the module docstring.

    Args:
        spec: dataset name or spec (label transform, resize policy, validation resize).
        root: data root the split file's paths are relative to.
        split_file: a split file or a list of ``(image, mask)`` pairs.
        crop_size: training crop S (default: the spec's); also the validation short side for VOC/ADE-style specs.
        nsample: repeat the list (UniMatch) until it has exactly ``nsample`` items (labeled set → unlabeled length).
        resize_base: base of the mmseg-style resize (short side ≈ base·r); default ``crop_size``.
        ratio_range: random resize ratio range.
        normalization: ``"imagenet"`` (reference default) or ``"clip"``.
        strong_aug: photometric strong augmentation (PIL → PIL); default ``transforms.strong_augment``.
        cutmix_p: probability of a CutMix box per strong view.
    """

    def __init__(self, spec: str | DatasetSpec, root: str | os.PathLike, split_file: str | os.PathLike | Sequence[Pair],
                 mode: str, crop_size: int | None = None, nsample: int | None = None, resize_base: int | None = None,
                 ratio_range: tuple[float, float] = (0.5, 2.0), normalization: str = "imagenet",
                 strong_aug: Callable[[Image.Image], Image.Image] | None = None, cutmix_p: float = 0.5) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        self.spec = get_spec(spec)
        self.root = Path(root).expanduser()
        self.mode = mode
        self.crop_size = int(crop_size or self.spec.crop_size)
        self.resize_base = int(resize_base or self.crop_size)
        if self.crop_size <= 0 or self.resize_base <= 0:
            raise ValueError(f"crop_size and resize_base must be positive, got {self.crop_size}, {self.resize_base}")
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.mean, self.std = T.get_normalization(normalization)
        self.strong_aug = strong_aug or T.strong_augment
        self.cutmix_p = float(cutmix_p)
        if isinstance(split_file, (str, os.PathLike)):
            self.split_file: str = str(split_file)
            self.pairs = read_split(split_file)
        else:
            self.split_file = "<pair list>"
            self.pairs = [tuple(p) for p in split_file]
            if not self.pairs:
                raise ValueError("SemiDataset got an empty pair list")
        if nsample is not None:
            if nsample <= 0:
                raise ValueError(f"nsample must be positive, got {nsample}")
            self.pairs = (self.pairs * math.ceil(nsample / len(self.pairs)))[:nsample]

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return (f"SemiDataset({self.spec.name}, mode={self.mode}, n={len(self)}, crop={self.crop_size}, "
                f"root={self.root}, split={self.split_file})")

    # -- loading -------------------------------------------------------------------------------------------------
    def _path(self, rel: str, what: str) -> Path:
        path = self.root / rel
        if not path.is_file():
            raise FileNotFoundError(f"{what} {rel} (from {self.split_file}) not found under data root {self.root}; "
                                    "check data_root and that the split files belong to this dataset")
        return path

    def load_image(self, i: int) -> Image.Image:
        """The RGB image of item ``i``."""
        with Image.open(self._path(self.pairs[i][0], "image")) as im:
            return im.convert("RGB")

    def load_mask(self, i: int) -> np.ndarray:
        """The label mask (H, W) uint8 of item ``i``, after the spec's label transform."""
        path = self._path(self.pairs[i][1], "mask")
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "1"):
                raise ValueError(f"mask {path} has mode {im.mode}; masks must be single-channel PNGs of class indices")
            arr = np.array(im)
        if arr.dtype != np.uint8:
            if arr.min() < 0 or arr.max() > 255:
                raise ValueError(f"mask {path} has labels outside 0..255 ({arr.min()}..{arr.max()})")
            arr = arr.astype(np.uint8)
        return self.spec.label_transform(arr)

    # -- augmentation --------------------------------------------------------------------------------------------
    def _resize(self, img: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image]:
        if self.spec.resize == "mmseg":
            return T.resize_mmseg(img, mask, self.resize_base, self.ratio_range)
        return T.resize_long_side(img, mask, self.ratio_range)

    def __getitem__(self, i: int):
        img = self.load_image(i)
        if self.mode == "val":
            mask = torch.from_numpy(self.load_mask(i).astype(np.int64))
            if tuple(mask.shape) != (img.size[1], img.size[0]):
                raise ValueError(f"{self.pairs[i][1]}: mask size {tuple(mask.shape)} != image size "
                                 f"{(img.size[1], img.size[0])}")
            if self.spec.val_resize:
                img = T.resize_short_side(img, self.resize_base)
            return T.normalize(img, self.mean, self.std), mask, self.pairs[i][0]

        if self.mode == "train_l":
            arr = self.load_mask(i)
            if arr.shape != (img.size[1], img.size[0]):
                raise ValueError(f"{self.pairs[i][1]}: mask size {arr.shape} != image size "
                                 f"{(img.size[1], img.size[0])}")
            pad = T.LABELED_PAD
        else:
            arr = np.zeros((img.size[1], img.size[0]), dtype=np.uint8)
            pad = T.UNLABELED_PAD
        mask = Image.fromarray(arr, mode="L")
        img, mask = self._resize(img, mask)
        img, mask = T.random_crop(img, mask, self.crop_size, pad)
        img, mask = T.hflip(img, mask, 0.5)
        if self.mode == "train_l":
            return T.normalize(img, self.mean, self.std), T.mask_tensor(mask)

        s1, s2 = self.strong_aug(img.copy()), None
        box1 = torch.tensor(T.cutmix_box(self.crop_size, self.cutmix_p), dtype=torch.int64)
        s2 = self.strong_aug(img.copy())
        box2 = torch.tensor(T.cutmix_box(self.crop_size, self.cutmix_p), dtype=torch.int64)
        ignore = torch.from_numpy((np.asarray(mask) == T.UNLABELED_PAD).astype(np.uint8))
        norm = (self.mean, self.std)
        return T.normalize(img, *norm), T.normalize(s1, *norm), T.normalize(s2, *norm), ignore, box1, box2


class SemiDatasets(NamedTuple):
    """The three sets the trainer consumes."""

    train_l: SemiDataset
    train_u: SemiDataset
    val: SemiDataset


def build_datasets(dataset: str | DatasetSpec, data_root: str | os.PathLike, split: str,
                   split_dir: str | os.PathLike | None = None, crop_size: int | None = None, *,
                   repeat_labeled: bool = True, train_list: str | os.PathLike | None = None,
                   normalization: str = "imagenet", resize_base: int | None = None,
                   ratio_range: tuple[float, float] = (0.5, 2.0)) -> SemiDatasets:
    """(train_l, train_u, val) for ``<split_dir>/<dataset>/<split>/{labeled,unlabeled}.txt`` and ``val.txt``.

    ``split_dir`` defaults to ``<data_root>/splits`` (where the synthetic world keeps its lists). The labeled set is
    repeated to the unlabeled length (UniMatch) unless ``repeat_labeled=False``. A missing unlabeled list is derived
    in memory as "train minus labeled" from ``train_list`` or ``<split_dir>/<dataset>/train.txt`` (COCO).
    """
    spec = get_spec(dataset)
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} is not a folder; set data_root to the {spec.name} dataset folder")
    sdir = Path(split_dir).expanduser() if split_dir is not None else root / "splits"
    kw = dict(crop_size=crop_size, resize_base=resize_base, ratio_range=ratio_range, normalization=normalization)
    u_file = split_path(sdir, spec, split, "unlabeled")
    u_src = u_file if u_file.is_file() else unlabeled_pairs(sdir, spec, split, train_list)  # COCO: train − labeled
    train_u = SemiDataset(spec, root, u_src, "train_u", **kw)
    nsample = len(train_u) if repeat_labeled else None
    train_l = SemiDataset(spec, root, split_path(sdir, spec, split, "labeled"), "train_l", nsample=nsample, **kw)
    val = SemiDataset(spec, root, split_path(sdir, spec, None, "val"), "val", **kw)
    return SemiDatasets(train_l, train_u, val)
