"""Pseudo-label filter: C++ kernel vs PyTorch reference; the dispatching op under opcheck and torch.compile."""

import pytest
import torch

import semivl_fast
from semivl_fast.ops import pseudo_label_filter, pseudo_label_filter_cpp, pseudo_label_filter_reference

from tolerances import assert_close

needs_ext = pytest.mark.skipif(not semivl_fast.has_ext(), reason="C++ extension not built")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not (torch.cuda.is_available() and semivl_fast.has_cuda_ext()), reason="needs a GPU and the CUDA C++ kernels"))]
MARGIN = 2e-3
FACES = [pseudo_label_filter_reference, pytest.param(pseudo_label_filter_cpp, marks=needs_ext), pseudo_label_filter]


def _logits(b, n, h, w, dtype, scale=1.0):
    """Random logits whose top class is unique by a margin (no ties, even in bf16)."""
    x = torch.randn(b, n, h, w) * 2 / scale
    top = torch.randint(0, n, (b, 1, h, w))
    x.scatter_add_(1, top, torch.full((b, 1, h, w), 0.25 / scale))
    return x.to(dtype)


def _threshold_away_from(conf):
    """A threshold in the widest gap between neighbouring confidences (middle half of them when there are many)."""
    c = torch.cat([conf.flatten().double().sort().values, torch.ones(1, dtype=torch.float64)])
    lo, hi = (len(c) // 4, 3 * len(c) // 4) if len(c) > 40 else (0, len(c) - 1)
    gaps = c[lo + 1:hi + 1] - c[lo:hi]
    i = int(gaps.argmax()) + lo
    assert gaps.max() > 2 * MARGIN, "test data has no usable gap"
    return float((c[i] + c[i + 1]) / 2)


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 5, 7), (2, 19, 13, 11), (2, 21, 16, 16), (1, 150, 9, 23), (3, 2, 1, 1)])
def test_cpp_matches_reference(shape, dtype, device):
    """The C++ kernel on CPU tensors, the CUDA C++ kernel on CUDA tensors (same per-pixel math), vs the reference."""
    b, n, h, w = shape
    logits = _logits(b, n, h, w, dtype)
    ignore = torch.rand(b, h, w) < 0.2
    conf_ref, _, _ = pseudo_label_filter_reference(logits.double(), 0.5)
    tau = 0.5 if n == 1 else _threshold_away_from(conf_ref)
    ref = pseudo_label_filter_reference(logits, tau, ignore=ignore)
    out = tuple(t.cpu() for t in pseudo_label_filter_cpp(logits.to(device), tau, ignore=ignore.to(device)))
    backend = "cpp" if device == "cpu" else "cuda"
    assert_close(out[0], ref[0], backend, torch.float64 if dtype == torch.float64 else torch.float32, "confidence")
    assert out[0].dtype == ref[0].dtype
    assert torch.equal(out[1], ref[1]), "labels differ"
    assert torch.equal(out[2].view(torch.uint8), ref[2].view(torch.uint8)), "keep masks differ"
    assert not out[2][ignore].any()


@needs_ext
def test_cpp_guidance_scale_and_uint8_ignore():
    logits = _logits(2, 21, 8, 8, torch.float32, scale=100.0)
    ignore = (torch.rand(2, 8, 8) < 0.3).to(torch.uint8)
    conf_ref, _, _ = pseudo_label_filter_reference(logits.double(), 0.9, scale=100.0)
    tau = _threshold_away_from(conf_ref)
    ref = pseudo_label_filter_reference(logits, tau, 100.0, ignore)
    out = pseudo_label_filter_cpp(logits, tau, 100.0, ignore)
    assert_close(out[0], ref[0], "cpp", torch.float32, "confidence")
    assert torch.equal(out[1], ref[1]) and torch.equal(out[2], ref[2])


@pytest.mark.parametrize("face", FACES)
def test_non_contiguous_input(face):
    base = _logits(2, 7, 10, 12, torch.float32)
    logits = base.permute(0, 1, 3, 2)  # (2, 7, 12, 10), not contiguous
    tau = 0.4
    ref = pseudo_label_filter_reference(logits.contiguous(), tau)
    out = face(logits, tau)
    assert torch.equal(out[1], ref[1]) and torch.equal(out[2], ref[2])


@pytest.mark.parametrize("face", FACES)
def test_bad_arguments_name_the_argument(face):
    good = torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match="'logits' must be 4-D"):
        face(good[0], 0.5)
    with pytest.raises(TypeError, match="'logits' must be a floating-point"):
        face(good.long(), 0.5)
    with pytest.raises(ValueError, match="'ignore' must have shape"):
        face(good, 0.5, ignore=torch.zeros(2, 5, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="'ignore' must be bool or uint8"):
        face(good, 0.5, ignore=torch.zeros(2, 4, 5))


@pytest.mark.parametrize("face", FACES)
def test_wrong_device_names_the_argument(face):
    with pytest.raises(ValueError, match="'ignore' is on meta but 'logits' on cpu"):
        face(torch.randn(2, 3, 4, 5), 0.5, ignore=torch.zeros(2, 4, 5, dtype=torch.bool, device="meta"))


@needs_ext
def test_raw_cpp_op_checks_its_arguments():
    op = torch.ops.semivl_fast_C.pseudo_label_filter_
    x = torch.randn(2, 3, 4, 5)
    conf, label, keep = torch.empty(2, 4, 5), torch.empty(2, 4, 5, dtype=torch.long), torch.empty(2, 4, 5).bool()
    with pytest.raises(RuntimeError, match="argument 'logits' must be contiguous"):
        op(x.transpose(2, 3), 0.5, 1.0, None, conf, label, keep)
    with pytest.raises(RuntimeError, match="argument 'conf' must be Float"):
        op(x, 0.5, 1.0, None, conf.double(), label, keep)
    with pytest.raises(RuntimeError, match="argument 'label' must have shape"):
        op(x, 0.5, 1.0, None, conf, label[:, :3], keep)


def test_opcheck():
    logits = _logits(2, 5, 6, 7, torch.float32)
    ignore = torch.rand(2, 6, 7) < 0.5
    torch.library.opcheck(torch.ops.semivl_fast.pseudo_label_filter.default, (logits, 0.3, 1.0, ignore))
    torch.library.opcheck(torch.ops.semivl_fast.pseudo_label_filter.default, (logits, 0.3, 100.0, None))


@pytest.mark.slow
def test_torch_compile_traces_through_without_graph_breaks():
    logits = _logits(2, 21, 9, 9, torch.float32)
    fn = lambda x: pseudo_label_filter(x * 1.0, 0.3)
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for a, b in zip(compiled(logits), fn(logits)):
        assert torch.equal(a, b)
