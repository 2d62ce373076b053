"""Class attention: softmax multi-head self-attention across the N classes at every pooled position.

SemiVL's class aggregation (spec semivl.md §3.4) runs a pre-LN transformer layer over the class axis of
S = B·h'·w' independent sequences (B·64 at 512² crops, B·144 on Cityscapes) of N = 19…171 tokens, 4 heads of head
dim 64. This op is the attention core of that layer on the packed projection output: ``qkv`` (S, N, 3·H·D) — the
``nn.Linear(dim, 3·dim)`` output, rows Q, K, V, heads inside each — → ``out`` (S, N, H·D), ready for ``out_proj``.
Neither the head split nor the head merge is copied: every face reads q, k, v and writes ``out`` (and, backward,
writes dQ, dK, dV into one packed (S, N, 3·H·D) gradient) through (S, H, N, D) strided views.

Faces (``FACES``; ``select_face`` picks one by device, what is built and installed, dtype and shape;
``SEMIVL_FAST_BACKEND[_CLASS_ATTENTION]`` forces one):

* ``reference`` — ``class_attention_reference``, plain PyTorch (softmax(q kᵀ·scale) v), float64-checkable; the spec.
* ``cpp`` — CPU kernel ``csrc/cpu/class_attention.cpp``: one task per (sequence, head) over ``at::parallel_for``,
  register-blocked SIMD GEMMs (AVX-512 / AVX2 / SSE2 compiled side by side, the widest the CPU has picked at run
  time; ``SEMIVL_FAST_CPU_ISA`` caps it), vectorised exp and K/V transposes, P recomputed in the backward from the
  saved row logsumexp. Operands are read and written in place (fp32/fp64, D a multiple of the vector width), else
  packed to scratch. float64/32/16 and bfloat16 (16-bit types accumulate in float32); any N and D. Measured on the
  2-core dev box (fp32, H = 4, D = 64, S = 128, N = 21/81/150, fwd+bwd, ``bench/class_attention.py``): 1.59–1.67×
  SDPA on the packed projection, both on two threads.
* ``triton`` — GPU kernels ``kernels/class_attention.py``: all keys of a problem in one tile (plain two-pass softmax,
  no online softmax), several problems per program for small N; N ≤ 256, D ≤ 128; fp32 (TF32 unless
  ``SEMIVL_FAST_TF32=0``), fp16, bf16.
* ``sdpa`` — ``torch.nn.functional.scaled_dot_product_attention`` on the (S, H, N, D) views (it picks flash /
  memory-efficient / cuDNN / math itself); any device.
* ``xformers`` — ``xformers.ops.memory_efficient_attention`` on the (S, N, H, D) layout of the packed projection
  (no head-split copy); CUDA, when xformers is installed.

``cpp`` and ``triton`` run behind the custom op ``semivl_fast::class_attention`` (backward:
``semivl_fast::class_attention_backward``), which saves ``out`` and the row logsumexp (S, H, N) — never the (N, N)
probabilities. The reference and the library faces run directly in ``class_attention``, differentiated by autograd.

Automatic choice: the C++ face on CPU, for every shape. On CUDA the Triton face for N ≤ 256 and
next_pow2(N)·next_pow2(D) ≤ 256·64: a whole problem is one tile, and flash-style kernels (SDPA flash /
memory-efficient, xformers) tile queries and keys in 64–128-row blocks, so N = 21 fills a third of a tile and pays
the online-softmax bookkeeping for one key block. Larger problems go to xformers if installed, else SDPA (both
online-softmax kernels that handle any N); dtypes Triton lacks (float64) to the reference, like the cost volume.
A forced ``triton`` keeps these limits.

Fusion of the neighbouring work, evaluated (the decoder layer is x + out_proj(attn(LN1(x))), then the FFN; the
token is [pooled visual 128 | text 128] with the text half shared by the 64 positions of an image). On CPU the
attention core is only ~10–15 % of a ClassAttentionLayer's fwd+bwd (the four Linear layers are ~0.5 MMAC per token
against ~2·N·D per head for attention), so the op speeds the whole layer up by 1.03–1.15×; more needs the GEMMs.

* Text half of the QKV projection — exact in real arithmetic, not done. LN1 is affine per token once its mean μ and
  rstd r are known: W·LN1(x) + b = r·(W'x) − r·μ·(W'1) + (Wβ + b) with W' = W·diag(γ), and W'x = W'_v v + W'_t t,
  where W'_t t is shared by the 64 positions, so it could be computed once per (image, class): half of the QKV GEMM
  (QKV is 3/8 of the layer's Linear MACs) plus an epilogue (per-token scale, broadcast add). But (1) μ, r need all 256
  channels of every token; (2) floating point differs: r·(W'x) − r·μ·(W'1) subtracts two large terms where LN
  subtracts μ before the GEMM (error ∝ |μ|/σ; the text half is post-ReLU so μ > 0; in bf16 the GEMM would see
  uncentred inputs); (3) it only pays as one GEMM with a fused epilogue — written as eager PyTorch (GEMM + per-token
  rescale + broadcast add) it measured 1.3–2.5× slower than LN + Linear fwd+bwd here; (4) it needs
  ``ClassAggregation`` to hand the text separately instead of the concatenated token. Recommended follow-up.
* LayerNorm / out_proj inside the attention kernel — not done: they are dense GEMMs over all S·N tokens, while the
  attention core is a batch of tiny problems; fusing them means a hand-written GEMM per (sequence) for a saving of
  one (S, N, 256) read/write each. The copies such a fusion would remove (head split, head merge and their
  backward) are already gone through the strided views above.
* ``ClassAggregation`` keeps only the visual half of every layer's output (``[..., :c]``), so each fc2 computes
  only those 128 of its 256 output channels (exact; 1/8 of the layer's Linear MACs): done in ``models/decoder.py``
  (``FeedForward(..., keep=c)``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from semivl_fast.ops import _common

OP = "class_attention"


def _check(qkv: Tensor, num_heads: int) -> None:
    _common.check_tensor(OP, "qkv", qkv, dim=3, floating=True)
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1:
        raise ValueError(f"{OP}: argument 'num_heads' must be a positive int, got {num_heads!r}")
    n, c = qkv.shape[1:]
    if c == 0 or c % (3 * num_heads):
        raise ValueError(f"{OP}: argument 'qkv' must have a last dim of 3 * num_heads * head_dim (Q, K, V rows, "
                         f"heads inside each) with num_heads = {num_heads}, got shape {tuple(qkv.shape)}")
    if n < 1:
        raise ValueError(f"{OP}: argument 'qkv' needs at least one token (N >= 1), got shape {tuple(qkv.shape)}")


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _head_dim(qkv: Tensor, num_heads: int) -> int:
    return qkv.shape[-1] // (3 * num_heads)


def _scale(qkv: Tensor, num_heads: int, scale: float | None) -> float:
    return float(scale) if scale is not None else _head_dim(qkv, num_heads) ** -0.5


def _split(qkv: Tensor, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """(S, N, 3·H·D) → three (S, H, N, D) views (no copy)."""
    return qkv.unflatten(-1, (3, num_heads, _head_dim(qkv, num_heads))).permute(2, 0, 3, 1, 4).unbind(0)


def _heads(x: Tensor, num_heads: int) -> Tensor:
    """(S, N, H·D) → (S, H, N, D) view (no copy)."""
    return x.unflatten(-1, (num_heads, x.shape[-1] // num_heads)).transpose(1, 2)


def _unit_last(t: Tensor) -> Tensor:
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def class_attention_reference(qkv: Tensor, num_heads: int, scale: float | None = None) -> Tensor:
    """Reference (the spec): per head ``softmax(q kᵀ · scale) v``, scale = head_dim^-0.5 by default.

    qkv (S, N, 3·H·D) → (S, N, H·D). Differentiable by autograd; fp16/bf16 compute in float32.
    """
    _check(qkv, num_heads)
    acc = _acc_dtype(qkv.dtype)
    q, k, v = (t.to(acc) for t in _split(qkv, num_heads))
    s = (q @ k.transpose(-1, -2)) * _scale(qkv, num_heads, scale)  # (S, H, N, N)
    out = torch.softmax(s, dim=-1) @ v  # (S, H, N, D)
    return out.transpose(1, 2).flatten(2).to(qkv.dtype)


FACES = ("reference", "cpp", "triton", "sdpa", "xformers")


def select_face(device: torch.device, dtype: torch.dtype = torch.float32, tokens: int = 1,
                head_dim: int = 64) -> str:
    """The face that runs ``tokens`` tokens of ``head_dim`` per head in ``dtype`` on ``device``: the requested or
    automatic one (``_common.choose_face``); where the Triton kernels do not reach, the reference (their dtypes) or
    xformers / SDPA (shapes beyond one key tile)."""
    face = _common.choose_face(OP, device, FACES)
    if face == "triton":
        kernels = _kernels()
        if dtype not in kernels.DTYPES:
            return "reference"
        if not kernels.supports(tokens, head_dim):
            return "xformers" if _common.unavailable("xformers", device) is None else "sdpa"
    return face


# ------------------------------------------------------------------------------------------------------------ faces


def _kernels():
    from semivl_fast.kernels import class_attention as kernels  # lazy: imports triton

    return kernels


def _outputs(qkv: Tensor, num_heads: int, lse_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """out (S, N, H·D) and the row logsumexp (S, H, N)."""
    s, n, c = qkv.shape
    return (_common.empty((s, n, c // 3), qkv.dtype, qkv.device),
            _common.empty((s, num_heads, n), lse_dtype, qkv.device))


def _forward_cpp(qkv: Tensor, num_heads: int, scale: float) -> tuple[Tensor, Tensor]:
    out, lse = _outputs(qkv, num_heads, _acc_dtype(qkv.dtype))
    q, k, v = _split(qkv, num_heads)
    torch.ops.semivl_fast_C.class_attention_forward_(q, k, v, scale, _heads(out, num_heads), lse)
    return out, lse


def _backward_cpp(grad_out: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, num_heads: int, scale: float) -> Tensor:
    grad = _common.empty(tuple(qkv.shape), qkv.dtype, qkv.device)
    q, k, v = _split(qkv, num_heads)
    dq, dk, dv = _split(grad, num_heads)
    torch.ops.semivl_fast_C.class_attention_backward_(_heads(grad_out, num_heads), q, k, v, _heads(out, num_heads),
                                                      lse, scale, dq, dk, dv)
    return grad


def _forward_triton(qkv: Tensor, num_heads: int, scale: float) -> tuple[Tensor, Tensor]:
    out, lse = _outputs(qkv, num_heads, torch.float32)
    q, k, v = _split(qkv, num_heads)
    _kernels().forward(q, k, v, _heads(out, num_heads), lse, scale)
    return out, lse


def _backward_triton(grad_out: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, num_heads: int, scale: float) -> Tensor:
    s, n, _ = qkv.shape
    grad = _common.empty(tuple(qkv.shape), qkv.dtype, qkv.device)
    delta = _common.empty((s, num_heads, n), torch.float32, qkv.device)
    q, k, v = _split(qkv, num_heads)
    dq, dk, dv = _split(grad, num_heads)
    _kernels().backward(_heads(grad_out, num_heads), q, k, v, _heads(out, num_heads), lse, scale, dq, dk, dv, delta)
    return grad


def _sdpa(qkv: Tensor, num_heads: int, scale: float) -> Tensor:
    """SDPA on the (S, H, N, D) views; autograd through it. Its output follows the input's layout, hence the
    contiguous() (a no-op for the packed projection)."""
    q, k, v = _split(qkv, num_heads)
    return F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2).flatten(2).contiguous()


def _xformers(qkv: Tensor, num_heads: int, scale: float) -> Tensor:
    """xformers' memory-efficient attention on (S, N, H, D) views (its BMHK layout); autograd through it."""
    import xformers.ops as xops  # lazy: optional dependency, imported only when this face runs

    q, k, v = qkv.unflatten(-1, (3, num_heads, _head_dim(qkv, num_heads))).unbind(2)
    return xops.memory_efficient_attention(q, k, v, scale=scale).flatten(2).contiguous()


_FORWARD = {"cpp": _forward_cpp, "triton": _forward_triton}
_BACKWARD = {"cpp": _backward_cpp, "triton": _backward_triton}
_LIBRARY = {"sdpa": _sdpa, "xformers": _xformers}  # autograd through the library kernel: no custom op


# --------------------------------------------------------------------------------------------------------- custom op


def _face_of(qkv: Tensor, num_heads: int) -> str:
    return select_face(qkv.device, qkv.dtype, qkv.shape[1], _head_dim(qkv, num_heads))


@torch.library.custom_op("semivl_fast::class_attention", mutates_args=())
def _class_attention_op(qkv: Tensor, num_heads: int, scale: float) -> tuple[Tensor, Tensor]:
    return _common.kernel(OP, _face_of(qkv, num_heads), _FORWARD)(qkv, num_heads, scale)


@_class_attention_op.register_fake
def _(qkv, num_heads, scale):
    s, n, c = qkv.shape
    return qkv.new_empty((s, n, c // 3)), qkv.new_empty((s, num_heads, n), dtype=_acc_dtype(qkv.dtype))


@torch.library.custom_op("semivl_fast::class_attention_backward", mutates_args=())
def _class_attention_backward_op(grad_out: Tensor, qkv: Tensor, out: Tensor, lse: Tensor, num_heads: int,
                                 scale: float) -> Tensor:
    face = _face_of(qkv, num_heads)
    return _common.kernel(OP, face, _BACKWARD)(_unit_last(grad_out), qkv, out, lse, num_heads, scale)


@_class_attention_backward_op.register_fake
def _(grad_out, qkv, out, lse, num_heads, scale):
    return qkv.new_empty(qkv.shape)


def _setup_context(ctx, inputs, output):
    qkv, num_heads, scale = inputs
    out, lse = output
    ctx.save_for_backward(qkv, out, lse)
    ctx.num_heads, ctx.scale = num_heads, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, _grad_lse):
    qkv, out, lse = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    return _class_attention_backward_op(grad_out, qkv, out, lse, ctx.num_heads, ctx.scale), None, None


_class_attention_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------------------ public entry


def class_attention(qkv: Tensor, num_heads: int, scale: float | None = None) -> Tensor:
    """Multi-head softmax attention over the N tokens of each of S sequences, from the packed projection.

    qkv (S, N, 3·H·D): Q, K, V blocks along the last dim, heads inside each (``nn.Linear(dim, 3·dim)`` output);
    any strides (a non-unit last stride is made contiguous). Returns (S, N, H·D) contiguous. ``scale`` defaults to
    D^-0.5. Differentiable (custom op with its own backward op, or autograd through the reference / library faces;
    torch.compile traces both without graph breaks).
    """
    _check(qkv, num_heads)
    sc = _scale(qkv, num_heads, scale)
    if not math.isfinite(sc):
        raise ValueError(f"{OP}: argument 'scale' must be finite, got {scale!r}")
    face = _face_of(qkv, num_heads)
    if face == "reference":  # plain PyTorch: torch.compile sees inside
        return class_attention_reference(qkv, num_heads, sc)
    qkv = _unit_last(qkv)
    if face in _LIBRARY:
        return _LIBRARY[face](qkv, num_heads, sc)
    out, _ = _class_attention_op(qkv, num_heads, sc)
    return out
