"""Cost volume: C++ and Triton (interpreter) kernels vs the PyTorch reference, forward and backward; the custom ops
under opcheck and torch.compile; argument errors; AOT compilation of the Triton kernels (slow)."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import semivl_fast
from semivl_fast.kernels import INTERPRET
from semivl_fast.ops import _common
from semivl_fast.ops.cost_volume import (
    _bwd_cpp,
    concept_max,
    cost_volume,
    cost_volume_cpp,
    cost_volume_reference,
    cost_volume_triton,
    duplicate_rows,
    ensemble_text,
)

from tolerances import assert_close, tol

needs_ext = pytest.mark.skipif(not semivl_fast.has_ext(), reason="C++ extension not built")
needs_triton = pytest.mark.skipif(not (torch.cuda.is_available() or INTERPRET), reason="needs a GPU or the interpreter")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
ENV = "SEMIVL_FAST_BACKEND_COST_VOLUME"
CPP = pytest.param("cpp", marks=needs_ext)
TRITON = pytest.param("triton", marks=needs_triton)


@pytest.fixture(autouse=True)
def _ieee_fp32_dots(monkeypatch):
    """On a GPU, compare fp32 Triton with exact fp32 dots: TF32 rounding would flip near-ties of the concept max
    (test_triton_tf32_default covers the default). No effect under the interpreter."""
    monkeypatch.setenv("SEMIVL_FAST_TF32", "0")


def _device(face):
    return DEV if face == "triton" else "cpu"


def _inputs(b, c, h, w, n, templates=None, device="cpu"):
    image = torch.randn(b, c, h, w, dtype=torch.float64, device=device) + 0.3  # not centred: norms vary
    text = torch.randn(n, *([templates] if templates else []), c, dtype=torch.float64, device=device)
    return image, text


def _groups(n, k, device="cpu"):
    """Unsorted class of every row; every class has at least one row, and with n > k class k - 1 has exactly one."""
    if n <= k:
        g = torch.arange(n)
    else:
        g = torch.cat([torch.arange(k), torch.randint(0, max(k - 1, 1), (n - k,))])
    return g[torch.randperm(n)].to(device)


def _run(face, image, text, groups=None, num_classes=None, dtype=None, grad_out=None, monkeypatch=None):
    """(out, d image, d text) of the reference ("ref": autograd of cost_volume_reference) or one face of the op."""
    dtype = dtype or image.dtype
    x = image.detach().to(dtype).requires_grad_()
    t = text.detach().to(dtype).requires_grad_()
    if face == "ref":
        out = cost_volume_reference(x, t, groups, num_classes)
    else:
        monkeypatch.setenv(ENV, face)
        out = cost_volume(x, t, groups, num_classes)
    if grad_out is None:
        return out, None, None
    gx, gt = torch.autograd.grad(out, [x, t], grad_out.to(out.dtype))
    return out, gx, gt


def _compare(face, got, want, dtype, what):
    for name, a, e in zip(("output", "grad image", "grad text"), got, want):
        if a is not None:
            assert_close(a, e.to(a.dtype) if dtype != torch.float64 else e, face, dtype, f"{what} {name}")


# ----------------------------------------------------------------------------------------------- reference itself


def test_reference_is_normalize_einsum_concept_max():
    image, text = _inputs(2, 6, 3, 5, 7, templates=3)
    groups = torch.tensor([2, 0, 1, 0, 2, 2, 1])
    scores = torch.einsum("bchw,nc->bnhw", F.normalize(image, dim=1), ensemble_text(text))
    torch.testing.assert_close(cost_volume_reference(image, text), scores)
    by_hand = torch.stack([scores[:, groups == k].amax(1) for k in range(3)], 1)
    torch.testing.assert_close(cost_volume_reference(image, text, groups, 3), by_hand)
    torch.testing.assert_close(concept_max(scores, groups, 3), by_hand)


@pytest.mark.parametrize("face", ["ref", "reference", CPP])
@pytest.mark.parametrize("grouped", [False, True])
def test_gradcheck_float64(face, grouped, monkeypatch):
    """Reference autograd, the reference face's written-out backward and the C++ kernel, in float64."""
    image, text = _inputs(2, 4, 3, 3, 5, templates=2)
    groups = torch.tensor([1, 0, 2, 1, 0]) if grouped else None
    if face != "ref":
        monkeypatch.setenv(ENV, face)
    fn = cost_volume_reference if face == "ref" else cost_volume
    assert torch.autograd.gradcheck(lambda x, t: fn(x, t, groups, 3 if grouped else None),
                                    (image.requires_grad_(), text.requires_grad_()))


# ----------------------------------------------------------------------------------------- kernels vs reference

SHAPES = [  # (B, C, H, W, N)
    (2, 64, 7, 9, 21),
    (1, 512, 8, 8, 150),
    (2, 96, 5, 3, 1),
    (1, 96, 33, 31, 19),
    (1, 64, 5, 7, 171),
]


@needs_ext
@pytest.mark.parametrize("shape", [*SHAPES, (2, 512, 33, 31, 150)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cpp_matches_reference(shape, dtype, monkeypatch):
    b, c, h, w, n = shape
    image, text = _inputs(b, c, h, w, n)
    image, text = image.to(dtype).double(), text.to(dtype).double()  # same rounded inputs for both sides
    grad_out = torch.randn(b, n, h, w, dtype=torch.float64)
    want = _run("ref", image, text, grad_out=grad_out)
    got = _run("cpp", image, text, dtype=dtype, grad_out=grad_out, monkeypatch=monkeypatch)
    assert got[0].dtype == dtype and got[0].is_contiguous()
    _compare("cpp", got, want, dtype, f"{shape}")


@needs_triton
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_triton_matches_reference_fp32(shape, monkeypatch):
    b, c, h, w, n = shape
    image, text = _inputs(b, c, h, w, n, device=DEV)
    grad_out = torch.randn(b, n, h, w, dtype=torch.float64, device=DEV)
    want = _run("ref", image, text, grad_out=grad_out)
    got = _run("triton", image, text, dtype=torch.float32, grad_out=grad_out, monkeypatch=monkeypatch)
    _compare("triton", got, want, torch.float32, f"{shape}")


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_triton_half_precision(dtype, monkeypatch):
    """float16 forward and backward; bfloat16 (upcast before tl.dot under the interpreter) forward and backward."""
    image, text = _inputs(2, 96, 7, 9, 21, device=DEV)
    image, text = image.to(dtype).double(), text.to(dtype).double()
    grad_out = torch.randn(2, 21, 7, 9, dtype=torch.float64, device=DEV)
    want = _run("ref", image, text, grad_out=grad_out)
    got = _run("triton", image, text, dtype=dtype, grad_out=grad_out, monkeypatch=monkeypatch)
    _compare("triton", got, want, dtype, "half")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="TF32 needs a GPU")
def test_triton_tf32_default(monkeypatch):
    from semivl_fast.kernels.cost_volume import fp32_precision

    monkeypatch.delenv("SEMIVL_FAST_TF32")
    assert fp32_precision() == "tf32"
    image, text = _inputs(4, 512, 32, 32, 150, device=DEV)
    grad_out = torch.randn(4, 150, 32, 32, dtype=torch.float64, device=DEV)
    want = _run("ref", image, text, grad_out=grad_out)
    got = _run("triton", image, text, dtype=torch.float32, grad_out=grad_out, monkeypatch=monkeypatch)
    _compare("triton", got, want, torch.float32, "tf32")


def test_fp32_precision_switch(monkeypatch):
    pytest.importorskip("triton")
    from semivl_fast.kernels.cost_volume import fp32_precision

    assert fp32_precision() == "ieee"  # the autouse fixture
    monkeypatch.setenv("SEMIVL_FAST_TF32", "1")
    assert fp32_precision() == "tf32"


# ------------------------------------------------------------------------------------------------- concept max

GROUPED = [  # (B, C, H, W, R, classes)
    (2, 64, 7, 9, 19, 6),
    (1, 512, 9, 7, 98, 21),
    (1, 96, 33, 31, 21, 21),  # one row per class, unsorted
    (2, 64, 4, 5, 5, 1),  # a single class
]


@pytest.mark.parametrize("face", [CPP, TRITON, "reference"])
@pytest.mark.parametrize("shape", GROUPED, ids=str)
def test_concept_max_matches_reference(face, shape, monkeypatch):
    b, c, h, w, r, k = shape
    device = _device(face)
    image, text = _inputs(b, c, h, w, r, device=device)
    groups = _groups(r, k, device)
    assert torch.bincount(groups, minlength=k).min() >= 1
    grad_out = torch.randn(b, k, h, w, dtype=torch.float64, device=device)
    want = _run("ref", image, text, groups, k, grad_out=grad_out)
    dtype = torch.float64 if face != "triton" else torch.float32
    got = _run(face, image, text, groups, k, dtype=dtype, grad_out=grad_out, monkeypatch=monkeypatch)
    _compare(face, got, want, dtype, f"groups {shape}")


@pytest.mark.parametrize("face", [CPP, TRITON])
def test_concept_max_empty_class_and_half_forward(face, monkeypatch):
    """A class without rows scores -inf like the reference; float16/bfloat16 forwards with groups."""
    device = _device(face)
    image, text = _inputs(2, 64, 6, 5, 9, device=device)
    groups = torch.tensor([0, 3, 1, 0, 3, 3, 1, 0, 1], device=device)  # class 2 has no row
    want = _run("ref", image, text, groups, 4)[0]
    got = _run(face, image, text, groups, 4, dtype=torch.float32, monkeypatch=monkeypatch)[0]
    assert torch.isneginf(got[:, 2]).all()
    assert_close(got, want.float(), face, torch.float32, "empty class")
    for dtype in (torch.float16, torch.bfloat16):
        x, t = image.to(dtype).double(), text.to(dtype).double()
        want = _run("ref", x, t, groups, 4)[0]
        got = _run(face, x, t, groups, 4, dtype=dtype, monkeypatch=monkeypatch)[0]
        assert_close(got, want.to(dtype), face, dtype, f"groups {dtype}")


@pytest.mark.parametrize("face", [CPP, TRITON, "reference"])
def test_concept_max_ties_split_gradient_like_reference(face, monkeypatch):
    """Identical rows of a class tie everywhere and a zero pixel ties all rows: the gradient is split evenly."""
    device = _device(face)
    image, text = _inputs(2, 64, 7, 9, 12, device=device)
    image[0, :, 3, 4] = 0
    image[1, :, 0, 0] = 0
    text[5] = text[2]
    text[7] = text[2]
    text[9] = text[1]
    groups = torch.tensor([3, 1, 0, 2, 1, 0, 3, 0, 2, 1, 4, 0], device=device)
    rep, mult = duplicate_rows(text, groups)
    assert rep.tolist() == [0, 1, 2, 3, 4, 2, 6, 2, 8, 1, 10, 11] and mult[[2, 5, 7, 1, 9]].tolist() == [3, 3, 3, 2, 2]
    dtype = torch.float64 if face != "triton" else torch.float32
    # precondition: the reference's own scores tie exactly for the identical rows
    s = torch.einsum("bchw,nc->bnhw", F.normalize(image.to(dtype), dim=1), F.normalize(text.to(dtype), dim=-1))
    assert torch.equal(s[:, 2], s[:, 5]) and torch.equal(s[:, 2], s[:, 7]) and torch.equal(s[:, 1], s[:, 9])
    grad_out = torch.randn(2, 5, 7, 9, dtype=torch.float64, device=device)
    want = _run("ref", image.to(dtype), text.to(dtype), groups, 5, grad_out=grad_out)
    got = _run(face, image, text, groups, 5, dtype=dtype, grad_out=grad_out, monkeypatch=monkeypatch)
    zero = torch.zeros(2, 1, 7, 9, dtype=torch.bool, device=device)
    zero[0, 0, 3, 4] = zero[1, 0, 0, 0] = True
    _compare(face, (got[0], got[1] * ~zero, got[2]), (want[0], want[1] * ~zero, want[2]), dtype, "ties")
    # at a zero pixel the gradient is (1 / eps) * sum of rows: compare relative to its size (fp32 cancellation)
    scale = want[1][zero.expand_as(want[1])].abs().max()
    assert scale > 1e9
    assert_close(got[1][zero.expand_as(got[1])] / scale, want[1][zero.expand_as(want[1])] / scale, face, dtype,
                 "zero pixel")


# ----------------------------------------------------------------------------------------- templates, layouts


@pytest.mark.parametrize("face", [CPP, TRITON])
def test_templates_gradient_reaches_raw_embeddings(face, monkeypatch):
    device = _device(face)
    image, text = _inputs(2, 64, 5, 7, 11, templates=4, device=device)
    grad_out = torch.randn(2, 11, 5, 7, dtype=torch.float64, device=device)
    want = _run("ref", image, text, grad_out=grad_out)
    dtype = torch.float64 if face == "cpp" else torch.float32
    got = _run(face, image, text, dtype=dtype, grad_out=grad_out, monkeypatch=monkeypatch)
    assert got[2].shape == (11, 4, 64)
    _compare(face, got, want, dtype, "templates")


@pytest.mark.parametrize("face", [CPP, TRITON, "reference"])
@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_non_contiguous_image(face, layout, monkeypatch):
    device = _device(face)
    base, text = _inputs(2, 128 if layout == "sliced" else 64, 9, 7, 19, device=device)
    dtype = torch.float64 if face != "triton" else torch.float32
    base = base.to(dtype)
    if layout == "channels_last":
        image = base.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        image = base.transpose(2, 3)  # (2, 64, 7, 9) view
    else:
        image = base[:, ::2]  # every other channel
        text = text[:, ::2]
    assert not image.is_contiguous()
    groups = torch.arange(19, device=device) % 5
    for g, k in ((None, None), (groups, 5)):
        grad_out = torch.randn(2, k or 19, *image.shape[2:], dtype=dtype, device=device)
        want = _run("ref", image.contiguous(), text, g, k, dtype=dtype, grad_out=grad_out)
        x = image.detach().requires_grad_()
        monkeypatch.setenv(ENV, face)
        out = cost_volume(x, text.to(dtype), g, k)
        (gx,) = torch.autograd.grad(out, [x], grad_out)
        _compare(face, (out, gx), want[:2], dtype, layout)


@pytest.mark.parametrize("face", [CPP, TRITON, "reference"])
def test_only_the_needed_gradient(face, monkeypatch):
    """Frozen text (the decoder's case) or frozen image: the other gradient alone, equal to the reference's."""
    device = _device(face)
    image, text = _inputs(1, 64, 6, 6, 7, device=device)
    dtype = torch.float64 if face != "triton" else torch.float32
    image, text = image.to(dtype), text.to(dtype)
    groups = torch.tensor([0, 1, 1, 2, 0, 2, 2], device=device)
    monkeypatch.setenv(ENV, face)
    for g, k in ((None, None), (groups, 3)):
        grad_out = torch.randn(1, k or 7, 6, 6, dtype=dtype, device=device)
        want = _run("ref", image, text, g, k, grad_out=grad_out)
        x = image.clone().requires_grad_()
        (gx,) = torch.autograd.grad(cost_volume(x, text, g, k), [x], grad_out)
        t = text.clone().requires_grad_()
        (gt,) = torch.autograd.grad(cost_volume(image, t, g, k), [t], grad_out)
        _compare(face, (None, gx, gt), want, dtype, "one gradient")


@pytest.mark.parametrize("face", [CPP, TRITON])
def test_every_output_element_is_written(face, monkeypatch):
    """Outputs come poisoned (NaN): every element of the output and of both gradients must be overwritten."""
    assert _common.empty((2,), torch.float32, "cpu").isnan().all()
    device = _device(face)
    image, text = _inputs(3, 80, 11, 13, 37, device=device)
    groups = torch.arange(37, device=device) % 9
    for g, k in ((None, None), (groups, 9)):
        out, gx, gt = _run(face, image, text, g, k, dtype=torch.float32,
                           grad_out=torch.randn(3, k or 37, 11, 13, device=device), monkeypatch=monkeypatch)
        assert torch.isfinite(out).all() and torch.isfinite(gx).all() and torch.isfinite(gt).all()


def test_decoder_style_call_and_auto_backend():
    """decoder.py calls cost_volume(dense, unit_rows); the automatic choice is the C++ kernel on CPU."""
    image, text = _inputs(2, 64, 8, 8, 21)
    rows = ensemble_text(text).float()
    out = cost_volume(image.float(), rows)
    assert out.shape == (2, 21, 8, 8)
    assert_close(out, cost_volume_reference(image, rows).float(), "cpp", torch.float32, "decoder call")
    if semivl_fast.has_ext():
        assert _common.backend("cost_volume", torch.device("cpu"), ("cpp", "triton")) == "cpp"


# ------------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("fn", [cost_volume_reference, cost_volume, pytest.param(cost_volume_cpp, marks=needs_ext),
                                pytest.param(cost_volume_triton, marks=needs_triton)])
def test_bad_arguments_name_the_argument(fn):
    image, text = torch.randn(2, 8, 4, 5), torch.randn(3, 8)
    with pytest.raises(ValueError, match="'image' must be 4-D"):
        fn(image[0], text)
    with pytest.raises(TypeError, match="'image' must be a floating-point"):
        fn(image.long(), text)
    with pytest.raises(ValueError, match=r"'text' must be \(N, C\) or \(N, T, C\) with C = 8"):
        fn(image, torch.randn(3, 7))
    with pytest.raises(TypeError, match="'groups' must be int64"):
        fn(image, text, torch.tensor([0, 1, 1], dtype=torch.int32))
    with pytest.raises(ValueError, match="'groups' must have shape \\(3,\\)"):
        fn(image, text, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="'groups' values must lie in \\[0, num_classes = 2\\)"):
        fn(image, text, torch.tensor([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="'num_classes' must be >= 1"):
        fn(image, text, torch.tensor([0, 0, 0]), 0)


@pytest.mark.parametrize("fn", [cost_volume_reference, cost_volume, pytest.param(cost_volume_cpp, marks=needs_ext),
                                pytest.param(cost_volume_triton, marks=needs_triton)])
def test_wrong_device_names_the_argument(fn):
    image, text = torch.randn(2, 8, 4, 5), torch.randn(3, 8)
    with pytest.raises(ValueError, match="'text' is on meta but 'image' on cpu"):
        fn(image, text.to("meta"))
    with pytest.raises(ValueError, match="'text' is on meta but 'image' on cpu"):
        fn(image, torch.randn(3, 2, 8, device="meta"))


@needs_ext
def test_cpp_face_rejects_other_devices():
    """Forward and backward face on non-CPU tensors (meta: the custom op itself would run its fake kernel)."""
    image, text = torch.randn(2, 8, 4, 5, device="meta"), torch.randn(3, 8, device="meta")
    with pytest.raises(ValueError, match=r"the C\+\+ face runs on CPU tensors, got meta"):
        cost_volume_cpp(image, text)
    grad = torch.randn(2, 3, 4, 5, device="meta")
    with pytest.raises(ValueError, match=r"the C\+\+ face runs on CPU tensors, got meta"):
        _bwd_cpp(grad, image, F.normalize(text, dim=-1), None, 0, grad, True, True)


@needs_ext
def test_raw_cpp_ops_check_their_arguments():
    fwd, bwd = torch.ops.semivl_fast_C.cost_volume_forward_, torch.ops.semivl_fast_C.cost_volume_backward_
    x, t, out = torch.randn(2, 8, 4, 5), torch.randn(3, 8), torch.empty(2, 3, 4, 5)
    with pytest.raises(RuntimeError, match="argument 'image' must be contiguous"):
        fwd(x.transpose(2, 3), t, None, 0, torch.empty(2, 3, 5, 4))
    with pytest.raises(RuntimeError, match="argument 'text' must have the image dtype"):
        fwd(x, t.double(), None, 0, out)
    with pytest.raises(RuntimeError, match="argument 'text' must be \\(R, C\\)"):
        fwd(x, t[:, :4].contiguous(), None, 0, out)
    with pytest.raises(RuntimeError, match="argument 'out' must have shape"):
        fwd(x, t, None, 0, out[:, :2])
    with pytest.raises(RuntimeError, match="argument 'groups' values must lie in"):
        fwd(x, t, torch.tensor([0, 5, 1]), 2, torch.empty(2, 2, 4, 5))
    with pytest.raises(RuntimeError, match="argument 'grad_image' must be Float"):
        bwd(out, x, t, None, 0, torch.empty(2, 8, 4, 5, dtype=torch.float64), None)
    with pytest.raises(RuntimeError, match="argument 'grad' must have shape"):
        bwd(out[:, :1], x, t, None, 0, None, torch.empty(3, 8))


@needs_triton
def test_triton_launcher_checks_its_arguments():
    from semivl_fast.kernels.cost_volume import cost_volume_bwd, cost_volume_fwd

    x, t = torch.randn(2, 8, 4, 5, device=DEV), torch.randn(3, 8, device=DEV)
    with pytest.raises(TypeError, match="'image' must be float32/float16/bfloat16"):
        cost_volume_fwd(x.double(), t.double(), None, 0)
    with pytest.raises(TypeError, match="'text' must have the image dtype"):
        cost_volume_fwd(x, t.half(), None, 0)
    with pytest.raises(TypeError, match=r"'text' must have the image dtype and device .*, got .*meta"):
        cost_volume_fwd(x, t.to("meta"), None, 0)
    with pytest.raises(ValueError, match=r"'image' must be a CUDA tensor .* got meta"):
        cost_volume_fwd(x.to("meta"), t.to("meta"), None, 0)
    with pytest.raises(ValueError, match=r"'groups' must be int64 of shape \(3,\) on .*, got .* on meta"):
        cost_volume_fwd(x, t, torch.zeros(3, dtype=torch.long, device="meta"), 1)
    with pytest.raises(ValueError, match="'groups' must be int64 of shape \\(3,\\)"):
        cost_volume_fwd(x, t, torch.zeros(2, dtype=torch.long, device=DEV), 1)
    with pytest.raises(ValueError, match="'grad' and 'out' must have shape"):
        cost_volume_bwd(torch.randn(2, 2, 4, 5, device=DEV), x, t, None, 0, torch.randn(2, 3, 4, 5, device=DEV),
                        True, True)


# ----------------------------------------------------------------------------------------- custom op machinery


@pytest.mark.parametrize("grouped", [False, True])
def test_opcheck(grouped):
    image = torch.randn(2, 16, 5, 6)
    rows = F.normalize(torch.randn(7, 16), dim=-1)
    groups = torch.tensor([0, 2, 1, 0, 2, 2, 1]) if grouped else None
    k = 3 if grouped else 0
    torch.library.opcheck(torch.ops.semivl_fast.cost_volume.default, (image, rows, groups, k))
    out = torch.ops.semivl_fast.cost_volume(image, rows, groups, k)
    grad = torch.randn_like(out)
    for need in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(torch.ops.semivl_fast.cost_volume_backward.default,
                              (grad, image, rows, groups, k, out, *need))


@pytest.mark.slow
@pytest.mark.parametrize("grouped", [False, True])
def test_torch_compile_fullgraph_forward_and_backward(grouped):
    image = torch.randn(2, 32, 6, 7, requires_grad=True)
    text = torch.randn(9, 3, 32, requires_grad=True)
    groups = torch.tensor([0, 3, 1, 2, 3, 0, 1, 1, 2]) if grouped else None

    def fn(x, t):
        return (cost_volume(x * 1.0, t, groups, 4 if grouped else None) * 2).sum()

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(image, text), [image, text])
    want = torch.autograd.grad(fn(image, text), [image, text])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol("compile", torch.float32))


@pytest.mark.slow
def test_aot_specs_compile_for_sm80_and_sm90():
    """The Triton kernels at the benchmark shapes compile for sm_80/sm_90 without spills (subprocess, no
    interpreter); tests/test_gpu_compile.py runs the same for every kernel module."""
    pytest.importorskip("triton")
    code = ("from semivl_fast.kernels import _aot\n"
            "from semivl_fast.kernels.cost_volume import AOT_SPECS\n"
            "names = {s.kernel.fn.__name__ if hasattr(s.kernel, 'fn') else s.kernel.__name__ for s in AOT_SPECS}\n"
            "assert names == {'_cv_fwd_kernel', '_cv_bwd_dx_kernel', '_cv_bwd_dt_kernel', '_cv_bwd_groups_kernel'}, "
            "names\n"
            "bad = []\n"
            "for s in AOT_SPECS:\n"
            "    for arch in _aot.TARGETS:\n"
            "        r = _aot.compile_spec(s, arch)\n"
            "        print(r)\n"
            "        bad += [] if r.ok else [r]\n"
            "assert not bad, bad\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    print(run.stdout)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
