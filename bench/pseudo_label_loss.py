"""Benchmark the fused pseudo-label loss: eager reference vs torch.compile(reference) vs the fused face.

    python bench/pseudo_label_loss.py                          # N = 21, 81, 150
    python bench/pseudo_label_loss.py --classes 150 --no-memory

Each row: median time of forward+backward, peak extra memory and the share of the roofline floor (see harness.py).
Results are appended to bench/results/pseudo_label_loss.jsonl (``--results`` another folder).
"""

from __future__ import annotations

import sys

import torch

from semivl_fast.ops import pseudo_label_loss, pseudo_label_loss_reference

from harness import Case, Row, parser, run, wrap


def case(n: int, batch: int = 2, low: int = 128, crop: int = 512) -> Case:
    """The unlabeled strong-view loss: 128² student vs 128² teacher + CutMix partner, upsampled to the crop."""

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
        return wrap(impl, step)

    pixels = batch * crop * crop
    flop = pixels * n * (7 + 7 + 6) + pixels * n * (7 + 3)  # fwd: 2 bilinear + 2 softmax passes; bwd: 1 + grad
    nbytes = 4 * batch * n * low * low * 4 + 2 * pixels  # 3 low-res inputs + the low-res gradient; 2 masks
    return Case("pseudo_label_loss", f"N={n} B={batch} {low}->{crop}", ("eager", "compiled", "fused"), setup,
                lambda: (flop, nbytes))


def cases(classes: list[int]) -> list[Case]:
    return [case(n) for n in classes]


def main(argv: list[str] | None = None) -> list[Row]:
    args = parser(__doc__).parse_args(argv)
    return run("pseudo_label_loss", cases(args.classes), args)


if __name__ == "__main__":
    main(sys.argv[1:])
