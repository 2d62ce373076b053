"""Dense vision-text cost volume: cosine similarity of every pixel feature with every class text embedding.

Faces (``FACES``; ``select_face`` picks one, ``SEMIVL_FAST_BACKEND[_COST_VOLUME]`` forces one):

* ``reference`` — ``cost_volume_reference``, plain PyTorch: the spec, any dtype and device.
* ``cpp`` — C++ CPU kernels (``csrc/cpu/cost_volume.cpp``: BLAS on pixel blocks), float64/32/16 and bfloat16
  (float32 accumulation for 16-bit).
* ``triton`` — Triton kernels (``kernels/cost_volume.py``; CUDA, or CPU under TRITON_INTERPRET=1), float32/16 and
  bfloat16, fp32 dots on TF32 tensor cores unless ``SEMIVL_FAST_TF32=0``; with groups at most 1024 rows. Inputs
  outside these limits run the reference.

The fused faces compute the same thing without a normalised copy of the image or a (B, R, H, W) concept-row tensor,
forward and backward, behind the custom op ``semivl_fast::cost_volume`` (backward:
``semivl_fast::cost_volume_backward``). ``cost_volume`` is the public, differentiable entry point: it ensembles the
(tiny) text side in PyTorch and runs the reference directly or the custom op.

Concept max: a class's score is the max over its rows; its gradient goes to the rows attaining the max, split
evenly between ties (as ``scatter_reduce(amax)`` does; bitwise-identical rows of a class always tie). Classes without
rows score -inf, like the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from semivl_fast.ops import _common

OP = "cost_volume"
EPS = 1e-12  # F.normalize's default


def ensemble_text(text: Tensor) -> Tensor:
    """(N, C) or (N, T, C) text embeddings -> (N, C) unit vectors; templates are averaged after normalisation."""
    if text.dim() == 3:
        text = F.normalize(text, dim=-1).mean(dim=1)
    return F.normalize(text, dim=-1)


def concept_max(scores: Tensor, groups: Tensor, num_classes: int) -> Tensor:
    """(B, R, H, W) scores of R concept rows -> (B, num_classes, H, W): max over each class's concepts.

    ``groups`` (R,) int64 gives the class of every row; every class must have at least one row.
    """
    b, _, h, w = scores.shape
    index = groups.to(scores.device).view(1, -1, 1, 1).expand_as(scores)
    out = scores.new_full((b, num_classes, h, w), float("-inf"))
    return out.scatter_reduce(1, index, scores, reduce="amax", include_self=True)


def _check(image: Tensor, text: Tensor, groups: Tensor | None, num_classes: int | None) -> int:
    """Validate the public arguments; returns the number of output channels."""
    _common.check_tensor(OP, "image", image, dim=4, floating=True)
    _common.check_tensor(OP, "text", text, floating=True)
    if text.dim() not in (2, 3) or text.shape[-1] != image.shape[1]:
        raise ValueError(f"{OP}: argument 'text' must be (N, C) or (N, T, C) with C = {image.shape[1]} "
                         f"(the image channels), got {tuple(text.shape)}")
    if text.shape[0] < 1 or (text.dim() == 3 and text.shape[1] < 1):
        raise ValueError(f"{OP}: argument 'text' needs at least one row (and template), got {tuple(text.shape)}")
    if text.device != image.device:
        raise ValueError(f"{OP}: argument 'text' is on {text.device} but 'image' on {image.device}")
    if groups is None:
        return text.shape[0]
    _common.check_tensor(OP, "groups", groups, dim=1)
    if groups.dtype != torch.int64:
        raise TypeError(f"{OP}: argument 'groups' must be int64 (class of every text row), got {groups.dtype}")
    if groups.shape != (text.shape[0],):
        raise ValueError(f"{OP}: argument 'groups' must have shape ({text.shape[0]},), got {tuple(groups.shape)}")
    if num_classes is None:
        num_classes = int(groups.max()) + 1
    num_classes = int(num_classes)
    if num_classes < 1:
        raise ValueError(f"{OP}: argument 'num_classes' must be >= 1, got {num_classes}")
    if not torch.compiler.is_compiling():  # data-dependent: skipped while tracing
        lo, hi = int(groups.min()), int(groups.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{OP}: argument 'groups' values must lie in [0, num_classes = {num_classes}), got "
                             f"[{lo}, {hi}]")
    return num_classes


def _scores(image: Tensor, rows: Tensor, groups: Tensor | None, num_classes: int) -> Tensor:
    """The reference on unit text rows (R, C) already in the image dtype (no further text normalisation)."""
    scores = torch.einsum("bchw,nc->bnhw", F.normalize(image, dim=1), rows)
    return scores if groups is None else concept_max(scores, groups, num_classes)


def cost_volume_reference(image: Tensor, text: Tensor, groups: Tensor | None = None,
                          num_classes: int | None = None) -> Tensor:
    """Reference: ``einsum('bchw,nc->bnhw', normalize(image), ensemble_text(text))``, then the concept max.

    image (B, C, H, W); text (N, C) or (N, T, C) with T prompt templates; groups (N,) class of each text row.
    Returns (B, N, H, W), or (B, num_classes, H, W) when ``groups`` is given.
    """
    k = _check(image, text, groups, num_classes)
    return _scores(image, ensemble_text(text).to(image.dtype), groups, k)


FACES = ("reference", "cpp", "triton")


def select_face(device: torch.device, dtype: torch.dtype = torch.float32, rows: int = 1,
                grouped: bool = False) -> str:
    """The face that runs ``rows`` text rows (with ``groups``: ``grouped``) against an image of ``dtype`` on
    ``device``: the requested or automatic one (``_common.choose_face``), or the reference where the Triton kernels
    do not reach (their dtypes; more than ``MAX_GROUPED_ROWS`` rows with groups)."""
    face = _common.choose_face(OP, device, FACES)
    if face == "triton":
        kernels = _kernels()
        if dtype not in kernels.DTYPES or (grouped and rows > kernels.MAX_GROUPED_ROWS):
            return "reference"
    return face


# ------------------------------------------------------------------------------------ faces on unit text rows


def _kernels():
    from semivl_fast.kernels import cost_volume as kernels  # lazy: imports triton

    return kernels


def duplicate_rows(rows: Tensor, groups: Tensor) -> tuple[Tensor, Tensor]:
    """For every row (R, C) of class ``groups`` (R,): the first row of the same class with bitwise-identical values
    (itself if none) and how many rows share it, both (R,) int64.

    Identical rows tie exactly in the concept max, but a GEMM may round their scores differently (BLAS edge tiles,
    tensor-core fragments); the Triton backward uses this to treat them as the ties they are (the C++ kernel finds
    them itself).
    """
    r = rows.shape[0]
    key = torch.cat([groups.to(torch.float64)[:, None], rows.detach().to(torch.float64)], 1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    index = torch.arange(r, device=rows.device)
    first = torch.full((r,), r, dtype=torch.int64, device=rows.device).scatter_reduce(0, inverse, index, "amin")
    return first[inverse], torch.bincount(inverse, minlength=r)[inverse]


def _output(image: Tensor, rows: Tensor, groups: Tensor | None, num_classes: int) -> Tensor:
    k = num_classes if groups is not None else rows.shape[0]
    return _common.empty((image.shape[0], k, *image.shape[2:]), image.dtype, image.device)


def _gradients(image: Tensor, rows: Tensor, need_image: bool, need_text: bool) -> tuple[Tensor, Tensor]:
    """The gradient outputs (image, text rows); an unneeded one is an empty (0,) tensor."""
    gx = _common.empty(image.shape, image.dtype, image.device) if need_image else image.new_empty((0,))
    gt = _common.empty(rows.shape, rows.dtype, rows.device) if need_text else rows.new_empty((0,))
    return gx, gt


def _forward_cpp(image: Tensor, rows: Tensor, groups: Tensor | None, num_classes: int) -> Tensor:
    out = _output(image, rows, groups, num_classes)
    torch.ops.semivl_fast_C.cost_volume_forward_(image.contiguous(), rows.contiguous(), groups, num_classes, out)
    return out


def _backward_cpp(grad: Tensor, image: Tensor, rows: Tensor, groups: Tensor | None, num_classes: int, out: Tensor,
                  need_image: bool, need_text: bool) -> tuple[Tensor, Tensor]:
    gx, gt = _gradients(image, rows, need_image, need_text)
    torch.ops.semivl_fast_C.cost_volume_backward_(grad.to(image.dtype).contiguous(), image.contiguous(),
                                                  rows.contiguous(), groups, num_classes,
                                                  gx if need_image else None, gt if need_text else None)
    return gx, gt


def _forward_triton(image: Tensor, rows: Tensor, groups: Tensor | None, num_classes: int) -> Tensor:
    out = _output(image, rows, groups, num_classes)
    _kernels().forward(image, rows, groups, num_classes, out)
    return out


def _backward_triton(grad: Tensor, image: Tensor, rows: Tensor, groups: Tensor | None, num_classes: int,
                     out: Tensor, need_image: bool, need_text: bool) -> tuple[Tensor, Tensor]:
    gx, gt = _gradients(image, rows, need_image, need_text)
    duplicates = duplicate_rows(rows, groups) if groups is not None else None
    _kernels().backward(grad, image, rows, groups, num_classes, out, gx if need_image else None,
                        gt if need_text else None, duplicates)
    return gx, gt


_FORWARD = {"cpp": _forward_cpp, "triton": _forward_triton}
_BACKWARD = {"cpp": _backward_cpp, "triton": _backward_triton}


# ------------------------------------------------------------------------------------------------- custom op


@torch.library.custom_op("semivl_fast::cost_volume", mutates_args=())
def _cost_volume_op(image: Tensor, rows: Tensor, groups: Tensor | None, num_classes: int) -> Tensor:
    face = select_face(image.device, image.dtype, rows.shape[0], groups is not None)
    return _common.kernel(OP, face, _FORWARD)(image, rows, groups, num_classes)


@_cost_volume_op.register_fake
def _(image, rows, groups, num_classes):
    k = rows.shape[0] if groups is None else num_classes
    return image.new_empty((image.shape[0], k, image.shape[2], image.shape[3]))


@torch.library.custom_op("semivl_fast::cost_volume_backward", mutates_args=())
def _cost_volume_backward_op(grad: Tensor, image: Tensor, rows: Tensor, groups: Tensor | None, num_classes: int,
                             out: Tensor, need_image: bool, need_text: bool) -> tuple[Tensor, Tensor]:
    face = select_face(image.device, image.dtype, rows.shape[0], groups is not None)
    return _common.kernel(OP, face, _BACKWARD)(grad, image, rows, groups, num_classes, out, need_image, need_text)


@_cost_volume_backward_op.register_fake
def _(grad, image, rows, groups, num_classes, out, need_image, need_text):
    return (image.new_empty(image.shape if need_image else (0,)), rows.new_empty(rows.shape if need_text else (0,)))


def _setup_context(ctx, inputs, output):
    image, rows, groups, num_classes = inputs
    ctx.save_for_backward(image, rows, groups, output)
    ctx.num_classes = num_classes


def _backward(ctx, grad):
    image, rows, groups, out = ctx.saved_tensors
    need_image, need_text = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gx, gt = _cost_volume_backward_op(grad, image, rows, groups, ctx.num_classes, out, need_image, need_text)
    return gx if need_image else None, gt if need_text else None, None, None


_cost_volume_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------- public entry


def cost_volume(image: Tensor, text: Tensor, groups: Tensor | None = None, num_classes: int | None = None) -> Tensor:
    """Cosine cost volume of image features (B, C, H, W) and text (N, C) / (N, T, C) embeddings; differentiable.

    Templates are ensembled as in ``ensemble_text``; with ``groups`` (N,) int64 (class of every row) the output is the
    concept max over ``num_classes`` classes (default ``groups.max() + 1``; pass it under torch.compile). Returns
    (B, N, H, W) or (B, num_classes, H, W) in the image dtype, contiguous; same values as ``cost_volume_reference``.
    """
    k = _check(image, text, groups, num_classes)
    rows = ensemble_text(text).to(image.dtype)
    if select_face(image.device, image.dtype, rows.shape[0], groups is not None) == "reference":
        return _scores(image, rows, groups, k)  # plain PyTorch: torch.compile sees inside, autograd differentiates
    if groups is not None:
        groups = groups.to(image.device).contiguous()
    return _cost_volume_op(image, rows.contiguous(), groups, k)
