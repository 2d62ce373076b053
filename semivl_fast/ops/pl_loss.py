"""Pseudo-label cross-entropy from low-resolution logits: every loss of the SemiVL step in one op.

From the student's low-resolution logits (B, N, h, w) (the decoder's 4x-grid output) the op upsamples bilinearly
(align_corners=False) to the crop size (H, W) on the fly and takes a per-pixel cross-entropy against targets that
are either given (supervised) or made from teacher logits: softmax(scale * upsample(teacher)) -> confidence and
argmax, optionally CutMixed with a partner's teacher logits inside per-image boxes, filtered by the padding masks
and the confidence threshold. The fused kernels never materialise (B, N, H, W) logits, probabilities or gradients;
this file holds the reference (the spec) and the public entry point.

Modes (per-pixel weight w, valid = not padding / not ignore label):
  threshold   w = valid & conf >= threshold                      (UniMatch; the CLIP guidance with scale 100)
  confidence  w = valid * mean confidence of the image's valid pixels   (Cityscapes "pixelavg")
  none        w = valid                                          (supervised, or unfiltered pseudo-labels)
Reductions: ``valid`` divides the weighted sum by the number of valid pixels, ``all`` by B * H * W.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from semivl_fast.ops import _common

OP = "pseudo_label_loss"
MODES = ("threshold", "confidence", "none")
REDUCTIONS = ("valid", "all")
IGNORE_INDEX = 255


def box_mask(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, 4) int boxes [y0, x0, y1, x1) in crop pixels -> (B, H, W) bool; an empty box mixes nothing."""
    h, w = size
    ys = torch.arange(h, device=boxes.device).view(1, h, 1)
    xs = torch.arange(w, device=boxes.device).view(1, 1, w)
    b = boxes.view(-1, 4, 1, 1)
    return (ys >= b[:, 0]) & (ys < b[:, 2]) & (xs >= b[:, 1]) & (xs < b[:, 3])


def _check(student: Tensor, size: tuple[int, int], target: Tensor | None, teacher: Tensor | None,
           teacher_mix: Tensor | None, boxes: Tensor | None, ignore: Tensor | None, ignore_mix: Tensor | None,
           mode: str, reduction: str) -> None:
    _common.check_tensor(OP, "student", student, dim=4, floating=True)
    b, n = student.shape[:2]
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{OP}: argument 'size' must be (H, W) with H, W >= 1, got {size}")
    if mode not in MODES:
        raise ValueError(f"{OP}: argument 'mode' must be one of {MODES}, got {mode!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{OP}: argument 'reduction' must be one of {REDUCTIONS}, got {reduction!r}")
    if (target is None) == (teacher is None):
        raise ValueError(f"{OP}: give exactly one of 'target' (supervised labels) and 'teacher' (pseudo-labels)")
    full = (b, *size)
    if target is not None:
        _common.check_tensor(OP, "target", target, dim=3)
        if target.dtype != torch.int64 or tuple(target.shape) != full:
            raise ValueError(f"{OP}: argument 'target' must be int64 of shape (B, H, W) = {full}, "
                             f"got {target.dtype} {tuple(target.shape)}")
    for name, t in (("teacher", teacher), ("teacher_mix", teacher_mix)):
        if t is not None:
            _common.check_tensor(OP, name, t, dim=4, floating=True)
            if t.shape[:2] != (b, n):
                raise ValueError(f"{OP}: argument '{name}' must be (B, N, h', w') with B, N = {b}, {n} like "
                                 f"'student', got {tuple(t.shape)}")
    if (teacher_mix is None) != (boxes is None):
        raise ValueError(f"{OP}: 'teacher_mix' and 'boxes' go together (CutMix needs both)")
    if boxes is not None and (boxes.shape != (b, 4) or boxes.dtype.is_floating_point):
        raise ValueError(f"{OP}: argument 'boxes' must be integer (B, 4) = ({b}, 4) [y0, x0, y1, x1), "
                         f"got {boxes.dtype} {tuple(boxes.shape)}")
    for name, t in (("ignore", ignore), ("ignore_mix", ignore_mix)):
        if t is not None and (t.dtype not in (torch.bool, torch.uint8) or tuple(t.shape) != full):
            raise ValueError(f"{OP}: argument '{name}' must be bool/uint8 (B, H, W) = {full}, "
                             f"got {t.dtype} {tuple(t.shape)}")
    for name, t in (("target", target), ("teacher", teacher), ("teacher_mix", teacher_mix), ("boxes", boxes),
                    ("ignore", ignore), ("ignore_mix", ignore_mix)):
        if t is not None and t.device != student.device:
            raise ValueError(f"{OP}: argument '{name}' is on {t.device} but 'student' on {student.device}")


def _upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x.float() if x.dtype != torch.float64 else x, size=size, mode="bilinear",
                         align_corners=False)


def pseudo_label_loss_reference(student: Tensor, size: tuple[int, int], *, target: Tensor | None = None,
                                teacher: Tensor | None = None, teacher_mix: Tensor | None = None,
                                boxes: Tensor | None = None, ignore: Tensor | None = None,
                                ignore_mix: Tensor | None = None, threshold: float = 0.95, scale: float = 1.0,
                                mode: str = "threshold", reduction: str = "valid") -> tuple[Tensor, Tensor]:
    """Reference with full-resolution tensors. Returns (loss, stats); stats (2,) = [accepted fraction of the valid
    pixels (weight > 0), mean teacher confidence over the valid pixels (1 for given targets)], detached."""
    _check(student, tuple(size), target, teacher, teacher_mix, boxes, ignore, ignore_mix, mode, reduction)
    size = tuple(size)
    logits = _upsample(student, size)  # (B, N, H, W)
    if target is not None:
        labels = target
        valid = target != IGNORE_INDEX
        conf = torch.ones_like(logits[:, 0])
    else:
        with torch.no_grad():
            conf, labels = torch.softmax(scale * _upsample(teacher, size), dim=1).max(dim=1)
            pad = ignore.bool() if ignore is not None else torch.zeros_like(labels, dtype=torch.bool)
            if teacher_mix is not None:
                conf_m, labels_m = torch.softmax(scale * _upsample(teacher_mix, size), dim=1).max(dim=1)
                pad_m = ignore_mix.bool() if ignore_mix is not None else torch.zeros_like(pad)
                inside = box_mask(boxes, size)
                conf = torch.where(inside, conf_m, conf)
                labels = torch.where(inside, labels_m, labels)
                pad = torch.where(inside, pad_m, pad)
            valid = ~pad
    valid_f = valid.to(logits.dtype)
    if mode == "threshold":
        weight = valid_f * (conf >= threshold).to(logits.dtype)
    elif mode == "confidence":
        per_image = (conf * valid_f).sum((1, 2)) / valid_f.sum((1, 2)).clamp_min(1)
        weight = valid_f * per_image.view(-1, 1, 1).to(logits.dtype)
    else:
        weight = valid_f
    ce = F.cross_entropy(logits, labels.masked_fill(~valid, 0), reduction="none")  # (B, H, W)
    n_valid = valid_f.sum()
    denom = n_valid.clamp_min(1) if reduction == "valid" else torch.tensor(float(valid.numel()), device=ce.device)
    loss = (ce * weight).sum() / denom
    with torch.no_grad():
        accepted = ((weight > 0) & valid).sum() / n_valid.clamp_min(1)
        mean_conf = (conf * valid_f).sum() / n_valid.clamp_min(1)
        stats = torch.stack([accepted, mean_conf]).float()
    return loss, stats


def pseudo_label_loss(student: Tensor, size: tuple[int, int], *, target: Tensor | None = None,
                      teacher: Tensor | None = None, teacher_mix: Tensor | None = None, boxes: Tensor | None = None,
                      ignore: Tensor | None = None, ignore_mix: Tensor | None = None, threshold: float = 0.95,
                      scale: float = 1.0, mode: str = "threshold", reduction: str = "valid") -> tuple[Tensor, Tensor]:
    """Cross-entropy of ``student`` (B, N, h, w) upsampled to ``size`` against given or pseudo-labels.

    Give ``target`` (B, H, W) int64 labels (255 = ignore) for supervised training, or ``teacher`` (B, N, h', w')
    logits (detached) for pseudo-labels: ``softmax(scale * upsample(teacher))`` gives confidence and label;
    ``teacher_mix`` with ``boxes`` (B, 4) [y0, x0, y1, x1) takes them from the CutMix partner inside the box;
    ``ignore``/``ignore_mix`` (B, H, W) mark crop padding. See the module docstring for ``mode``/``reduction``.
    Returns ``(loss, stats)``: a scalar with gradient to ``student`` only, and stats (2,) = [accepted fraction,
    mean confidence].
    """
    return pseudo_label_loss_reference(student, size, target=target, teacher=teacher, teacher_mix=teacher_mix,
                                       boxes=boxes, ignore=ignore, ignore_mix=ignore_mix, threshold=threshold,
                                       scale=scale, mode=mode, reduction=reduction)
