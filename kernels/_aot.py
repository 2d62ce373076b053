"""Ahead-of-time compilation of the Triton kernels for sm_80 and sm_90, without a GPU.

Every kernel module lists ``AOT_SPECS`` (kernel, signature, constexprs, launch options) at the benchmark shapes, with
the tile sizes its launchers pick on a GPU.
``python -m semivl_fast.kernels._aot`` compiles each for every target, reads registers, spills and shared memory
from the cubin (cuobjdump) and the MMA instructions from the SASS (nvdisasm), prints a table and exits non-zero if
anything spills or does not fit. It must run without ``TRITON_INTERPRET`` (the interpreter never compiles).
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

import triton
import triton.backends.nvidia
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

KERNEL_MODULES = ("cost_volume", "class_attention", "pseudo_label_loss")
TARGETS = (80, 90)
# Largest shared memory one block may use (opt-in limit): A100 163 KiB, H100 227 KiB.
SHARED_LIMIT = {80: 166_912, 90: 232_448}


@dataclass
class AotSpec:
    """One compilation: a @triton.jit kernel with its argument types and compile-time constants."""

    name: str
    kernel: Any
    signature: dict[str, str]
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 2


@dataclass
class AotReport:
    name: str
    arch: int
    registers: int
    spill_bytes: int  # local memory per thread: register spills and stack arrays
    shared: int
    mma: str  # "HGMMA" (sm_90 warpgroup MMA), "HMMA" (mma.sync tensor cores) or "-"

    @property
    def ok(self) -> bool:
        return self.spill_bytes == 0 and self.shared <= SHARED_LIMIT[self.arch]


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.backends.nvidia.__file__), "bin", name)


def compile_spec(spec: AotSpec, arch: int) -> AotReport:
    """Compile ``spec`` for ``sm_<arch>`` and read its resource usage."""
    signature = {**spec.signature, **{k: "constexpr" for k in spec.constexprs}}
    src = ASTSource(fn=spec.kernel, signature=signature, constexprs=dict(spec.constexprs))
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", cubin], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([_tool("nvdisasm"), "-c", cubin], capture_output=True, text=True, check=True).stdout
    field_of = lambda key: int(re.search(rf"\b{key}:(\d+)", usage).group(1))
    mma = "HGMMA" if "HGMMA" in sass else "HMMA" if "HMMA" in sass else "-"
    return AotReport(spec.name, arch, field_of("REG"), field_of("LOCAL") + field_of("STACK"), compiled.metadata.shared,
                     mma)


def all_specs() -> list[AotSpec]:
    """The AOT specs of every kernel module."""
    return [spec for mod in KERNEL_MODULES for spec in importlib.import_module(f".{mod}", __package__).AOT_SPECS]


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("unset TRITON_INTERPRET: the interpreter does not compile kernels", file=sys.stderr)
        return 2
    reports = [compile_spec(spec, arch) for spec in all_specs() for arch in TARGETS]
    print(f"{'kernel':44s} {'arch':>5s} {'regs':>5s} {'spill B':>8s} {'shared B':>9s} {'mma':>6s}  ok")
    for r in reports:
        print(f"{r.name:44s} sm_{r.arch:<2d} {r.registers:5d} {r.spill_bytes:8d} {r.shared:9d} {r.mma:>6s}  "
              f"{'yes' if r.ok else 'NO'}")
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
