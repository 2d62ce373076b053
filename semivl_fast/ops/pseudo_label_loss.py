"""Pseudo-label cross-entropy from low-resolution logits: every loss of the SemiVL step in one op.

From the student's low-resolution logits (B, N, h, w) (the decoder's 4x-grid output) the op upsamples bilinearly
(align_corners=False) to the crop size (H, W) on the fly and takes a per-pixel cross-entropy against targets that
are either given (supervised) or made from teacher logits: softmax(scale * upsample(teacher)) -> confidence and
argmax, optionally CutMixed with a partner's teacher logits inside per-image boxes, filtered by the padding masks
and the confidence threshold. The fused kernels never materialise (B, N, H, W) logits, probabilities or gradients;
this file holds the reference (the spec), the face choice, the custom op and the public entry point.

Faces (``FACES``; ``select_face`` picks one by device and what was built; ``SEMIVL_FAST_BACKEND[_PSEUDO_LABEL_LOSS]``
forces one): ``reference`` (``pseudo_label_loss_reference``, plain PyTorch, the spec); ``cpp`` and ``cuda``, the C++
CPU kernel and the CUDA C++ kernel (``csrc/cpu/pseudo_label_loss.cpp``, ``csrc/cuda/pseudo_label_loss.cu``, sharing
``pseudo_label_loss_math.h``); ``triton`` (``kernels/pseudo_label_loss.py``). Every kernel face takes every floating
dtype and shape. ``pseudo_label_loss`` runs the reference directly or the fused faces through the custom op
``semivl_fast::pseudo_label_loss`` (backward: ``semivl_fast::pseudo_label_loss_backward``). Every fused face runs the
same two kernels: the forward writes per pixel the student's logsumexp and a code (label if accepted, else -1) and
per image row four sums (ce over accepted pixels, valid, accepted, confidence over valid); ``_finish`` turns the row
sums into loss, stats and the per-image gradient weight on the device (no host sync); the backward recomputes the
student's softmax at the accepted pixels and gathers the adjoint of the upsampling into the low-resolution gradient.

Modes (per-pixel weight w, valid = not padding / not ignore label):
  threshold   w = valid & conf >= threshold                      (UniMatch; the CLIP guidance with scale 100)
  confidence  w = valid * mean confidence of the image's valid pixels   (Cityscapes "pixelavg")
  none        w = valid                                          (supervised, or unfiltered pseudo-labels)
Reductions: ``valid`` divides the weighted sum by the number of valid pixels, ``all`` by B * H * W.

A deliberate change in the confidence mode: padded pixels are excluded (weight 0), while the reference's pixelavg
loss leaves them in the numerator (only its mean confidence and its #valid denominator skip them), i.e. it trains
on the pseudo-labels of the black crop padding.
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
    if target is not None and any(t is not None for t in (teacher_mix, boxes, ignore, ignore_mix)):
        raise ValueError(f"{OP}: with 'target' (supervised), mark ignored pixels with 255 in the target; "
                         "'teacher_mix', 'boxes', 'ignore' and 'ignore_mix' apply to pseudo-labels only")
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


FACES = ("reference", "cpp", "cuda", "triton")


def select_face(device: torch.device) -> str:
    """The face that runs on ``device``: the requested or automatic one (``_common.choose_face``). The kernels take
    every floating dtype and shape, so nothing else decides."""
    return _common.choose_face(OP, device, FACES)


# ------------------------------------------------------------------------------------------------------------ faces


def _kernels():
    from semivl_fast.kernels import pseudo_label_loss as kernels  # lazy: imports triton

    return kernels


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _pixel_outputs(student: Tensor, size: list[int]) -> tuple[Tensor, Tensor]:
    """lse (B, H, W) in the accumulation dtype and code (B, H, W) int32."""
    b, (h, w) = student.shape[0], size
    return (_common.empty((b, h, w), _acc_dtype(student.dtype), student.device),
            _common.empty((b, h, w), torch.int32, student.device))


def _forward_cpp(student: Tensor, size: list[int], target: Tensor | None, teacher: Tensor | None,
                 teacher_mix: Tensor | None, boxes: Tensor | None, ignore: Tensor | None, ignore_mix: Tensor | None,
                 threshold: float, scale: float, use_threshold: bool) -> tuple[Tensor, Tensor, Tensor]:
    """C++ (CPU) / CUDA C++ forward: lse, code and the row sums (B, H, 4) float64."""
    b, (h, w) = student.shape[0], size
    lse, code = _pixel_outputs(student, size)
    rows = _common.empty((b, h, 4), torch.float64, student.device)
    torch.ops.semivl_fast_C.pseudo_label_loss_forward_(student, h, w, target, teacher, teacher_mix, boxes, ignore,
                                                       ignore_mix, float(threshold), float(scale),
                                                       bool(use_threshold), lse, code, rows)
    return lse, code, rows


def _backward_cpp(student: Tensor, lse: Tensor, code: Tensor, gscale: Tensor) -> Tensor:
    grad = _common.empty(tuple(student.shape), student.dtype, student.device)
    torch.ops.semivl_fast_C.pseudo_label_loss_backward_(student, lse, code, gscale, grad)
    return grad


def _forward_triton(student: Tensor, size: list[int], target: Tensor | None, teacher: Tensor | None,
                    teacher_mix: Tensor | None, boxes: Tensor | None, ignore: Tensor | None,
                    ignore_mix: Tensor | None, threshold: float, scale: float,
                    use_threshold: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Triton forward: lse, code and per-program partial row sums (B, H, programs, 4) in the accumulation dtype."""
    kernels = _kernels()
    lse, code = _pixel_outputs(student, size)
    part = _common.empty(kernels.partial_sums_shape(student.shape[0], size), _acc_dtype(student.dtype),
                         student.device)
    kernels.forward(student, size, target, teacher, teacher_mix, boxes, ignore, ignore_mix, threshold, scale,
                    use_threshold, lse, code, part)
    return lse, code, part


def _backward_triton(student: Tensor, lse: Tensor, code: Tensor, gscale: Tensor) -> Tensor:
    grad = _common.empty(tuple(student.shape), student.dtype, student.device)
    _kernels().backward(student, lse, code, gscale, grad)
    return grad


_FORWARD = {"cpp": _forward_cpp, "cuda": _forward_cpp, "triton": _forward_triton}
_BACKWARD = {"cpp": _backward_cpp, "cuda": _backward_cpp, "triton": _backward_triton}


# --------------------------------------------------------------------------------------------------------- custom op


def _finish(rows: Tensor, batch: int, pixels: int, mode: str, reduction: str,
            acc: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Row sums (B, ..., 4) [ce over accepted, valid, accepted, conf over valid] -> loss, stats and the per-image
    gradient weight wimg (B,) (loss = sum_b wimg[b] * ce_b), all on the device, in float64 until the end."""
    sums = rows.reshape(batch, -1, 4).sum(1, dtype=torch.float64)
    n_valid = sums[:, 1].sum()
    valid_1 = n_valid.clamp_min(1)
    denom = valid_1 if reduction == "valid" else torch.full_like(n_valid, float(pixels))
    if mode == "confidence":
        wimg = sums[:, 3] / sums[:, 1].clamp_min(1) / denom
    else:
        wimg = torch.ones_like(sums[:, 0]) / denom
    loss = (wimg * sums[:, 0]).sum().to(acc)
    stats = torch.stack([sums[:, 2].sum() / valid_1, sums[:, 3].sum() / valid_1]).float()
    return loss, stats, wimg.to(acc)


@torch.library.custom_op("semivl_fast::pseudo_label_loss", mutates_args=())
def _pseudo_label_loss_op(student: Tensor, size: list[int], target: Tensor | None, teacher: Tensor | None,
                          teacher_mix: Tensor | None, boxes: Tensor | None, ignore: Tensor | None,
                          ignore_mix: Tensor | None, threshold: float, scale: float, mode: str,
                          reduction: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, stats, lse, code, wimg); the last three are what the backward needs."""
    forward = _common.kernel(OP, select_face(student.device), _FORWARD)
    lse, code, rows = forward(student, size, target, teacher, teacher_mix, boxes, ignore, ignore_mix, threshold,
                              scale, mode == "threshold")
    loss, stats, wimg = _finish(rows, student.shape[0], student.shape[0] * size[0] * size[1], mode, reduction,
                                _acc_dtype(student.dtype))
    return loss, stats, lse, code, wimg


@_pseudo_label_loss_op.register_fake
def _(student, size, target, teacher, teacher_mix, boxes, ignore, ignore_mix, threshold, scale, mode, reduction):
    b, (h, w), acc = student.shape[0], size, _acc_dtype(student.dtype)
    return (student.new_empty((), dtype=acc), student.new_empty((2,), dtype=torch.float32),
            student.new_empty((b, h, w), dtype=acc), student.new_empty((b, h, w), dtype=torch.int32),
            student.new_empty((b,), dtype=acc))


@torch.library.custom_op("semivl_fast::pseudo_label_loss_backward", mutates_args=())
def _pseudo_label_loss_backward_op(grad_loss: Tensor, student: Tensor, lse: Tensor, code: Tensor,
                                   wimg: Tensor) -> Tensor:
    """Gradient of the loss w.r.t. the low-resolution student logits (B, N, h, w), in the student's dtype."""
    gscale = (wimg * grad_loss.to(wimg.dtype)).contiguous()
    return _common.kernel(OP, select_face(student.device), _BACKWARD)(student, lse, code, gscale)


@_pseudo_label_loss_backward_op.register_fake
def _(grad_loss, student, lse, code, wimg):
    return torch.empty_like(student, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    _, stats, lse, code, wimg = output
    ctx.save_for_backward(inputs[0], lse, code, wimg)
    ctx.mark_non_differentiable(stats, lse, code, wimg)


def _backward(ctx, grad_loss, *_):
    student, lse, code, wimg = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0]:
        grad = _pseudo_label_loss_backward_op(grad_loss, student, lse, code, wimg)
    return grad, *([None] * 11)


_pseudo_label_loss_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------------ public entry


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
    mean confidence]. Runs the face ``select_face`` picks (``SEMIVL_FAST_BACKEND[_PSEUDO_LABEL_LOSS]`` forces one).
    """
    _check(student, tuple(size), target, teacher, teacher_mix, boxes, ignore, ignore_mix, mode, reduction)
    if select_face(student.device) == "reference":  # plain PyTorch: torch.compile sees inside
        return pseudo_label_loss_reference(student, size, target=target, teacher=teacher, teacher_mix=teacher_mix,
                                           boxes=boxes, ignore=ignore, ignore_mix=ignore_mix, threshold=threshold,
                                           scale=scale, mode=mode, reduction=reduction)
    c = lambda t: None if t is None else t.detach().contiguous()
    loss, stats, *_ = _pseudo_label_loss_op(student.contiguous(), [int(size[0]), int(size[1])], c(target),
                                            c(teacher), c(teacher_mix),
                                            None if boxes is None else c(boxes.to(torch.int64)), c(ignore),
                                            c(ignore_mix), float(threshold), float(scale), mode, reduction)
    return loss, stats
