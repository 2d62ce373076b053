"""Benchmark the fused ops and the whole decoder: eager reference vs torch.compile(reference) vs fused kernels.

    python bench/decoder.py                         # every op and the decoder at N = 21, 81, 150
    python bench/decoder.py --ops pl_loss --classes 150 --no-memory

Each row: median time of forward+backward (interleaved rounds on CPU, triton.testing.do_bench on GPU), peak extra
memory (CPU: live tensor bytes rebuilt from the profiler's allocation records), and the share of the roofline floor,
floor = max(FLOP / peak FLOP/s, bytes / peak bandwidth) with the peaks measured at start-up and FLOP/byte counts
from the model in each case.
Results are appended to bench/results/decoder.jsonl with device, versions and commit.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from bench.harness import (
    Row,
    environment,
    format_table,
    measure_machine,
    peak_memory_mb,
    save_results,
    time_interleaved,
)

REFERENCE_ENV = "SEMIVL_FAST_BACKEND"


@dataclass
class Case:
    op: str
    name: str
    impls: tuple[str, ...]
    setup: Callable[[str, torch.device], Callable[[], object]]  # impl -> one forward+backward
    cost: Callable[[], tuple[float, float]]  # (FLOP, bytes) of one forward+backward
    baseline: str = "eager"


def _backend(impl: str) -> None:
    """eager/compiled run the PyTorch references (plain torch, so torch.compile sees inside); fused = auto."""
    if impl in ("eager", "compiled", "sdpa"):
        os.environ[REFERENCE_ENV] = "reference"
    else:
        os.environ.pop(REFERENCE_ENV, None)


def _wrap(impl: str, fn: Callable[[], object]) -> Callable[[], object]:
    if impl == "compiled":
        _backend(impl)
        compiled = torch.compile(fn)
        return lambda: (_backend(impl), compiled())[1]
    return lambda: (_backend(impl), fn())[1]


# ------------------------------------------------------------------------------------------------ cases

def pl_loss_case(n: int, batch: int, low: int, crop: int) -> Case:
    """The unlabeled strong-view loss: 128² student vs 128² teacher + CutMix partner, upsampled to the crop."""
    from semivl_fast.ops import pseudo_label_loss, pseudo_label_loss_reference

    def setup(impl: str, device: torch.device):
        g = torch.Generator().manual_seed(0)
        student = (torch.randn(batch, n, low, low, generator=g) * 2).to(device).requires_grad_()
        teacher = (torch.randn(batch, n, low, low, generator=g) * 4).to(device)
        mix = (torch.randn(batch, n, low, low, generator=g) * 4).to(device)
        boxes = torch.tensor([[crop // 8, crop // 4, crop // 2, 3 * crop // 4]] * batch, device=device)
        ignore = torch.zeros(batch, crop, crop, dtype=torch.bool, device=device)
        ignore[:, -crop // 10:] = True
        op = pseudo_label_loss if impl == "fused" else pseudo_label_loss_reference

        def step():
            student.grad = None
            loss, _ = op(student, (crop, crop), teacher=teacher, teacher_mix=mix, boxes=boxes, ignore=ignore,
                         ignore_mix=ignore, threshold=0.5)
            loss.backward()
        return _wrap(impl, step)

    pixels = batch * crop * crop
    flop = pixels * n * (7 + 7 + 6) + pixels * n * (7 + 3)  # fwd: 2 bilinear + 2 softmax passes; bwd: 1 + grad
    nbytes = 4 * batch * n * low * low * 4 + 2 * pixels  # 3 low-res inputs + the low-res gradient; 2 masks
    return Case("pl_loss", f"N={n} B={batch} {low}->{crop}", ("eager", "compiled", "fused"), setup,
                lambda: (flop, nbytes))


def class_attention_case(n: int, seqs: int, heads: int = 4, dim: int = 64) -> Case:
    from semivl_fast.ops import class_attention, class_attention_reference

    width = heads * dim

    def setup(impl: str, device: torch.device):
        qkv = torch.randn(seqs, n, 3 * width, device=device).requires_grad_()
        grad = torch.randn(seqs, n, width, device=device)

        def sdpa(x):
            q, k, v = x.unflatten(-1, (3, heads, dim)).permute(2, 0, 3, 1, 4).unbind(0)  # (S, H, N, D)
            return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)

        fn = {"sdpa": sdpa, "fused": lambda x: class_attention(x, heads)}.get(
            impl, lambda x: class_attention_reference(x, heads))

        def step():
            qkv.grad = None
            fn(qkv).backward(grad)
        return _wrap(impl, step)

    flop = 3.5 * 4 * seqs * heads * n * n * dim  # fwd 4·S·H·N²·D, bwd 2.5x (flash-attention's convention)
    nbytes = 4 * seqs * n * (3 * width + width) * 2  # read qkv + out + dout, write dqkv
    return Case("class_attention", f"N={n} S={seqs} H={heads} D={dim}", ("sdpa", "eager", "compiled", "fused"),
                setup, lambda: (flop, nbytes), baseline="sdpa")


def cost_volume_case(n: int, batch: int, channels: int = 512, grid: int = 32, concepts: int = 0) -> Case:
    from semivl_fast.ops import cost_volume, cost_volume_reference

    rows = concepts or n

    def setup(impl: str, device: torch.device):
        g = torch.Generator().manual_seed(0)
        image = torch.randn(batch, channels, grid, grid, generator=g).to(device).requires_grad_()
        text = torch.randn(rows, channels, generator=g).to(device).requires_grad_()
        groups = (torch.arange(rows) % n).to(device) if concepts else None
        grad = torch.randn(batch, n, grid, grid, device=device)
        op = cost_volume if impl == "fused" else cost_volume_reference

        def step():
            image.grad = text.grad = None
            op(image, text, groups, n if concepts else None).backward(grad)
        return _wrap(impl, step)

    hw = grid * grid
    flop = 3 * 2 * batch * rows * channels * hw  # fwd GEMM, bwd two GEMMs
    nbytes = 4 * (2 * batch * channels * hw + 2 * rows * channels + 2 * batch * n * hw)
    name = f"N={n}{f' ({rows} concepts)' if concepts else ''} B={batch} C={channels} {grid}x{grid}"
    return Case("cost_volume", name, ("eager", "compiled", "fused"), setup, lambda: (flop, nbytes))


def decoder_case(n: int, batch: int, grid: int) -> Case:
    """The SemiVL decoder (VOC hyper-parameters) + supervised loss at the crop, forward+backward."""
    from semivl_fast.models.decoder import DecoderConfig, LanguageGuidedDecoder
    from semivl_fast.ops import pseudo_label_loss

    crop = grid * 16

    def build(device: torch.device):
        torch.manual_seed(0)
        decoder = LanguageGuidedDecoder(DecoderConfig()).to(device)
        dense = F.normalize(torch.randn(batch, 512, grid, grid, device=device), dim=1)
        skips = [torch.randn(batch, 768, grid, grid, device=device) for _ in range(2)]
        text = F.normalize(torch.randn(n, 512, device=device), dim=-1)
        target = torch.randint(0, n, (batch, crop, crop), device=device)
        return decoder, dense, skips, text, target

    def setup(impl: str, device: torch.device):
        decoder, dense, skips, text, target = build(device)

        def step():
            decoder.zero_grad(set_to_none=True)
            logits = decoder(dense, skips, text)
            loss, _ = pseudo_label_loss(logits, (crop, crop), target=target, mode="none")
            loss.backward()
        return _wrap(impl, step)

    def cost() -> tuple[float, float]:
        """FLOP counted by torch's FlopCounterMode on the reference; bytes: weights (+ grads, Adam-free) and inputs."""
        from torch.utils.flop_counter import FlopCounterMode

        decoder, dense, skips, text, target = build(torch.device("cpu"))
        with FlopCounterMode(display=False) as counter:
            _backend("eager")
            loss, _ = pseudo_label_loss(decoder(dense, skips, text), (crop, crop), target=target, mode="none")
            loss.backward()
        params = sum(p.numel() for p in decoder.parameters())
        nbytes = 4 * (3 * params + dense.numel() + sum(s.numel() for s in skips)) + 8 * target.numel()
        return float(counter.get_total_flops()), float(nbytes)

    return Case("decoder", f"N={n} B={batch} grid {grid}x{grid}", ("eager", "compiled", "fused"), setup, cost)


def all_cases(classes: list[int], ops: list[str]) -> list[Case]:
    cases: list[Case] = []
    for n in classes:
        if "pl_loss" in ops:
            cases.append(pl_loss_case(n, batch=2, low=128, crop=512))
        if "class_attention" in ops:
            cases.append(class_attention_case(n, seqs=2 * 64))
        if "cost_volume" in ops:
            cases.append(cost_volume_case(n, batch=4))
        if "decoder" in ops:
            cases.append(decoder_case(n, batch=1, grid=16))
    if "cost_volume" in ops and 21 in classes:
        cases.append(cost_volume_case(21, batch=4, concepts=98))
    return cases


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[21, 81, 150])
    parser.add_argument("--ops", default="pl_loss,class_attention,cost_volume,decoder")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cases = all_cases(args.classes, args.ops.split(","))

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
    path = save_results("decoder", rows, machine, env)
    print(f"\nappended {len(rows)} rows to {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
