"""GPU code compiles for sm_80 and sm_90 without a GPU: Triton kernels ahead of time, CUDA C++ with ptxas -v.

Both must spill nothing and fit shared memory; the resource reports are printed (pytest -s shows them). The only
place that compiles them in the tests (the per-op test files check that the AOT specs cover their kernels).
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.cpp_extension import include_paths

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
FORCED = os.environ.get("SEMIVL_FAST_CUDA") == "1"


@pytest.mark.slow
def test_triton_kernels_compile_for_sm80_and_sm90():
    """Every kernel module's AOT_SPECS (``python -m semivl_fast.kernels._aot``), without the interpreter."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "semivl_fast.kernels._aot"], capture_output=True, text=True, env=env,
                         timeout=600)
    print(run.stdout, run.stderr)
    assert run.returncode == 0, f"AOT compile failed or a kernel spills / overflows shared memory:\n{run.stdout}\n" \
                                f"{run.stderr[-3000:]}"


def _nvcc() -> str | None:
    """The toolkit the extension was built with (setup.py records it), else $CUDA_HOME, else PATH."""
    try:
        from semivl_fast._build_config import CUDA_HOME as home  # lazy: setup.py writes it at build time
    except ImportError:
        home = None
    home = home or os.environ.get("CUDA_HOME")
    return os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")


@pytest.mark.slow
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_cuda_sources_compile_without_spills(source, tmp_path):
    nvcc = _nvcc()
    if nvcc is None or torch.version.cuda is None:
        if FORCED:
            pytest.fail("SEMIVL_FAST_CUDA=1 but nvcc or a CUDA build of torch is missing")
        pytest.skip("needs nvcc and a CUDA build of torch")
    includes = [f"-I{p}" for p in [*include_paths("cuda"), str(ROOT / "csrc" / "include")]]
    flags = subprocess.run([sys.executable, str(ROOT / "csrc" / "build_flags.py"), "nvcc"], capture_output=True,
                           text=True, check=True).stdout.strip().split(";")  # the extension's own nvcc flags
    cmd = [nvcc, "-c", str(source), "-o", str(tmp_path / "k.o"), *flags, "-Xptxas", "-v",
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90", *includes]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    report = [line for line in run.stderr.splitlines() if "ptxas info" in line and
              ("Used" in line or "spill" in line or "Compiling entry" in line)]
    print("\n".join(report))
    assert run.returncode == 0, run.stderr[-4000:]
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", run.stderr)]
    if "__global__" in source.read_text():
        assert spills, f"no ptxas report for the kernels of {source.name}"
    assert not any(spills), f"{source.name} spills registers:\n" + "\n".join(report)
