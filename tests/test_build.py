"""Builds other than the editable one: a wheel installed into a fresh environment, and the CMake developer build.

Both compile the C++ kernels (about a minute each on 2 cores), so they are marked slow.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ("train", "pretrain", "evaluate", "predict")
# a small world and few iterations: the default recipes, run briefly
WORLD = ["data.world_train=64", "data.world_val=4", "data.world_size=56", "data.num_workers=0",
         "train.tensorboard=false", "train.progress=false", "train.iters=2"]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 900) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, \
        f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout + result.stderr


def _build_flags():
    sys.path.insert(0, str(ROOT / "csrc"))
    try:
        import build_flags  # csrc/build_flags.py: not a package module
    finally:
        sys.path.pop(0)
    return build_flags


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_environment_and_runs(tmp_path):
    """``pip wheel`` (no build warnings), installed into a new venv that sees the dependencies but no checkout; from
    an unrelated folder every entry point answers --help, the default prior recipe and then the default SemiVL
    recipe run a few iterations, and the wheel's own C++ kernels load."""
    env = {**os.environ, "SEMIVL_FAST_CUDA": "0", "MAX_JOBS": "2", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    build_config = ROOT / "semivl_fast" / "_build_config.py"  # the editable install's: a wheel build leaves it alone
    before = build_config.read_text() if build_config.is_file() else None
    log = _run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-build-isolation", "--no-deps", "-w",
                str(tmp_path / "dist")], tmp_path, env)
    assert (build_config.read_text() if build_config.is_file() else None) == before
    warnings = [line for line in log.splitlines() if re.search(r"Warning\b|warning:|WARNING:", line)
                and "file:///" not in line]  # pip's notes on this machine's local package index
    assert not warnings, "the build warns:\n" + "\n".join(warnings)
    wheel = next((tmp_path / "dist").glob("semivl_fast-*.whl"))

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path)
                .strip())
    # the dependencies (torch, open_clip, ...) from this environment; its .pth files (our editable install) stay inert
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", str(wheel)], tmp_path, env)

    work = tmp_path / "elsewhere"
    work.mkdir()
    run_env = {**env, "SEMIVL_FAST_CACHE": str(tmp_path / "cache"), "SEMIVL_FAST_REQUIRE_EXT": "1"}
    where = _run([str(python), "-c", "import semivl_fast, json; info = semivl_fast.build_info(); "
                  "print(json.dumps([semivl_fast.__file__, info['cpu_kernels'], info['built_with_torch'], "
                  "info['cuda_kernels']]))"], work, run_env)
    path, kernels, built_with, cuda = json.loads(where.strip().splitlines()[-1])
    assert Path(path).is_relative_to(venv) and kernels and not cuda
    assert built_with == _run([str(python), "-c", "import torch; print(torch.__version__)"], work).strip()
    for entry in ENTRY_POINTS:
        assert "usage: python -m semivl_fast." + entry in _run([str(python), "-m", f"semivl_fast.{entry}", "--help"],
                                                               work, run_env)
    world = f"data.root={tmp_path / 'world'}"
    _run([str(python), "-m", "semivl_fast.pretrain", *WORLD, world, "train.out_dir=prior", "eval.max_images=2"],
         work, run_env)
    out = _run([str(python), "-m", "semivl_fast.train", *WORLD, world, "train.out_dir=run", "eval.every=2",
                f"model.pretrained={work / 'prior' / 'clip.safetensors'}"], work, run_env)
    assert "mIoU" in out and (work / "run" / "model.safetensors").is_file()


@pytest.mark.slow
def test_cmake_build_uses_the_flags_of_the_pip_build(tmp_path):
    """CMakeLists.txt compiles with csrc/build_flags.py's flags, so its kernels run on every thread as pip's do."""
    if shutil.which("cmake") is None:
        pytest.skip("needs cmake")
    build = tmp_path / "build"
    _run(["cmake", "-S", str(ROOT), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}"], ROOT)
    _run(["cmake", "--build", str(build), "-j", "2"], ROOT)
    flags = _build_flags()
    commands = json.loads((build / "compile_commands.json").read_text())
    assert commands and all(set(flags.cxx_flags()) <= set(c["command"].split()) for c in commands)
    library = next(build.glob("_C*.so"))
    code = ("import importlib.util, sys, torch\n"
            f"spec = importlib.util.spec_from_file_location('_C', {str(library)!r})\n"
            "module = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n"
            "torch.set_num_threads(2)\n"
            "print(module.parallel_for_threads())\n")
    assert _run([sys.executable, "-c", code], tmp_path).strip().splitlines()[-1] == "2"
