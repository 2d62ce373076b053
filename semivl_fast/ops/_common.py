"""Shared machinery of the op layer: which face runs, output allocation (poisoned under test), input checks.

Every op module (``semivl_fast.ops.<op>``) names its faces in ``FACES`` and picks one in its ``select_face``, which
starts from ``choose_face`` here and then applies its kernels' dtype and shape limits.
"""

from __future__ import annotations

import importlib.util
import math
import os

import torch

from semivl_fast import build_info, has_cuda_ext, has_ext
from semivl_fast.kernels import INTERPRET

ENV = "SEMIVL_FAST_BACKEND"
# The automatic choice per device type, first runnable wins (else the reference): the C++ kernel on CPU; on CUDA
# the Triton kernel where the op has one, else the CUDA C++ kernel.
AUTO = {"cpu": ("cpp",), "cuda": ("triton", "cuda")}
_XFORMERS = importlib.util.find_spec("xformers") is not None
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


# ------------------------------------------------------------------------------------------------- face choice


def has_triton() -> bool:
    """Triton is importable (GPU kernels; on CPU only under TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401  # lazy: importing triton takes seconds; only asked when a Triton face could run
    except ImportError:
        return False
    return True


def has_xformers() -> bool:
    """xformers is installed (its memory-efficient attention is a face of class_attention on CUDA)."""
    return _XFORMERS


def requested_face(op: str, faces: tuple[str, ...]) -> str:
    """``auto`` or the face ``SEMIVL_FAST_BACKEND_<OP>`` (else ``SEMIVL_FAST_BACKEND``) names, one of ``faces``."""
    choice = os.environ.get(f"{ENV}_{op.upper()}", os.environ.get(ENV, "auto")).strip().lower()
    if choice != "auto" and choice not in faces:
        raise ValueError(f"{op}: {ENV}[_{op.upper()}]={choice!r} is not one of {('auto', *faces)}")
    return choice


def unavailable(face: str, device: torch.device) -> str | None:
    """Why ``face`` cannot run on ``device`` now (not built, not installed, wrong device), or None if it can."""
    if face == "cpp":
        if not has_ext():
            return (f"the C++ extension is not built ({build_info()['extension_error']}); build it with "
                    "`pip install -e . --no-build-isolation`")
        return None if device.type == "cpu" else f"the C++ face runs on CPU tensors, got {device}"
    if face == "cuda":
        if not has_cuda_ext():
            return "the extension was built without CUDA kernels; rebuild it with SEMIVL_FAST_CUDA=1"
        return None if device.type == "cuda" else f"the CUDA C++ face runs on CUDA tensors, got {device}"
    if face == "triton":
        if not has_triton():
            return "triton is not installed"
        if device.type == "cuda" or (device.type == "cpu" and INTERPRET):
            return None
        return f"the Triton face runs on CUDA tensors (CPU tensors under TRITON_INTERPRET=1), got {device}"
    if face == "xformers":
        if not has_xformers():
            return "xformers is not installed"
        return None if device.type == "cuda" else f"the xformers face runs on CUDA tensors, got {device}"
    return None  # reference, sdpa: plain PyTorch


def choose_face(op: str, device: torch.device, faces: tuple[str, ...]) -> str:
    """The requested face (an error if it cannot run on ``device``) or, for ``auto``, the first runnable one of
    ``AUTO[device.type]`` that the op has, else the reference. Kernel dtype/shape limits are the op's to apply."""
    choice = requested_face(op, faces)
    if choice == "auto":
        for face in AUTO.get(device.type, ()):
            if face in faces and unavailable(face, device) is None:
                return face
        return "reference"
    why = unavailable(choice, device)
    if why is not None:
        raise RuntimeError(f"{op}: backend {choice!r} cannot run: {why}")
    return choice


def kernel(op: str, face: str, kernels: dict):
    """The kernel function of ``face`` from an op's table of custom-op faces; the other faces (the reference, library
    paths) run in the public function, never inside the custom op."""
    if face not in kernels:
        raise RuntimeError(f"{op}: face {face!r} runs in semivl_fast.ops.{op}(), not in the custom op "
                           f"semivl_fast::{op} (which runs {tuple(kernels)})")
    return kernels[face]


# ------------------------------------------------------------------------------------------------------ checks


def check_tensor(op: str, name: str, t: torch.Tensor, dim: int | None = None, floating: bool = False) -> None:
    """One clear error per bad argument: names the op, the argument and what was expected."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: argument '{name}' must be a torch.Tensor, got {type(t).__name__}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{op}: argument '{name}' must be {dim}-D, got shape {tuple(t.shape)}")
    if floating and not t.dtype.is_floating_point:
        raise TypeError(f"{op}: argument '{name}' must be a floating-point tensor, got {t.dtype}")
