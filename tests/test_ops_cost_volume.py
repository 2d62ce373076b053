"""Cost volume: every face (C++, Triton under the interpreter, the reference) vs the PyTorch reference, forward and
backward; the face choice; the custom ops under opcheck and torch.compile; argument errors; the AOT specs."""

import pytest
import torch
import torch.nn.functional as F

import semivl_fast
from semivl_fast.kernels import fp32_precision
from semivl_fast.ops import _common
from semivl_fast.ops.cost_volume import (
    FACES,
    OP,
    concept_max,
    cost_volume,
    cost_volume_reference,
    duplicate_rows,
    ensemble_text,
    select_face,
)

from faces import TRITON_DEVICE, aot_kernels, device_of, face, jit_kernels, needs, use_face
from tolerances import assert_close, tol

DEV = TRITON_DEVICE
CPP = face("cpp")
TRITON = face("triton")


@pytest.fixture(autouse=True)
def _ieee_fp32_dots(monkeypatch):
    """On a GPU, compare fp32 Triton with exact fp32 dots: TF32 rounding would flip near-ties of the concept max
    (test_triton_tf32_default covers the default). No effect under the interpreter."""
    monkeypatch.setenv("SEMIVL_FAST_TF32", "0")


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
        use_face(monkeypatch, OP, face)
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
    """Reference autograd (directly and as the forced face of cost_volume) and the C++ kernel, in float64."""
    image, text = _inputs(2, 4, 3, 3, 5, templates=2)
    groups = torch.tensor([1, 0, 2, 1, 0]) if grouped else None
    if face != "ref":
        use_face(monkeypatch, OP, face)
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


@needs("cpp")
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


@needs("triton")
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_triton_matches_reference_fp32(shape, monkeypatch):
    b, c, h, w, n = shape
    image, text = _inputs(b, c, h, w, n, device=DEV)
    grad_out = torch.randn(b, n, h, w, dtype=torch.float64, device=DEV)
    want = _run("ref", image, text, grad_out=grad_out)
    got = _run("triton", image, text, dtype=torch.float32, grad_out=grad_out, monkeypatch=monkeypatch)
    _compare("triton", got, want, torch.float32, f"{shape}")


@needs("triton")
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
    monkeypatch.delenv("SEMIVL_FAST_TF32")
    assert fp32_precision() == "tf32"
    image, text = _inputs(4, 512, 32, 32, 150, device=DEV)
    grad_out = torch.randn(4, 150, 32, 32, dtype=torch.float64, device=DEV)
    want = _run("ref", image, text, grad_out=grad_out)
    got = _run("triton", image, text, dtype=torch.float32, grad_out=grad_out, monkeypatch=monkeypatch)
    _compare("triton", got, want, torch.float32, "tf32")


def test_fp32_precision_switch(monkeypatch):
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
    device = device_of(face)
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
    device = device_of(face)
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
    device = device_of(face)
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
    device = device_of(face)
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
    device = device_of(face)
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
        use_face(monkeypatch, OP, face)
        out = cost_volume(x, text.to(dtype), g, k)
        (gx,) = torch.autograd.grad(out, [x], grad_out)
        _compare(face, (out, gx), want[:2], dtype, layout)


@pytest.mark.parametrize("face", [CPP, TRITON, "reference"])
def test_only_the_needed_gradient(face, monkeypatch):
    """Frozen text (the decoder's case) or frozen image: the other gradient alone, equal to the reference's."""
    device = device_of(face)
    image, text = _inputs(1, 64, 6, 6, 7, device=device)
    dtype = torch.float64 if face != "triton" else torch.float32
    image, text = image.to(dtype), text.to(dtype)
    groups = torch.tensor([0, 1, 1, 2, 0, 2, 2], device=device)
    use_face(monkeypatch, OP, face)
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
    device = device_of(face)
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
    assert select_face(torch.device("cpu")) == ("cpp" if semivl_fast.has_ext() else "reference")


# ------------------------------------------------------------------------------------------- face choice


def test_select_face_sends_what_triton_lacks_to_the_reference(monkeypatch):
    """Triton (forced, or automatic on CUDA) takes float32/16 and bfloat16 and at most MAX_GROUPED_ROWS rows with
    groups; the rest runs the reference. The choice is pure logic: a CUDA device needs no GPU here."""
    kernels = pytest.importorskip("semivl_fast.kernels.cost_volume")
    monkeypatch.setattr(_common, "has_triton", lambda: True)
    cuda, big = torch.device("cuda"), kernels.MAX_GROUPED_ROWS + 1
    assert select_face(cuda) == "triton"
    assert select_face(cuda, torch.bfloat16, kernels.MAX_GROUPED_ROWS, grouped=True) == "triton"
    assert select_face(cuda, torch.float32, big, grouped=True) == "reference"
    assert select_face(cuda, torch.float32, big, grouped=False) == "triton"
    assert select_face(cuda, torch.float64) == "reference"
    use_face(monkeypatch, OP, "reference")
    assert select_face(cuda) == "reference"
    assert set(FACES) == {"reference", "cpp", "triton"}


@pytest.mark.parametrize("face", [pytest.param("reference", id="reference"), CPP, TRITON])
def test_outside_triton_limits_runs_the_reference(face, monkeypatch):
    """More grouped rows than one Triton tile holds and float64 give the reference's values on every face."""
    pytest.importorskip("triton")
    from semivl_fast.kernels.cost_volume import MAX_GROUPED_ROWS  # lazy: imports triton (skipped without it)

    device = device_of(face)
    image, text = _inputs(1, 8, 3, 4, MAX_GROUPED_ROWS + 3, device=device)
    groups = _groups(MAX_GROUPED_ROWS + 3, 7, device)
    want = _run("ref", image, text, groups, 7)[0]
    got = _run(face, image, text, groups, 7, dtype=torch.float32, monkeypatch=monkeypatch)[0]
    assert_close(got, want.float(), "cpp" if face == "cpp" else "reference", torch.float32, "1027 rows")


def test_custom_op_runs_only_the_kernel_faces(monkeypatch):
    """The reference runs in cost_volume itself (autograd), never inside semivl_fast::cost_volume."""
    use_face(monkeypatch, OP, "reference")
    image, rows = torch.randn(1, 8, 3, 4), F.normalize(torch.randn(5, 8), dim=-1)
    with pytest.raises(RuntimeError, match=r"face 'reference' runs in semivl_fast.ops.cost_volume\(\)"):
        torch.ops.semivl_fast.cost_volume(image, rows, None, 0)


# ------------------------------------------------------------------------------------------------------ errors


def _entry(face, monkeypatch):
    """The reference function itself ("ref"), or cost_volume with ``face`` forced."""
    if face == "ref":
        return cost_volume_reference
    use_face(monkeypatch, OP, face)
    return cost_volume


@pytest.mark.parametrize("face", ["ref", "reference", CPP, TRITON])
def test_bad_arguments_name_the_argument(face, monkeypatch):
    fn = _entry(face, monkeypatch)
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


@pytest.mark.parametrize("face", ["ref", "reference", CPP, TRITON])
def test_wrong_device_names_the_argument(face, monkeypatch):
    fn = _entry(face, monkeypatch)
    image, text = torch.randn(2, 8, 4, 5), torch.randn(3, 8)
    with pytest.raises(ValueError, match="'text' is on meta but 'image' on cpu"):
        fn(image, text.to("meta"))
    with pytest.raises(ValueError, match="'text' is on meta but 'image' on cpu"):
        fn(image, torch.randn(3, 2, 8, device="meta"))


@needs("cpp")
def test_cpp_face_rejects_other_devices(monkeypatch):
    """A forced C++ face on non-CPU tensors: select_face, which the public function and both custom ops call, says
    why (meta tensors: the custom op itself would run its fake kernel)."""
    use_face(monkeypatch, OP, "cpp")
    image, text = torch.randn(2, 8, 4, 5, device="meta"), torch.randn(3, 8, device="meta")
    with pytest.raises(RuntimeError, match=r"the C\+\+ face runs on CPU tensors, got meta"):
        cost_volume(image, text)
    with pytest.raises(RuntimeError, match=r"the C\+\+ face runs on CPU tensors, got meta"):
        select_face(torch.device("meta"))


@needs("cpp")
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


@needs("triton")
def test_triton_launcher_checks_its_arguments():
    from semivl_fast.kernels.cost_volume import backward, forward  # lazy: imports triton (the test needs it)

    x, t = torch.randn(2, 8, 4, 5, device=DEV), torch.randn(3, 8, device=DEV)
    out = torch.empty(2, 3, 4, 5, device=DEV)
    with pytest.raises(TypeError, match="'image' must be float32/float16/bfloat16"):
        forward(x.double(), t.double(), None, 0, out.double())
    with pytest.raises(TypeError, match="'text' must have the image dtype"):
        forward(x, t.half(), None, 0, out)
    with pytest.raises(TypeError, match=r"'text' must have the image dtype and device .*, got .*meta"):
        forward(x, t.to("meta"), None, 0, out)
    with pytest.raises(ValueError, match=r"'image' must be a CUDA tensor .* got meta"):
        forward(x.to("meta"), t.to("meta"), None, 0, out.to("meta"))
    with pytest.raises(ValueError, match=r"'groups' must be int64 of shape \(3,\) on .*, got .* on meta"):
        forward(x, t, torch.zeros(3, dtype=torch.long, device="meta"), 1, out)
    with pytest.raises(ValueError, match="'groups' must be int64 of shape \\(3,\\)"):
        forward(x, t, torch.zeros(2, dtype=torch.long, device=DEV), 1, out)
    with pytest.raises(ValueError, match=r"'out' must be a contiguous torch.float32 tensor of shape \(2, 3, 4, 5\)"):
        forward(x, t, None, 0, out[:, :2])
    with pytest.raises(ValueError, match="'grad' and 'out' must have shape"):
        backward(torch.randn(2, 2, 4, 5, device=DEV), x, t, None, 0, out, torch.empty_like(x), None)
    with pytest.raises(ValueError, match=r"'grad_text' must be a contiguous .* of shape \(3, 8\)"):
        backward(out, x, t, None, 0, out, None, torch.empty(8, 3, device=DEV))
    groups = torch.zeros(3, dtype=torch.long, device=DEV)
    with pytest.raises(ValueError, match="with groups, argument 'duplicates' must be"):
        backward(torch.randn(2, 1, 4, 5, device=DEV), x, t, groups, 1, out[:, :1], torch.empty_like(x), None)


# ----------------------------------------------------------------------------------------- custom op machinery


@needs("cpp")  # the custom op runs the kernel faces; opcheck's fake tensors cannot run the Triton interpreter
@pytest.mark.parametrize("grouped", [False, True])
def test_opcheck(grouped, monkeypatch):
    use_face(monkeypatch, OP, "cpp")
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


def test_aot_specs_cover_every_kernel():
    """Every launched kernel has AOT specs (tests/test_gpu_compile.py compiles them), at the GPU's tile sizes."""
    kernels = pytest.importorskip("semivl_fast.kernels.cost_volume")
    assert aot_kernels(kernels) == jit_kernels(kernels) == {"_cv_fwd_kernel", "_cv_bwd_dx_kernel", "_cv_bwd_dt_kernel",
                                                            "_cv_bwd_groups_kernel"}
    voc = next(s for s in kernels.AOT_SPECS if s.name == "cv_fwd_voc_fp32")
    gpu_tiles = kernels.fwd_meta(21, 512, 1024, torch.float32, False, interpret=False)
    assert voc.constexprs["BLOCK_P"] == gpu_tiles["BLOCK_P"] and voc.constexprs["BLOCK_C"] == gpu_tiles["BLOCK_C"]
