"""Tolerances for comparing kernels with the PyTorch reference, in one place: (backend, dtype) -> (atol, rtol), and
dtype -> the relative error allowed for a whole gradient.

backend: "reference" (the reference itself in another dtype), "cpp" (C++ CPU kernels), "triton" (under the
interpreter on CPU, or on a GPU), "cuda" (CUDA C++ on a GPU), "compile" (torch.compile of the reference), "sdpa" and
"xformers" (the library faces of class attention): the face names of the ops, so a test passes its face.
"""

from __future__ import annotations

import torch

TOL: dict[tuple[str, torch.dtype], tuple[float, float]] = {
    ("reference", torch.float64): (1e-10, 1e-10),
    ("reference", torch.float32): (1e-5, 1.3e-6),
    ("cpp", torch.float64): (1e-10, 1e-10),
    ("cpp", torch.float32): (1e-5, 1.3e-6),
    ("cpp", torch.float16): (1e-3, 1e-3),
    ("cpp", torch.bfloat16): (1e-2, 1.6e-2),
    ("triton", torch.float32): (1e-5, 1.3e-6) if not torch.cuda.is_available() else (1e-3, 1e-3),  # TF32 on GPU
    ("triton", torch.float16): (1e-3, 1e-3) if not torch.cuda.is_available() else (1e-2, 1e-3),
    ("triton", torch.bfloat16): (5e-2, 1.6e-2),
    ("cuda", torch.float64): (1e-10, 1e-10),
    ("cuda", torch.float32): (1e-5, 1.3e-6),
    ("cuda", torch.float16): (1e-2, 1e-3),
    ("cuda", torch.bfloat16): (5e-2, 1.6e-2),
    ("compile", torch.float32): (1e-4, 1e-4),
    ("sdpa", torch.float32): (1e-5, 1.3e-6) if not torch.cuda.is_available() else (1e-4, 1e-4),
    ("xformers", torch.float32): (1e-4, 1e-4),  # CUDA only
}

# Relative error of a whole gradient, |a - e| / |e| (2-norms), by the dtype it is computed in: the elementwise
# tolerance above is loose for small gradients, this holds them to their own scale.
GRAD_REL: dict[torch.dtype, float] = {
    torch.float64: 1e-9,
    torch.float32: 1e-5,
    torch.float16: 2e-3,
    torch.bfloat16: 1.5e-2,
}


def tol(backend: str, dtype: torch.dtype) -> dict[str, float]:
    """Keyword arguments for torch.testing.assert_close."""
    atol, rtol = TOL[(backend, dtype)]
    return {"atol": atol, "rtol": rtol}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, backend: str, dtype: torch.dtype, what: str = ""):
    """assert_close with the table's tolerance; compares in the expected tensor's dtype."""
    torch.testing.assert_close(actual.to(expected.dtype), expected, **tol(backend, dtype),
                               msg=lambda m: f"{what} [{backend}, {dtype}]: {m}")


def assert_grad_rel(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = ""):
    """|actual - expected| / |expected| below GRAD_REL[dtype] (an all-zero expected gradient passes)."""
    norm = expected.double().norm()
    rel = ((actual.double() - expected.double()).norm() / norm.clamp_min(1e-30)).item()
    assert rel < GRAD_REL[dtype] or norm == 0, f"{what}: relative error {rel:.3g} >= {GRAD_REL[dtype]} [{dtype}]"
