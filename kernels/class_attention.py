"""Triton kernels of class attention (GPU face of ``semivl_fast.ops.class_attention``).

Many short softmax attentions: one problem per (sequence s, head h) with N <= 256 tokens of head dim D <= 128.
Operands are (S, H, N, D) views with a unit stride along D and any other strides, so the packed qkv projection
output (S, N, 3*H*D) and the (S, N, H*D) output are read and written in place. ``lse`` and ``delta`` are
contiguous (S, H, N) float32. A whole problem's keys fit one tile (BLOCK_N = next power of two >= N, masked), so
the softmax is a plain two-pass one, not an online one. Small problems are packed: a program runs GROUP problems
one after the other, so N = 21 does not launch thousands of 32-row programs.

* ``_ca_fwd_kernel``: program = (group of problems, block of BLOCK_M query rows). S = Q K^T (fp32), row max, exp2,
  row sum, O = P V / rowsum; stores O and lse = logsumexp(scale * q k^T) (natural log).
* ``_ca_bwd_dq_kernel``: program = (group of problems, block of query rows). delta = rowsum(dO * O) (stored for the
  next kernel); then over key blocks (independent, since lse is known): P = exp(scale q k^T - lse) recomputed,
  dP = dO V^T, dS = P (dP - delta), dQ += dS K; dQ scaled at the end.
* ``_ca_bwd_dkdv_kernel``: program = (group of problems, block of BLOCK_KN keys); loops over the query blocks:
  dV += P^T dO, dK += dS^T Q (transposed tiles computed directly as K Q^T and V dO^T); dK scaled at the end. Each
  key block belongs to one program, so no atomics.

fp32 accumulation everywhere; P and dS are cast to the operand dtype before their ``tl.dot`` (flash-attention
practice). fp32 operands use TF32 tensor cores unless ``SEMIVL_FAST_TF32=0`` (the project-wide switch). Under
``TRITON_INTERPRET=1`` bfloat16 tiles are upcast to fp32 before any arithmetic (the interpreter's bf16 is wrong).
When every base pointer and stride is 16-aligned (the decoder's packed projection) the launcher says so
(``ALIGNED``) and the kernels hint it, so AOT compiles vectorise the accesses as the JIT specialisation does.

The launchers ``forward`` and ``backward`` write into outputs the caller allocates.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import DOT_DTYPES, INTERPRET, fp32_precision
from ._aot import AotSpec

OP = "class_attention"
MAX_N = 256  # keys of one problem in one tile
MAX_D = 128
MAX_TILE = 256 * 64  # BLOCK_N * BLOCK_D: K and V tiles of one problem (64 KiB each in fp32)
DTYPES = tuple(DOT_DTYPES)  # what the launchers take
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


def supports(n: int, d: int) -> bool:
    """Whether one problem of N tokens and head dim D fits the kernels' single key tile."""
    bn, bd = max(16, triton.next_power_of_2(n)), max(16, triton.next_power_of_2(d))
    return n <= MAX_N and d <= MAX_D and bn * bd <= MAX_TILE


def config(n: int, d: int, dtype: torch.dtype, precision: str = "tf32") -> dict[str, int]:
    """Tile sizes for N tokens of head dim D (shared by the launchers and the AOT specs; all compile without spills
    on sm_80 and sm_90 at D = 64).

    BLOCK_N covers all keys (forward); FWD_M / BWD_M query rows per program (forward / dQ), BWD_KN key rows per
    program (dK dV) and per loop step (dQ), GROUP problems per program (8 at N <= 16, 4 at N <= 32, 2 at
    N <= 64).
    """
    bn, bd = max(16, triton.next_power_of_2(n)), max(16, triton.next_power_of_2(d))
    wide = bn * bd > 128 * 64  # keys of one problem > 32 KiB in 16-bit
    fma = dtype == torch.float32 and precision == "ieee"  # no tensor cores: FMA dots need smaller tiles
    return {
        "BLOCK_N": bn,
        "BLOCK_D": bd,
        "GROUP": max(1, 128 // bn),
        "FWD_M": min(bn, 16 if fma and wide else 32 if wide else 64),
        "FWD_WARPS": 8 if wide else 4,
        "BWD_M": min(bn, 16 if fma else 32),
        "BWD_KN": min(bn, 32 if fma else 64),
        "BWD_WARPS": 8 if wide and dtype == torch.float32 else 4,
        "STAGES": 1 if dtype == torch.float32 else 2,
    }


# --------------------------------------------------------------------------------------------------------- kernels


@triton.jit
def _tile_ptrs(ptr, s, h, ss, sh, rows, sn, offs_d, ALIGNED: tl.constexpr):
    """Addresses of rows ``rows`` of problem (s, h) of a (S, H, N, D) view. With ALIGNED the launcher has checked
    that the base pointers (16 bytes) and strides (16 elements) are aligned, which Triton's JIT specialisation
    would find too; spelled out so that AOT compiles see the same vectorised accesses."""
    base = ptr + s * ss + h * sh
    roff = rows[:, None] * sn
    if ALIGNED:
        base = tl.multiple_of(base, 16)
        roff = tl.multiple_of(roff, [16, 1])
    return base + roff + offs_d[None, :]


@triton.jit
def _load_tile(ptrs, mask, UPCAST: tl.constexpr):
    t = tl.load(ptrs, mask=mask, other=0.0)
    if UPCAST:
        t = t.to(tl.float32)
    return t


@triton.jit
def _ca_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
                   sq_s, sq_h, sq_n, sk_s, sk_h, sk_n, sv_s, sv_h, sv_n, so_s, so_h, so_n,
                   P, H, N, scale,
                   D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                   GROUP: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, ALIGNED: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(N, BLOCK_M)
    first = (pid // num_m) * GROUP
    offs_m = (pid % num_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    key_ok = offs_n < N
    qk_scale = scale * LOG2E
    for g in range(GROUP):
        prob = first + g
        live = prob < P
        s = (prob // H).to(tl.int64)
        h = prob % H
        mask_m = (offs_m < N) & live
        mask_n = key_ok & live
        mask_md = mask_m[:, None] & mask_d[None, :]
        mask_nd = mask_n[:, None] & mask_d[None, :]
        q = _load_tile(_tile_ptrs(q_ptr, s, h, sq_s, sq_h, offs_m, sq_n, offs_d, ALIGNED), mask_md, UPCAST)
        k = _load_tile(_tile_ptrs(k_ptr, s, h, sk_s, sk_h, offs_n, sk_n, offs_d, ALIGNED), mask_nd, UPCAST)
        v = _load_tile(_tile_ptrs(v_ptr, s, h, sv_s, sv_h, offs_n, sv_n, offs_d, ALIGNED), mask_nd, UPCAST)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # log2 units
        qk = tl.where(key_ok[None, :], qk, float("-inf"))
        m = tl.max(qk, 1)
        p = tl.exp2(qk - m[:, None])
        l = tl.sum(p, 1)
        o = tl.dot(p.to(v.dtype), v, input_precision=PRECISION) / l[:, None]
        tl.store(_tile_ptrs(o_ptr, s, h, so_s, so_h, offs_m, so_n, offs_d, ALIGNED), o.to(o_ptr.dtype.element_ty),
                 mask=mask_md)
        tl.store(lse_ptr + prob.to(tl.int64) * N + offs_m, (m + tl.log2(l)) * LN2, mask=mask_m)


@triton.jit
def _ca_bwd_dq_kernel(q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
                      sq_s, sq_h, sq_n, sk_s, sk_h, sk_n, sv_s, sv_h, sv_n, so_s, so_h, so_n, sdo_s, sdo_h, sdo_n,
                      sdq_s, sdq_h, sdq_n,
                      P, H, N, scale,
                      D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_KN: tl.constexpr, BLOCK_D: tl.constexpr,
                      GROUP: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, ALIGNED: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(N, BLOCK_M)
    first = (pid // num_m) * GROUP
    offs_m = (pid % num_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_kb = tl.arange(0, BLOCK_KN)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    qk_scale = scale * LOG2E
    for g in range(GROUP):
        prob = first + g
        live = prob < P
        s = (prob // H).to(tl.int64)
        h = prob % H
        mask_m = (offs_m < N) & live
        mask_md = mask_m[:, None] & mask_d[None, :]
        q = _load_tile(_tile_ptrs(q_ptr, s, h, sq_s, sq_h, offs_m, sq_n, offs_d, ALIGNED), mask_md, UPCAST)
        do = _load_tile(_tile_ptrs(do_ptr, s, h, sdo_s, sdo_h, offs_m, sdo_n, offs_d, ALIGNED), mask_md, UPCAST)
        o = _load_tile(_tile_ptrs(o_ptr, s, h, so_s, so_h, offs_m, so_n, offs_d, ALIGNED), mask_md, UPCAST)
        row = prob.to(tl.int64) * N + offs_m
        lse2 = tl.load(lse_ptr + row, mask=mask_m, other=0.0) * LOG2E
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
        tl.store(delta_ptr + row, delta, mask=mask_m)
        dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_KN):  # lse is known: key blocks are independent, no online softmax
            offs_n = n0 + offs_kb
            key_ok = offs_n < N
            mask_nd = (key_ok & live)[:, None] & mask_d[None, :]
            k = _load_tile(_tile_ptrs(k_ptr, s, h, sk_s, sk_h, offs_n, sk_n, offs_d, ALIGNED), mask_nd, UPCAST)
            v = _load_tile(_tile_ptrs(v_ptr, s, h, sv_s, sv_h, offs_n, sv_n, offs_d, ALIGNED), mask_nd, UPCAST)
            qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            p = tl.where(key_ok[None, :], tl.exp2(qk - lse2[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
        tl.store(_tile_ptrs(dq_ptr, s, h, sdq_s, sdq_h, offs_m, sdq_n, offs_d, ALIGNED),
                 (dq * scale).to(dq_ptr.dtype.element_ty), mask=mask_md)


@triton.jit
def _ca_bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                        sq_s, sq_h, sq_n, sk_s, sk_h, sk_n, sv_s, sv_h, sv_n, sdo_s, sdo_h, sdo_n,
                        sdk_s, sdk_h, sdk_n, sdv_s, sdv_h, sdv_n,
                        P, H, N, scale,
                        D: tl.constexpr, BLOCK_MB: tl.constexpr, BLOCK_KN: tl.constexpr, BLOCK_D: tl.constexpr,
                        GROUP: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                        ALIGNED: tl.constexpr):
    pid = tl.program_id(0)
    num_kb = tl.cdiv(N, BLOCK_KN)
    first = (pid // num_kb) * GROUP
    offs_k = (pid % num_kb) * BLOCK_KN + tl.arange(0, BLOCK_KN)
    offs_mb = tl.arange(0, BLOCK_MB)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    qk_scale = scale * LOG2E
    for g in range(GROUP):
        prob = first + g
        live = prob < P
        s = (prob // H).to(tl.int64)
        h = prob % H
        mask_k = (offs_k < N) & live
        mask_kd = mask_k[:, None] & mask_d[None, :]
        k = _load_tile(_tile_ptrs(k_ptr, s, h, sk_s, sk_h, offs_k, sk_n, offs_d, ALIGNED), mask_kd, UPCAST)
        v = _load_tile(_tile_ptrs(v_ptr, s, h, sv_s, sv_h, offs_k, sv_n, offs_d, ALIGNED), mask_kd, UPCAST)
        dk = tl.zeros((BLOCK_KN, BLOCK_D), dtype=tl.float32)
        dv = tl.zeros((BLOCK_KN, BLOCK_D), dtype=tl.float32)
        for m0 in range(0, N, BLOCK_MB):
            offs_m = m0 + offs_mb
            row_ok = offs_m < N
            mask_m = row_ok & live
            mask_md = mask_m[:, None] & mask_d[None, :]
            q = _load_tile(_tile_ptrs(q_ptr, s, h, sq_s, sq_h, offs_m, sq_n, offs_d, ALIGNED), mask_md, UPCAST)
            do = _load_tile(_tile_ptrs(do_ptr, s, h, sdo_s, sdo_h, offs_m, sdo_n, offs_d, ALIGNED), mask_md, UPCAST)
            row = prob.to(tl.int64) * N + offs_m
            lse2 = tl.load(lse_ptr + row, mask=mask_m, other=0.0) * LOG2E
            delta = tl.load(delta_ptr + row, mask=mask_m, other=0.0)
            qk_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (keys, queries)
            p_t = tl.where(row_ok[None, :], tl.exp2(qk_t - lse2[None, :]), 0.0)
            dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION)
            dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PRECISION)
        tl.store(_tile_ptrs(dk_ptr, s, h, sdk_s, sdk_h, offs_k, sdk_n, offs_d, ALIGNED),
                 (dk * scale).to(dk_ptr.dtype.element_ty), mask=mask_kd)
        tl.store(_tile_ptrs(dv_ptr, s, h, sdv_s, sdv_h, offs_k, sdv_n, offs_d, ALIGNED),
                 dv.to(dv_ptr.dtype.element_ty), mask=mask_kd)


# -------------------------------------------------------------------------------------------------------- launchers


def _check_view(name: str, t: torch.Tensor, ref: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 4:
        raise ValueError(f"{OP} (triton): argument '{name}' must be a 4-D (S, H, N, D) tensor, got "
                         f"{getattr(t, 'shape', type(t).__name__)}")
    if t.shape != ref.shape or t.dtype != ref.dtype or t.device != ref.device:
        raise ValueError(f"{OP} (triton): argument '{name}' must match 'q' ({tuple(ref.shape)}, {ref.dtype}, "
                         f"{ref.device}), got ({tuple(t.shape)}, {t.dtype}, {t.device})")
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{OP} (triton): argument '{name}' must have unit stride along D, got strides {t.stride()}")


def _check_rowstat(name: str, t: torch.Tensor, q: torch.Tensor) -> None:
    shape = tuple(q.shape[:3])
    if tuple(t.shape) != shape or t.dtype != torch.float32 or t.device != q.device or not t.is_contiguous():
        raise ValueError(f"{OP} (triton): argument '{name}' must be a contiguous float32 (S, H, N) = {shape} tensor "
                         f"on {q.device}, got {t.dtype} {tuple(t.shape)} on {t.device}")


def _check_q(q: torch.Tensor) -> None:
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise ValueError(f"{OP} (triton): argument 'q' must be a 4-D (S, H, N, D) tensor")
    if q.dtype not in DTYPES:
        raise TypeError(f"{OP} (triton): argument 'q' must be float32, float16 or bfloat16, got {q.dtype} "
                        "(float64 runs on the C++ and reference faces)")
    if q.device.type != "cuda" and not INTERPRET:
        raise ValueError(f"{OP} (triton): tensors must be on a CUDA device (or set TRITON_INTERPRET=1), got {q.device}")
    n, d = q.shape[2], q.shape[3]
    if n < 1 or d < 1 or not supports(n, d):
        raise ValueError(f"{OP} (triton): N = {n} tokens of head dim D = {d} do not fit one key tile (N <= {MAX_N}, "
                         f"D <= {MAX_D}, next_pow2(N) * next_pow2(D) <= {MAX_TILE}); use the SDPA path")
    if q.shape[-1] > 1 and q.stride(-1) != 1:
        raise ValueError(f"{OP} (triton): argument 'q' must have unit stride along D, got strides {q.stride()}")


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _aligned(*views: torch.Tensor) -> bool:
    """Every base pointer 16-byte aligned and every (s, h, n) stride a multiple of 16 elements."""
    return all(t.data_ptr() % 16 == 0 and all(x % 16 == 0 for x in _strides(t)) for t in views)


def _meta(q: torch.Tensor) -> tuple[dict, bool, str]:
    precision = fp32_precision() if q.dtype == torch.float32 else "tf32"
    cfg = config(q.shape[2], q.shape[3], q.dtype, precision)
    return cfg, INTERPRET and q.dtype == torch.bfloat16, precision


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
            scale: float) -> None:
    """Writes ``out`` = softmax(scale q k^T) v and ``lse`` (S, H, N) float32; q, k, v, out (S, H, N, D) views."""
    _check_q(q)
    for name, t in (("k", k), ("v", v), ("out", out)):
        _check_view(name, t, q)
    _check_rowstat("lse", lse, q)
    S, H, N, D = q.shape
    P = S * H
    if P == 0:
        return
    cfg, upcast, precision = _meta(q)
    grid = (triton.cdiv(P, cfg["GROUP"]) * triton.cdiv(N, cfg["FWD_M"]),)
    _ca_fwd_kernel[grid](q, k, v, out, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(out),
                         P, H, N, float(scale), D=D, BLOCK_M=cfg["FWD_M"], BLOCK_N=cfg["BLOCK_N"],
                         BLOCK_D=cfg["BLOCK_D"], GROUP=cfg["GROUP"], UPCAST=upcast, PRECISION=precision,
                         ALIGNED=_aligned(q, k, v, out), num_warps=cfg["FWD_WARPS"], num_stages=cfg["STAGES"])


def backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
             lse: torch.Tensor, scale: float, grad_q: torch.Tensor, grad_k: torch.Tensor, grad_v: torch.Tensor,
             delta: torch.Tensor) -> None:
    """Writes grad_q, grad_k, grad_v (S, H, N, D) views and ``delta`` = rowsum(grad_out * out) (S, H, N) float32."""
    _check_q(q)
    for name, t in (("grad_out", grad_out), ("k", k), ("v", v), ("out", out), ("grad_q", grad_q),
                    ("grad_k", grad_k), ("grad_v", grad_v)):
        _check_view(name, t, q)
    _check_rowstat("lse", lse, q)
    _check_rowstat("delta", delta, q)
    S, H, N, D = q.shape
    P = S * H
    if P == 0:
        return
    cfg, upcast, precision = _meta(q)
    common = {"D": D, "BLOCK_D": cfg["BLOCK_D"], "BLOCK_KN": cfg["BWD_KN"], "GROUP": cfg["GROUP"], "UPCAST": upcast,
              "PRECISION": precision, "ALIGNED": _aligned(grad_out, q, k, v, out, grad_q, grad_k, grad_v),
              "num_warps": cfg["BWD_WARPS"], "num_stages": cfg["STAGES"]}
    grid = (triton.cdiv(P, cfg["GROUP"]) * triton.cdiv(N, cfg["BWD_M"]),)
    _ca_bwd_dq_kernel[grid](q, k, v, out, grad_out, lse, delta, grad_q, *_strides(q), *_strides(k), *_strides(v),
                            *_strides(out), *_strides(grad_out), *_strides(grad_q), P, H, N, float(scale),
                            BLOCK_M=cfg["BWD_M"], **common)
    grid = (triton.cdiv(P, cfg["GROUP"]) * triton.cdiv(N, cfg["BWD_KN"]),)
    _ca_bwd_dkdv_kernel[grid](q, k, v, grad_out, lse, delta, grad_k, grad_v, *_strides(q), *_strides(k),
                              *_strides(v), *_strides(grad_out), *_strides(grad_k), *_strides(grad_v), P, H, N,
                              float(scale), BLOCK_MB=cfg["BWD_M"], **common)


# ------------------------------------------------------------------------------------------------------- AOT specs


def _aot_specs() -> list[AotSpec]:
    """The three kernels at the decoder's benchmark shapes: S = 16 * 64 sequences, H = 4, D = 64, N = 21 (VOC) and
    150 (ADE20K), packed qkv strides (row stride 3 * H * D, aligned), bf16 and fp32 (TF32 and IEEE)."""
    specs = []
    strides = lambda *names: {f"s{a}_{b}": "i32" for a in names for b in ("s", "h", "n")}
    dims = {"P": "i32", "H": "i32", "N": "i32", "scale": "fp32"}
    for n in (21, 150):
        for dtype, precision in ((torch.bfloat16, "tf32"), (torch.float32, "tf32"), (torch.float32, "ieee")):
            cfg = config(n, 64, dtype, precision)
            ptr = f"*{DOT_DTYPES[dtype]}"
            base = {"D": 64, "BLOCK_D": cfg["BLOCK_D"], "GROUP": cfg["GROUP"], "UPCAST": False,
                    "PRECISION": precision, "ALIGNED": True}
            tag = f"N{n}_{DOT_DTYPES[dtype]}" + ("_ieee" if precision == "ieee" and dtype == torch.float32 else "")
            opts = {"num_stages": cfg["STAGES"]}
            specs.append(AotSpec(
                f"class_attention_fwd_{tag}", _ca_fwd_kernel,
                {"q_ptr": ptr, "k_ptr": ptr, "v_ptr": ptr, "o_ptr": ptr, "lse_ptr": "*fp32",
                 **strides("q", "k", "v", "o"), **dims},
                {**base, "BLOCK_M": cfg["FWD_M"], "BLOCK_N": cfg["BLOCK_N"]}, num_warps=cfg["FWD_WARPS"], **opts))
            specs.append(AotSpec(
                f"class_attention_bwd_dq_{tag}", _ca_bwd_dq_kernel,
                {"q_ptr": ptr, "k_ptr": ptr, "v_ptr": ptr, "o_ptr": ptr, "do_ptr": ptr, "lse_ptr": "*fp32",
                 "delta_ptr": "*fp32", "dq_ptr": ptr, **strides("q", "k", "v", "o", "do", "dq"), **dims},
                {**base, "BLOCK_M": cfg["BWD_M"], "BLOCK_KN": cfg["BWD_KN"]}, num_warps=cfg["BWD_WARPS"], **opts))
            specs.append(AotSpec(
                f"class_attention_bwd_dkdv_{tag}", _ca_bwd_dkdv_kernel,
                {"q_ptr": ptr, "k_ptr": ptr, "v_ptr": ptr, "do_ptr": ptr, "lse_ptr": "*fp32", "delta_ptr": "*fp32",
                 "dk_ptr": ptr, "dv_ptr": ptr, **strides("q", "k", "v", "do", "dk", "dv"), **dims},
                {**base, "BLOCK_MB": cfg["BWD_M"], "BLOCK_KN": cfg["BWD_KN"]}, num_warps=cfg["BWD_WARPS"], **opts))
    return specs


AOT_SPECS: list[AotSpec] = _aot_specs()
