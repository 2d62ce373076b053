"""Pseudo-label filter: softmax over classes -> confidence, argmax label, threshold, ignore mask.

Four faces: ``pseudo_label_filter_reference`` (plain PyTorch, the spec), the C++ CPU kernel and the CUDA C++ kernel
(``csrc/cpu/pseudo_label.cpp``, ``csrc/cuda/pseudo_label.cu``, sharing ``pseudo_label_math.h``), and the dispatching
custom op ``pseudo_label_filter`` that torch.compile traces as one node.
"""

from __future__ import annotations

import torch
from torch import Tensor

from semivl_fast.ops import _common

OP = "pseudo_label_filter"


def _check(logits: Tensor, ignore: Tensor | None) -> None:
    _common.check_tensor(OP, "logits", logits, dim=4, floating=True)
    if logits.shape[1] < 1:
        raise ValueError(f"{OP}: argument 'logits' needs at least one class, got shape {tuple(logits.shape)}")
    if ignore is not None:
        _common.check_tensor(OP, "ignore", ignore, dim=3)
        if ignore.dtype not in (torch.bool, torch.uint8):
            raise TypeError(f"{OP}: argument 'ignore' must be bool or uint8 (nonzero = ignored), got {ignore.dtype}")
        b, _, h, w = logits.shape
        if tuple(ignore.shape) != (b, h, w):
            raise ValueError(f"{OP}: argument 'ignore' must have shape (B, H, W) = {(b, h, w)}, "
                             f"got {tuple(ignore.shape)}")
        if ignore.device != logits.device:
            raise ValueError(f"{OP}: argument 'ignore' is on {ignore.device} but 'logits' on {logits.device}")


def pseudo_label_filter_reference(logits: Tensor, threshold: float, scale: float = 1.0,
                                  ignore: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Reference: ``conf, label = softmax(scale * logits, 1).max(1)``; ``keep = conf >= threshold & ~ignore``.

    logits (B, N, H, W) -> conf (B, H, W) float32 (float64 for float64 logits), label (B, H, W) int64,
    keep (B, H, W) bool.
    """
    _check(logits, ignore)
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    conf, label = torch.softmax(logits.to(acc) * scale, dim=1).max(dim=1)
    keep = conf >= threshold
    if ignore is not None:
        keep &= ignore == 0
    return conf, label, keep


def pseudo_label_filter_cpp(logits: Tensor, threshold: float, scale: float = 1.0,
                            ignore: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """C++ kernel (CPU tensors) or CUDA C++ kernel (CUDA tensors); same contract as the reference."""
    _check(logits, ignore)
    _common.require_ext(OP, logits.device)
    b, _, h, w = logits.shape
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    conf = _common.empty((b, h, w), acc, logits.device)
    label = _common.empty((b, h, w), torch.int64, logits.device)
    keep = _common.empty((b, h, w), torch.bool, logits.device)
    torch.ops.semivl_fast_C.pseudo_label_filter_(logits.contiguous(), float(threshold), float(scale),
                                                 None if ignore is None else ignore.contiguous(), conf, label, keep)
    return conf, label, keep


_FACES = {"reference": pseudo_label_filter_reference, "cpp": pseudo_label_filter_cpp,
          "cuda": pseudo_label_filter_cpp}


@torch.library.custom_op("semivl_fast::pseudo_label_filter", mutates_args=())
def _pseudo_label_filter_op(logits: Tensor, threshold: float, scale: float,
                            ignore: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    choice = _common.backend(OP, logits.device, ("cpp", "cuda"))
    return _FACES[choice](logits, threshold, scale, ignore)


@_pseudo_label_filter_op.register_fake
def _(logits, threshold, scale, ignore):
    b, _, h, w = logits.shape
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return (logits.new_empty((b, h, w), dtype=acc), logits.new_empty((b, h, w), dtype=torch.int64),
            logits.new_empty((b, h, w), dtype=torch.bool))


def pseudo_label_filter(logits: Tensor, threshold: float, scale: float = 1.0,
                        ignore: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Confidence, label and keep-mask of pseudo-labels from ``logits`` (B, N, H, W); no gradient.

    ``scale`` multiplies the logits before the softmax (100 for CLIP similarities). ``ignore`` (B, H, W), nonzero =
    never kept (crop padding). Returns conf (B, H, W) float32, label (B, H, W) int64, keep (B, H, W) bool.
    """
    _check(logits, ignore)
    return _pseudo_label_filter_op(logits.detach(), float(threshold), float(scale), ignore)
