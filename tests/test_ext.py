"""The C++/CUDA extension: what was built, as the environment promises."""

import os

import pytest
import torch

import semivl_fast


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
    assert hasattr(torch.ops.semivl_fast_C, "pseudo_label_filter_")


@pytest.mark.skipif(os.environ.get("SEMIVL_FAST_CUDA") != "1", reason="CUDA build not forced here")
def test_cuda_kernels_compiled_when_forced():
    info = semivl_fast.build_info()
    assert info["cuda_kernels"], info
    assert info["cuda_archs"] and "8.0" in info["cuda_archs"] and "9.0" in info["cuda_archs"]
