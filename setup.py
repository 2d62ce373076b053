"""Build script: the Python package plus the optional C++/CUDA extension ``semivl_fast._C``.

Environment switches (all optional):

* ``SEMIVL_FAST_CUDA=auto|0|1`` (alias ``FORCE_CUDA``): ``auto`` builds the CUDA kernels when torch is a CUDA build
  and a CUDA toolkit is found (no GPU needed); ``1`` forces them and fails loudly if impossible; ``0`` skips them.
* ``TORCH_CUDA_ARCH_LIST``: GPU architectures; defaults to ``8.0;9.0`` when no GPU is visible.
* ``SEMIVL_FAST_NO_EXT=1``: skip the extension entirely (pure Python; ops run their PyTorch reference).
* ``CUDA_HOME``: toolkit root; found from ``nvcc`` when unset.
* ``MAX_JOBS``: parallel compile jobs (default: number of CPU cores).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys

from setuptools import find_namespace_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# Every folder of the package is a package, data folders too (configs, class lists), so their files install with it;
# the Triton kernels live at the top level (kernels/) and install as semivl_fast.kernels.
PACKAGES = [*find_namespace_packages(include=["semivl_fast", "semivl_fast.*"], exclude=["*.__pycache__"]),
            "semivl_fast.kernels"]
PACKAGE_DIR = {"semivl_fast.kernels": "kernels"}


def _build_flags():
    """csrc/build_flags.py: the compiler and linker flags, shared with CMakeLists.txt."""
    spec = importlib.util.spec_from_file_location("build_flags", os.path.join(ROOT, "csrc", "build_flags.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flag(name: str, default: str = "auto") -> str:
    value = os.environ.get(name)
    if value is None and name == "SEMIVL_FAST_CUDA":
        value = os.environ.get("FORCE_CUDA")
    return (value or default).strip().lower()


def _has_cudart(root: str) -> bool:
    return any(glob.glob(os.path.join(root, d, "libcudart.so*")) for d in ("lib64", "lib", "targets/*/lib"))


def _find_cuda_home() -> str | None:
    """The real toolkit root: a ``nvcc`` on PATH may be a wrapper script outside the toolkit."""
    env = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if env and _has_cudart(env):
        return env
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:  # nvcc -dryrun prints "#$ TOP=<toolkit>/bin/.."
        out = subprocess.run([nvcc, "-dryrun", "-c", "x.cu"], capture_output=True, text=True, timeout=30).stderr
        match = re.search(r"^#\$ TOP=(.+)$", out, re.MULTILINE)
        if match:
            top = os.path.realpath(match.group(1).strip())
            if _has_cudart(top):
                return top
    except (OSError, subprocess.SubprocessError):
        pass
    guess = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return guess if _has_cudart(guess) else None


def _build_ext_command(base, build_config: str):
    """``base`` (torch's BuildExtension) that also writes ``_build_config.py`` beside the extension it builds: into
    the source tree for an editable or in-place build, into the build folder for a wheel (so building a wheel never
    rewrites what an editable install reports). ``semivl_fast.build_info()`` reads it."""

    class BuildExtWithConfig(base):
        def run(self) -> None:
            super().run()
            for ext in self.extensions:
                target = os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), "_build_config.py")
                with open(target + ".tmp", "w") as f:
                    f.write(build_config)
                os.replace(target + ".tmp", target)

    return BuildExtWithConfig


def _extensions():
    if _flag("SEMIVL_FAST_NO_EXT", "0") in ("1", "true", "yes"):
        print("semivl_fast: SEMIVL_FAST_NO_EXT set, installing without the C++ extension", file=sys.stderr)
        return [], {}
    want_cuda = _flag("SEMIVL_FAST_CUDA")
    cuda_home = _find_cuda_home() if want_cuda != "0" else None
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # cpp_extension reads it at import time
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        if want_cuda == "1":
            raise SystemExit("semivl_fast: SEMIVL_FAST_CUDA=1 but torch is not importable in the build environment; "
                             "install torch first and build with `pip install -e . --no-build-isolation`") from None
        print("\n*** semivl_fast: torch is not importable at build time, so the C++ extension is NOT built. ***\n"
              "*** Install torch first, then `pip install -e . --no-build-isolation`.                      ***\n",
              file=sys.stderr)
        return [], {}

    build_cuda = want_cuda != "0" and torch.version.cuda is not None and cuda_home is not None
    if want_cuda in ("1", "true", "yes") and not build_cuda:
        why = "torch is a CPU-only build" if torch.version.cuda is None else "no CUDA toolkit (nvcc) was found"
        raise SystemExit(f"semivl_fast: SEMIVL_FAST_CUDA=1 but {why}; unset it or install a CUDA torch and toolkit")

    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    flags = _build_flags()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    if build_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"  # no GPU to ask: build the two targets we support
        ext = CUDAExtension("semivl_fast._C", sources + sorted(glob.glob("csrc/cuda/*.cu")),
                            include_dirs=include_dirs,
                            extra_compile_args={"cxx": flags.cxx_flags(cuda=True), "nvcc": flags.nvcc_flags()},
                            extra_link_args=flags.link_flags())
        print(f"semivl_fast: building CPU + CUDA kernels (CUDA_HOME={cuda_home}, "
              f"archs={os.environ['TORCH_CUDA_ARCH_LIST']})", file=sys.stderr)
    else:
        ext = CppExtension("semivl_fast._C", sources, include_dirs=include_dirs,
                           extra_compile_args={"cxx": flags.cxx_flags()}, extra_link_args=flags.link_flags())
        print("semivl_fast: building CPU kernels only", file=sys.stderr)
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if build_cuda else ""
    build_config = (f"# Written by setup.py at build time; not tracked by git.\nTORCH_VERSION = {torch.__version__!r}\n"
                    f"CUDA_HOME = {cuda_home if build_cuda else None!r}\nCUDA_ARCHS = {archs!r}\n")
    command = _build_ext_command(BuildExtension, build_config)
    return [ext], {"build_ext": command.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = _extensions()
setup(packages=PACKAGES, package_dir=PACKAGE_DIR, ext_modules=ext_modules, cmdclass=cmdclass)
