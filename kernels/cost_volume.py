"""Triton kernels of the dense vision-text cost volume (GPU face of ``semivl_fast.ops.cost_volume``).

Operands: image (B, C, H, W) with any strides (channels_last and transposed views are read in place), unit text rows
(R, C) contiguous in the image dtype, optional ``groups`` (R,) int64 class of every row (concept max over
``num_classes`` classes). Output (B, K, H, W) contiguous, K = num_classes with groups else R, allocated by the caller
like the gradients. ``forward`` and ``backward`` are the launchers.

Kernels (fp32 accumulation everywhere; fp32 operands use TF32 tensor cores on the GPU unless
``SEMIVL_FAST_TF32=0``; under ``TRITON_INTERPRET=1`` bfloat16 tiles are upcast before ``tl.dot``):

* ``_cv_fwd_kernel``: one program per (pixel tile, row tile, image); loops over C with ``tl.dot`` while summing the
  squares of the same image tile, then scales every column by 1 / max(|x|, eps). With groups one program holds all
  rows (BLOCK_R >= R, at most 1024) and writes the per-class maximum straight from registers.
* ``_cv_bwd_dx_kernel`` (no groups): per pixel tile, 1 / |x| and alpha = sum_r g_r s_r (from the saved output),
  then per C chunk d = text^T g (``tl.dot`` over row chunks) and dx = rn * d - rn^2 * alpha * x. Also stores rn
  (B, H*W) for the text gradient.
* ``_cv_bwd_dt_kernel`` (no groups): split-K GEMM text_grad = sum over pixel tiles of g x_hat^T; each of SPLIT
  programs per (row tile, C tile) writes its partial sum, summed afterwards (deterministic).
* ``_cv_bwd_groups_kernel``: recomputes the scores of all rows for a 16-pixel tile, finds each class's maximum and
  its ties (the upstream gradient is split evenly between tied rows, as ``scatter_reduce(amax)`` does;
  bitwise-identical rows of a class are folded into one representative first, since they tie by definition but a
  tensor-core/BLAS tile may round them differently), then writes dx (one launch) or accumulates the text gradient
  into its program's partial slot (a second launch, up to 64 persistent programs; summed afterwards). The caller
  passes the duplicate rows in (``semivl_fast.ops.cost_volume.duplicate_rows``).

None of them creates a (B, R, H, W) tensor: scores live in registers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import DOT_DTYPES, INTERPRET, fp32_precision
from ._aot import AotSpec

OP = "cost_volume"
EPS = 1e-12
MAX_GROUPED_ROWS = 1024  # with groups one program holds all rows
DTYPES = tuple(DOT_DTYPES)  # what the launchers take


# --------------------------------------------------------------------------------------------------------- kernels


@triton.jit
def _scores(x_base, pix, mask_p, t_ptr, offs_r, mask_r, C, sxc, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr,
            BLOCK_C: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """Raw scores text[offs_r] . x (BLOCK_R, BLOCK_P) and the squared norms (BLOCK_P,) of one pixel tile."""
    acc = tl.zeros((BLOCK_R, BLOCK_P), dtype=tl.float32)
    sumsq = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < C
        x = tl.load(x_base + offs_c[:, None] * sxc + pix[None, :], mask=mask_c[:, None] & mask_p[None, :], other=0.0)
        xf = x.to(tl.float32)
        sumsq += tl.sum(xf * xf, axis=0)
        t = tl.load(t_ptr + offs_r[:, None] * C + offs_c[None, :], mask=mask_r[:, None] & mask_c[None, :], other=0.0)
        if UPCAST:
            acc = tl.dot(t.to(tl.float32), xf, acc, input_precision=PRECISION)
        else:
            acc = tl.dot(t, x, acc, input_precision=PRECISION)
    return acc, sumsq


@triton.jit
def _inv_norm(sumsq, eps):
    """(|x|, 1 / max(|x|, eps)) as in F.normalize."""
    nrm = tl.sqrt_rn(sumsq)
    return nrm, tl.div_rn(tl.full(nrm.shape, 1.0, tl.float32), tl.maximum(nrm, eps))


@triton.jit
def _cv_fwd_kernel(x_ptr, t_ptr, g_ptr, out_ptr, C, W, HW, R, K, sxb, sxc, sxh, sxw, eps,
                   HAS_GROUPS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                   UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    pid_p = tl.program_id(0)
    pid_r = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < HW
    pix = (offs_p // W) * sxh + (offs_p % W) * sxw
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = offs_r < R
    acc, sumsq = _scores(x_ptr + b * sxb, pix, mask_p, t_ptr, offs_r, mask_r, C, sxc, BLOCK_P, BLOCK_R, BLOCK_C,
                         UPCAST, PRECISION)
    _, rn = _inv_norm(sumsq, eps)
    if HAS_GROUPS:
        grp = tl.load(g_ptr + offs_r, mask=mask_r, other=-1)
        out_base = out_ptr + b * K * HW
        for k in range(0, K):
            m = tl.max(tl.where(grp[:, None] == k, acc, float("-inf")), axis=0)
            tl.store(out_base + k * HW + offs_p, (m * rn).to(out_ptr.dtype.element_ty), mask=mask_p)
    else:
        out = acc * rn[None, :]
        tl.store(out_ptr + b * R * HW + offs_r[:, None] * HW + offs_p[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=mask_r[:, None] & mask_p[None, :])


@triton.jit
def _cv_bwd_dx_kernel(go_ptr, x_ptr, t_ptr, out_ptr, gx_ptr, rn_ptr, C, W, HW, R, sxb, sxc, sxh, sxw, eps,
                      NEED_IMAGE: tl.constexpr, NEED_TEXT: tl.constexpr, BLOCK_P: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < HW
    pix = (offs_p // W) * sxh + (offs_p % W) * sxw
    x_base = x_ptr + b * sxb
    sumsq = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        x = tl.load(x_base + offs_c[:, None] * sxc + pix[None, :], mask=(offs_c < C)[:, None] & mask_p[None, :],
                    other=0.0).to(tl.float32)
        sumsq += tl.sum(x * x, axis=0)
    nrm, rn = _inv_norm(sumsq, eps)
    if NEED_TEXT:
        tl.store(rn_ptr + b * HW + offs_p, rn, mask=mask_p)
    if NEED_IMAGE:
        go_base = go_ptr + b * R * HW
        alpha = tl.zeros((BLOCK_P,), dtype=tl.float32)  # sum_r g_r s_r = d . x_hat
        for r0 in range(0, R, BLOCK_R):
            offs_r = r0 + tl.arange(0, BLOCK_R)
            m = (offs_r < R)[:, None] & mask_p[None, :]
            off = offs_r[:, None] * HW + offs_p[None, :]
            g = tl.load(go_base + off, mask=m, other=0.0).to(tl.float32)
            s = tl.load(out_ptr + b * R * HW + off, mask=m, other=0.0).to(tl.float32)
            alpha += tl.sum(g * s, axis=0)
        coef = tl.where(nrm >= eps, alpha * rn * rn, 0.0)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            d = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
            for r0 in range(0, R, BLOCK_R):
                offs_r = r0 + tl.arange(0, BLOCK_R)
                mask_r = offs_r < R
                tT = tl.load(t_ptr + offs_r[None, :] * C + offs_c[:, None], mask=mask_c[:, None] & mask_r[None, :],
                             other=0.0)
                g = tl.load(go_base + offs_r[:, None] * HW + offs_p[None, :], mask=mask_r[:, None] & mask_p[None, :],
                            other=0.0)
                if UPCAST:
                    d = tl.dot(tT.to(tl.float32), g.to(tl.float32), d, input_precision=PRECISION)
                else:
                    d = tl.dot(tT, g, d, input_precision=PRECISION)
            m = mask_c[:, None] & mask_p[None, :]
            x = tl.load(x_base + offs_c[:, None] * sxc + pix[None, :], mask=m, other=0.0).to(tl.float32)
            gx = rn[None, :] * d - coef[None, :] * x
            tl.store(gx_ptr + b * C * HW + offs_c[:, None] * HW + offs_p[None, :], gx.to(gx_ptr.dtype.element_ty),
                     mask=m)


@triton.jit
def _cv_bwd_dt_kernel(go_ptr, x_ptr, rn_ptr, part_ptr, C, W, HW, R, n_tiles, n_ptiles, sxb, sxc, sxh, sxw, SPLIT,
                      BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, UPCAST: tl.constexpr,
                      PRECISION: tl.constexpr):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = offs_r < R
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for tile in range(pid_s, n_tiles, SPLIT):
        b = (tile // n_ptiles).to(tl.int64)
        offs_p = (tile % n_ptiles) * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_p = offs_p < HW
        pix = (offs_p // W) * sxh + (offs_p % W) * sxw
        g = tl.load(go_ptr + b * R * HW + offs_r[:, None] * HW + offs_p[None, :],
                    mask=mask_r[:, None] & mask_p[None, :], other=0.0).to(tl.float32)
        rn = tl.load(rn_ptr + b * HW + offs_p, mask=mask_p, other=0.0)
        xT = tl.load(x_ptr + b * sxb + offs_c[None, :] * sxc + pix[:, None], mask=mask_p[:, None] & mask_c[None, :],
                     other=0.0)
        xh = xT.to(tl.float32) * rn[:, None]  # x_hat: |entries| <= 1, safe in 16 bits
        if UPCAST:
            acc = tl.dot(g, xh, acc, input_precision=PRECISION)
        else:
            acc = tl.dot(g.to(xT.dtype), xh.to(xT.dtype), acc, input_precision=PRECISION)
    tl.store(part_ptr + pid_s.to(tl.int64) * R * C + offs_r[:, None] * C + offs_c[None, :], acc,
             mask=mask_r[:, None] & mask_c[None, :])


@triton.jit
def _cv_bwd_groups_kernel(go_ptr, x_ptr, t_ptr, g_ptr, mult_ptr, gx_ptr, part_ptr, C, W, HW, R, K, n_tiles, n_ptiles,
                          sxb, sxc, sxh, sxw, eps, NPROG, NEED_IMAGE: tl.constexpr, NEED_TEXT: tl.constexpr,
                          BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, UPCAST: tl.constexpr,
                          PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < R
    grp = tl.load(g_ptr + offs_r, mask=mask_r, other=-1)  # -1: a duplicate row, represented by an earlier one
    mult = tl.load(mult_ptr + offs_r, mask=mask_r, other=0.0)  # rows a representative stands for
    valid_r = mask_r & (grp >= 0) & (grp < K)
    for tile in range(pid, n_tiles, NPROG):
        b = (tile // n_ptiles).to(tl.int64)
        offs_p = (tile % n_ptiles) * BLOCK_P + tl.arange(0, BLOCK_P)
        mask_p = offs_p < HW
        pix = (offs_p // W) * sxh + (offs_p % W) * sxw
        x_base = x_ptr + b * sxb
        acc, sumsq = _scores(x_base, pix, mask_p, t_ptr, offs_r, mask_r, C, sxc, BLOCK_P, BLOCK_R, BLOCK_C, UPCAST,
                             PRECISION)
        nrm, rn = _inv_norm(sumsq, eps)
        # share of every representative row in its class gradient: mult / (rows tied at the class max), else 0
        wgt = tl.zeros((BLOCK_R, BLOCK_P), dtype=tl.float32)
        for k in range(0, K):
            in_k = grp[:, None] == k
            m = tl.max(tl.where(in_k, acc, float("-inf")), axis=0)
            eq = in_k & (acc == m[None, :])
            cnt = tl.sum(tl.where(eq, mult[:, None], 0.0), axis=0)
            wgt = tl.where(eq, mult[:, None] / tl.maximum(cnt, 1.0)[None, :], wgt)
        go = tl.load(go_ptr + b * K * HW + grp[:, None] * HW + offs_p[None, :],
                     mask=valid_r[:, None] & mask_p[None, :], other=0.0).to(tl.float32)
        G = wgt * go
        alpha = tl.sum(G * acc, axis=0) * rn  # sum_r G_r s_r
        coef = tl.where(nrm >= eps, alpha * rn * rn, 0.0)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            m = mask_c[:, None] & mask_p[None, :]
            x = tl.load(x_base + offs_c[:, None] * sxc + pix[None, :], mask=m, other=0.0)
            if NEED_IMAGE:
                tT = tl.load(t_ptr + offs_r[None, :] * C + offs_c[:, None], mask=mask_c[:, None] & mask_r[None, :],
                             other=0.0)
                if UPCAST:
                    d = tl.dot(tT.to(tl.float32), G, input_precision=PRECISION)
                else:
                    d = tl.dot(tT, G.to(tT.dtype), input_precision=PRECISION)
                gx = rn[None, :] * d - coef[None, :] * x.to(tl.float32)
                tl.store(gx_ptr + b * C * HW + offs_c[:, None] * HW + offs_p[None, :],
                         gx.to(gx_ptr.dtype.element_ty), mask=m)
            if NEED_TEXT:
                xh = x.to(tl.float32) * rn[None, :]  # x_hat: |entries| <= 1, safe in 16 bits
                if UPCAST:
                    pd = tl.dot(G, tl.trans(xh), input_precision=PRECISION)
                else:
                    pd = tl.dot(G.to(x.dtype), tl.trans(xh.to(x.dtype)), input_precision=PRECISION)
                pp = part_ptr + pid.to(tl.int64) * R * C + offs_r[:, None] * C + offs_c[None, :]
                pm = mask_r[:, None] & mask_c[None, :]
                tl.store(pp, tl.load(pp, mask=pm, other=0.0) + pd, mask=pm)


# -------------------------------------------------------------------------------------------------------- launchers


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(max(int(n), 1)))


# Tile sizes: the GPU's, or larger ones under the interpreter (fewer, bigger programs run faster there). The AOT
# specs ask for the GPU's with interpret=False.


def fwd_meta(R: int, C: int, HW: int, dtype: torch.dtype, grouped: bool, interpret: bool = INTERPRET) -> dict:
    """Tile sizes and launch options of ``_cv_fwd_kernel`` (with groups all rows in one tile, fewer pixels)."""
    wide = dtype != torch.float32  # 16-bit tiles: twice the channels per step
    if grouped:
        br = _pow2(R)
        bp = max(16, min(64, 4096 // br))
        bc = max(16, min(64 if wide else 32, 4096 // br))
        warps = 4 if br <= 128 else 8 if br <= 256 else 16
    else:
        br = min(64, _pow2(R))
        bp = min(64, _pow2(HW)) if not interpret else min(128, _pow2(HW))
        bc = 64 if wide or interpret else 32
        warps = 4
    return {"BLOCK_P": bp, "BLOCK_R": br, "BLOCK_C": bc, "num_warps": warps, "num_stages": 2}


def _ieee(dtype: torch.dtype, precision: str | None) -> bool:
    """fp32 dots without tensor cores (FMA): more live registers, so the backward kernels take smaller tiles."""
    return dtype == torch.float32 and (precision or fp32_precision()) == "ieee"


def groups_bwd_meta(R: int, C: int, HW: int, dtype: torch.dtype, precision: str | None = None,
                    interpret: bool = INTERPRET) -> dict:
    """All rows, 16 pixels: the (BLOCK_R, BLOCK_P) scores, weights and gradients stay live across the C loop."""
    br = _pow2(R)
    ieee = _ieee(dtype, precision)
    return {"BLOCK_P": 16 if not interpret else 64, "BLOCK_R": br, "BLOCK_C": max(16, min(64, 2048 // br)),
            "num_warps": (4 if br <= 128 else 8) * (2 if ieee and br <= 128 else 1),
            "num_stages": 1 if ieee and br > 128 else 2}


def dx_meta(R: int, C: int, HW: int, dtype: torch.dtype, precision: str | None = None,
            interpret: bool = INTERPRET) -> dict:
    return {"BLOCK_P": min(64, _pow2(HW)) if not interpret else min(128, _pow2(HW)), "BLOCK_R": min(32, _pow2(R)),
            "BLOCK_C": 32 if _ieee(dtype, precision) else 64, "num_warps": 8 if dtype == torch.float32 else 4,
            "num_stages": 2}


def dt_meta(R: int, C: int, HW: int, dtype: torch.dtype, precision: str | None = None,
            interpret: bool = INTERPRET) -> dict:
    ieee = _ieee(dtype, precision)
    return {"BLOCK_P": 32 if not interpret else min(128, _pow2(HW)), "BLOCK_R": min(64, _pow2(R)),
            "BLOCK_C": 32 if ieee else 64, "num_warps": 8 if ieee else 4, "num_stages": 2}


def _flags(dtype: torch.dtype) -> dict:
    return {"UPCAST": INTERPRET and dtype == torch.bfloat16, "PRECISION": fp32_precision()}


def _check(image: torch.Tensor, text: torch.Tensor, groups: torch.Tensor | None, num_classes: int) -> None:
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        raise ValueError(f"{OP} (triton): argument 'image' must be a 4-D tensor (B, C, H, W)")
    if image.dtype not in DTYPES:
        raise TypeError(f"{OP} (triton): argument 'image' must be float32/float16/bfloat16, got {image.dtype}")
    if image.device.type != "cuda" and not (INTERPRET and image.device.type == "cpu"):
        raise ValueError(f"{OP} (triton): argument 'image' must be a CUDA tensor (CPU tensors only under "
                         f"TRITON_INTERPRET=1), got {image.device}")
    if text.dim() != 2 or text.shape[1] != image.shape[1] or text.shape[0] < 1:
        raise ValueError(f"{OP} (triton): argument 'text' must be (R, C) unit rows with R >= 1 and C = "
                         f"{image.shape[1]}, got {tuple(text.shape)}")
    if text.dtype != image.dtype or text.device != image.device:
        raise TypeError(f"{OP} (triton): argument 'text' must have the image dtype and device "
                        f"({image.dtype}, {image.device}), got ({text.dtype}, {text.device})")
    if groups is not None:
        if groups.dtype != torch.int64 or groups.shape != (text.shape[0],) or groups.device != image.device:
            raise ValueError(f"{OP} (triton): argument 'groups' must be int64 of shape ({text.shape[0]},) on "
                             f"{image.device}, got {groups.dtype} {tuple(groups.shape)} on {groups.device}")
        if text.shape[0] > MAX_GROUPED_ROWS:
            raise ValueError(f"{OP} (triton): with groups at most {MAX_GROUPED_ROWS} text rows are supported, got "
                             f"{text.shape[0]}; use the 'reference' backend")
        if num_classes < 1:
            raise ValueError(f"{OP} (triton): argument 'num_classes' must be >= 1 with groups, got {num_classes}")


def _image_args(image: torch.Tensor) -> tuple[int, ...]:
    _, c, h, w = image.shape
    sb, sc, sh, sw = image.stride()
    return c, w, h * w, sb, sc, sh, sw


def _check_buffer(name: str, t: torch.Tensor, shape: tuple[int, ...], like: torch.Tensor) -> None:
    """An output written in place: contiguous, of ``shape``, with the dtype and device of ``like``."""
    if tuple(t.shape) != shape or t.dtype != like.dtype or t.device != like.device or not t.is_contiguous():
        raise ValueError(f"{OP} (triton): argument '{name}' must be a contiguous {like.dtype} tensor of shape {shape} "
                         f"on {like.device}, got {t.dtype} {tuple(t.shape)} on {t.device}")


def forward(image: torch.Tensor, text: torch.Tensor, groups: torch.Tensor | None, num_classes: int,
            out: torch.Tensor) -> None:
    """Writes ``out`` (B, K, H, W): cosine scores of image (B, C, H, W) with unit text rows (R, C); concept max with
    groups (K = num_classes, else K = R)."""
    _check(image, text, groups, num_classes)
    b, c, h, w = image.shape
    r, hw = text.shape[0], h * w
    k = num_classes if groups is not None else r
    _check_buffer("out", out, (b, k, h, w), image)
    if out.numel() == 0:
        return
    text = text.contiguous()
    meta = fwd_meta(r, c, hw, image.dtype, groups is not None)
    grid = (triton.cdiv(hw, meta["BLOCK_P"]), 1 if groups is not None else triton.cdiv(r, meta["BLOCK_R"]), b)
    cc, ww, hw_, sb, sc, sh, sw = _image_args(image)
    _cv_fwd_kernel[grid](image, text, groups if groups is not None else text, out, cc, ww, hw_, r, k, sb, sc, sh, sw,
                         EPS, HAS_GROUPS=groups is not None, **meta, **_flags(image.dtype))


def backward(grad: torch.Tensor, image: torch.Tensor, text: torch.Tensor, groups: torch.Tensor | None,
             num_classes: int, out: torch.Tensor, grad_image: torch.Tensor | None, grad_text: torch.Tensor | None,
             duplicates: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """Writes ``grad_image`` (B, C, H, W) and/or ``grad_text`` (R, C) (None: not needed) for the upstream grad
    (B, K, H, W).

    ``out`` is the forward output (used for sum_r g_r s_r without groups). With groups, ``duplicates`` = (first
    identical row of the same class, how many rows share it), both (R,) int64, as
    ``semivl_fast.ops.cost_volume.duplicate_rows`` gives them.
    """
    _check(image, text, groups, num_classes)
    b, c, h, w = image.shape
    r, hw = text.shape[0], h * w
    k = num_classes if groups is not None else r
    if grad.shape != (b, k, h, w) or out.shape != (b, k, h, w):
        raise ValueError(f"{OP} (triton): arguments 'grad' and 'out' must have shape {(b, k, h, w)}, got "
                         f"{tuple(grad.shape)} and {tuple(out.shape)}")
    if grad_image is not None:
        _check_buffer("grad_image", grad_image, (b, c, h, w), image)
    if grad_text is not None:
        _check_buffer("grad_text", grad_text, (r, c), image)
    if groups is not None and (duplicates is None or any(t.shape != (r,) for t in duplicates)):
        raise ValueError(f"{OP} (triton): with groups, argument 'duplicates' must be two ({r},) tensors "
                         "(semivl_fast.ops.cost_volume.duplicate_rows)")
    need_image, need_text = grad_image is not None, grad_text is not None
    if not (need_image or need_text):
        return
    if b * hw == 0 or c == 0:
        for t in (grad_image, grad_text):
            if t is not None:
                t.zero_()
        return
    dev, dt = image.device, image.dtype
    grad = grad.to(dt).contiguous()
    text = text.contiguous()
    cc, ww, hw_, sb, sc, sh, sw = _image_args(image)
    flags = _flags(dt)
    if groups is None:
        meta = dx_meta(r, c, hw, dt)
        rn = torch.empty((b, hw), dtype=torch.float32, device=dev) if need_text else grad
        _cv_bwd_dx_kernel[(triton.cdiv(hw, meta["BLOCK_P"]), b)](
            grad, image, text, out.contiguous(), grad_image if need_image else grad, rn, cc, ww, hw_, r, sb, sc, sh,
            sw, EPS, NEED_IMAGE=need_image, NEED_TEXT=need_text, **meta, **flags)
        if need_text:
            meta = dt_meta(r, c, hw, dt)
            n_ptiles = triton.cdiv(hw, meta["BLOCK_P"])
            n_tiles = b * n_ptiles
            blocks = triton.cdiv(r, meta["BLOCK_R"]) * triton.cdiv(c, meta["BLOCK_C"])
            split = min(n_tiles, 4 if INTERPRET else max(1, min(64, triton.cdiv(264, blocks))))
            part = torch.empty((split, r, c), dtype=torch.float32, device=dev)
            _cv_bwd_dt_kernel[(triton.cdiv(r, meta["BLOCK_R"]), triton.cdiv(c, meta["BLOCK_C"]), split)](
                grad, image, rn, part, cc, ww, hw_, r, n_tiles, n_ptiles, sb, sc, sh, sw, split, **meta, **flags)
            grad_text.copy_(part.sum(0))
        return
    rep, mult = duplicates
    representative = rep == torch.arange(r, device=dev)
    meta = groups_bwd_meta(r, c, hw, dt)
    n_ptiles = triton.cdiv(hw, meta["BLOCK_P"])
    n_tiles = b * n_ptiles
    nprog = min(n_tiles, 4 if INTERPRET else 64) if need_text else n_tiles
    part = torch.zeros((nprog, r, c), dtype=torch.float32, device=dev) if need_text else grad
    args = (grad, image, text, torch.where(representative, groups, -1), mult.float(),
            grad_image if need_image else grad, part, cc, ww, hw_, r, num_classes, n_tiles, n_ptiles, sb, sc, sh, sw,
            EPS)
    # one launch per gradient: each recomputes the scores, but holds half the live registers
    if need_image:
        _cv_bwd_groups_kernel[(n_tiles,)](*args, n_tiles, NEED_IMAGE=True, NEED_TEXT=False, **meta, **flags)
    if need_text:
        _cv_bwd_groups_kernel[(nprog,)](*args, nprog, NEED_IMAGE=False, NEED_TEXT=True, **meta, **flags)
        grad_text.copy_(part.sum(0)[rep] / mult[:, None])  # a representative's gradient covers all its copies


# ------------------------------------------------------------------------------------------------------------- AOT


def _spec(name: str, kernel, sig: dict[str, str], meta: dict, **constexprs) -> AotSpec:
    meta = dict(meta)
    warps, stages = meta.pop("num_warps"), meta.pop("num_stages")
    return AotSpec(name, kernel, sig, {**meta, **constexprs}, num_warps=warps, num_stages=stages)


def _aot_specs() -> list[AotSpec]:
    """The kernels at the benchmark shapes (kernels.md §1, §4) with the GPU's tile sizes: SemiVL decoder C=512,
    32x32 / 51x51, N=21/150 in bf16 and fp32; guidance MaskCLIP 98 / 171 concept rows with groups; ViL-Seg C=64,
    12x12, K=64."""
    specs = []
    img = lambda t: {"x_ptr": t}
    i32 = "i32"
    dims = {"C": i32, "W": i32, "HW": i32, "R": i32}
    strides = {"sxb": i32, "sxc": i32, "sxh": i32, "sxw": i32}
    for dtype, prec in ((torch.float32, "tf32"), (torch.float32, "ieee"), (torch.bfloat16, "tf32")):
        t = "*" + DOT_DTYPES[dtype]
        suffix = DOT_DTYPES[dtype] + ("_ieee" if prec == "ieee" else "")  # ieee: SEMIVL_FAST_TF32=0
        for r, c, hw, grouped, tag in ((21, 512, 1024, False, "voc"), (150, 512, 2601, False, "ade"),
                                       (64, 64, 144, False, "vilseg"), (98, 512, 1024, True, "voc98"),
                                       (171, 512, 1024, True, "concepts171")):
            fm = fwd_meta(r, c, hw, dtype, grouped, interpret=False)
            flags = {"UPCAST": False, "PRECISION": prec}
            specs.append(_spec(f"cv_fwd_{tag}_{suffix}", _cv_fwd_kernel,
                               {**img(t), "t_ptr": t, "g_ptr": "*i64", "out_ptr": t, **dims, "K": i32, **strides,
                                "eps": "fp32"}, fm, HAS_GROUPS=grouped, **flags))
            if grouped:
                for need_image, part in ((True, "dx"), (False, "dt")):
                    specs.append(_spec(f"cv_bwd_groups_{part}_{tag}_{suffix}", _cv_bwd_groups_kernel,
                                       {"go_ptr": t, **img(t), "t_ptr": t, "g_ptr": "*i64", "mult_ptr": "*fp32",
                                        "gx_ptr": t, "part_ptr": "*fp32", **dims, "K": i32, "n_tiles": i32,
                                        "n_ptiles": i32, **strides, "eps": "fp32", "NPROG": i32},
                                       groups_bwd_meta(r, c, hw, dtype, prec, interpret=False),
                                       NEED_IMAGE=need_image, NEED_TEXT=not need_image, **flags))
                continue
            specs.append(_spec(f"cv_bwd_dx_{tag}_{suffix}", _cv_bwd_dx_kernel,
                               {"go_ptr": t, **img(t), "t_ptr": t, "out_ptr": t, "gx_ptr": t, "rn_ptr": "*fp32",
                                **dims, **strides, "eps": "fp32"}, dx_meta(r, c, hw, dtype, prec, interpret=False),
                               NEED_IMAGE=True, NEED_TEXT=True, **flags))
            specs.append(_spec(f"cv_bwd_dt_{tag}_{suffix}", _cv_bwd_dt_kernel,
                               {"go_ptr": t, **img(t), "rn_ptr": "*fp32", "part_ptr": "*fp32", **dims, "n_tiles": i32,
                                "n_ptiles": i32, **strides, "SPLIT": i32},
                               dt_meta(r, c, hw, dtype, prec, interpret=False), **flags))
    return specs


AOT_SPECS: list[AotSpec] = _aot_specs()
