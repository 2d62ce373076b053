"""Dataset-level intersection/union counts and mIoU (over all classes, as the reference)."""

from __future__ import annotations

import torch
from torch import Tensor


def intersection_union(pred: Tensor, target: Tensor, num_classes: int,
                       ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """Per-class intersection and union pixel counts (num_classes,) int64 of one or more label maps."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel() and (int(target.max()) >= num_classes or int(target.min()) < 0):
        raise ValueError(f"target labels must lie in [0, {num_classes}) or equal {ignore_index}, "
                         f"got {int(target.min())}..{int(target.max())}")
    inter = torch.bincount(target[pred == target], minlength=num_classes)
    area_pred = torch.bincount(pred.clamp(0, num_classes - 1), minlength=num_classes)
    area_target = torch.bincount(target, minlength=num_classes)
    return inter, area_pred + area_target - inter


def miou(intersection: Tensor, union: Tensor) -> tuple[float, Tensor]:
    """(mIoU in %, per-class IoU in %); IoU_c = I_c / (U_c + 1e-10), averaged over all classes."""
    iou = intersection.double() / (union.double() + 1e-10) * 100
    return float(iou.mean()), iou


def format_iou_table(iou: Tensor, class_names: list[str] | tuple[str, ...], title: str = "") -> str:
    """A per-class IoU table, then the mean."""
    width = max([len(n) for n in class_names] + [8])
    lines = [title] if title else []
    lines += [f"{'class':<{width}}  IoU (%)", "-" * (width + 9)]
    lines += [f"{name:<{width}}  {float(v):6.2f}" for name, v in zip(class_names, iou)]
    lines += ["-" * (width + 9), f"{'mIoU':<{width}}  {float(iou.mean()):6.2f}"]
    return "\n".join(lines)
