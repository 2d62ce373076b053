"""Fixture folders in each dataset's on-disk layout (tiny random images and masks), shared by the tests."""

from pathlib import Path

import numpy as np
from PIL import Image

from semivl_fast.data import get_spec


def save_array(root: Path, rel: str, arr: np.ndarray) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=95) if rel.endswith(".jpg") else Image.fromarray(arr).save(path)


def make_layout(root: Path, dataset: str, n: int = 4, hw: tuple[int, int] = (30, 40)) -> list[tuple[str, str]]:
    """n image/mask pairs in the dataset's layout; masks hold labels of that dataset incl. 255 / ADE's 0."""
    spec = get_spec(dataset)
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(n):
        img_rel = {"voc": f"JPEGImages/2007_{i:06d}.jpg", "coco": f"train2017/{i:012d}.jpg",
                   "ade": f"images/training/ADE_train_{i:08d}.jpg",
                   "cityscapes": f"leftImg8bit/train/jena/jena_{i:06d}_000019_leftImg8bit.png"}[dataset]
        mask_rel = spec.mask_path_for(img_rel)
        mask = rng.integers(0, spec.num_classes, hw).astype(np.uint8)
        mask[0, :] = 255 if dataset != "ade" else 0
        mask[1, :4] = [0, 1, 5, spec.num_classes - 1 if dataset != "ade" else 150]
        save_array(root, img_rel, rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
        save_array(root, mask_rel, mask)
        pairs.append((img_rel, mask_rel))
    return pairs
