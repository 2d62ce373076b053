"""Triton kernels of the fused pseudo-label loss (GPU face of ``semivl_fast.ops.pseudo_label_loss``; the same
contract as the C++ kernels, csrc/registration.cpp, except that the row sums come as per-program partial sums).

Forward: one program per (tile of BLOCK_P high-res pixels of one row, row, image). The bilinear taps of every pixel
are computed in-kernel (PyTorch's align_corners=False rule) and the four low-res taps gathered per (pixel, class)
tile of BLOCK_N classes: an online softmax over class chunks gives the teacher's confidence and argmax (CutMix:
the partner's taps inside the box, masked loads, so each pixel reads one teacher), then an online logsumexp over the
student's classes gives the cross-entropy of the accepted pixels. Writes lse and code per pixel and the program's
four partial sums; (B, N, H, W) never exists.

Backward: one program per (BLOCK_J low-res columns of one low-res row, image x class block): a gather over the
high-res pixels whose taps include those columns (a window of candidate rows around the inverse mapping, and the
columns of the tile's support in BLOCK_X steps; the exact tap weights zero the rest). Each step recomputes the
softmax of a (BLOCK_X, BLOCK_N) pixel tile from the saved lse and applies the adjoint of the horizontal taps as a
(BLOCK_J, BLOCK_X) x (BLOCK_X, BLOCK_N) product (tl.dot, IEEE fp32), times the row's tap weight. Each low-res logit
is written once: no atomics.

The launchers ``forward`` and ``backward`` write into outputs the caller allocates (``partial_sums_shape`` gives the
partial sums' shape).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import INTERPRET
from ._aot import AotSpec

OP = "pseudo_label_loss"
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # what the launchers take


@triton.jit
def _tap(o, in_size, out_size, ACC: tl.constexpr):
    """(i0, i1, l0, l1) of output index/indices ``o``: PyTorch's upsample_bilinear2d rule (align_corners=False)."""
    ratio = in_size.to(ACC) / out_size.to(ACC)
    real = ratio * (o.to(ACC) + 0.5) - 0.5
    real = tl.maximum(real, 0.0)
    i0 = tl.minimum(tl.floor(real.to(tl.float32)).to(tl.int32), in_size - 1)  # floorf, like ATen
    l1 = tl.minimum(tl.maximum(real - i0.to(ACC), 0.0), 1.0)
    i1 = i0 + (i0 < in_size - 1).to(tl.int32)
    same = in_size == out_size
    i0 = tl.where(same, o, i0)
    i1 = tl.where(same, o, i1)
    l1 = tl.where(same, 0.0, l1)
    return i0, i1, 1.0 - l1, l1


@triton.jit
def _taps2d(y, x, h_in, w_in, H, W, ACC: tl.constexpr):
    """Per output pixel (row y, columns x): the int32 offsets of its four low-res taps in an (h_in, w_in) plane and
    the weights (ly0, ly1, lx0, lx1)."""
    y0, y1, ly0, ly1 = _tap(y, h_in, H, ACC)
    x0, x1, lx0, lx1 = _tap(x, w_in, W, ACC)
    return y0 * w_in + x0, y0 * w_in + x1, y1 * w_in + x0, y1 * w_in + x1, ly0, ly1, lx0, lx1


@triton.jit
def _bilinear(ptr, o00, o01, o10, o11, ly0, ly1, lx0, lx1, mask, ACC: tl.constexpr):
    """ly0 * (lx0 * p[o00] + lx1 * p[o01]) + ly1 * (lx0 * p[o10] + lx1 * p[o11]): the formula of the C++ kernels."""
    a = tl.load(ptr + o00, mask=mask, other=0.0).to(ACC)
    b = tl.load(ptr + o01, mask=mask, other=0.0).to(ACC)
    c = tl.load(ptr + o10, mask=mask, other=0.0).to(ACC)
    d = tl.load(ptr + o11, mask=mask, other=0.0).to(ACC)
    return ly0 * (lx0 * a + lx1 * b) + ly1 * (lx0 * c + lx1 * d)


@triton.jit
def _pseudo_label_loss_fwd_kernel(student, teacher, mix, target, boxes, ignore, ignore_mix, lse_out, code_out,
                                  part_out, N, H, W, hs, ws, ht, wt, hm, wm, threshold, scale,
                                  SUPERVISED: tl.constexpr, HAS_MIX: tl.constexpr, HAS_IGNORE: tl.constexpr,
                                  HAS_IGNORE_MIX: tl.constexpr, USE_THRESHOLD: tl.constexpr, BLOCK_P: tl.constexpr,
                                  BLOCK_N: tl.constexpr, ACC: tl.constexpr):
    pid_x = tl.program_id(0)
    y = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    n_x = tl.num_programs(0)
    x = pid_x * BLOCK_P + tl.arange(0, BLOCK_P)
    xm = x < W
    pix = (b * H + y) * W + x
    offs_n = tl.arange(0, BLOCK_N)
    NEG_INF = float("-inf")

    if SUPERVISED:
        t = tl.load(target + pix, mask=xm, other=255)
        tl.device_assert((t == 255) | ((t >= 0) & (t < N)), "pseudo_label_loss: target labels must be in [0, N) or 255")
        valid = xm & (t != 255)
        label = tl.where(valid, t, 0).to(tl.int32)
        conf = tl.full([BLOCK_P], 1.0, ACC)
    else:
        # Each pixel reads one teacher: its own, or the CutMix partner's inside the box (taps selected per pixel).
        o00, o01, o10, o11, ly0, ly1, lx0, lx1 = _taps2d(y, x, ht, wt, H, W, ACC)
        base = teacher + b * N * ht * wt + tl.zeros([BLOCK_P], tl.int32)  # per-pixel pointer
        plane = tl.zeros([BLOCK_P], tl.int32) + ht * wt
        if HAS_MIX:
            by0 = tl.load(boxes + 4 * b)
            bx0 = tl.load(boxes + 4 * b + 1)
            by1 = tl.load(boxes + 4 * b + 2)
            bx1 = tl.load(boxes + 4 * b + 3)
            inside = (y >= by0) & (y < by1) & (x >= bx0) & (x < bx1)
            m00, m01, m10, m11, mly0, mly1, mlx0, mlx1 = _taps2d(y, x, hm, wm, H, W, ACC)
            o00 = tl.where(inside, m00, o00)
            o01 = tl.where(inside, m01, o01)
            o10 = tl.where(inside, m10, o10)
            o11 = tl.where(inside, m11, o11)
            ly0 = tl.where(inside, mly0, ly0)
            ly1 = tl.where(inside, mly1, ly1)
            lx0 = tl.where(inside, mlx0, lx0)
            lx1 = tl.where(inside, mlx1, lx1)
            base = tl.where(inside, mix + b * N * hm * wm, base)
            plane = tl.where(inside, hm * wm, plane)
        else:
            inside = x < 0
        m = tl.full([BLOCK_P], NEG_INF, ACC)
        s = tl.zeros([BLOCK_P], ACC)
        arg = tl.zeros([BLOCK_P], tl.int32)
        for n0 in range(0, N, BLOCK_N):
            n = n0 + offs_n
            nm = n < N
            ptr = base[:, None] + n[None, :] * plane[:, None]
            v = _bilinear(ptr, o00[:, None], o01[:, None], o10[:, None], o11[:, None], ly0[:, None], ly1[:, None],
                          lx0[:, None], lx1[:, None], xm[:, None] & nm[None, :], ACC)
            v = tl.where(nm[None, :], v * scale, NEG_INF)
            cmax, carg = tl.max(v, axis=1, return_indices=True, return_indices_tie_break_left=True)
            new_m = tl.maximum(m, cmax)
            s = s * tl.exp(m - new_m) + tl.sum(tl.exp(v - new_m[:, None]), axis=1)
            arg = tl.where(cmax > m, carg.to(tl.int32) + n0, arg)
            m = new_m
        conf = 1.0 / s
        pad = x < 0
        if HAS_IGNORE:
            pad = tl.load(ignore + pix, mask=xm & ~inside, other=0) != 0
        if HAS_IGNORE_MIX:
            pad = tl.where(inside, tl.load(ignore_mix + pix, mask=xm & inside, other=0) != 0, pad)
        elif HAS_MIX:
            pad = pad & ~inside
        valid = xm & ~pad
        label = arg
    if USE_THRESHOLD:
        accepted = valid & (conf >= threshold)
    else:
        accepted = valid

    # the student's cross-entropy on the accepted pixels
    o00, o01, o10, o11, ly0, ly1, lx0, lx1 = _taps2d(y, x, hs, ws, H, W, ACC)
    s_base = student + b * N * hs * ws
    m = tl.full([BLOCK_P], NEG_INF, ACC)
    s = tl.zeros([BLOCK_P], ACC)
    vl = tl.zeros([BLOCK_P], ACC)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + offs_n
        nm = n < N
        v = _bilinear(s_base + n[None, :] * (hs * ws), o00[:, None], o01[:, None], o10[:, None], o11[:, None],
                      ly0[:, None], ly1[:, None], lx0[:, None], lx1[:, None], accepted[:, None] & nm[None, :], ACC)
        v = tl.where(nm[None, :], v, NEG_INF)
        vl += tl.sum(tl.where(n[None, :] == label[:, None], v, 0.0), axis=1)
        new_m = tl.maximum(m, tl.max(v, axis=1))
        s = s * tl.exp(m - new_m) + tl.sum(tl.exp(v - new_m[:, None]), axis=1)
        m = new_m
    lse = m + tl.log(s)
    tl.store(lse_out + pix, tl.where(accepted, lse, 0.0), mask=xm)
    tl.store(code_out + pix, tl.where(accepted, label, -1), mask=xm)
    part = part_out + ((b * H + y) * n_x + pid_x) * 4
    tl.store(part, tl.sum(tl.where(accepted, lse - vl, 0.0), axis=0))
    tl.store(part + 1, tl.sum(valid.to(ACC), axis=0))
    tl.store(part + 2, tl.sum(accepted.to(ACC), axis=0))
    tl.store(part + 3, tl.sum(tl.where(valid, conf, 0.0), axis=0))


@triton.jit
def _pseudo_label_loss_bwd_kernel(student, lse, code, gscale, grad, N, H, W, h, w, span_y, BLOCK_J: tl.constexpr,
                                  BLOCK_X: tl.constexpr, BLOCK_N: tl.constexpr, ACC: tl.constexpr):
    pid_j = tl.program_id(0)
    i = tl.program_id(1)
    pid_bn = tl.program_id(2)
    n_blocks = tl.cdiv(N, BLOCK_N)
    b = (pid_bn // n_blocks).to(tl.int64)
    n = (pid_bn % n_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    nm = n < N
    j0 = pid_j * BLOCK_J
    j = j0 + tl.arange(0, BLOCK_J)
    jm = j < w
    # High-res rows and columns that can feed low-res row i and columns [j0, j0 + BLOCK_J): a window around the
    # inverse mapping with 2 indices of slack on each side (the tap weights are exact, so extra candidates add 0).
    inv_y = H.to(ACC) / h.to(ACC)
    inv_x = W.to(ACC) / w.to(ACC)
    y_start = tl.maximum(tl.floor((i.to(ACC) - 0.5) * inv_y - 0.5).to(tl.int32) - 2, 0)
    x_lo = tl.maximum(tl.floor((j0.to(ACC) - 0.5) * inv_x - 0.5).to(tl.int32) - 2, 0)
    x_hi = tl.minimum(tl.ceil((tl.minimum(j0 + BLOCK_J, w).to(ACC) + 0.5) * inv_x - 0.5).to(tl.int32) + 2, W - 1)
    n_xt = tl.cdiv(x_hi - x_lo + 1, BLOCK_X)
    planes = student + b * N * h * w + n[None, :] * (h * w)
    acc = tl.zeros([BLOCK_J, BLOCK_N], ACC)
    for dy in range(0, span_y):
        y = y_start + dy
        y0, y1, ly0, ly1 = _tap(y, h, H, ACC)
        wy = tl.where(y0 == i, ly0, 0.0) + tl.where(y1 == i, ly1, 0.0)
        if (y < H) & (wy != 0.0):
            for xt in range(0, n_xt):
                x = x_lo + xt * BLOCK_X + tl.arange(0, BLOCK_X)
                x0, x1, lx0, lx1 = _tap(x, w, W, ACC)
                pix = (b * H + y) * W + x
                xm = x <= x_hi
                c = tl.load(code + pix, mask=xm, other=-1)
                lp = tl.load(lse + pix, mask=xm, other=0.0).to(ACC)
                pm = xm & (c >= 0)
                v = _bilinear(planes, (y0 * w + x0)[:, None], (y0 * w + x1)[:, None], (y1 * w + x0)[:, None],
                              (y1 * w + x1)[:, None], ly0, ly1, lx0[:, None], lx1[:, None], pm[:, None] & nm[None, :],
                              ACC)
                d = tl.exp(v - lp[:, None]) - (n[None, :] == c[:, None]).to(ACC)
                d = tl.where(pm[:, None] & nm[None, :], d, 0.0)  # (BLOCK_X, BLOCK_N): dCE/dlogit of the pixels
                # adjoint of the horizontal taps: (BLOCK_J, BLOCK_X) weights times (BLOCK_X, BLOCK_N)
                wx = tl.where(x0[None, :] == j[:, None], lx0[None, :], 0.0) + \
                    tl.where(x1[None, :] == j[:, None], lx1[None, :], 0.0)
                acc += tl.dot((wx * wy).to(ACC), d, input_precision="ieee")
    gs = tl.load(gscale + b).to(ACC)
    out = grad + b * N * h * w + n[None, :] * (h * w) + i * w + j[:, None]
    tl.store(out, (acc * gs).to(grad.dtype.element_ty), mask=jm[:, None] & nm[None, :])


_BLOCK_P = 32  # high-res pixels per forward program
_BLOCK_N = 32  # classes per step
_NUM_WARPS = 8  # (32, 32) tiles over 8 warps: ~120 registers (fwd), ~80 (bwd), no spills on sm_80/sm_90


def _blocks(n: int, least: int = 2) -> int:
    return max(least, min(_BLOCK_N, triton.next_power_of_2(n)))


def _check(name: str, t: torch.Tensor | None, device: torch.device, dtypes: tuple[torch.dtype, ...],
           shape: tuple[int, ...] | None = None) -> None:
    if t is None:
        return
    if t.device != device:
        raise ValueError(f"{OP} (triton): argument '{name}' is on {t.device} but 'student' on {device}")
    if t.dtype not in dtypes:
        raise TypeError(f"{OP} (triton): argument '{name}' must be one of {dtypes}, got {t.dtype}")
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{OP} (triton): argument '{name}' must have shape {shape}, got {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{OP} (triton): argument '{name}' must be contiguous (got strides {t.stride()})")


def _check_runnable(device: torch.device) -> None:
    if device.type != "cuda" and not INTERPRET:
        raise RuntimeError(f"{OP} (triton): CPU tensors need TRITON_INTERPRET=1 (set before importing "
                           "semivl_fast.kernels); use backend 'cpp' on CPU")


def _block_p(width: int) -> int:
    return max(16, min(_BLOCK_P, triton.next_power_of_2(width)))


def partial_sums_shape(batch: int, size: tuple[int, int] | list[int]) -> tuple[int, int, int, int]:
    """Shape of ``forward``'s partial sums: (B, H, programs per row, 4)."""
    h, w = size
    return batch, h, triton.cdiv(w, _block_p(w)), 4


def _acc(student: torch.Tensor) -> torch.dtype:
    return torch.float64 if student.dtype == torch.float64 else torch.float32


def forward(student: torch.Tensor, size: list[int], target: torch.Tensor | None, teacher: torch.Tensor | None,
            teacher_mix: torch.Tensor | None, boxes: torch.Tensor | None, ignore: torch.Tensor | None,
            ignore_mix: torch.Tensor | None, threshold: float, scale: float, use_threshold: bool, lse: torch.Tensor,
            code: torch.Tensor, part: torch.Tensor) -> None:
    """Writes lse (B, H, W) acc dtype, code (B, H, W) int32 and the partial sums ``part`` (``partial_sums_shape``)
    acc dtype, each program's [ce over accepted, valid, accepted, confidence over valid]."""
    dev = student.device
    _check_runnable(dev)
    _check("student", student, dev, DTYPES)
    if student.dim() != 4:
        raise ValueError(f"{OP} (triton): argument 'student' must be 4-D, got shape {tuple(student.shape)}")
    if (target is None) == (teacher is None):
        raise ValueError(f"{OP} (triton): give exactly one of 'target' and 'teacher'")
    _check("target", target, dev, (torch.int64,))
    _check("teacher", teacher, dev, DTYPES)
    _check("teacher_mix", teacher_mix, dev, DTYPES)
    _check("boxes", boxes, dev, (torch.int64,))
    _check("ignore", ignore, dev, (torch.bool, torch.uint8))
    _check("ignore_mix", ignore_mix, dev, (torch.bool, torch.uint8))
    bsz, n = student.shape[:2]
    h, w = size
    acc = _acc(student)
    _check("lse", lse, dev, (acc,), (bsz, h, w))
    _check("code", code, dev, (torch.int32,), (bsz, h, w))
    _check("part", part, dev, (acc,), partial_sums_shape(bsz, size))
    tea = teacher if teacher is not None else student
    # the kernel selects per pixel between the two teachers' pointers, so they share one dtype (a low-res cast)
    mix = tea if teacher_mix is None else teacher_mix.to(tea.dtype)
    u8 = lambda t: t.view(torch.uint8) if t is not None and t.dtype == torch.bool else t
    _pseudo_label_loss_fwd_kernel[(part.shape[2], h, bsz)](
        student, tea, mix, target if target is not None else code, boxes if boxes is not None else code,
        u8(ignore) if ignore is not None else code, u8(ignore_mix) if ignore_mix is not None else code,
        lse, code, part, n, h, w, student.shape[2], student.shape[3], tea.shape[2], tea.shape[3], mix.shape[2],
        mix.shape[3], float(threshold), float(scale),
        SUPERVISED=target is not None, HAS_MIX=teacher_mix is not None, HAS_IGNORE=ignore is not None,
        HAS_IGNORE_MIX=ignore_mix is not None, USE_THRESHOLD=bool(use_threshold), BLOCK_P=_block_p(w),
        BLOCK_N=_blocks(n), ACC=tl.float64 if acc == torch.float64 else tl.float32, num_warps=_NUM_WARPS)


_BLOCK_J, _BLOCK_X = 16, 32  # low-res columns per program; high-res columns per inner step


def _span(low: int, high: int) -> int:
    """Candidate high-res indices per low-res index: the 2*high/low wide support plus the kernel's slack."""
    return math.ceil(2 * high / low) + 6


def backward(student: torch.Tensor, lse: torch.Tensor, code: torch.Tensor, gscale: torch.Tensor,
             grad: torch.Tensor) -> None:
    """Writes ``grad`` (B, N, h, w) in the student's dtype from the forward's lse and code and the per-image scale
    ``gscale`` (B,)."""
    dev = student.device
    _check_runnable(dev)
    _check("student", student, dev, DTYPES)
    acc = _acc(student)
    _check("lse", lse, dev, (acc,))
    _check("code", code, dev, (torch.int32,))
    _check("gscale", gscale, dev, (acc,))
    _check("grad", grad, dev, (student.dtype,), tuple(student.shape))
    bsz, n, h, w = student.shape
    big_h, big_w = lse.shape[1:]
    block_n = _blocks(n, 16)  # tl.dot needs 16
    grid = (triton.cdiv(w, _BLOCK_J), h, bsz * triton.cdiv(n, block_n))
    _pseudo_label_loss_bwd_kernel[grid](student, lse, code, gscale, grad, n, big_h, big_w, h, w, _span(h, big_h),
                                        BLOCK_J=_BLOCK_J, BLOCK_X=_BLOCK_X, BLOCK_N=block_n,
                                        ACC=tl.float64 if acc == torch.float64 else tl.float32, num_warps=_NUM_WARPS)


def _aot_specs() -> list[AotSpec]:
    """Benchmark shapes (B = 2..8, N = 21/150, 128^2 -> 512^2): sizes are runtime arguments, so one compilation per
    (dtype, N block, mode) covers every batch size."""
    specs = []
    for dtype in ("fp32", "bf16"):
        for n in (21, 150):
            fwd_sig = {"student": f"*{dtype}", "teacher": f"*{dtype}", "mix": f"*{dtype}", "target": "*i64",
                       "boxes": "*i64", "ignore": "*u8", "ignore_mix": "*u8", "lse_out": "*fp32",
                       "code_out": "*i32", "part_out": "*fp32", "N": "i32", "H": "i32", "W": "i32", "hs": "i32",
                       "ws": "i32", "ht": "i32", "wt": "i32", "hm": "i32", "wm": "i32", "threshold": "fp32",
                       "scale": "fp32"}
            for supervised in (False, True):
                specs.append(AotSpec(
                    name=f"pseudo_label_loss_fwd_{dtype}_N{n}_{'sup' if supervised else 'cutmix'}",
                    kernel=_pseudo_label_loss_fwd_kernel, signature=fwd_sig,
                    constexprs={"SUPERVISED": supervised, "HAS_MIX": not supervised, "HAS_IGNORE": not supervised,
                                "HAS_IGNORE_MIX": not supervised, "USE_THRESHOLD": True, "BLOCK_P": _BLOCK_P,
                                "BLOCK_N": _blocks(n), "ACC": tl.float32}, num_warps=_NUM_WARPS))
            bwd_sig = {"student": f"*{dtype}", "lse": "*fp32", "code": "*i32", "gscale": "*fp32",
                       "grad": f"*{dtype}", "N": "i32", "H": "i32", "W": "i32", "h": "i32", "w": "i32",
                       "span_y": "i32"}
            specs.append(AotSpec(name=f"pseudo_label_loss_bwd_{dtype}_N{n}", kernel=_pseudo_label_loss_bwd_kernel,
                                 signature=bwd_sig,
                                 constexprs={"BLOCK_J": _BLOCK_J, "BLOCK_X": _BLOCK_X, "BLOCK_N": _blocks(n, 16),
                                             "ACC": tl.float32}, num_warps=_NUM_WARPS))
    return specs


AOT_SPECS: list[AotSpec] = _aot_specs()
