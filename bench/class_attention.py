"""Benchmark class attention: SDPA vs eager reference vs torch.compile(reference) vs the fused face.

    python bench/class_attention.py                          # N = 21, 81, 150
    python bench/class_attention.py --classes 150 --no-memory

Each row: median time of forward+backward, peak extra memory and the share of the roofline floor (see harness.py);
speed-ups are against SDPA. Results are appended to bench/results/class_attention.jsonl (``--results`` another
folder).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from semivl_fast.ops import class_attention, class_attention_reference

from harness import Case, Row, parser, run, wrap


def case(n: int, seqs: int = 2 * 64, heads: int = 4, dim: int = 64) -> Case:
    """The decoder's class attention: 2 images of 64 pooled positions, 4 heads of 64, N classes."""
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
        return wrap(impl, step)

    flop = 3.5 * 4 * seqs * heads * n * n * dim  # fwd 4·S·H·N²·D, bwd 2.5x (flash-attention's convention)
    nbytes = 4 * seqs * n * (3 * width + width) * 2  # read qkv + out + dout, write dqkv
    return Case("class_attention", f"N={n} S={seqs} H={heads} D={dim}", ("sdpa", "eager", "compiled", "fused"),
                setup, lambda: (flop, nbytes), baseline="sdpa")


def cases(classes: list[int]) -> list[Case]:
    return [case(n) for n in classes]


def main(argv: list[str] | None = None) -> list[Row]:
    args = parser(__doc__).parse_args(argv)
    return run("class_attention", cases(args.classes), args)


if __name__ == "__main__":
    main(sys.argv[1:])
