"""Benchmark the cost volume: eager reference vs torch.compile(reference) vs the fused face.

    python bench/cost_volume.py                          # N = 21, 81, 150, and 98 concepts over 21 classes
    python bench/cost_volume.py --classes 150 --no-memory

Each row: median time of forward+backward, peak extra memory and the share of the roofline floor (see harness.py).
Results are appended to bench/results/cost_volume.jsonl (``--results`` another folder).
"""

from __future__ import annotations

import sys

import torch

from semivl_fast.ops import cost_volume, cost_volume_reference

from harness import Case, Row, parser, run, wrap


def case(n: int, batch: int = 4, channels: int = 512, grid: int = 32, concepts: int = 0) -> Case:
    """The decoder's cost volume of a (B, 512, 32, 32) feature map with N classes (or ``concepts`` rows, N groups)."""
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
        return wrap(impl, step)

    hw = grid * grid
    flop = 3 * 2 * batch * rows * channels * hw  # fwd GEMM, bwd two GEMMs
    nbytes = 4 * (2 * batch * channels * hw + 2 * rows * channels + 2 * batch * n * hw)
    name = f"N={n}{f' ({rows} concepts)' if concepts else ''} B={batch} C={channels} {grid}x{grid}"
    return Case("cost_volume", name, ("eager", "compiled", "fused"), setup, lambda: (flop, nbytes))


def concept_cases(classes: list[int]) -> list[Case]:
    """The guidance's MaskCLIP concept max, 98 concepts over 21 classes, when 21 classes are benchmarked."""
    return [case(21, concepts=98)] if 21 in classes else []


def cases(classes: list[int]) -> list[Case]:
    return [case(n) for n in classes] + concept_cases(classes)


def main(argv: list[str] | None = None) -> list[Row]:
    args = parser(__doc__).parse_args(argv)
    return run("cost_volume", cases(args.classes), args)


if __name__ == "__main__":
    main(sys.argv[1:])
