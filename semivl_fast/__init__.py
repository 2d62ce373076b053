"""semivl_fast: fused-kernel engine for label-efficient semantic segmentation with vision-language models."""

from semivl_fast._ext import build_info, has_cuda_ext, has_ext

__version__ = "0.1.0"
__all__ = ["__version__", "build_info", "has_cuda_ext", "has_ext"]
