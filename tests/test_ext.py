"""The C++/CUDA extension: what was built, as the environment promises."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import semivl_fast
from semivl_fast import ops

from tolerances import tol


def test_build_info_reports_the_build():
    info = semivl_fast.build_info()
    for key in ("extension", "cpu_kernels", "cuda_kernels", "cuda_archs", "torch", "triton"):
        assert key in info
    assert info["torch"] == torch.__version__
    if info["extension"]:
        assert info["built_with_torch"] == torch.__version__, "extension built against another torch: rebuild"


@pytest.mark.skipif(os.environ.get("SEMIVL_FAST_REQUIRE_EXT") != "1", reason="extension not required here")
def test_extension_present_when_required():
    assert semivl_fast.has_ext()
    for op in ("cost_volume", "class_attention", "pseudo_label_loss"):  # every schema of csrc/registration.cpp
        for suffix in ("forward_", "backward_"):
            assert hasattr(torch.ops.semivl_fast_C, f"{op}_{suffix}"), f"{op}_{suffix}"
    assert torch.ops.semivl_fast_C.class_attention_cpu_isa() in ("generic", "avx2", "avx512")
    assert torch.ops.semivl_fast_C.pseudo_label_loss_cpu_path() in ("avx2", "vec1", "pixel")


@pytest.mark.skipif(not semivl_fast.has_ext(), reason="extension not built")
def test_cpu_kernels_run_on_every_thread():
    """at::parallel_for is an inline OpenMP region: an extension built without -fopenmp runs it on one thread."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert semivl_fast.build_info()["cpu_kernel_threads"] == 2, "extension built without OpenMP: rebuild"
        torch.set_num_threads(1)
        assert semivl_fast.build_info()["cpu_kernel_threads"] == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(os.environ.get("SEMIVL_FAST_CUDA") != "1", reason="CUDA build not forced here")
def test_cuda_kernels_compiled_when_forced():
    info = semivl_fast.build_info()
    assert info["cuda_kernels"], info
    assert info["cuda_archs"] and "8.0" in info["cuda_archs"] and "9.0" in info["cuda_archs"]


# ------------------------------------------------------------------------------------- a pure-Python install

_NO_EXT_CHILD = r"""
import importlib.abc, sys

import torch


class _NoExtension(importlib.abc.MetaPathFinder):  # what an install built with SEMIVL_FAST_NO_EXT=1 looks like
    def find_spec(self, name, path=None, target=None):
        if name == "semivl_fast._C":
            raise ImportError("semivl_fast._C blocked: pure-Python install")


sys.meta_path.insert(0, _NoExtension())
import semivl_fast
from semivl_fast.ops import active_backends

info = semivl_fast.build_info()
assert not semivl_fast.has_ext() and not info["extension"] and not info["cpu_kernels"], info
assert not info["cuda_kernels"] and info["compiler"] is None and info["extension_error"], info
assert set(active_backends("cpu").values()) == {"reference"}, active_backends("cpu")
sys.path.insert(0, sys.argv[3])
from test_ext import run_public_ops

torch.save(run_public_ops(torch.load(sys.argv[1])), sys.argv[2])
"""


def _public_op_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    rand = lambda *s: torch.randn(*s, generator=g)
    b, n, s = 2, 5, 12
    return {
        "image": torch.nn.functional.normalize(rand(b, 16, 6, 7), dim=1), "text": rand(n, 3, 16),
        "rows": rand(7, 16), "groups": torch.tensor([0, 1, 1, 2, 3, 4, 4]),
        "qkv": rand(6, 9, 3 * 2 * 8),
        "student": rand(b, n, 6, 6), "teacher": 4 * rand(b, n, 6, 6), "teacher_mix": 4 * rand(b, n, 6, 6),
        "boxes": torch.tensor([[2, 3, 9, 11], [0, 0, 0, 0]]), "ignore": (torch.rand(b, s, s, generator=g) < 0.2),
        "ignore_mix": (torch.rand(b, s, s, generator=g) < 0.2), "target": torch.randint(0, n, (b, s, s), generator=g),
    }


def run_public_ops(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every public op of semivl_fast.ops, forward and gradients, through its dispatcher."""
    out = {}
    image = x["image"].clone().requires_grad_()
    text = x["text"].clone().requires_grad_()
    cv = ops.cost_volume(image, text)
    cv.square().sum().backward()
    out |= {"cv": cv.detach(), "cv_dimage": image.grad, "cv_dtext": text.grad}
    out["cv_concept_max"] = ops.cost_volume(x["image"], x["rows"], x["groups"], 5)
    qkv = x["qkv"].clone().requires_grad_()
    att = ops.class_attention(qkv, 2)
    (att * torch.linspace(-1, 1, att.shape[-1])).sum().backward()
    out |= {"attention": att.detach(), "attention_dqkv": qkv.grad}
    for mode in ("threshold", "confidence"):
        student = x["student"].clone().requires_grad_()
        loss, stats = ops.pseudo_label_loss(student, (12, 12), teacher=x["teacher"], teacher_mix=x["teacher_mix"],
                                            boxes=x["boxes"], ignore=x["ignore"], ignore_mix=x["ignore_mix"],
                                            threshold=0.5, mode=mode)
        loss.backward()
        out |= {f"pl_{mode}": loss.detach(), f"pl_{mode}_stats": stats, f"pl_{mode}_dstudent": student.grad}
    student = x["student"].clone().requires_grad_()
    loss, _ = ops.pseudo_label_loss(student, (12, 12), target=x["target"], mode="none")
    loss.backward()
    out |= {"pl_supervised": loss.detach(), "pl_supervised_dstudent": student.grad}
    return out


def test_without_extension_every_op_runs_its_reference(tmp_path):
    """A subprocess without the extension (SEMIVL_FAST_NO_EXT=1, semivl_fast._C not importable) imports the package,
    reports no extension and runs every public op through the PyTorch reference; results match this process."""
    inputs = _public_op_inputs()
    torch.save(inputs, tmp_path / "in.pt")
    env = {k: v for k, v in os.environ.items() if k != "SEMIVL_FAST_REQUIRE_EXT"} | {"SEMIVL_FAST_NO_EXT": "1"}
    proc = subprocess.run([sys.executable, "-c", _NO_EXT_CHILD, str(tmp_path / "in.pt"), str(tmp_path / "out.pt"),
                           str(Path(__file__).parent)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    child = torch.load(tmp_path / "out.pt")
    here = run_public_ops(inputs)
    backend = "cpp" if semivl_fast.has_ext() else "reference"
    assert child.keys() == here.keys()
    for key, expected in here.items():
        if expected.dtype.is_floating_point:
            torch.testing.assert_close(child[key], expected, **tol(backend, torch.float32), msg=key)
        else:
            assert torch.equal(child[key], expected), key
