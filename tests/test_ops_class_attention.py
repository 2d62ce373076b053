"""Class attention: every face (reference, C++ CPU per instruction set, Triton under the interpreter) against the
reference, forward and backward; gradcheck; odd sizes and strides; poisoned outputs; errors; opcheck;
torch.compile; the AOT specs at the decoder's shapes."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import semivl_fast
from semivl_fast.kernels import INTERPRET
from semivl_fast.ops import _common
from semivl_fast.ops.class_attention import (
    _backward_reference,
    _forward_reference,
    class_attention,
    class_attention_reference,
)

from tolerances import assert_close, tol

needs_ext = pytest.mark.skipif(not semivl_fast.has_ext(), reason="C++ extension not built")
needs_triton = pytest.mark.skipif(not (torch.cuda.is_available() or INTERPRET),
                                  reason="needs a GPU or TRITON_INTERPRET=1")
CA = importlib.import_module("semivl_fast.ops.class_attention")  # the module (the package exports the function)
ENV = "SEMIVL_FAST_BACKEND_CLASS_ATTENTION"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SIZES_N = [1, 19, 21, 150, 171]


def _qkv(s, n, h, d, dtype=torch.float32, device="cpu"):
    """Fresh random packed projections; scores of std ~1 so the softmax is neither flat nor one-hot."""
    return torch.randn(s, n, 3 * h * d, dtype=torch.float64).to(device=device, dtype=dtype)


def _naive(qkv, h, scale=None):
    """Independent spelling of the spec: per-sequence, per-head loops over nn.functional primitives."""
    c = qkv.shape[-1]
    d = c // (3 * h)
    scale = d**-0.5 if scale is None else scale
    q, k, v = qkv.split(c // 3, dim=-1)
    heads = []
    for i in range(h):
        sl = slice(i * d, (i + 1) * d)
        att = torch.softmax(torch.einsum("snd,smd->snm", q[..., sl], k[..., sl]) * scale, dim=-1)
        heads.append(torch.einsum("snm,smd->snd", att, v[..., sl]))
    return torch.cat(heads, dim=-1)


def _fwd_bwd(face, qkv_leaf, view_fn, h, grad_out, monkeypatch):
    monkeypatch.setenv(ENV, face)
    out = class_attention(view_fn(qkv_leaf), h)
    (grad,) = torch.autograd.grad(out, qkv_leaf, grad_out)
    return out, grad


# ---------------------------------------------------------------------------------------------------- the reference


@pytest.mark.parametrize("n", SIZES_N)
def test_reference_matches_naive_float64(n):
    qkv = _qkv(2, n, 3, 8, torch.float64)
    torch.testing.assert_close(class_attention_reference(qkv, 3), _naive(qkv, 3), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(class_attention_reference(qkv, 3, scale=0.3), _naive(qkv, 3, 0.3), atol=1e-12,
                               rtol=1e-12)


def test_reference_gradcheck_and_explicit_backward():
    qkv = _qkv(2, 5, 2, 3, torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: class_attention_reference(x, 2), (qkv,))
    # the explicit backward formula that the kernels implement equals autograd of the reference
    out, lse = _forward_reference(qkv.detach(), 2, 3**-0.5)
    go = torch.randn_like(out)
    (expected,) = torch.autograd.grad(class_attention_reference(qkv, 2), qkv, go)
    torch.testing.assert_close(_backward_reference(go, qkv.detach(), out, lse, 2, 3**-0.5), expected, atol=1e-12,
                               rtol=1e-12)
    q, k, _ = qkv.detach().unflatten(-1, (3, 2, 3)).permute(2, 0, 3, 1, 4).unbind(0)  # (S, H, N, D) each
    torch.testing.assert_close(lse, torch.logsumexp(q @ k.transpose(-1, -2) * 3**-0.5, -1), atol=1e-12, rtol=1e-12)


# ------------------------------------------------------------------------------------------------------------ C++ face


@needs_ext
@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("n", "h", "d"), [(1, 2, 64), (19, 4, 64), (21, 4, 64), (150, 2, 64), (171, 1, 64),
                                           (21, 3, 7), (150, 2, 24)])
def test_cpp_matches_reference(n, h, d, dtype, isa, monkeypatch):
    monkeypatch.setenv("SEMIVL_FAST_CPU_ISA", isa)
    qkv = _qkv(3, n, h, d, dtype).requires_grad_()
    go = torch.randn(3, n, h * d, dtype=dtype)
    ref, gref = _fwd_bwd("reference", qkv, lambda x: x, h, go, monkeypatch)
    out, grad = _fwd_bwd("cpp", qkv, lambda x: x, h, go, monkeypatch)
    assert_close(out, ref, "cpp", dtype, "out")
    assert_close(grad, gref, "cpp", dtype, "grad qkv")


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [21, 150])
def test_cpp_half_precision(n, dtype, monkeypatch):
    qkv = _qkv(2, n, 2, 64, dtype).requires_grad_()
    go = torch.randn(2, n, 128, dtype=dtype)
    ref, gref = _fwd_bwd("reference", qkv, lambda x: x, 2, go, monkeypatch)  # same inputs, float32 math
    out, grad = _fwd_bwd("cpp", qkv, lambda x: x, 2, go, monkeypatch)
    assert out.dtype == grad.dtype == dtype
    assert_close(out.float(), ref.float(), "cpp", dtype, "out")
    assert_close(grad.float(), gref.float(), "cpp", dtype, "grad qkv")


@needs_ext
@pytest.mark.parametrize(("n", "h", "d"), [(1, 2, 3), (5, 2, 3), (19, 1, 7)])
def test_cpp_gradcheck_float64(n, h, d, monkeypatch):
    monkeypatch.setenv(ENV, "cpp")
    qkv = _qkv(2, n, h, d, torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: class_attention(x, h), (qkv,))


@needs_ext
def test_cpp_reports_its_instruction_set(monkeypatch):
    isa = torch.ops.semivl_fast_C.class_attention_cpu_isa
    assert isa() in ("generic", "avx2", "avx512")
    monkeypatch.setenv("SEMIVL_FAST_CPU_ISA", "generic")
    assert isa() == "generic"
    monkeypatch.setenv("SEMIVL_FAST_CPU_ISA", "sse9")
    with pytest.raises(RuntimeError, match="SEMIVL_FAST_CPU_ISA must be one of"):
        isa()


# --------------------------------------------------------------------------------------------------------- Triton face


@needs_triton
@pytest.mark.parametrize(("n", "h", "d"), [(1, 2, 64), (19, 2, 64), (21, 2, 64), (150, 2, 64), (171, 1, 64),
                                           (21, 3, 7), (33, 2, 24)])
def test_triton_matches_reference_fp32(n, h, d, monkeypatch):
    monkeypatch.setenv("SEMIVL_FAST_TF32", "0")
    qkv = _qkv(2, n, h, d, torch.float32, DEVICE).requires_grad_()
    go = torch.randn(2, n, h * d, device=DEVICE)
    ref, gref = _fwd_bwd("reference", qkv, lambda x: x, h, go, monkeypatch)
    out, grad = _fwd_bwd("triton", qkv, lambda x: x, h, go, monkeypatch)
    assert_close(out, ref, "triton", torch.float32, "out")
    assert_close(grad, gref, "triton", torch.float32, "grad qkv")


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16] + ([torch.bfloat16] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("n", [21, 150])
def test_triton_half_precision(n, dtype, monkeypatch):
    """P and dS are cast to the operand dtype before their products (flash-attention practice), so the error is
    bounded by the flash-attention rule: err(kernel) <= 2 * err(plain attention in that dtype) + atol."""
    qkv = _qkv(2, n, 2, 64, dtype, DEVICE)
    leaf32 = qkv.float().requires_grad_()
    go = torch.randn(2, n, 128, device=DEVICE, dtype=dtype)
    ref, gref = _fwd_bwd("reference", leaf32, lambda x: x, 2, go.float(), monkeypatch)  # exact-ish float32 truth
    low = qkv.clone().requires_grad_()
    base_out = _naive(low, 2)  # every op in the low dtype
    (base_grad,) = torch.autograd.grad(base_out, low, go)
    leaf = qkv.clone().requires_grad_()
    out, grad = _fwd_bwd("triton", leaf, lambda x: x, 2, go, monkeypatch)
    atol = tol("triton", dtype)["atol"]
    for name, a, b, r in (("out", out, base_out, ref), ("grad", grad, base_grad, gref)):
        err, base_err = (a.float() - r).abs().max().item(), (b.float() - r).abs().max().item()
        assert err <= 2 * base_err + atol, f"{name}: kernel error {err:.3g} vs plain {dtype} attention {base_err:.3g}"


# ----------------------------------------------------------------------------------------- strides, poison, dispatch


def _faces():
    faces = ["reference"]
    if semivl_fast.has_ext():
        faces.append("cpp")
    if INTERPRET or torch.cuda.is_available():
        faces.append("triton")
    return faces


def _device(face):
    return DEVICE if face == "triton" else "cpu"


@pytest.mark.parametrize("face", _faces())
def test_non_contiguous_inputs_and_grads(face, monkeypatch):
    """A slice of a wider projection, a (N, S)-major tensor seen as (S, N), a non-unit last stride, and a
    non-contiguous upstream gradient."""
    s, n, h, d = 3, 19, 2, 16
    dev = _device(face)
    cases = {
        "slice": (torch.randn(s, n, 3 * h * d + 10, device=dev), lambda x: x[..., 5:5 + 3 * h * d]),
        "n_major": (torch.randn(n, s, 3 * h * d, device=dev), lambda x: x.transpose(0, 1)),
        "last_stride": (torch.randn(s, n, 3 * h * d, 2, device=dev), lambda x: x[..., 1]),
    }
    go = torch.randn(n, s, h * d, device=dev).transpose(0, 1)  # non-contiguous grad_out
    for name, (base, view) in cases.items():
        leaf = base.requires_grad_()
        ref, gref = _fwd_bwd("reference", leaf, lambda x, view=view: view(x).contiguous(), h, go, monkeypatch)
        out, grad = _fwd_bwd(face, leaf, view, h, go, monkeypatch)
        assert out.is_contiguous()
        assert_close(out, ref, face, torch.float32, f"out ({name})")
        assert_close(grad, gref, face, torch.float32, f"grad ({name})")


@pytest.mark.parametrize("face", [f for f in _faces() if f != "reference"])
def test_outputs_fully_written_over_poison(face, monkeypatch):
    """Outputs start as NaN (conftest poisons every kernel output): padding rows/columns and tails must all be
    written, including N = 1 and N, D that are not multiples of any tile or vector width."""
    assert _common._POISON
    for n, h, d in ((1, 1, 5), (17, 3, 7), (171, 1, 24)):
        dev = _device(face)
        leaf = _qkv(2, n, h, d, torch.float32, dev).requires_grad_()
        out, grad = _fwd_bwd(face, leaf, lambda x: x, h, torch.randn(2, n, h * d, device=dev), monkeypatch)
        assert torch.isfinite(out).all() and torch.isfinite(grad).all(), (face, n, h, d)


def test_auto_backend_on_cpu_is_the_cpp_kernel(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv("SEMIVL_FAST_BACKEND", raising=False)
    expected = "cpp" if semivl_fast.has_ext() else "reference"
    assert _common.backend("class_attention", torch.device("cpu"), ("cpp", "triton")) == expected


@pytest.fixture
def auto_backend(monkeypatch):
    """The auto backend, with Triton importable (the choice is pure logic: no GPU needed)."""
    pytest.importorskip("triton")  # supports() lives in the Triton kernels' module
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv("SEMIVL_FAST_BACKEND", raising=False)
    monkeypatch.setattr(_common, "has_triton", lambda: True)


@pytest.mark.parametrize(("dtype", "n", "d", "xformers", "want"), [
    (torch.float32, 21, 64, False, "triton"),
    (torch.bfloat16, 171, 64, True, "triton"),  # 256 x 64: the largest tile
    (torch.float16, 300, 64, True, "xformers"),  # N > 256
    (torch.float32, 300, 64, False, "sdpa"),
    (torch.float32, 21, 256, False, "sdpa"),  # D > 128
    (torch.float64, 21, 64, True, "reference"),  # no float64 Triton kernel
    (torch.float64, 300, 64, False, "reference"),
])
def test_gpu_dispatch_choice(dtype, n, d, xformers, want, auto_backend, monkeypatch):
    monkeypatch.setattr(CA, "_HAS_XFORMERS", xformers)
    assert CA._path(torch.device("cuda"), dtype, n, d) == want


def test_dispatch_choice_without_triton_on_cpu_and_forced(auto_backend, monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert CA._path(cpu, torch.float64, 300, 256) == ("cpp" if semivl_fast.has_ext() else "reference")
    monkeypatch.setattr(_common, "has_triton", lambda: False)
    assert CA._path(cuda, torch.float32, 21, 64) == "reference"  # no CUDA C++ face for this op
    monkeypatch.setenv(ENV, "triton")
    assert CA._path(cuda, torch.float64, 21, 64) == "reference"
    assert CA._path(cuda, torch.float32, 300, 64) == "sdpa"
    assert CA._path(cpu, torch.float64, 21, 64) == "triton"  # the interpreter gets what it is asked for
    monkeypatch.setenv(ENV, "reference")
    assert CA._path(cuda, torch.float16, 21, 64) == "reference"


@pytest.mark.parametrize("library", ["sdpa", pytest.param("xformers", marks=pytest.mark.skipif(
    not CA._HAS_XFORMERS, reason="xformers not installed"))])
def test_library_path_matches_reference(library, monkeypatch):
    """What class_attention runs for shapes Triton does not take, here on CPU: forward and backward."""
    dev = DEVICE if library == "xformers" else "cpu"
    leaf = _qkv(2, 37, 2, 16, torch.float32, dev).requires_grad_()
    go = torch.randn(2, 37, 32, device=dev)
    ref, gref = _fwd_bwd("reference", leaf, lambda x: x, 2, go, monkeypatch)
    monkeypatch.setattr(CA, "_path", lambda *a: library)
    out, grad = _fwd_bwd("cpp", leaf, lambda x: x, 2, go, monkeypatch)
    assert_close(out, ref, "library", torch.float32, "out")
    assert_close(grad, gref, "library", torch.float32, "grad qkv")


# --------------------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("face", _faces())
def test_bad_arguments_name_the_argument(face, monkeypatch):
    monkeypatch.setenv(ENV, face)
    good = torch.randn(2, 5, 3 * 2 * 4)
    with pytest.raises(ValueError, match="'qkv' must be 3-D"):
        class_attention(good[0], 2)
    with pytest.raises(TypeError, match="'qkv' must be a floating-point"):
        class_attention(good.long(), 2)
    with pytest.raises(ValueError, match="'qkv' must have a last dim of 3 \\* num_heads \\* head_dim"):
        class_attention(good[..., :-1], 2)
    with pytest.raises(ValueError, match="'num_heads' must be a positive int"):
        class_attention(good, 0)
    with pytest.raises(ValueError, match="needs at least one token"):
        class_attention(good[:, :0], 2)
    with pytest.raises(ValueError, match="'scale' must be finite"):
        class_attention(good, 2, scale=float("nan"))


@needs_ext
def test_cpp_face_rejects_other_devices():
    """Forward and backward face on non-CPU tensors (meta: the custom op itself would run its fake kernel)."""
    qkv, out = torch.randn(2, 5, 24, device="meta"), torch.randn(2, 5, 8, device="meta")
    with pytest.raises(ValueError, match=r"the C\+\+ face runs on CPU tensors, got meta"):
        CA._forward_cpp(qkv, 2, 1.0)
    with pytest.raises(ValueError, match=r"the C\+\+ face runs on CPU tensors, got meta"):
        CA._backward_cpp(out, qkv, out, torch.randn(2, 2, 5, device="meta"), 2, 1.0)


@needs_ext
def test_raw_cpp_ops_check_their_arguments():
    op = torch.ops.semivl_fast_C
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    out, lse = torch.empty(2, 3, 5, 8), torch.empty(2, 3, 5)
    with pytest.raises(RuntimeError, match="argument 'q' must have unit stride along D"):
        op.class_attention_fwd_(q.transpose(2, 3), k, v, 1.0, out, lse)
    with pytest.raises(RuntimeError, match="argument 'k' must have the shape of 'q'"):
        op.class_attention_fwd_(q, k[:, :, :4], v, 1.0, out, lse)
    with pytest.raises(RuntimeError, match="argument 'v' must have the dtype of 'q'"):
        op.class_attention_fwd_(q, k, v.double(), 1.0, out, lse)
    with pytest.raises(RuntimeError, match="argument 'lse' must be Float"):
        op.class_attention_fwd_(q, k, v, 1.0, out, lse.double())
    with pytest.raises(RuntimeError, match="argument 'lse' must have shape"):
        op.class_attention_fwd_(q, k, v, 1.0, out, lse[:, :2])
    with pytest.raises(RuntimeError, match="argument 'q' must be float64/float32/float16/bfloat16"):
        op.class_attention_fwd_(q.int(), k.int(), v.int(), 1.0, out.int(), lse)
    g = [torch.empty_like(q) for _ in range(3)]
    with pytest.raises(RuntimeError, match="argument 'grad_k' must have the shape of 'q'"):
        op.class_attention_bwd_(out, q, k, v, out, lse, 1.0, g[0], g[1][:1], g[2])
    with pytest.raises(RuntimeError, match="argument 'grad_out' must have unit stride along D"):
        op.class_attention_bwd_(out.transpose(2, 3).contiguous().transpose(2, 3), q, k, v, out, lse, 1.0, *g)


@needs_triton
def test_triton_launcher_checks_its_arguments():
    from semivl_fast.kernels.class_attention import class_attention_bwd, class_attention_fwd

    q, k, v = (torch.randn(2, 3, 5, 8, device=DEVICE) for _ in range(3))
    out, lse = torch.empty(2, 3, 5, 8, device=DEVICE), torch.empty(2, 3, 5, device=DEVICE)
    with pytest.raises(TypeError, match="'q' must be float32, float16 or bfloat16"):
        class_attention_fwd(q.double(), k.double(), v.double(), out.double(), lse, 1.0)
    with pytest.raises(ValueError, match="do not fit one key tile"):
        big = torch.randn(1, 1, 300, 8, device=DEVICE)
        class_attention_fwd(big, big, big, big.clone(), torch.empty(1, 1, 300, device=DEVICE), 1.0)
    with pytest.raises(ValueError, match="argument 'v' must match 'q'"):
        class_attention_fwd(q, k, v[:1], out, lse, 1.0)
    with pytest.raises(ValueError, match="argument 'out' must have unit stride along D"):
        class_attention_fwd(q, k, v, out.transpose(2, 3).contiguous().transpose(2, 3), lse, 1.0)
    with pytest.raises(ValueError, match="argument 'lse' must be a contiguous float32"):
        class_attention_fwd(q, k, v, out, lse.double(), 1.0)
    with pytest.raises(ValueError, match=r"argument 'k' must match 'q' .*, got \(.*meta\)"):
        class_attention_fwd(q, k.to("meta"), v, out, lse, 1.0)
    with pytest.raises(ValueError, match=r"argument 'lse' must be a contiguous float32 .* on meta"):
        class_attention_fwd(q, k, v, out, lse.to("meta"), 1.0)
    grads = [torch.empty_like(q) for _ in range(3)]
    with pytest.raises(ValueError, match=r"argument 'grad_out' must match 'q' .*, got \(.*meta\)"):
        class_attention_bwd(out.to("meta"), q, k, v, out, lse, 1.0, *grads, torch.empty_like(lse))


def test_float64_on_triton_is_a_clear_error(monkeypatch):
    if not (INTERPRET or torch.cuda.is_available()):
        pytest.skip("needs Triton")
    monkeypatch.setenv(ENV, "triton")
    qkv = torch.randn(2, 3, 12, dtype=torch.float64, device=DEVICE)
    with pytest.raises(TypeError, match="float64 runs on the C\\+\\+ and reference faces"):
        torch.ops.semivl_fast.class_attention(qkv, 2, 0.5)  # the Triton face itself
    if DEVICE == "cpu":  # the interpreter runs what it is asked to
        with pytest.raises(TypeError, match="float64 runs on the C\\+\\+ and reference faces"):
            class_attention(qkv, 2)
    else:  # on CUDA, class_attention sends float64 to the reference (test_gpu_dispatch_choice)
        torch.testing.assert_close(class_attention(qkv, 2), class_attention_reference(qkv, 2))


# ------------------------------------------------------------------------------------------------- opcheck / compile


@pytest.mark.parametrize("face", [f for f in _faces() if f != "triton"])  # opcheck traces fakes; triton on CPU is the
def test_opcheck(face, monkeypatch):  # interpreter, which fake tensors cannot run (engineering.md §4.1)
    monkeypatch.setenv(ENV, face)
    qkv = _qkv(2, 7, 2, 8).requires_grad_()
    torch.library.opcheck(torch.ops.semivl_fast.class_attention.default, (qkv, 2, 0.3))
    out, lse = torch.ops.semivl_fast.class_attention(qkv.detach(), 2, 0.3)
    go = torch.randn_like(out)
    torch.library.opcheck(torch.ops.semivl_fast.class_attention_backward.default, (go, qkv.detach(), out, lse, 2, 0.3))


@pytest.mark.slow
@needs_ext
def test_torch_compile_fullgraph_forward_and_backward(monkeypatch):
    monkeypatch.setenv(ENV, "cpp")
    proj = torch.nn.Linear(32, 96)
    x = torch.randn(6, 21, 32, requires_grad=True)
    fn = lambda t: class_attention(proj(t), 2).square().sum()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    (g_c,) = torch.autograd.grad(compiled(x), x)
    (g_e,) = torch.autograd.grad(fn(x), x)
    torch.testing.assert_close(g_c, g_e, **tol("compile", torch.float32))


# --------------------------------------------------------------------------------------------------------------- AOT


@pytest.mark.slow
def test_aot_specs_at_decoder_shapes_compile_without_spills():
    """S = 16·64 sequences, N = 21 / 150, H = 4, D = 64, bf16 and fp32: the specs use the launcher's config, and the
    bf16 / TF32 ones compile for sm_80 / sm_90 with no spills and shared memory under the limit (subprocess: no
    interpreter; the IEEE-fp32 specs compile in tests/test_gpu_compile.py with everything else)."""
    code = (
        "import torch\n"
        "from semivl_fast.kernels import _aot\n"
        "from semivl_fast.kernels import class_attention as ca\n"
        "names = {s.name for s in ca.AOT_SPECS}\n"
        "for n in (21, 150):\n"
        "    for dt in ('bf16', 'fp32'):\n"
        "        for k in ('fwd', 'bwd_dq', 'bwd_dkdv'):\n"
        "            assert f'class_attention_{k}_N{n}_{dt}' in names, (k, n, dt)\n"
        "dts = {'bf16': torch.bfloat16, 'fp32': torch.float32}\n"
        "for s in ca.AOT_SPECS:\n"
        "    _, kind, n, dt, *ieee = s.name.replace('class_attention_', 'x_').replace('bwd_', 'bwd').split('_')\n"
        "    cfg = ca.config(int(n[1:]), 64, dts[dt], 'ieee' if ieee else 'tf32')\n"
        "    c = s.constexprs\n"
        "    want = {'fwd': (cfg['FWD_M'], cfg['FWD_WARPS']), 'bwddq': (cfg['BWD_M'], cfg['BWD_WARPS']),\n"
        "            'bwddkdv': (cfg['BWD_M'], cfg['BWD_WARPS'])}[kind]\n"
        "    assert (c.get('BLOCK_M', c.get('BLOCK_MB')), s.num_warps) == want, s.name\n"
        "    assert c['GROUP'] == cfg['GROUP'] and s.num_stages == cfg['STAGES'] and c['ALIGNED'], s.name\n"
        "bad = []\n"
        "for spec in [s for s in ca.AOT_SPECS if not s.name.endswith('_ieee')]:  # all: tests/test_gpu_compile.py\n"
        "    for arch in _aot.TARGETS:\n"
        "        r = _aot.compile_spec(spec, arch)\n"
        "        print(r)\n"
        "        if not r.ok: bad.append(r)\n"
        "assert not bad, bad\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


# ----------------------------------------------------------------------------------------------- decoder-shaped use


@needs_ext
def test_matches_multihead_attention_float64(monkeypatch):
    """What the decoder relies on: Linear qkv → op → Linear proj equals nn.MultiheadAttention (batch_first)."""
    monkeypatch.setenv(ENV, "cpp")
    torch.manual_seed(3)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True).double()
    x = torch.randn(5, 21, 32, dtype=torch.float64)
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
    out = F.linear(class_attention(qkv, 4), mha.out_proj.weight, mha.out_proj.bias)
    torch.testing.assert_close(out, mha(x, x, x, need_weights=False)[0], atol=1e-12, rtol=1e-12)
