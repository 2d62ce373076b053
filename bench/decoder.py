"""Benchmark the fused ops and the whole decoder: eager reference vs torch.compile(reference) vs fused kernels.

    python bench/decoder.py                         # every op and the decoder at N = 21, 81, 150
    python bench/decoder.py --ops pseudo_label_loss --classes 150 --no-memory

The op cases are those of bench/<op>.py (each runs alone too). Each row: median time of forward+backward
(interleaved rounds on CPU, triton.testing.do_bench on GPU), peak extra memory (CPU: live tensor bytes rebuilt from
the profiler's allocation records), and the share of the roofline floor, floor = max(FLOP / peak FLOP/s,
bytes / peak bandwidth) with the peaks measured at start-up and FLOP/byte counts from the model in each case.
Results are appended to bench/results/decoder.jsonl (``--results`` another folder) with device, versions and commit.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from semivl_fast.models.decoder import DecoderConfig, LanguageGuidedDecoder
from semivl_fast.ops import pseudo_label_loss

import class_attention as class_attention_bench
import cost_volume as cost_volume_bench
import pseudo_label_loss as pseudo_label_loss_bench
from harness import Case, Row, parser, run, use_impl, wrap


def case(n: int, batch: int = 1, grid: int = 16) -> Case:
    """The SemiVL decoder (VOC hyper-parameters) + supervised loss at the crop, forward+backward."""
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
        return wrap(impl, step)

    def cost() -> tuple[float, float]:
        """FLOP counted by torch's FlopCounterMode on the reference; bytes: weights (+ grads, Adam-free) and inputs."""
        decoder, dense, skips, text, target = build(torch.device("cpu"))
        with FlopCounterMode(display=False) as counter:
            use_impl("eager")
            loss, _ = pseudo_label_loss(decoder(dense, skips, text), (crop, crop), target=target, mode="none")
            loss.backward()
        params = sum(p.numel() for p in decoder.parameters())
        nbytes = 4 * (3 * params + dense.numel() + sum(s.numel() for s in skips)) + 8 * target.numel()
        return float(counter.get_total_flops()), float(nbytes)

    return Case("decoder", f"N={n} B={batch} grid {grid}x{grid}", ("eager", "compiled", "fused"), setup, cost)


# One case per class count and op, in this order; the cost volume adds its concept-max case at the end.
PER_CLASS_COUNT = {"pseudo_label_loss": pseudo_label_loss_bench.case, "class_attention": class_attention_bench.case,
                   "cost_volume": cost_volume_bench.case, "decoder": case}


def all_cases(classes: list[int], ops: list[str]) -> list[Case]:
    cases = [PER_CLASS_COUNT[op](n) for n in classes for op in PER_CLASS_COUNT if op in ops]
    return cases + (cost_volume_bench.concept_cases(classes) if "cost_volume" in ops else [])


def main(argv: list[str] | None = None) -> list[Row]:
    p = parser(__doc__)
    p.add_argument("--ops", default=",".join(PER_CLASS_COUNT), help="comma-separated: " + ", ".join(PER_CLASS_COUNT))
    args = p.parse_args(argv)
    ops = args.ops.split(",")
    unknown = sorted(set(ops) - set(PER_CLASS_COUNT))
    if unknown:
        p.error(f"--ops: unknown {unknown}; choose from {list(PER_CLASS_COUNT)}")
    return run("decoder", all_cases(args.classes, ops), args)


if __name__ == "__main__":
    main(sys.argv[1:])
