"""Test helpers shared by the per-op test files: which faces can run in this session, forcing one, the device it runs
on, and which kernels a Triton module's AOT specs cover (read, never compiled: tests/test_gpu_compile.py compiles)."""

from __future__ import annotations

import pytest
import torch

import semivl_fast
from semivl_fast.kernels import INTERPRET
from semivl_fast.ops import _common

GPU = torch.cuda.is_available()
TRITON_DEVICE = "cuda" if GPU else "cpu"  # the interpreter runs the Triton kernels on CPU tensors

# Why a face cannot run in this session (absent: it can).
_MISSING = {
    "cpp": None if semivl_fast.has_ext() else "C++ extension not built",
    "cuda": None if GPU and semivl_fast.has_cuda_ext() else "needs a GPU and the CUDA C++ kernels",
    "triton": None if _common.has_triton() and (GPU or INTERPRET) else "needs triton (GPU or TRITON_INTERPRET=1)",
    "xformers": None if GPU and _common.has_xformers() else "needs a GPU and xformers",
}


def needs(face: str) -> pytest.MarkDecorator:
    """Skip unless ``face`` can run here."""
    return pytest.mark.skipif(_MISSING.get(face) is not None, reason=_MISSING.get(face) or "")


def face(name: str, id: str | None = None) -> object:
    """``name`` as a pytest parameter, skipped where the face cannot run."""
    return pytest.param(name, id=id or name, marks=needs(name))


def runnable(*faces: str) -> list[str]:
    """The faces of ``faces`` that can run here (for loops and parametrisations without skips)."""
    return [f for f in faces if _MISSING.get(f) is None]


def device_of(face: str) -> str:
    """The device a face's tensors live on in the tests."""
    return {"triton": TRITON_DEVICE, "cuda": "cuda", "xformers": "cuda"}.get(face, "cpu")


def use_face(monkeypatch: pytest.MonkeyPatch, op: str, face: str) -> None:
    """Force ``face`` for ``op`` for the rest of the test (``SEMIVL_FAST_BACKEND_<OP>``)."""
    monkeypatch.setenv(f"{_common.ENV}_{op.upper()}", face)


def jit_kernels(module) -> set[str]:
    """Names of the launched ``@triton.jit`` kernels (``*_kernel``) of a kernels module."""
    return {name for name, value in vars(module).items() if name.endswith("_kernel") and hasattr(value, "fn")}


def aot_kernels(module) -> set[str]:
    """Names of the kernels the module's ``AOT_SPECS`` compile."""
    return {spec.kernel.fn.__name__ for spec in module.AOT_SPECS}
