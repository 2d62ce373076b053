"""Shared machinery of the op layer: backend choice, output allocation (poisoned under test), input checks."""

from __future__ import annotations

import math
import os

import torch

from semivl_fast import _ext

BACKENDS = ("auto", "reference", "cpp", "cuda", "triton")
_POISON = False


def set_poison(enabled: bool) -> bool:
    """Fill every kernel output with garbage before the kernel runs (tests), so unwritten elements show.

    Returns the previous setting.
    """
    global _POISON
    previous, _POISON = _POISON, enabled
    return previous


def empty(shape: tuple[int, ...] | list[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty`` for kernel outputs; poisoned (NaN / -7 / byte 0x7f) when poisoning is on."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if _POISON:
        if dtype.is_floating_point:
            out.fill_(math.nan)
        elif dtype == torch.bool:
            out.view(torch.uint8).fill_(0x7F)  # neither True nor False: compare as uint8 to catch it
        else:
            out.fill_(-7)
    return out


def backend(op: str, device: torch.device, faces: tuple[str, ...]) -> str:
    """Which implementation of ``op`` runs on ``device``; ``faces`` are the ones the op has besides the reference.

    ``SEMIVL_FAST_BACKEND_<OP>`` (e.g. ``SEMIVL_FAST_BACKEND_PSEUDO_LABEL_FILTER``) or ``SEMIVL_FAST_BACKEND``
    chooses one of ``auto | reference | cpp | cuda | triton``. ``auto`` takes the C++ kernel on CPU; on CUDA the
    Triton kernel when the op has one, else the CUDA C++ kernel; the reference when nothing else is available.
    """
    choice = os.environ.get(f"SEMIVL_FAST_BACKEND_{op.upper()}", os.environ.get("SEMIVL_FAST_BACKEND", "auto"))
    choice = choice.strip().lower()
    if choice not in BACKENDS:
        raise ValueError(f"SEMIVL_FAST_BACKEND={choice!r} is not one of {BACKENDS}")
    if choice == "reference":
        return choice
    if choice != "auto":
        if choice not in faces:
            raise ValueError(f"{op}: backend {choice!r} is not available for this op; it has {('reference', *faces)}")
        return choice
    if device.type == "cpu":
        return "cpp" if "cpp" in faces and _ext.has_ext() else "reference"
    if device.type == "cuda":
        if "triton" in faces and has_triton():
            return "triton"
        if "cuda" in faces and _ext.has_cuda_ext():
            return "cuda"
    return "reference"


def has_triton() -> bool:
    """Triton is importable (GPU kernels; on CPU only under TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def require_ext(op: str, device: torch.device) -> None:
    """Clear error when a C++/CUDA face is asked for but was not built."""
    if not _ext.has_ext():
        raise RuntimeError(f"{op}: the C++ extension is not built ({_ext.build_info()['extension_error']}); "
                           "build it with `pip install -e . --no-build-isolation` or use backend 'reference'")
    if device.type == "cuda" and not _ext.has_cuda_ext():
        raise RuntimeError(f"{op}: the extension was built without CUDA kernels; rebuild with SEMIVL_FAST_CUDA=1 "
                           "or use backend 'triton'/'reference'")


def check_tensor(op: str, name: str, t: torch.Tensor, dim: int | None = None, floating: bool = False) -> None:
    """One clear error per bad argument: names the op, the argument and what was expected."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: argument '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{op}: argument '{name}' must be {dim}-D, got shape {tuple(t.shape)}")
    if floating and not t.dtype.is_floating_point:
        raise TypeError(f"{op}: argument '{name}' must be a floating-point tensor, got {t.dtype}")
