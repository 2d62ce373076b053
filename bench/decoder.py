"""Benchmark the fused ops and the whole decoder: eager reference vs torch.compile(reference) vs fused kernels.

    python bench/decoder.py                         # every op, and the decoder at grids 32² and 16², N = 21, 81, 150
    python bench/decoder.py --ops decoder --grids 32 --classes 150 --no-memory

The op cases are those of bench/<op>.py (each runs alone too); the decoder's five providers are described at
``case`` (the reference head in fp32 is the baseline). Each row: median time of forward+backward
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
from semivl_fast.models.reference_head import ReferenceVLGHead
from semivl_fast.ops import pseudo_label_loss
from semivl_fast.training.precision import PassContext, resolve_amp

import class_attention as class_attention_bench
import cost_volume as cost_volume_bench
import pseudo_label_loss as pseudo_label_loss_bench
from harness import Case, Row, parser, run, use_impl

IMPLS = ("reference", "reference-compiled", "engine-fp32", "engine", "engine-compiled")


def case(n: int, batch: int = 1, grid: int = 32) -> Case:
    """The decoder (VOC hyper-parameters) + supervised loss at the crop, forward+backward, five ways:

    - ``reference``: the reference's head code (``ReferenceVLGHead``), logits upsampled to the crop, cross-entropy,
      fp32 eager: what the reference trains with (the baseline);
    - ``reference-compiled``: that, under ``torch.compile`` and the engine's precision (bf16 autocast where the
      hardware computes it natively): the two lines any user can add;
    - ``engine-fp32``: this engine's decoder and fused loss in fp32;
    - ``engine`` / ``engine-compiled``: the same at the engine's default precision (``train.amp=auto``), without
      and with ``torch.compile``.
    """
    crop = grid * 16
    device_amp = lambda device: resolve_amp("auto", device)

    def build(impl: str, device: torch.device):
        torch.manual_seed(0)
        cfg = DecoderConfig()
        decoder = (ReferenceVLGHead(cfg) if impl.startswith("reference") else LanguageGuidedDecoder(cfg)).to(device)
        dense = F.normalize(torch.randn(batch, 512, grid, grid, device=device), dim=1)
        skips = [torch.randn(batch, 768, grid, grid, device=device) for _ in range(2)]
        text = F.normalize(torch.randn(n, 512, device=device), dim=-1)
        target = torch.randint(0, n, (batch, crop, crop), device=device)
        return decoder, dense, skips, text, target

    def setup(impl: str, device: torch.device):
        decoder, dense, skips, text, target = build(impl, device)
        amp = "none" if impl in ("reference", "engine-fp32") else device_amp(device)
        context = PassContext(amp, device)

        def step():
            decoder.zero_grad(set_to_none=True)
            with context:
                logits = decoder(dense, skips, text)
            if impl.startswith("reference"):
                full = F.interpolate(logits.float(), size=(crop, crop), mode="bilinear", align_corners=False)
                loss = F.cross_entropy(full, target, ignore_index=255)
            else:
                loss, _ = pseudo_label_loss(logits, (crop, crop), target=target, mode="none")
            loss.backward()

        use_impl("fused")
        return torch.compile(step) if impl.endswith("compiled") else step

    def cost() -> tuple[float, float]:
        """FLOP counted by torch's FlopCounterMode on the engine's decoder; bytes: weights (+ grads) and inputs."""
        decoder, dense, skips, text, target = build("engine", torch.device("cpu"))
        with FlopCounterMode(display=False) as counter:
            loss, _ = pseudo_label_loss(decoder(dense, skips, text), (crop, crop), target=target, mode="none")
            loss.backward()
        params = sum(p.numel() for p in decoder.parameters())
        nbytes = 4 * (3 * params + dense.numel() + sum(s.numel() for s in skips)) + 8 * target.numel()
        return float(counter.get_total_flops()), float(nbytes)

    return Case("decoder", f"N={n} B={batch} grid {grid}x{grid}", IMPLS, setup, cost, baseline="reference")


# One case per class count and op, in this order; the cost volume adds its concept-max case at the end.
PER_CLASS_COUNT = {"pseudo_label_loss": pseudo_label_loss_bench.case, "class_attention": class_attention_bench.case,
                   "cost_volume": cost_volume_bench.case, "decoder": case}


def all_cases(classes: list[int], ops: list[str], grids: list[int]) -> list[Case]:
    cases = [case(n, grid=g) if op == "decoder" else PER_CLASS_COUNT[op](n)
             for n in classes for op in PER_CLASS_COUNT if op in ops for g in (grids if op == "decoder" else [0])]
    return cases + (cost_volume_bench.concept_cases(classes) if "cost_volume" in ops else [])


def main(argv: list[str] | None = None) -> list[Row]:
    p = parser(__doc__)
    p.add_argument("--ops", default=",".join(PER_CLASS_COUNT), help="comma-separated: " + ", ".join(PER_CLASS_COUNT))
    p.add_argument("--grids", type=int, nargs="+", default=[32, 16],
                   help="dense grids of the decoder rows (32: the reference's 512² crops)")
    args = p.parse_args(argv)
    ops = args.ops.split(",")
    unknown = sorted(set(ops) - set(PER_CLASS_COUNT))
    if unknown:
        p.error(f"--ops: unknown {unknown}; choose from {list(PER_CLASS_COUNT)}")
    return run("decoder", all_cases(args.classes, ops, args.grids), args)


if __name__ == "__main__":
    main(sys.argv[1:])
