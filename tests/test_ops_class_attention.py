"""Class attention: every face (reference, C++ CPU per instruction set, Triton under the interpreter, SDPA, xformers
on a GPU) against the reference, forward and backward; gradcheck; odd sizes and strides; poisoned outputs; the face
choice; errors; opcheck; torch.compile; the AOT specs at the decoder's shapes."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

import semivl_fast
from semivl_fast.ops import _common
from semivl_fast.ops.class_attention import OP, class_attention, class_attention_reference

from faces import TRITON_DEVICE, aot_kernels, device_of, face, jit_kernels, needs, use_face
from tolerances import assert_close, tol

CA = importlib.import_module("semivl_fast.ops.class_attention")  # the module (the package exports the function)
DEVICE = TRITON_DEVICE
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
    use_face(monkeypatch, OP, face)
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


def test_reference_gradcheck():
    qkv = _qkv(2, 5, 2, 3, torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: class_attention_reference(x, 2), (qkv,))


@needs("cpp")
def test_cpp_saves_the_row_logsumexp(monkeypatch):
    """What the custom op saves for its backward: out and lse = logsumexp(scale q kᵀ) per row, float64 exact."""
    use_face(monkeypatch, OP, "cpp")
    qkv = _qkv(2, 5, 2, 3, torch.float64)
    out, lse = torch.ops.semivl_fast.class_attention(qkv, 2, 3**-0.5)
    torch.testing.assert_close(out, class_attention_reference(qkv, 2), atol=1e-12, rtol=1e-12)
    q, k, _ = qkv.unflatten(-1, (3, 2, 3)).permute(2, 0, 3, 1, 4).unbind(0)  # (S, H, N, D) each
    torch.testing.assert_close(lse, torch.logsumexp(q @ k.transpose(-1, -2) * 3**-0.5, -1), atol=1e-12, rtol=1e-12)


# ------------------------------------------------------------------------------------------------------------ C++ face


@needs("cpp")
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


@needs("cpp")
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


@needs("cpp")
@pytest.mark.parametrize(("n", "h", "d"), [(1, 2, 3), (5, 2, 3), (19, 1, 7)])
def test_cpp_gradcheck_float64(n, h, d, monkeypatch):
    use_face(monkeypatch, OP, "cpp")
    qkv = _qkv(2, n, h, d, torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: class_attention(x, h), (qkv,))


@needs("cpp")
def test_cpp_reports_its_instruction_set(monkeypatch):
    isa = torch.ops.semivl_fast_C.class_attention_cpu_isa
    assert isa() in ("generic", "avx2", "avx512")
    monkeypatch.setenv("SEMIVL_FAST_CPU_ISA", "generic")
    assert isa() == "generic"
    monkeypatch.setenv("SEMIVL_FAST_CPU_ISA", "sse9")
    with pytest.raises(RuntimeError, match="SEMIVL_FAST_CPU_ISA must be one of"):
        isa()


# --------------------------------------------------------------------------------------------------------- Triton face


@needs("triton")
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


@needs("triton")
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

FACES = ["reference", "cpp", "triton", "sdpa", "xformers"]


@pytest.mark.parametrize("face", [face(f) for f in FACES])
def test_non_contiguous_inputs_and_grads(face, monkeypatch):
    """A slice of a wider projection, a (N, S)-major tensor seen as (S, N), a non-unit last stride, and a
    non-contiguous upstream gradient."""
    s, n, h, d = 3, 19, 2, 16
    dev = device_of(face)
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


@pytest.mark.parametrize("face", [face("cpp"), face("triton")])
def test_outputs_fully_written_over_poison(face, monkeypatch):
    """Outputs start as NaN (conftest poisons every kernel output): padding rows/columns and tails must all be
    written, including N = 1 and N, D that are not multiples of any tile or vector width."""
    assert _common._POISON
    for n, h, d in ((1, 1, 5), (17, 3, 7), (171, 1, 24)):
        dev = device_of(face)
        leaf = _qkv(2, n, h, d, torch.float32, dev).requires_grad_()
        out, grad = _fwd_bwd(face, leaf, lambda x: x, h, torch.randn(2, n, h * d, device=dev), monkeypatch)
        assert torch.isfinite(out).all() and torch.isfinite(grad).all(), (face, n, h, d)


def test_auto_backend_on_cpu_is_the_cpp_kernel(monkeypatch):
    monkeypatch.delenv(f"{_common.ENV}_CLASS_ATTENTION", raising=False)
    monkeypatch.delenv(_common.ENV, raising=False)
    expected = "cpp" if semivl_fast.has_ext() else "reference"
    assert CA.select_face(torch.device("cpu"), torch.float64, 300, 256) == expected


@pytest.fixture
def auto_backend(monkeypatch):
    """The auto backend, with Triton importable (the choice is pure logic: no GPU needed)."""
    pytest.importorskip("triton")  # the limits live in the Triton kernels' module
    monkeypatch.delenv(f"{_common.ENV}_CLASS_ATTENTION", raising=False)
    monkeypatch.delenv(_common.ENV, raising=False)
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
    monkeypatch.setattr(_common, "has_xformers", lambda: xformers)
    assert CA.select_face(torch.device("cuda"), dtype, n, d) == want


def test_dispatch_choice_without_triton_and_forced(auto_backend, monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(_common, "has_triton", lambda: False)
    assert CA.select_face(cuda, torch.float32, 21, 64) == "reference"  # no CUDA C++ face for this op
    monkeypatch.setattr(_common, "has_triton", lambda: True)
    monkeypatch.setattr(_common, "INTERPRET", True)
    monkeypatch.setattr(_common, "has_xformers", lambda: True)
    use_face(monkeypatch, OP, "triton")  # a forced Triton face keeps the kernels' limits, on every device
    assert CA.select_face(cuda, torch.float64, 21, 64) == "reference"
    assert CA.select_face(cuda, torch.float32, 300, 64) == "xformers"
    assert CA.select_face(cpu, torch.float32, 21, 64) == "triton"  # the interpreter
    assert CA.select_face(cpu, torch.float64, 21, 64) == "reference"
    assert CA.select_face(cpu, torch.float32, 300, 64) == "sdpa"  # xformers runs on CUDA only
    use_face(monkeypatch, OP, "reference")
    assert CA.select_face(cuda, torch.float16, 21, 64) == "reference"
    use_face(monkeypatch, OP, "sdpa")
    assert CA.select_face(cpu, torch.float64, 21, 64) == "sdpa"
    use_face(monkeypatch, OP, "xformers")
    with pytest.raises(RuntimeError, match="the xformers face runs on CUDA tensors, got cpu"):
        CA.select_face(cpu)
    monkeypatch.setattr(_common, "has_xformers", lambda: False)
    with pytest.raises(RuntimeError, match="xformers is not installed"):
        CA.select_face(cuda)


@pytest.mark.parametrize("library", [face("sdpa"), face("xformers")])
def test_library_faces_match_reference(library, monkeypatch):
    """What class_attention runs for shapes Triton does not take (SDPA also forced on CPU): forward and backward,
    autograd through the library kernel."""
    dev = device_of(library)
    leaf = _qkv(2, 37, 2, 16, torch.float32, dev).requires_grad_()
    go = torch.randn(2, 37, 32, device=dev)
    ref, gref = _fwd_bwd("reference", leaf, lambda x: x, 2, go, monkeypatch)
    out, grad = _fwd_bwd(library, leaf, lambda x: x, 2, go, monkeypatch)
    assert_close(out, ref, library, torch.float32, "out")
    assert_close(grad, gref, library, torch.float32, "grad qkv")


# --------------------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("face", [face(f) for f in FACES])
def test_bad_arguments_name_the_argument(face, monkeypatch):
    use_face(monkeypatch, OP, face)
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


@needs("cpp")
def test_cpp_face_rejects_other_devices(monkeypatch):
    """A forced C++ face on non-CPU tensors: select_face, which the public function and both custom ops call, says
    why (meta tensors: the custom op itself would run its fake kernel)."""
    use_face(monkeypatch, OP, "cpp")
    with pytest.raises(RuntimeError, match=r"the C\+\+ face runs on CPU tensors, got meta"):
        class_attention(torch.randn(2, 5, 24, device="meta"), 2)
    with pytest.raises(RuntimeError, match=r"the C\+\+ face runs on CPU tensors, got meta"):
        CA.select_face(torch.device("meta"))


@needs("cpp")
def test_raw_cpp_ops_check_their_arguments():
    op = torch.ops.semivl_fast_C
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    out, lse = torch.empty(2, 3, 5, 8), torch.empty(2, 3, 5)
    with pytest.raises(RuntimeError, match="argument 'q' must have unit stride along D"):
        op.class_attention_forward_(q.transpose(2, 3), k, v, 1.0, out, lse)
    with pytest.raises(RuntimeError, match="argument 'k' must have the shape of 'q'"):
        op.class_attention_forward_(q, k[:, :, :4], v, 1.0, out, lse)
    with pytest.raises(RuntimeError, match="argument 'v' must have the dtype of 'q'"):
        op.class_attention_forward_(q, k, v.double(), 1.0, out, lse)
    with pytest.raises(RuntimeError, match="argument 'lse' must be Float"):
        op.class_attention_forward_(q, k, v, 1.0, out, lse.double())
    with pytest.raises(RuntimeError, match="argument 'lse' must have shape"):
        op.class_attention_forward_(q, k, v, 1.0, out, lse[:, :2])
    with pytest.raises(RuntimeError, match="argument 'q' must be float64/float32/float16/bfloat16"):
        op.class_attention_forward_(q.int(), k.int(), v.int(), 1.0, out.int(), lse)
    g = [torch.empty_like(q) for _ in range(3)]
    with pytest.raises(RuntimeError, match="argument 'grad_k' must have the shape of 'q'"):
        op.class_attention_backward_(out, q, k, v, out, lse, 1.0, g[0], g[1][:1], g[2])
    with pytest.raises(RuntimeError, match="argument 'grad_out' must have unit stride along D"):
        op.class_attention_backward_(out.transpose(2, 3).contiguous().transpose(2, 3), q, k, v, out, lse, 1.0, *g)


@needs("triton")
def test_triton_launcher_checks_its_arguments():
    from semivl_fast.kernels.class_attention import backward, forward  # lazy: imports triton (the test needs it)

    q, k, v = (torch.randn(2, 3, 5, 8, device=DEVICE) for _ in range(3))
    out, lse = torch.empty(2, 3, 5, 8, device=DEVICE), torch.empty(2, 3, 5, device=DEVICE)
    with pytest.raises(TypeError, match="'q' must be float32, float16 or bfloat16"):
        forward(q.double(), k.double(), v.double(), out.double(), lse, 1.0)
    with pytest.raises(ValueError, match="do not fit one key tile"):
        big = torch.randn(1, 1, 300, 8, device=DEVICE)
        forward(big, big, big, big.clone(), torch.empty(1, 1, 300, device=DEVICE), 1.0)
    with pytest.raises(ValueError, match="argument 'v' must match 'q'"):
        forward(q, k, v[:1], out, lse, 1.0)
    with pytest.raises(ValueError, match="argument 'out' must have unit stride along D"):
        forward(q, k, v, out.transpose(2, 3).contiguous().transpose(2, 3), lse, 1.0)
    with pytest.raises(ValueError, match="argument 'lse' must be a contiguous float32"):
        forward(q, k, v, out, lse.double(), 1.0)
    with pytest.raises(ValueError, match=r"argument 'k' must match 'q' .*, got \(.*meta\)"):
        forward(q, k.to("meta"), v, out, lse, 1.0)
    with pytest.raises(ValueError, match=r"argument 'lse' must be a contiguous float32 .* on meta"):
        forward(q, k, v, out, lse.to("meta"), 1.0)
    grads = [torch.empty_like(q) for _ in range(3)]
    with pytest.raises(ValueError, match=r"argument 'grad_out' must match 'q' .*, got \(.*meta\)"):
        backward(out.to("meta"), q, k, v, out, lse, 1.0, *grads, torch.empty_like(lse))


@needs("triton")
def test_float64_with_triton_forced_runs_the_reference(monkeypatch):
    """float64, which the Triton kernels do not take (their launchers say so, above), runs the reference; the custom
    op, which runs only kernel faces, says where it runs instead."""
    use_face(monkeypatch, OP, "triton")
    qkv = torch.randn(2, 3, 12, dtype=torch.float64, device=DEVICE)
    torch.testing.assert_close(class_attention(qkv, 2), class_attention_reference(qkv, 2))
    with pytest.raises(RuntimeError, match=r"face 'reference' runs in semivl_fast.ops.class_attention\(\)"):
        torch.ops.semivl_fast.class_attention(qkv, 2, 0.5)


# ------------------------------------------------------------------------------------------------- opcheck / compile


@needs("cpp")  # the custom op runs the kernel faces; opcheck's fake tensors cannot run the Triton interpreter
def test_opcheck(monkeypatch):
    use_face(monkeypatch, OP, "cpp")
    qkv = _qkv(2, 7, 2, 8).requires_grad_()
    torch.library.opcheck(torch.ops.semivl_fast.class_attention.default, (qkv, 2, 0.3))
    out, lse = torch.ops.semivl_fast.class_attention(qkv.detach(), 2, 0.3)
    go = torch.randn_like(out)
    torch.library.opcheck(torch.ops.semivl_fast.class_attention_backward.default, (go, qkv.detach(), out, lse, 2, 0.3))


@pytest.mark.slow
@pytest.mark.parametrize("face", [face("cpp"), face("sdpa")])
def test_torch_compile_fullgraph_forward_and_backward(face, monkeypatch):
    use_face(monkeypatch, OP, face)
    proj = torch.nn.Linear(32, 96)
    x = torch.randn(6, 21, 32, requires_grad=True)
    fn = lambda t: class_attention(proj(t), 2).square().sum()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    (g_c,) = torch.autograd.grad(compiled(x), x)
    (g_e,) = torch.autograd.grad(fn(x), x)
    torch.testing.assert_close(g_c, g_e, **tol("compile", torch.float32))


# --------------------------------------------------------------------------------------------------------------- AOT


def test_aot_specs_at_decoder_shapes_use_the_launchers_config():
    """S = 16·64 sequences, N = 21 / 150, H = 4, D = 64, bf16 and fp32 (TF32 and IEEE): every kernel has specs, with
    the tile sizes, warps and stages the launcher picks (tests/test_gpu_compile.py compiles them)."""
    ca = pytest.importorskip("semivl_fast.kernels.class_attention")
    assert aot_kernels(ca) == jit_kernels(ca) == {"_ca_fwd_kernel", "_ca_bwd_dq_kernel", "_ca_bwd_dkdv_kernel"}
    names = {s.name for s in ca.AOT_SPECS}
    for n in (21, 150):
        for dt in ("bf16", "fp32", "fp32_ieee"):
            for kind in ("fwd", "bwd_dq", "bwd_dkdv"):
                assert f"class_attention_{kind}_N{n}_{dt}" in names, (kind, n, dt)
    dtypes = {"bf16": torch.bfloat16, "fp32": torch.float32}
    for spec in ca.AOT_SPECS:
        _, kind, n, dt, *ieee = spec.name.replace("class_attention_", "x_").replace("bwd_", "bwd").split("_")
        cfg = ca.config(int(n[1:]), 64, dtypes[dt], "ieee" if ieee else "tf32")
        c = spec.constexprs
        want = {"fwd": (cfg["FWD_M"], cfg["FWD_WARPS"]), "bwddq": (cfg["BWD_M"], cfg["BWD_WARPS"]),
                "bwddkdv": (cfg["BWD_M"], cfg["BWD_WARPS"])}[kind]
        assert (c.get("BLOCK_M", c.get("BLOCK_MB")), spec.num_warps) == want, spec.name
        assert c["GROUP"] == cfg["GROUP"] and spec.num_stages == cfg["STAGES"] and c["ALIGNED"], spec.name


# ----------------------------------------------------------------------------------------------- decoder-shaped use


@needs("cpp")
def test_matches_multihead_attention_float64(monkeypatch):
    """What the decoder relies on: Linear qkv → op → Linear proj equals nn.MultiheadAttention (batch_first)."""
    use_face(monkeypatch, OP, "cpp")
    torch.manual_seed(3)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True).double()
    x = torch.randn(5, 21, 32, dtype=torch.float64)
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
    out = F.linear(class_attention(qkv, 4), mha.out_proj.weight, mha.out_proj.bias)
    torch.testing.assert_close(out, mha(x, x, x, need_weights=False)[0], atol=1e-12, rtol=1e-12)
