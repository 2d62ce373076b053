"""Tolerances for comparing kernels with the PyTorch reference, in one place: (backend, dtype) -> (atol, rtol).

backend: "reference" (the reference itself in another dtype), "cpp" (C++ CPU kernels), "triton" (under the
interpreter on CPU, or on a GPU), "cuda" (CUDA C++ on a GPU), "compile" (torch.compile of the reference).
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
    ("cuda", torch.float32): (1e-5, 1.3e-6),
    ("cuda", torch.float16): (1e-2, 1e-3),
    ("cuda", torch.bfloat16): (5e-2, 1.6e-2),
    ("compile", torch.float32): (1e-4, 1e-4),
}


def tol(backend: str, dtype: torch.dtype) -> dict[str, float]:
    """Keyword arguments for torch.testing.assert_close."""
    atol, rtol = TOL[(backend, dtype)]
    return {"atol": atol, "rtol": rtol}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, backend: str, dtype: torch.dtype, what: str = ""):
    """assert_close with the table's tolerance; compares in the expected tensor's dtype."""
    torch.testing.assert_close(actual.to(expected.dtype), expected, **tol(backend, dtype),
                               msg=lambda m: f"{what} [{backend}, {dtype}]: {m}")
