"""Colour overlays of label maps with a legend (predict CLI, TensorBoard images)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def palette(n: int) -> np.ndarray:
    """(n, 3) uint8 distinct colours: the Pascal VOC bit-interleaving palette (class 0 black, 255 ignore)."""
    colours = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours[i] = (r, g, b)
    return colours


def overlay(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], alpha: float = 0.55,
            legend: bool = True) -> Image.Image:
    """RGB image (H, W, 3) uint8 blended with the colours of ``labels`` (H, W); a legend of the classes present."""
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    colours = palette(max(len(class_names), 1))
    valid = labels < len(class_names)
    colour_map = np.zeros_like(image)
    colour_map[valid] = colours[labels[valid]]
    blended = image.astype(np.float32)
    blended[valid] = (1 - alpha) * blended[valid] + alpha * colour_map[valid]
    out = Image.fromarray(blended.round().astype(np.uint8))
    if not legend:
        return out
    present = [int(c) for c in np.unique(labels[valid])]
    font = ImageFont.load_default()
    row = 14
    width = max([8 + 14 + 6 * len(class_names[c]) + 8 for c in present] + [60])
    canvas = Image.new("RGB", (out.width + width, max(out.height, row * len(present) + 8)), (255, 255, 255))
    canvas.paste(out, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, c in enumerate(present):
        y = 4 + i * row
        draw.rectangle([out.width + 6, y, out.width + 16, y + 10], fill=tuple(int(v) for v in colours[c]),
                       outline=(0, 0, 0))
        draw.text((out.width + 22, y - 1), class_names[c], fill=(0, 0, 0), font=font)
    return canvas


def denormalize(image, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(3, H, W) normalised tensor -> (H, W, 3) uint8."""
    arr = image.detach().float().cpu().numpy().transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    return (arr.clip(0, 1) * 255).round().astype(np.uint8)
