"""Benchmark machinery shared by the scripts in bench/: cases, interleaved timing, peak memory, a roofline floor, the
command line and result records.

CPU: each implementation is timed in rounds that interleave the implementations (so load on the machine hits
them alike) and the median is reported; peak memory is the live tensor bytes rebuilt from the profiler's
allocation records. GPU: ``triton.testing.do_bench`` and ``torch.cuda.max_memory_allocated``.

Each case times ``impls`` of one forward+backward: "eager" and "compiled" run the PyTorch references (plain torch,
so torch.compile sees inside), "fused" the op's automatic face, "sdpa" PyTorch's attention.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

import semivl_fast

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
REFERENCE_ENV = "SEMIVL_FAST_BACKEND"


@dataclass
class Case:
    op: str
    name: str
    impls: tuple[str, ...]
    setup: Callable[[str, torch.device], Callable[[], object]]  # impl -> one forward+backward
    cost: Callable[[], tuple[float, float]]  # (FLOP, bytes) of one forward+backward
    baseline: str = "eager"


def use_impl(impl: str) -> None:
    """eager/compiled/sdpa run the PyTorch references (``SEMIVL_FAST_BACKEND=reference``); fused the automatic face."""
    if impl in ("eager", "compiled", "sdpa"):
        os.environ[REFERENCE_ENV] = "reference"
    else:
        os.environ.pop(REFERENCE_ENV, None)


def wrap(impl: str, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run as ``impl``: under torch.compile for "compiled", with the faces ``use_impl`` sets."""
    if impl == "compiled":
        use_impl(impl)
        compiled = torch.compile(fn)
        return lambda: (use_impl(impl), compiled())[1]
    return lambda: (use_impl(impl), fn())[1]


@dataclass
class Machine:
    """Measured peak throughput of this machine: the roofline's two roofs."""

    device: str
    flops: float  # FLOP/s of a large fp32 GEMM
    bandwidth: float  # bytes/s of a large copy (read + write)


@dataclass
class Row:
    op: str
    case: str
    impl: str
    ms: float
    peak_mb: float | None
    flop: float
    bytes: float
    floor_ms: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def roofline(self) -> float:
        """Share of the roofline floor reached: floor time / measured time."""
        return self.floor_ms / self.ms if self.ms > 0 else float("nan")


def measure_machine(device: torch.device) -> Machine:
    """Peak FLOP/s and copy bandwidth, measured now (same load as the benchmark), best of several runs.

    The FLOP roof is the faster of a 2048² fp32 GEMM (BLAS) and a 3×3 256-channel convolution (oneDNN / cuDNN): on
    AMD CPUs MKL's GEMM reaches well under half of what oneDNN's AVX-512 convolutions do, and the decoder is mostly
    convolutions, so a GEMM-only roof would be beaten."""
    n = 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    x, w = torch.randn(4, 256, 64, 64, device=device), torch.randn(256, 256, 3, 3, device=device)
    src = torch.randn(64 * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    gemm = time_fn(lambda: a @ b, device, repeats=7, best=True)
    conv = time_fn(lambda: torch.nn.functional.conv2d(x, w, padding=1), device, repeats=7, best=True)
    copy = time_fn(lambda: dst.copy_(src), device, repeats=7, best=True)
    flops = max(2 * n**3 / (gemm / 1e3), 2 * x.numel() * w.shape[0] * 9 / (conv / 1e3))
    return Machine(str(device), flops, 2 * src.numel() * 4 / (copy / 1e3))


def time_fn(fn: Callable[[], Any], device: torch.device, repeats: int = 10, best: bool = False) -> float:
    """Median (``best``: minimum) milliseconds of ``fn`` (after one warm-up call)."""
    if device.type == "cuda":
        from triton.testing import do_bench  # lazy: triton is optional, and only GPUs time with it

        return float(do_bench(fn, return_mode="min" if best else "median"))
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times) if best else statistics.median(times)


def time_interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, rounds: int = 7) -> dict[str, float]:
    """Median milliseconds per implementation, timing them in alternating rounds (fair under noisy load)."""
    if device.type == "cuda":
        return {name: time_fn(fn, device) for name, fn in fns.items()}
    for fn in fns.values():  # warm-up (and compilation) outside the timing
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (the profiler's C++ side logs start/stop lines there on every use)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float:
    """Peak extra tensor memory (MB) of one call of ``fn`` (already warmed up: compilation excluded).

    CUDA: the caching allocator's peak. CPU: the live-bytes curve rebuilt from the profiler's allocation records
    (each op's own allocations at its start, frees when they happen), so inputs and outputs alive before the call
    do not count and allocator caching does not blur it. The peak is taken above the curve's lowest point so far:
    a step that first drops tensors of the previous call (``x.grad = None``) frees memory allocated before the
    window, and counting from zero would then hide as much of the call's own peak.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = low = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        low = min(low, live)
        peak = max(peak, live - low)
    return peak / 2**20


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """The benchmarked ``device`` (default: CUDA if available, else the CPU), versions and commit, stored with every
    result."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=ROOT).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                                    cwd=ROOT).stdout.strip())
    except OSError:
        commit, dirty = "unknown", False
    try:
        import triton  # lazy: optional (GPU kernels); only its version is recorded

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "device": name,
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "triton": triton_version, "python": platform.python_version(),
            "commit": commit + ("+dirty" if dirty else ""),
            "build": {k: v for k, v in semivl_fast.build_info().items() if k in ("cpu_kernels", "cuda_kernels")}}


def format_table(rows: list[Row], baseline: str = "eager") -> str:
    """One line per (op, case, impl): time, speed-up over ``baseline``, peak memory, its ratio, roofline share."""
    base = {(r.op, r.case): r for r in rows if r.impl == baseline}
    head = (f"{'op':18s} {'case':26s} {'impl':18s} {'median ms':>10s} {'speed-up':>9s} {'peak MB':>9s} "
            f"{'mem ratio':>9s} {'roofline':>9s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        b = base.get((r.op, r.case))
        speed = f"{b.ms / r.ms:8.2f}x" if b else ""
        mem_ratio = f"{b.peak_mb / r.peak_mb:8.1f}x" if b and b.peak_mb and r.peak_mb else ""
        peak = f"{r.peak_mb:9.1f}" if r.peak_mb is not None else f"{'-':>9s}"
        lines.append(f"{r.op:18s} {r.case:26s} {r.impl:18s} {r.ms:10.2f} {speed:>9s} {peak} {mem_ratio:>9s} "
                     f"{100 * r.roofline:8.1f}%")
    return "\n".join(lines)


def save_results(name: str, rows: list[Row], machine: Machine, env: dict[str, Any], folder: Path = RESULTS) -> Path:
    """Append one JSON line per row to ``<folder>/<name>.jsonl`` (default ``bench/results``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps({**env, "machine": asdict(machine), **asdict(r), "roofline": r.roofline}) + "\n")
    return path


def parser(description: str | None) -> argparse.ArgumentParser:
    """The command line every bench script shares (decoder.py adds ``--ops``)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, nargs="+", default=[21, 81, 150])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of the .jsonl files the rows are appended to")
    return p


def run(name: str, cases: list[Case], args: argparse.Namespace) -> list[Row]:
    """Time every case's implementations, print a table per case and append the rows to ``<results>/<name>.jsonl``."""
    device = torch.device(args.device)
    machine = measure_machine(device)
    env = environment(device)
    print(f"{env['device']} | torch {env['torch']} | triton {env['triton']} | commit {env['commit']} | "
          f"peaks: {machine.flops / 1e9:.0f} GFLOP/s, {machine.bandwidth / 1e9:.1f} GB/s")
    rows: list[Row] = []
    for case in cases:
        fns = {impl: case.setup(impl, device) for impl in case.impls}
        times = time_interleaved(fns, device, args.rounds)
        flop, nbytes = case.cost()
        floor_ms = 1e3 * max(flop / machine.flops, nbytes / machine.bandwidth)
        for impl in case.impls:
            peak = None if args.no_memory else peak_memory_mb(fns[impl], device)
            rows.append(Row(case.op, case.name, impl, times[impl], peak, flop, nbytes, floor_ms,
                            {"baseline": case.baseline}))
        print(format_table([r for r in rows if (r.op, r.case) == (case.op, case.name)], case.baseline), flush=True)
    os.environ.pop(REFERENCE_ENV, None)
    path = save_results(name, rows, machine, env, args.results)
    print(f"\nappended {len(rows)} rows to {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return rows
