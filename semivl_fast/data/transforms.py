"""Augmentations of the reference (UniMatch ``dataset/transform.py`` + mmseg ``Resize``), on PIL images.

Geometric (labeled and unlabeled): random resize (``resize_mmseg`` or ``resize_long_side``), ``random_crop`` (image
padded with 0 = black before normalisation; mask padded with 255 for labeled, 254 for unlabeled → ignore), ``hflip``.
Strong (unlabeled s1/s2 only): ``strong_augment`` (colour jitter, grayscale, Gaussian blur) and ``cutmix_box``.

All randomness comes from Python's ``random`` module, which PyTorch's DataLoader seeds in every worker (from its
``generator``); with ``num_workers=0`` seed ``random`` in the main process.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter, ImageOps
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: name → (mean, std); the reference normalises VOC/COCO/ADE/Cityscapes inputs with ImageNet statistics
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "clip": (CLIP_MEAN, CLIP_STD),
}

LABELED_PAD = 255
UNLABELED_PAD = 254
EMPTY_BOX = (0, 0, 0, 0)


def get_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) by name: ``"imagenet"`` or ``"clip"``."""
    key = str(name).strip().lower()
    if key not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {name!r}; choose one of {sorted(NORMALIZATIONS)}")
    return NORMALIZATIONS[key]


def _resize_pair(img: Image.Image, mask: Image.Image | None, size: tuple[int, int]):
    img = img.resize(size, Image.BILINEAR)
    return img, (mask.resize(size, Image.NEAREST) if mask is not None else None)


def resize_mmseg(img: Image.Image, mask: Image.Image | None, base: int, ratio_range: tuple[float, float] = (0.5, 2.0),
                 long_factor: int = 4) -> tuple[Image.Image, Image.Image | None]:
    """mmseg ``Resize(img_scale=(long_factor·base, base), ratio_range, keep_ratio=True)``.

    r ~ U(ratio_range); the image is scaled so that its short side is ≤ int(base·r) and its long side is
    ≤ int(long_factor·base·r), one of them reached (short side ≈ base·r for ordinary aspect ratios).
    """
    r = random.uniform(*ratio_range)
    w, h = img.size
    sf = min(int(long_factor * base * r) / max(w, h), int(base * r) / min(w, h))
    return _resize_pair(img, mask, (max(1, int(w * sf + 0.5)), max(1, int(h * sf + 0.5))))


def resize_long_side(img: Image.Image, mask: Image.Image | None, ratio_range: tuple[float, float] = (0.5, 2.0)
                     ) -> tuple[Image.Image, Image.Image | None]:
    """UniMatch ``resize``: long side = randint(int(L·lo), int(L·hi)) for the current long side L, aspect kept."""
    w, h = img.size
    long_side = random.randint(int(max(w, h) * ratio_range[0]), int(max(w, h) * ratio_range[1]))
    if h > w:
        oh, ow = long_side, int(w * long_side / h + 0.5)
    else:
        ow, oh = long_side, int(h * long_side / w + 0.5)
    return _resize_pair(img, mask, (max(1, ow), max(1, oh)))


def resize_short_side(img: Image.Image, short_side: int) -> Image.Image:
    """Validation resize (VOC/ADE): short side = ``short_side`` exactly, aspect kept (bilinear)."""
    w, h = img.size
    sf = short_side / min(w, h)
    return img.resize((max(1, int(w * sf + 0.5)), max(1, int(h * sf + 0.5))), Image.BILINEAR)


def random_crop(img: Image.Image, mask: Image.Image, size: int, mask_fill: int) -> tuple[Image.Image, Image.Image]:
    """Pad right/bottom to at least ``size`` (image 0, mask ``mask_fill``), then a random ``size``² crop."""
    w, h = img.size
    padw, padh = max(size - w, 0), max(size - h, 0)
    if padw or padh:
        img = ImageOps.expand(img, border=(0, 0, padw, padh), fill=0)
        mask = ImageOps.expand(mask, border=(0, 0, padw, padh), fill=mask_fill)
    w, h = img.size
    x, y = random.randint(0, w - size), random.randint(0, h - size)
    box = (x, y, x + size, y + size)
    return img.crop(box), mask.crop(box)


def hflip(img: Image.Image, mask: Image.Image, p: float = 0.5) -> tuple[Image.Image, Image.Image]:
    """Horizontal flip of image and mask together with probability ``p``."""
    if random.random() < p:
        return img.transpose(Image.FLIP_LEFT_RIGHT), mask.transpose(Image.FLIP_LEFT_RIGHT)
    return img, mask


def color_jitter(img: Image.Image, brightness: float = 0.5, contrast: float = 0.5, saturation: float = 0.5,
                 hue: float = 0.25) -> Image.Image:
    """torchvision ``ColorJitter`` semantics (factors U(1−x, 1+x), hue U(−h, h), random order), from ``random``."""
    ops = [0, 1, 2, 3]
    random.shuffle(ops)
    for op in ops:
        if op == 0 and brightness > 0:
            img = TF.adjust_brightness(img, random.uniform(max(0.0, 1 - brightness), 1 + brightness))
        elif op == 1 and contrast > 0:
            img = TF.adjust_contrast(img, random.uniform(max(0.0, 1 - contrast), 1 + contrast))
        elif op == 2 and saturation > 0:
            img = TF.adjust_saturation(img, random.uniform(max(0.0, 1 - saturation), 1 + saturation))
        elif op == 3 and hue > 0:
            img = TF.adjust_hue(img, random.uniform(-hue, hue))
    return img


def strong_augment(img: Image.Image, p_jitter: float = 0.8, p_gray: float = 0.2, p_blur: float = 0.5,
                   sigma: tuple[float, float] = (0.1, 2.0)) -> Image.Image:
    """UniMatch's strong photometric view: ColorJitter(0.5, 0.5, 0.5, 0.25) p=0.8, grayscale p=0.2, blur p=0.5."""
    if random.random() < p_jitter:
        img = color_jitter(img, 0.5, 0.5, 0.5, 0.25)
    if random.random() < p_gray:
        img = img.convert("L").convert("RGB")
    if random.random() < p_blur:
        img = img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*sigma)))
    return img


def cutmix_box(size: int, p: float = 0.5, area: tuple[float, float] = (0.02, 0.4),
               ratio: tuple[float, float] = (0.3, 1 / 0.3)) -> tuple[int, int, int, int]:
    """UniMatch ``obtain_cutmix_box`` as ``(y0, x0, y1, x1)`` (half-open) in crop pixels; ``(0, 0, 0, 0)`` = none.

    With probability ``p``: area ~ U(area)·size², then aspect h/w ~ U(ratio) and the top-left corner are redrawn
    until the box fits inside the crop.
    """
    if random.random() > p:
        return EMPTY_BOX
    target = random.uniform(*area) * size * size
    while True:
        r = random.uniform(*ratio)
        bw, bh = int(math.sqrt(target / r)), int(math.sqrt(target * r))
        x, y = random.randint(0, size - 1), random.randint(0, size - 1)
        if x + bw <= size and y + bh <= size:
            break
    if bw == 0 or bh == 0:
        return EMPTY_BOX
    return (y, x, y + bh, x + bw)


def normalize(img: Image.Image, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
              ) -> Tensor:
    """RGB PIL image → (3, H, W) float32, (x/255 − mean)/std."""
    arr = np.array(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
    x = torch.from_numpy(arr).permute(2, 0, 1).to(torch.float32)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255.0
    return x.sub_(m).div_(s)


def imagenet_to_clip(images: Tensor) -> Tensor:
    """ImageNet-normalised images (B, 3, H, W) re-normalised with CLIP's mean/std (the reference's renorm_clip_img)."""
    stat = lambda v: images.new_tensor(v).view(1, 3, 1, 1)
    return (images * stat(IMAGENET_STD) + stat(IMAGENET_MEAN) - stat(CLIP_MEAN)) / stat(CLIP_STD)


def mask_tensor(mask: Image.Image | np.ndarray) -> Tensor:
    """Mask → (H, W) int64."""
    return torch.from_numpy(np.array(mask, dtype=np.int64))
