"""Dataset-level intersection/union counts and mIoU (over all classes, as the reference), and the evaluation loop."""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from semivl_fast.inference import predict_logits, resize_to

LOG = logging.getLogger("semivl_fast")


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


def progress_iter(items: Iterable, total: int | None = None, desc: str = "eval", every_s: float = 30.0) -> Iterator:
    """``items``, reporting progress: a tqdm bar when stderr is a terminal, otherwise a log line (logger
    ``semivl_fast``) at most every ``every_s`` seconds and one at the end."""
    if sys.stderr.isatty():
        with tqdm(items, total=total, desc=desc, unit="img", dynamic_ncols=True, leave=False) as bar:
            yield from bar
        return
    start = last = time.time()
    of = f"/{total}" if total is not None else ""
    n = 0
    for n, item in enumerate(items, 1):
        yield item
        now = time.time()
        if now - last >= every_s and n != total:
            last = now
            LOG.info(f"{desc}: {n}{of} images, {n / max(now - start, 1e-9):.2f} img/s")
    LOG.info(f"{desc}: {n}{of} images in {time.time() - start:.1f} s")


@torch.no_grad()
def evaluate(model: Callable[[Tensor], Tensor], samples: Iterable, num_classes: int, window: int, *,
             mode: str = "sliding", stride: int = 0, merge: str = "logits", max_images: int = 0,
             device: torch.device | str = "cpu", context: contextlib.AbstractContextManager | None = None,
             progress: bool | Callable[[Iterable], Iterable] | None = None,
             reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, Any]:
    """mIoU over ``samples`` of (image (3, h, w) normalised, mask (H, W) int64, name), one image at a time.

    ``model(x)`` returns logits at the input resolution; ``mode``/``stride``/``merge`` are the windows of
    ``predict_logits``, run under ``context`` (e.g. a precision context). ``progress``: True for ``progress_iter``,
    a callable wrapping the samples, or None/False for none. ``reduce`` sums a tensor over processes (each process
    evaluates its shard under DDP). Returns miou (%), iou (per class, %) and the number of images.
    """
    reduce = reduce or (lambda t: t)
    inter = torch.zeros(num_classes, dtype=torch.int64)
    union = torch.zeros(num_classes, dtype=torch.int64)
    context = context or contextlib.nullcontext()
    total = len(samples) if hasattr(samples, "__len__") else None
    if max_images:
        samples = itertools.islice(samples, max_images)
        total = min(total, max_images) if total is not None else None
    if progress is True:
        samples = progress_iter(samples, total)
    elif progress:
        samples = progress(samples)
    count = 0
    for image, mask, _name in samples:
        image = image.to(device)
        if image.dim() == 3:
            image, mask = image.unsqueeze(0), mask.unsqueeze(0)
        with context:
            scores = predict_logits(model, image, window, mode, stride, merge)
        pred = resize_to(scores.float(), tuple(mask.shape[-2:])).argmax(1).cpu()
        i_c, u_c = intersection_union(pred, mask.long(), num_classes)
        inter += i_c
        union += u_c
        count += image.shape[0]
    inter, union = reduce(inter.to(device)).cpu(), reduce(union.to(device)).cpu()
    m, iou = miou(inter, union)
    return {"miou": m, "iou": iou.tolist(), "images": int(reduce(torch.tensor(count, device=device)))}
