"""Reproduce SemiVL's qualitative claim on the synthetic world: with k labeled images, semi-supervised SemiVL
(pseudo-labels, feature perturbation, CLIP guidance) beats supervised-only training on the same k labels.

    python experiments/semi_vs_supervised.py                      # k = 8 and 16, the default run's recipe
    python experiments/semi_vs_supervised.py --labels 8 --iters 200 --seeds 0 1

Every run uses configs/synthetic.yaml with the same iterations, model and initialisation; only the training mode
(and the labeled subset) differs. Results (mIoU on the world's validation set) are printed as a Markdown table and
written to experiments/results/semi_vs_supervised_<iters>it.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from semivl_fast import train

ROOT = Path(__file__).resolve().parent


def run(mode: str, labels: int, seed: int, iters: int, extra: list[str], out: Path) -> float:
    overrides = [f"data.split={labels}", f"train.iters={iters}", f"train.seed={seed}", f"eval.every={iters}",
                 f"train.out_dir={out / f'{mode}-k{labels}-s{seed}'}", "train.progress=false",
                 "train.tensorboard=false", *extra]
    if mode == "supervised":
        overrides.append("train.semi=false")
    return float(train.main(overrides)["miou"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--iters", type=int, default=0, help="iterations per run (0: the default run's)")
    parser.add_argument("--out", default="runs/semi_vs_supervised")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    args = parser.parse_args(argv)
    from semivl_fast.config import load_config

    iters = args.iters or load_config(train.default_config()).train.iters
    results: dict[str, dict[str, list[float]]] = {}
    t0 = time.time()
    for k in args.labels:
        for mode in ("supervised", "semivl"):
            scores = [run(mode, k, s, iters, args.overrides, Path(args.out)) for s in args.seeds]
            results.setdefault(str(k), {})[mode] = scores
    def cell(scores: list[float], sign: str = "") -> str:  # mean, ± sample sd over the seeds when there are several
        spread = f" ± {statistics.stdev(scores):.1f}" if len(scores) > 1 else ""
        return f"{statistics.mean(scores):{sign}.1f}{spread}"

    lines = ["| labeled images | supervised only | SemiVL | gain | SemiVL ahead (seeds) |",
             "|---:|---:|---:|---:|---:|"]
    for k, r in results.items():
        gains = [b - a for a, b in zip(r["supervised"], r["semivl"])]
        ahead = sum(g > 0 for g in gains)
        lines.append(f"| {k} | {cell(r['supervised'])} | {cell(r['semivl'])} | {cell(gains, '+')} | "
                     f"{ahead}/{len(gains)} |")
    table = "\n".join(lines)
    print(f"\nmIoU (%) on the synthetic world's validation set, {iters} iterations, seeds {args.seeds}:\n{table}")
    out = ROOT / "results" / f"semi_vs_supervised_{iters}it.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"iters": iters, "seeds": args.seeds, "overrides": args.overrides,
                               "results": results, "seconds": time.time() - t0}, indent=1))
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
