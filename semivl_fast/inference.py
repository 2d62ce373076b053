"""Whole-image and sliding-window inference, as the reference evaluates.

- ``sliding`` (VOC, COCO, ADE20K; ZegCLIP style): windows of the crop size with a stride (426 for 512), the last
  window of each row/column clamped to the image, raw logits averaged over the windows that cover a pixel.
- ``grid`` (Cityscapes; UniMatch style): windows start every 2/3 of the crop size, border windows are cut at the
  image edge (smaller), softmax probabilities are summed.
- ``whole``: the image at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

MODES = ("sliding", "grid", "whole")


def _window_starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    n = math.ceil((length - window) / stride) + 1
    return [min(i * stride, length - window) for i in range(n)]


@torch.no_grad()
def predict_logits(model: Callable[[Tensor], Tensor], image: Tensor, window: int, mode: str = "sliding",
                   stride: int = 0, merge: str = "logits") -> Tensor:
    """Class scores (B, N, H, W) for normalised images (B, 3, H, W): logits (merge=logits) or summed probabilities.

    ``model(x)`` must return logits at the input resolution.
    """
    if mode not in MODES:
        raise ValueError(f"inference mode {mode!r}; choose one of {MODES}")
    if merge not in ("logits", "probs"):
        raise ValueError(f"merge={merge!r}; choose logits or probs")
    post = (lambda t: t.softmax(1)) if merge == "probs" else (lambda t: t)
    b, _, h, w = image.shape
    if mode == "whole":
        return post(model(image).float())
    if mode == "grid":
        step = int(window * 2 / 3)
        out = None
        for y in range(0, h, step):
            for x in range(0, w, step):
                crop = image[:, :, y:min(h, y + window), x:min(w, x + window)]
                pred = post(model(crop).float())
                if out is None:
                    out = pred.new_zeros(b, pred.shape[1], h, w)
                out[:, :, y:y + crop.shape[2], x:x + crop.shape[3]] += pred
        return out
    stride = stride or window * 5 // 6  # the reference's 426 for 512 windows
    out = count = None
    for y in _window_starts(h, window, stride):
        for x in _window_starts(w, window, stride):
            crop = image[:, :, y:y + window, x:x + window]
            pred = post(model(crop).float())
            if out is None:
                out = pred.new_zeros(b, pred.shape[1], h, w)
                count = pred.new_zeros(1, 1, h, w)
            out[:, :, y:y + crop.shape[2], x:x + crop.shape[3]] += pred
            count[:, :, y:y + crop.shape[2], x:x + crop.shape[3]] += 1
    return out / count


def resize_to(scores: Tensor, size: tuple[int, int]) -> Tensor:
    """Scores to the label map's size (bilinear, align_corners=True as the reference) when they differ."""
    if tuple(scores.shape[-2:]) == tuple(size):
        return scores
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=True)
