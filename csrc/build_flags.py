"""Compiler and linker flags of the C++/CUDA extension, in one place.

``setup.py`` (the build pip runs) imports this file; ``CMakeLists.txt`` (the developer build) runs it, e.g.
``python csrc/build_flags.py cxx`` prints the C++ flags as a CMake list. Nothing else may spell these flags.
"""

from __future__ import annotations

import sys

CXX = ["-O3", "-std=c++20", "-fvisibility=hidden"]
NVCC = ["-O3", "-std=c++20", "-lineinfo", "--use_fast_math", "--expt-relaxed-constexpr",
        "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"]
CUDA_DEFINE = "-DWITH_CUDA"  # both compilers, when the CUDA kernels are built


def openmp() -> list[str]:
    """``-fopenmp`` where torch's CPU parallel backend is OpenMP on Linux.

    ``at::parallel_for`` is an OpenMP region inlined from ATen's headers, so without the flag every CPU kernel runs
    on one thread (``semivl_fast.build_info()["cpu_kernel_threads"]`` shows it). With GCC the link pulls
    ``libgomp.so.1``, the soname torch has already loaded: one OpenMP runtime. Apple clang rejects the flag.
    """
    import torch  # lazy: setup.py reads the flags only after it found torch

    return ["-fopenmp"] if torch.backends.openmp.is_available() and sys.platform.startswith("linux") else []


def cxx_flags(cuda: bool = False) -> list[str]:
    return [*CXX, *openmp(), *([CUDA_DEFINE] if cuda else [])]


def nvcc_flags() -> list[str]:
    return [*NVCC, CUDA_DEFINE]


def link_flags() -> list[str]:
    return openmp()


if __name__ == "__main__":  # python csrc/build_flags.py cxx|cxx-cuda|nvcc|link -> a CMake list
    kind = sys.argv[1] if len(sys.argv) > 1 else ""
    flags = {"cxx": cxx_flags, "cxx-cuda": lambda: cxx_flags(cuda=True), "nvcc": nvcc_flags, "link": link_flags}
    if kind not in flags:
        sys.exit(f"usage: python {sys.argv[0]} {{{'|'.join(flags)}}}")
    print(";".join(flags[kind]()))
