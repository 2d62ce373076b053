"""Fused pseudo-label loss: every face vs the reference (loss, stats, student gradient), hand-made cases, gradcheck,
poisoned outputs, the face choice, errors, opcheck, torch.compile and the Triton AOT specs.

Faces, forced with SEMIVL_FAST_BACKEND_PSEUDO_LABEL_LOSS: the C++ CPU kernel on its three paths
(SEMIVL_FAST_PSEUDO_LABEL_LOSS_CPU = avx2 | vec1 | pixel; "pixel" runs the CUDA kernels' per-pixel functions, so the
CUDA C++ face's math is tested here too; its launch code needs a GPU, compile checks in test_gpu_compile.py), Triton
(under the interpreter on CPU, fp32/fp16, small grids).

Pseudo-label targets are discrete (argmax, threshold), so the random teachers are probed in float64 first: pixels
whose top-2 probabilities are within MARGIN or whose confidence is within MARGIN of the threshold are marked as
padding (ignore / ignore_mix). The accepted set is then identical in every face and the loss matches to fp tolerance.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F

import semivl_fast
from semivl_fast.ops import _common
from semivl_fast.ops.pseudo_label_loss import (
    FACES,
    OP,
    box_mask,
    pseudo_label_loss,
    pseudo_label_loss_reference,
    select_face,
)

from faces import TRITON_DEVICE, aot_kernels, face, jit_kernels, needs, use_face
from tolerances import assert_close, assert_grad_rel

P = importlib.import_module("semivl_fast.ops.pseudo_label_loss")  # the module (the package exports the function)
MARGIN = 2e-3
MODES = ("threshold", "confidence", "none")
REDUCTIONS = ("valid", "all")


# ------------------------------------------------------------------------------------------------- test data

def _probe(teacher: torch.Tensor, size, scale: float):
    """float64 confidence, label and top-2 probability gap of softmax(scale * upsample(teacher))."""
    p = torch.softmax(scale * F.interpolate(teacher.double(), size=size, mode="bilinear", align_corners=False), 1)
    if p.shape[1] == 1:
        return p[:, 0], torch.zeros_like(p[:, 0], dtype=torch.long), torch.full_like(p[:, 0], float("inf"))
    top = p.topk(2, dim=1)
    return top.values[:, 0], top.indices[:, 0], top.values[:, 0] - top.values[:, 1]


def _make(b, n, low, size, dtype=torch.float32, *, teacher_low=None, mix_low=None, cutmix=True, supervised=False,
          scale=1.0, threshold=None, boxes=None, ignore_dtype=torch.bool, pad=0.15, spread=2.0, seed=0):
    """kwargs for the op: student (requires grad), target or teacher (+ CutMix partner), masks and a threshold kept
    away from every pixel's confidence."""
    g = torch.Generator().manual_seed(seed)
    big_h, big_w = size
    kw = {"student": (torch.randn(b, n, *low, generator=g) * 2).to(dtype).requires_grad_()}
    if supervised:
        target = torch.randint(0, n, (b, big_h, big_w), generator=g)
        target[torch.rand(b, big_h, big_w, generator=g) < 0.2] = 255
        kw["target"] = target
        kw["threshold"] = 0.5 if threshold is None else threshold
        return kw
    teacher_low = teacher_low or low
    teacher = (torch.randn(b, n, *teacher_low, generator=g) * spread / scale).to(dtype)
    conf, _, gap = _probe(teacher, size, scale)
    kw["teacher"] = teacher
    if cutmix:
        mix = (torch.randn(b, n, *(mix_low or teacher_low), generator=g) * spread / scale).to(dtype)
        if boxes is None:
            y0 = torch.randint(0, big_h, (b,), generator=g)
            x0 = torch.randint(0, big_w, (b,), generator=g)
            boxes = torch.stack([y0, x0, y0 + torch.randint(1, big_h + 1, (b,), generator=g),
                                 x0 + torch.randint(1, big_w + 1, (b,), generator=g)], 1)
        inside = box_mask(boxes, size)
        conf_m, _, gap_m = _probe(mix, size, scale)
        conf, gap = torch.where(inside, conf_m, conf), torch.where(inside, gap_m, gap)
        kw.update(teacher_mix=mix, boxes=boxes)
    safe = gap > MARGIN
    if threshold is None:
        threshold = float(conf[safe].median()) if n > 1 else 0.5
    unsafe = ~safe | ((conf - threshold).abs() < MARGIN)
    kw["ignore"] = ((torch.rand(b, big_h, big_w, generator=g) < pad) | unsafe).to(ignore_dtype)
    if cutmix:
        kw["ignore_mix"] = ((torch.rand(b, big_h, big_w, generator=g) < pad) | unsafe).to(ignore_dtype)
    kw["threshold"] = threshold
    kw["scale"] = scale
    return kw


def _run(fn, kw, size, **extra):
    """(loss, stats, grad) of one face."""
    kw = dict(kw)
    student = kw.pop("student")
    loss, stats = fn(student, size, **kw, **extra)
    (grad,) = torch.autograd.grad(loss, student)
    return loss.detach(), stats, grad


def _on(kw, device):
    """The op's kwargs on ``device``, the student a fresh leaf that requires grad."""
    moved = {k: v.detach().to(device) if torch.is_tensor(v) else v for k, v in kw.items()}
    moved["student"].requires_grad_()
    return moved


def _run_on(device, kw, size, **extra):
    """``_run`` of pseudo_label_loss (the forced face) with the inputs on ``device``; results on the CPU."""
    return tuple(t.cpu() for t in _run(pseudo_label_loss, _on(kw, device), size, **extra))


def _reference64(kw, size, **extra):
    """The reference on float64 copies of every floating input: the truth the kernels are held to."""
    up = {k: (v.detach().double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in kw.items()}
    up["student"] = up["student"].requires_grad_()
    return _run(pseudo_label_loss_reference, up, size, **extra)


def _assert_matches(out, ref, backend, dtype, what=""):
    loss, stats, grad = out
    loss_r, stats_r, grad_r = ref
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert loss.dtype == acc and stats.dtype == torch.float32 and grad.dtype == dtype
    assert torch.isfinite(loss) and torch.isfinite(grad).all(), f"{what}: non-finite output (poison survived?)"
    assert_close(loss, loss_r, backend, dtype, f"{what} loss")
    assert_close(stats, stats_r.float(), backend, torch.float32 if dtype == torch.float64 else dtype, f"{what} stats")
    assert_close(grad, grad_r, backend, dtype, f"{what} grad")
    assert_grad_rel(grad, grad_r, dtype, f"{what} grad")


# (b, n, student low-res, crop, teacher low-res, partner low-res): odd sizes, factor 4, non-integer factors,
# same size (copy), downsampling, N = 1 / 19 / 21 / 150 / 171.
SHAPES = {
    "odd_7x9_to_33x30": (2, 19, (7, 9), (33, 30), (5, 6), (4, 7)),
    "x4_8x8_to_32x32": (2, 21, (8, 8), (32, 32), (8, 8), (2, 2)),
    "n150": (1, 150, (5, 4), (20, 16), (3, 3), (2, 5)),
    "n171": (1, 171, (3, 4), (9, 10), (3, 3), (2, 3)),
    "n1": (3, 1, (3, 5), (7, 11), (3, 5), (1, 1)),
    "same_size": (2, 5, (6, 6), (6, 6), (3, 3), (6, 6)),
    "downsample": (1, 7, (9, 7), (5, 4), (9, 7), (2, 3)),
}


CPU_PATHS = ("avx2", "vec1", "pixel")


def _use_cpu_path(path, monkeypatch):
    monkeypatch.setenv("SEMIVL_FAST_PSEUDO_LABEL_LOSS_CPU", path)
    if semivl_fast.has_ext() and torch.ops.semivl_fast_C.pseudo_label_loss_cpu_path() != path:
        pytest.skip(f"CPU path {path} unavailable here (no AVX2+FMA)")


@pytest.fixture(params=CPU_PATHS)
def cpp_path(request, monkeypatch):
    """The C++ face, forced, on the three paths of its CPU kernel: at::vec AVX2, the same generic kernel with one
    lane (portable), and the per-pixel functions the CUDA kernels run (their math, tested here without a GPU)."""
    _use_cpu_path(request.param, monkeypatch)
    use_face(monkeypatch, OP, "cpp")
    return request.param


def _faces():
    """Every face: the reference, the C++ kernel on each CPU path (any_face sets it), Triton."""
    return [pytest.param("reference", id="reference"),
            *[pytest.param(f"cpp_{path}", id=f"cpp_{path}", marks=needs("cpp")) for path in CPU_PATHS],
            face("triton")]


@pytest.fixture
def any_face(request, monkeypatch):
    """Forces the face of ``request.param`` (cpp_<path>: the C++ face on that CPU path) for pseudo_label_loss and
    returns its name."""
    name = request.param
    if name.startswith("cpp_"):
        _use_cpu_path(name.removeprefix("cpp_"), monkeypatch)
        name = "cpp"
    use_face(monkeypatch, OP, name)
    return name


# ----------------------------------------------------------------------------------------- C++ vs reference

@needs("cpp")
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cpp_pseudo_labels_match_reference(shape, mode, reduction, cpp_path):
    b, n, low, size, t_low, m_low = SHAPES[shape]
    kw = _make(b, n, low, size, teacher_low=t_low, mix_low=m_low, seed=sum(map(ord, shape + mode)))
    ref = _reference64(kw, size, mode=mode, reduction=reduction)
    out = _run(pseudo_label_loss, kw, size, mode=mode, reduction=reduction)
    _assert_matches(out, ref, "cpp", torch.float32, f"{shape}/{mode}/{reduction}/{cpp_path}")


@needs("cuda")
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("supervised", [False, True], ids=["pseudo", "supervised"])
def test_cuda_cpp_matches_reference(shape, mode, supervised, monkeypatch):
    """The CUDA C++ kernels (the C++ op on CUDA tensors) against the float64 reference on the CPU."""
    use_face(monkeypatch, OP, "cuda")
    b, n, low, size, t_low, m_low = SHAPES[shape]
    kw = _make(b, n, low, size, teacher_low=t_low, mix_low=m_low, supervised=supervised, seed=sum(map(ord, shape)))
    ref = _reference64(kw, size, mode=mode, reduction="valid")
    out = _run_on("cuda", kw, size, mode=mode, reduction="valid")
    _assert_matches(out, ref, "cuda", torch.float32, f"{shape}/{mode}/cuda")


@needs("cpp")
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cpp_supervised_matches_reference(shape, mode, reduction, cpp_path):
    b, n, low, size, _, _ = SHAPES[shape]
    kw = _make(b, n, low, size, supervised=True, seed=3)
    ref = _reference64(kw, size, mode=mode, reduction=reduction)
    out = _run(pseudo_label_loss, kw, size, mode=mode, reduction=reduction)
    _assert_matches(out, ref, "cpp", torch.float32, f"supervised {shape}/{mode}/{reduction}")


@needs("cpp")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", ["odd_7x9_to_33x30", "n150"])
def test_cpp_dtypes(dtype, shape, cpp_path):
    b, n, low, size, t_low, m_low = SHAPES[shape]
    for mode, supervised in (("threshold", False), ("confidence", False), ("none", True)):
        kw = _make(b, n, low, size, dtype, teacher_low=t_low, mix_low=m_low, supervised=supervised, seed=5)
        ref = _reference64(kw, size, mode=mode)
        out = _run(pseudo_label_loss, kw, size, mode=mode)
        _assert_matches(out, ref, "cpp", dtype, f"{dtype}/{shape}/{mode}")


@needs("cpp")
def test_cpp_teacher_dtype_differs_from_student(cpp_path):
    kw = _make(2, 21, (7, 9), (33, 30), torch.bfloat16, teacher_low=(5, 6), seed=9)
    kw["teacher"] = kw["teacher"].float()  # fp32 teacher, bf16 student; partner stays bf16
    _assert_matches(_run(pseudo_label_loss, kw, (33, 30)), _reference64(kw, (33, 30)), "cpp", torch.bfloat16)


@needs("cpp")
@pytest.mark.parametrize("boxes", [
    [[5, 5, 5, 5], [3, 9, 3, 20]],                # empty boxes
    [[10, 12, 2, 3], [20, 20, 0, 0]],             # inverted = empty
    [[0, 0, 33, 30], [0, 0, 33, 30]],             # the whole crop
    [[-4, -4, 7, 40], [20, -1, 50, 8]],           # reaching past the borders
    [[0, 29, 33, 30], [32, 0, 33, 30]],           # one column / one row at the border
], ids=["empty", "inverted", "full", "past_borders", "border_line"])
def test_cpp_cutmix_boxes(boxes, cpp_path):
    kw = _make(2, 19, (7, 9), (33, 30), teacher_low=(5, 6), mix_low=(7, 9), boxes=torch.tensor(boxes), seed=11)
    _assert_matches(_run(pseudo_label_loss, kw, (33, 30)), _reference64(kw, (33, 30)), "cpp", torch.float32)


@needs("cpp")
@pytest.mark.parametrize("ignore_dtype", [torch.bool, torch.uint8])
def test_cpp_ignore_masks_bool_and_uint8(ignore_dtype, cpp_path):
    kw = _make(2, 21, (8, 8), (32, 32), ignore_dtype=ignore_dtype, pad=0.4, seed=13)
    _assert_matches(_run(pseudo_label_loss, kw, (32, 32)), _reference64(kw, (32, 32)), "cpp", torch.float32)
    kw.pop("ignore_mix")  # partner without padding
    _assert_matches(_run(pseudo_label_loss, kw, (32, 32)), _reference64(kw, (32, 32)), "cpp", torch.float32)


@needs("cpp")
def test_cpp_clip_guidance_scale_100_threshold_09(cpp_path):
    # CLIP-like similarities (small logits) from a 5x6 grid, sharpened by 100 and filtered at 0.9
    kw = _make(2, 21, (8, 8), (32, 32), teacher_low=(5, 6), mix_low=(4, 4), scale=100.0, threshold=0.9, spread=4.0,
               seed=17)
    out = _run(pseudo_label_loss, kw, (32, 32))
    ref = _reference64(kw, (32, 32))
    _assert_matches(out, ref, "cpp", torch.float32)
    assert 0.05 < out[1][0] < 0.95, "the guidance case should accept some pixels and reject others"


# -------------------------------------------------------------------------------------- Triton vs reference

TRITON_CASES = {
    "cutmix_threshold_valid": dict(shape="odd_7x9_to_33x30", mode="threshold", reduction="valid"),
    "cutmix_confidence_all": dict(shape="x4_8x8_to_32x32", mode="confidence", reduction="all"),
    "n150_none": dict(shape="n150", mode="none", reduction="valid"),
    "n171_confidence": dict(shape="n171", mode="confidence", reduction="valid"),
    "n1_supervised": dict(shape="n1", mode="threshold", reduction="all", supervised=True),
    "downsample_uint8": dict(shape="downsample", mode="threshold", reduction="valid", ignore_dtype=torch.uint8),
    "guidance_fp16": dict(shape="x4_8x8_to_32x32", mode="threshold", reduction="valid", scale=100.0,
                          threshold=0.9, spread=4.0, dtype=torch.float16),
}


@needs("triton")
@pytest.mark.parametrize("case", TRITON_CASES, ids=str)
def test_triton_matches_reference(case, monkeypatch):
    use_face(monkeypatch, OP, "triton")
    c = dict(TRITON_CASES[case])
    b, n, low, size, t_low, m_low = SHAPES[c.pop("shape")]
    mode, reduction, dtype = c.pop("mode"), c.pop("reduction"), c.pop("dtype", torch.float32)
    kw = _make(b, n, low, size, dtype, teacher_low=t_low, mix_low=m_low, seed=23, **c)
    ref = _reference64(kw, size, mode=mode, reduction=reduction)
    out = _run_on(TRITON_DEVICE, kw, size, mode=mode, reduction=reduction)
    _assert_matches(out, ref, "triton", dtype, case)


# ------------------------------------------------------------------------ every face: layouts, exact labels

@pytest.mark.parametrize("any_face", _faces(), indirect=True)
def test_non_contiguous_inputs(any_face):
    kw = _make(2, 19, (9, 7), (33, 30), teacher_low=(6, 5), mix_low=(5, 6), seed=19)
    nc = dict(kw)
    nc["student"] = kw["student"].detach().transpose(2, 3).contiguous().transpose(2, 3).requires_grad_()
    for name in ("teacher", "teacher_mix"):
        nc[name] = kw[name].transpose(2, 3).contiguous().transpose(2, 3)
    for name in ("ignore", "ignore_mix"):
        nc[name] = kw[name].transpose(1, 2).contiguous().transpose(1, 2)
    assert not any(nc[k].is_contiguous() for k in ("student", "teacher", "teacher_mix", "ignore", "ignore_mix"))
    _assert_matches(_run(pseudo_label_loss, nc, (33, 30)), _reference64(kw, (33, 30)), any_face, torch.float32)


def _code64(kw, size, use_threshold):
    """The per-pixel code the reference's targets imply, in float64: the label where the pixel is accepted (valid,
    and confidence >= threshold when thresholding), else -1; and the valid mask."""
    if "target" in kw:
        valid = kw["target"] != 255
        labels, conf = kw["target"], torch.ones(valid.shape, dtype=torch.float64)
    else:
        conf, labels, _ = _probe(kw["teacher"], size, kw["scale"])
        pad = kw["ignore"].bool()
        if "teacher_mix" in kw:
            conf_m, labels_m, _ = _probe(kw["teacher_mix"], size, kw["scale"])
            inside = box_mask(kw["boxes"], size)
            conf, labels = torch.where(inside, conf_m, conf), torch.where(inside, labels_m, labels)
            pad = torch.where(inside, kw["ignore_mix"].bool(), pad)
        valid = ~pad
    accepted = valid & (conf >= kw["threshold"]) if use_threshold else valid
    return torch.where(accepted, labels, -1), valid


CODE_CASES = {
    "cutmix_threshold": dict(shape="odd_7x9_to_33x30", mode="threshold"),
    "n171_unfiltered": dict(shape="n171", mode="none"),
    "guidance": dict(shape="x4_8x8_to_32x32", mode="threshold", scale=100.0, threshold=0.9, spread=4.0),
    "supervised": dict(shape="downsample", mode="threshold", supervised=True),
}


@pytest.mark.parametrize("any_face", [f for f in _faces() if f.id != "reference"], indirect=True)
@pytest.mark.parametrize("case", CODE_CASES, ids=str)
def test_labels_and_masks_match_reference_exactly(any_face, case):
    """The fused forward's code (label if accepted, else -1) equals the reference's targets pixel for pixel
    (_make pads every pixel near a tie or the threshold); the reference's accepted fraction counts the same pixels."""
    c = dict(CODE_CASES[case])
    b, n, low, size, t_low, m_low = SHAPES[c.pop("shape")]
    mode = c.pop("mode")
    kw = _make(b, n, low, size, teacher_low=t_low, mix_low=m_low, seed=61, **c)
    want, valid = _code64(kw, size, mode == "threshold")
    assert (want >= 0).any() and (want < 0).any()
    stats = _reference64(kw, size, mode=mode)[1]
    assert stats[0] == ((want >= 0).sum().double() / valid.sum().double()).float()
    _, code, _ = P._FORWARD[any_face](kw["student"].detach(), list(size), kw.get("target"),
                                                kw.get("teacher"), kw.get("teacher_mix"), kw.get("boxes"),
                                                kw.get("ignore"), kw.get("ignore_mix"), kw["threshold"],
                                                kw.get("scale", 1.0), mode == "threshold")
    assert code.dtype == torch.int32 and torch.equal(code.long(), want)


# ------------------------------------------------------------------------------------------ hand-made cases

@pytest.mark.parametrize("any_face", _faces(), indirect=True)
def test_hand_made_supervised_1x1_to_2x2(any_face):
    # Two classes, one low-res pixel with logits (1, 0) upsampled to 2x2 (all four pixels equal), label 0 everywhere:
    # ce = log(1 + e^-1) = 0.31326168751822286 per pixel, mean over 4 valid pixels = the same.
    # d loss / d logit_0 = softmax_0 - 1 = sigmoid(1) - 1 = -0.2689414213699951 (4 pixels x weight 1/4), logit_1: +.
    student = torch.tensor([[[[1.0]], [[0.0]]]], requires_grad=True)
    loss, stats = pseudo_label_loss(student, (2, 2), target=torch.zeros(1, 2, 2, dtype=torch.long))
    (grad,) = torch.autograd.grad(loss, student)
    torch.testing.assert_close(loss, torch.tensor(0.31326168751822286), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(stats, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(grad.flatten(), torch.tensor([-0.2689414213699951, 0.2689414213699951]),
                               atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("any_face", _faces(), indirect=True)
def test_hand_made_pseudo_labels_1x2_to_1x4(any_face):
    # Width 2 -> 4 (ratio 0.5): source x = 0.5 * (X + 0.5) - 0.5 = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped
    # to the last column), so the upsampled row is [L0, 0.75 L0 + 0.25 L1, 0.25 L0 + 0.75 L1, L1]; height 1 -> 1 copies.
    # Teacher: class 0 = [0, 0], class 1 = [-2, 4] -> class 1 upsampled = [-2, -0.5, 2.5, 4]: labels [0, 0, 1, 1],
    # confidences sigmoid(2, 0.5, 2.5, 4) = 0.8808, 0.6225, 0.9241, 0.9820; threshold 0.9 accepts the last two.
    # Student: class 0 = [2, 0], class 1 = [0, 0] -> class 0 upsampled = [2, 1.5, 0.5, 0], class 1 = 0.
    # ce(X=2, label 1) = log(1 + e^0.5) = 0.9740769841801067, ce(X=3, label 1) = log 2 = 0.6931471805599453;
    # loss = (0.97408 + 0.69315) / 4 valid pixels = 0.41680604118501297; stats = [2/4, mean conf 0.8523530047991004].
    # Gradient: X=2 (weights 0.25 on L0, 0.75 on L1): dce/dv0 = p0 = sigmoid(0.5) = 0.6224593312018546, dv1 = -p0;
    # X=3 (weight 1 on L1): dv0 = 0.5, dv1 = -0.5. Times 1/4: class 0 grad = [0.25 p0 / 4, (0.75 p0 + 0.5) / 4]
    # = [0.03890370820011591, 0.24171112460034774], class 1 = the negatives.
    student = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]], requires_grad=True)
    teacher = torch.tensor([[[[0.0, 0.0]], [[-2.0, 4.0]]]])
    loss, stats = pseudo_label_loss(student, (1, 4), teacher=teacher, threshold=0.9)
    (grad,) = torch.autograd.grad(loss, student)
    torch.testing.assert_close(loss, torch.tensor(0.41680604118501297), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(stats, torch.tensor([0.5, 0.8523530047991004]), atol=1e-6, rtol=1e-6)
    g = torch.tensor([0.03890370820011591, 0.24171112460034774])
    torch.testing.assert_close(grad.flatten(), torch.cat([g, -g]), atol=1e-6, rtol=1e-6)


def _sigmoid(z):
    return 1 / (1 + math.exp(-z))


def _softplus(z):
    return math.log1p(math.exp(z))


# The 1x2 -> 1x4 row above: teacher class-1 margins [-2, -0.5, 2.5, 4] (labels [0, 0, 1, 1], confidences
# sigmoid(2, 0.5, 2.5, 4)); student class 0 = [2, 1.5, 0.5, 0], class 1 = 0, so ce = softplus(-v) for label 0 and
# softplus(v) for label 1, and d ce / d v0 = sigmoid(v) - [label 0] (class 1: the negative). A high-res gradient
# g = [g0, g1, g2, g3] reaches the two low-res columns as [g0 + 0.75 g1 + 0.25 g2, 0.25 g1 + 0.75 g2 + g3].
def _low_res(g):
    return torch.tensor([g[0] + 0.75 * g[1] + 0.25 * g[2], 0.25 * g[1] + 0.75 * g[2] + g[3]])


@pytest.mark.parametrize("any_face", _faces(), indirect=True)
def test_hand_made_confidence_weighted_1x2_to_1x4(any_face):
    # Cityscapes "pixelavg" with pixel X=1 padded: no threshold (0.99 would reject all), every valid pixel weighted
    # by the image's mean confidence m over its valid pixels X=0, 2, 3; the padded pixel has weight 0; / 3 valid.
    student = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]], requires_grad=True)
    teacher = torch.tensor([[[[0.0, 0.0]], [[-2.0, 4.0]]]])
    ignore = torch.tensor([[[False, True, False, False]]])
    loss, stats = pseudo_label_loss(student, (1, 4), teacher=teacher, ignore=ignore, threshold=0.99, mode="confidence")
    (grad,) = torch.autograd.grad(loss, student)
    m = (_sigmoid(2) + _sigmoid(2.5) + _sigmoid(4)) / 3
    torch.testing.assert_close(loss, torch.tensor(m * (_softplus(-2) + _softplus(0.5) + _softplus(0)) / 3),
                               atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(stats, torch.tensor([1.0, m]), atol=1e-6, rtol=1e-6)
    g = _low_res([m / 3 * (_sigmoid(2) - 1), 0.0, m / 3 * _sigmoid(0.5), m / 3 * _sigmoid(0)])
    torch.testing.assert_close(grad.flatten(), torch.cat([g, -g]), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("any_face", _faces(), indirect=True)
def test_hand_made_clip_guidance_1x2_to_1x4(any_face):
    # CLIP guidance: similarities [0, 0] / [-0.02, 0.04], softmax(100 s) gives the margins above; 0.9 accepts X=2
    # and X=3, X=3 is padded, so X=2 alone counts, divided by all 4 pixels. Stats: 1 of 3 valid pixels accepted,
    # mean confidence over the valid X=0, 1, 2.
    student = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]], requires_grad=True)
    teacher = torch.tensor([[[[0.0, 0.0]], [[-0.02, 0.04]]]])
    ignore = torch.tensor([[[False, False, False, True]]])
    loss, stats = pseudo_label_loss(student, (1, 4), teacher=teacher, ignore=ignore, scale=100.0, threshold=0.9,
                           reduction="all")
    (grad,) = torch.autograd.grad(loss, student)
    torch.testing.assert_close(loss, torch.tensor(_softplus(0.5) / 4), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(stats, torch.tensor([1 / 3, (_sigmoid(2) + _sigmoid(0.5) + _sigmoid(2.5)) / 3]),
                               atol=1e-6, rtol=1e-6)
    g = _low_res([0.0, 0.0, _sigmoid(0.5) / 4, 0.0])
    torch.testing.assert_close(grad.flatten(), torch.cat([g, -g]), atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------------------------ gradcheck

@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_reference(mode):
    kw = _make(1, 3, (3, 4), (5, 7), torch.float64, teacher_low=(2, 3), mix_low=(3, 3), seed=29)
    student = kw.pop("student")
    assert torch.autograd.gradcheck(lambda s: pseudo_label_loss_reference(s, (5, 7), **kw, mode=mode)[0],
                                    (student,))


@needs("cpp")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("supervised", [False, True])
def test_gradcheck_cpp(mode, supervised, cpp_path):
    kw = _make(2, 3, (3, 4), (5, 7), torch.float64, teacher_low=(2, 3), mix_low=(3, 3), supervised=supervised,
               seed=31)
    student = kw.pop("student")
    assert torch.autograd.gradcheck(lambda s: pseudo_label_loss(s, (5, 7), **kw, mode=mode)[0], (student,))


# ------------------------------------------------------------------------------------------ poisoned outputs

KERNEL_FACES = [face("cpp"), face("triton")]


def _device(face):
    return TRITON_DEVICE if face == "triton" else "cpu"


@pytest.mark.parametrize("face", KERNEL_FACES)
def test_forward_writes_every_scratch_element(face):
    kw = _on(_make(2, 5, (7, 9), (33, 30), teacher_low=(5, 6), seed=37), _device(face))
    args = (kw["student"].detach(), [33, 30], None, kw["teacher"], kw["teacher_mix"], kw["boxes"], kw["ignore"],
            kw["ignore_mix"], kw["threshold"], 1.0, True)
    lse, code, rows = P._FORWARD[face](*args)
    assert torch.isfinite(lse).all() and torch.isfinite(rows).all()
    assert ((code >= -1) & (code < 5)).all()
    assert (lse[code < 0] == 0).all() and (code >= 0).any() and (code < 0).any()


@pytest.mark.parametrize("face", KERNEL_FACES)
def test_gradient_fully_written_when_nothing_is_accepted(face, monkeypatch):
    # threshold above 1: nothing accepted -> loss 0 and a gradient of exact zeros (not the poison)
    use_face(monkeypatch, OP, face)
    kw = _make(2, 5, (7, 9), (33, 30), teacher_low=(5, 6), seed=41)
    kw["threshold"] = 1.5
    loss, stats, grad = _run_on(_device(face), kw, (33, 30))
    assert loss == 0 and stats[0] == 0 and torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("face", KERNEL_FACES)
def test_downsampling_writes_low_res_rows_without_contributions(face, monkeypatch):
    # 9 low-res rows -> 3 high-res rows: some low-res rows feed no pixel; their gradient must be 0, not poison
    use_face(monkeypatch, OP, face)
    kw = _make(1, 4, (9, 8), (3, 2), supervised=True, seed=43)
    out = _run_on(_device(face), kw, (3, 2))
    _assert_matches(out, _reference64(kw, (3, 2)), face, torch.float32)
    assert (out[2] == 0).any()


# --------------------------------------------------------------------------------------------------- errors

def _entry(face, monkeypatch):
    """The reference function itself ("ref"), or pseudo_label_loss with ``face`` forced."""
    if face == "ref":
        return pseudo_label_loss_reference
    use_face(monkeypatch, OP, face)
    return pseudo_label_loss


ENTRIES = ["ref", "reference", face("cpp"), face("triton")]


@pytest.mark.parametrize("face", ENTRIES)
def test_bad_arguments_name_the_argument(face, monkeypatch):
    fn = _entry(face, monkeypatch)
    s, t = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match="'student' must be 4-D"):
        fn(s[0], (8, 10), teacher=t)
    with pytest.raises(TypeError, match="'student' must be a floating-point"):
        fn(s.long(), (8, 10), teacher=t)
    with pytest.raises(ValueError, match="apply to pseudo-labels only"):  # never silently ignored
        fn(s, (8, 10), target=torch.zeros(2, 8, 10, dtype=torch.long), ignore=torch.zeros(2, 8, 10).bool())
    with pytest.raises(ValueError, match="exactly one of 'target'"):
        fn(s, (8, 10))
    with pytest.raises(ValueError, match="'target' must be int64"):
        fn(s, (8, 10), target=torch.zeros(2, 8, 10, dtype=torch.int32))
    with pytest.raises(ValueError, match="'teacher' must be"):
        fn(s, (8, 10), teacher=torch.randn(2, 4, 4, 5))
    with pytest.raises(ValueError, match="'teacher_mix' and 'boxes' go together"):
        fn(s, (8, 10), teacher=t, teacher_mix=t)
    with pytest.raises(ValueError, match="'boxes' must be integer"):
        fn(s, (8, 10), teacher=t, teacher_mix=t, boxes=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="'ignore' must be bool/uint8"):
        fn(s, (8, 10), teacher=t, ignore=torch.zeros(2, 8, 10))
    with pytest.raises(ValueError, match="'ignore_mix' must be bool/uint8"):
        fn(s, (8, 10), teacher=t, ignore_mix=torch.zeros(2, 10, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="'mode' must be one of"):
        fn(s, (8, 10), teacher=t, mode="soft")
    with pytest.raises(ValueError, match="'reduction' must be one of"):
        fn(s, (8, 10), teacher=t, reduction="sum")
    with pytest.raises(ValueError, match="'size' must be"):
        fn(s, (0, 10), teacher=t)


@pytest.mark.parametrize("face", ENTRIES)
def test_wrong_device_names_the_argument(face, monkeypatch):
    fn = _entry(face, monkeypatch)
    s, t = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    meta = lambda x: x.to("meta")
    mask, boxes = torch.zeros(2, 8, 10, dtype=torch.bool), torch.tensor([[0, 0, 4, 4], [2, 2, 8, 10]])
    with pytest.raises(ValueError, match="'target' is on meta but 'student' on cpu"):
        fn(s, (8, 10), target=meta(torch.zeros(2, 8, 10, dtype=torch.long)))
    for name, kw in (("teacher", dict(teacher=meta(t))),
                     ("teacher_mix", dict(teacher=t, teacher_mix=meta(t), boxes=boxes)),
                     ("boxes", dict(teacher=t, teacher_mix=t, boxes=meta(boxes))),
                     ("ignore", dict(teacher=t, ignore=meta(mask))),
                     ("ignore_mix", dict(teacher=t, teacher_mix=t, boxes=boxes, ignore_mix=meta(mask)))):
        with pytest.raises(ValueError, match=f"'{name}' is on meta but 'student' on cpu"):
            fn(s, (8, 10), **kw)


@needs("cpp")
def test_cpp_rejects_labels_out_of_range(monkeypatch):
    use_face(monkeypatch, OP, "cpp")
    s = torch.randn(1, 3, 2, 2)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 1, 2] = 7
    with pytest.raises(RuntimeError, match=r"argument 'target' has label 7 at \(0, 1, 2\)"):
        pseudo_label_loss(s, (4, 4), target=target)


@needs("cpp")
def test_raw_cpp_ops_check_their_arguments():
    fwd = torch.ops.semivl_fast_C.pseudo_label_loss_forward_
    bwd = torch.ops.semivl_fast_C.pseudo_label_loss_backward_
    s, t = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    lse, code, rows = torch.empty(2, 8, 10), torch.empty(2, 8, 10, dtype=torch.int32), torch.empty(2, 8, 4).double()
    call = lambda *a, **k: fwd(*a, **k)
    with pytest.raises(RuntimeError, match="argument 'student' must be contiguous"):
        call(s.transpose(2, 3), 8, 10, None, t.transpose(2, 3), None, None, None, None, 0.5, 1.0, True, lse, code,
             rows)
    with pytest.raises(RuntimeError, match="argument 'lse' has the wrong dtype"):
        call(s, 8, 10, None, t, None, None, None, None, 0.5, 1.0, True, lse.double(), code, rows)
    with pytest.raises(RuntimeError, match="argument 'code' must have shape"):
        call(s, 8, 10, None, t, None, None, None, None, 0.5, 1.0, True, lse, code[:, :4], rows)
    with pytest.raises(RuntimeError, match="argument 'teacher' must be contiguous"):
        call(s, 8, 10, None, t.transpose(2, 3).contiguous().transpose(2, 3), None, None, None, None, 0.5, 1.0, True,
             lse, code, rows)
    with pytest.raises(RuntimeError, match="'teacher_mix' and 'boxes' go together"):
        call(s, 8, 10, None, t, t, None, None, None, 0.5, 1.0, True, lse, code, rows)
    with pytest.raises(RuntimeError, match="argument 'boxes' has the wrong dtype"):
        call(s, 8, 10, None, t, t, torch.zeros(2, 4, dtype=torch.int32), None, None, 0.5, 1.0, True, lse, code, rows)
    with pytest.raises(RuntimeError, match="argument 'grad' has the wrong dtype"):
        bwd(s, lse, code, torch.ones(2), torch.empty(2, 3, 4, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="argument 'gscale' must have shape"):
        bwd(s, lse, code, torch.ones(3), torch.empty(2, 3, 4, 5))


@needs("triton")
def test_triton_launcher_checks_its_arguments():
    from semivl_fast.kernels import pseudo_label_loss as K  # lazy: imports triton (the test needs it)

    dev = TRITON_DEVICE
    s, t = torch.randn(2, 3, 4, 5, device=dev), torch.randn(2, 3, 4, 5, device=dev)
    lse, gscale = torch.zeros(2, 8, 10, device=dev), torch.ones(2, device=dev)
    code = lambda dtype=torch.int32, device=dev: torch.zeros(2, 8, 10, dtype=dtype, device=device)
    part = torch.zeros(K.partial_sums_shape(2, (8, 10)), device=dev)
    outs = (lse, code(), part)
    with pytest.raises(ValueError, match="'student' must be contiguous"):
        K.forward(s.transpose(2, 3), [8, 10], None, t, None, None, None, None, 0.5, 1.0, True, *outs)
    with pytest.raises(TypeError, match="'target' must be one of"):
        K.forward(s, [8, 10], code(), None, None, None, None, None, 0.5, 1.0, True, *outs)
    with pytest.raises(ValueError, match=f"'teacher' is on meta but 'student' on {s.device}"):
        K.forward(s, [8, 10], None, t.to("meta"), None, None, None, None, 0.5, 1.0, True, *outs)
    with pytest.raises(ValueError, match=r"'part' must have shape \(2, 8, 1, 4\)"):
        K.forward(s, [8, 10], None, t, None, None, None, None, 0.5, 1.0, True, lse, code(), part[:, :, :0])
    with pytest.raises(TypeError, match="'lse' must be one of"):
        K.forward(s, [8, 10], None, t, None, None, None, None, 0.5, 1.0, True, lse.double(), code(), part)
    grad = torch.empty_like(s)
    with pytest.raises(TypeError, match="'code' must be one of"):
        K.backward(s, lse, code(torch.int64), gscale, grad)
    with pytest.raises(ValueError, match=f"'code' is on meta but 'student' on {s.device}"):
        K.backward(s, lse, code(device="meta"), gscale, grad)
    with pytest.raises(ValueError, match=r"'grad' must have shape \(2, 3, 4, 5\)"):
        K.backward(s, lse, code(), gscale, grad[:1])


# ------------------------------------------------------------------------------- dispatch, opcheck, compile

@pytest.mark.parametrize("backend", ["reference", face("cpp"), face("triton")])
def test_dispatch_follows_the_backend_switch(backend, monkeypatch):
    use_face(monkeypatch, OP, backend)
    kw = _make(2, 5, (4, 4), (16, 16), teacher_low=(3, 3), seed=47)
    _assert_matches(_run(pseudo_label_loss, kw, (16, 16)), _reference64(kw, (16, 16)),
                    backend, torch.float32, backend)


def test_select_face(monkeypatch):
    """Automatic: C++ on CPU, Triton on CUDA (else the CUDA C++ kernel); the kernels take every dtype and shape, so
    nothing else decides. The choice is pure logic: a CUDA device needs no GPU here."""
    assert FACES == ("reference", "cpp", "cuda", "triton")
    assert select_face(torch.device("cpu")) == ("cpp" if semivl_fast.has_ext() else "reference")
    monkeypatch.setattr(_common, "has_triton", lambda: True)
    assert select_face(torch.device("cuda")) == "triton"
    monkeypatch.setattr(_common, "has_triton", lambda: False)
    monkeypatch.setattr(_common, "has_cuda_ext", lambda: True)
    assert select_face(torch.device("cuda")) == "cuda"
    use_face(monkeypatch, OP, "cuda")
    with pytest.raises(RuntimeError, match="the CUDA C\\+\\+ face runs on CUDA tensors, got cpu"):
        select_face(torch.device("cpu"))
    use_face(monkeypatch, OP, "reference")
    with pytest.raises(RuntimeError, match=r"face 'reference' runs in semivl_fast.ops.pseudo_label_loss\(\)"):
        torch.ops.semivl_fast.pseudo_label_loss(*_op_args())


def _op_args():
    kw = _make(2, 4, (3, 5), (7, 11), teacher_low=(2, 3), mix_low=(3, 3), seed=53)
    return (kw["student"].detach().requires_grad_(), [7, 11], None, kw["teacher"], kw["teacher_mix"], kw["boxes"],
            kw["ignore"], kw["ignore_mix"], kw["threshold"], 1.0, "threshold", "valid")


@pytest.mark.parametrize("face", KERNEL_FACES)
def test_opcheck(face, monkeypatch):
    use_face(monkeypatch, OP, face)
    args = _op_args()
    torch.library.opcheck(torch.ops.semivl_fast.pseudo_label_loss.default, args)
    sup = (args[0], [7, 11], torch.randint(0, 4, (2, 7, 11)), None, None, None, None, None, 0.5, 1.0, "confidence",
           "all")
    torch.library.opcheck(torch.ops.semivl_fast.pseudo_label_loss.default, sup)
    _, _, lse, code, wimg = torch.ops.semivl_fast.pseudo_label_loss.default(*args)
    torch.library.opcheck(torch.ops.semivl_fast.pseudo_label_loss_backward.default,
                          (torch.tensor(1.5), args[0].detach(), lse, code, wimg))


@pytest.mark.slow
@needs("cpp")
def test_torch_compile_fullgraph_forward_and_backward():
    kw = _make(2, 5, (7, 9), (33, 30), teacher_low=(5, 6), seed=59)
    student = kw.pop("student")

    def step(s):
        loss, stats = pseudo_label_loss(s * 2.0, (33, 30), **kw)
        return loss * 3.0, stats

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    (l1, st1), (l2, st2) = compiled(student), step(student)
    (g1,) = torch.autograd.grad(l1, student)
    (g2,) = torch.autograd.grad(l2, student)
    assert torch.equal(l1, l2) and torch.equal(st1, st2) and torch.equal(g1, g2)


# ------------------------------------------------------------------------------------------------------ AOT

def test_aot_specs_cover_the_benchmark_kernels():
    """Both kernels, fp32 and bf16, N = 21 and 150, pseudo-labels with CutMix and supervised (tests/test_gpu_compile.py
    compiles them)."""
    K = pytest.importorskip("semivl_fast.kernels.pseudo_label_loss")
    assert aot_kernels(K) == jit_kernels(K) == {"_pseudo_label_loss_fwd_kernel", "_pseudo_label_loss_bwd_kernel"}
    names = {s.name for s in K.AOT_SPECS}
    for dtype in ("fp32", "bf16"):
        for n in (21, 150):
            assert {f"pseudo_label_loss_fwd_{dtype}_N{n}_cutmix", f"pseudo_label_loss_fwd_{dtype}_N{n}_sup",
                    f"pseudo_label_loss_bwd_{dtype}_N{n}"} <= names
