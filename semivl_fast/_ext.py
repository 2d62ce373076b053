"""Optional C++/CUDA extension: import it if it was built, and say what was built."""

from __future__ import annotations

import importlib
import os
import warnings
from typing import Any

import torch

_C: Any = None
_IMPORT_ERROR: str | None = None
try:
    _C = importlib.import_module("semivl_fast._C")  # registers torch.ops.semivl_fast_C.*
except ImportError as e:  # not built (pure-Python install) or built against another torch
    _IMPORT_ERROR = str(e)
    if os.environ.get("SEMIVL_FAST_REQUIRE_EXT", "0") == "1":
        raise ImportError(f"SEMIVL_FAST_REQUIRE_EXT=1 but the C++ extension semivl_fast._C failed to import: {e}. "
                          "Rebuild it with `pip install -e . --no-build-isolation`.") from e
    if "undefined symbol" in str(e):
        warnings.warn(f"semivl_fast._C was built against another torch ({e}); rebuild with "
                      "`pip install -e . --no-build-isolation`. Falling back to PyTorch reference ops.", stacklevel=2)


def has_ext() -> bool:
    """True when the C++ extension (CPU kernels) is importable."""
    return _C is not None


def has_cuda_ext() -> bool:
    """True when the extension contains the CUDA kernels (compiled; a GPU is a separate question)."""
    return _C is not None and bool(_C.has_cuda())


def build_info() -> dict[str, Any]:
    """What was built and what will run: extension, CUDA kernels, Triton, versions."""
    try:
        from semivl_fast import _build_config as cfg  # written by setup.py at build time: absent in a source tree
    except ImportError:
        cfg = None
    try:
        import triton  # lazy: importing triton takes seconds; build_info is the only reader here

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda_version = int(_C.cuda_version()) if has_cuda_ext() else 0
    return {
        "extension": has_ext(),
        "extension_error": _IMPORT_ERROR,
        "cpu_kernels": has_ext(),
        "cuda_kernels": has_cuda_ext(),
        "cuda_toolkit": f"{cuda_version // 1000}.{cuda_version % 1000 // 10}" if cuda_version else None,
        "cuda_archs": getattr(cfg, "CUDA_ARCHS", "") or None,
        "built_with_torch": getattr(cfg, "TORCH_VERSION", None),
        "compiler": _C.compiler() if has_ext() else None,
        # threads the CPU kernels' at::parallel_for runs on now (1 if built without OpenMP: a broken build)
        "cpu_kernel_threads": int(_C.parallel_for_threads()) if has_ext() else None,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "gpu_available": torch.cuda.is_available(),
        "triton": triton_version,
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") == "1",
    }
