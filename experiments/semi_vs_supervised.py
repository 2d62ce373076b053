"""Reproduce SemiVL's qualitative claim on the synthetic world: with k labeled images, semi-supervised SemiVL
(pseudo-labels, feature perturbation, CLIP guidance) beats supervised-only training on the same k labels.

    python experiments/semi_vs_supervised.py                      # k = 8 and 16, the default run's recipe
    python experiments/semi_vs_supervised.py --labels 4 8 --iters 600 --seeds 0 1 2
    python experiments/semi_vs_supervised.py --labels 4 --iters 600 --tag no-guidance train.guidance=false

Every run uses configs/synthetic.yaml with the same iterations, model and initialisation; only the training mode
(and the labeled subset) differs. A k the world has no split list for (it ships 8, 16, 32, 64) is drawn with the
world's own split seed into ``<out>/splits``, so the labeled sets nest (the 4 images of k=4 are the first 4 of k=8).
Results (mIoU on the world's validation set) are printed as a Markdown table and merged, per k, into
experiments/results/semi_vs_supervised_<iters>it[_<tag>].json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from semivl_fast import train
from semivl_fast.config import load_config
from semivl_fast.data.splits import generate_split, read_split, write_split
from semivl_fast.engine.data import resolve_data

ROOT = Path(__file__).resolve().parent


def run(mode: str, labels: int, seed: int, iters: int, extra: list[str], out: Path) -> float:
    overrides = [f"data.split={labels}", f"train.iters={iters}", f"train.seed={seed}", f"eval.every={iters}",
                 f"train.out_dir={out / f'{mode}-k{labels}-s{seed}'}", "train.progress=false",
                 "train.tensorboard=false", *extra]
    if mode == "supervised":
        overrides.append("train.semi=false")
    return float(train.main(overrides)["miou"])


def split_dir_for(labels: list[int], overrides: list[str], out: Path) -> list[str]:
    """Overrides that point the runs at split lists holding every k in ``labels`` (none when the world has them)."""
    cfg = load_config(train.default_config(), overrides)
    _, split_dir = resolve_data(cfg.data)  # generates the world if it is not cached
    world = split_dir / cfg.data.dataset
    missing = [k for k in labels if not (world / str(k) / "labeled.txt").is_file()]
    if not missing:
        return []
    mine = out / "splits"
    shutil.copytree(world, mine / cfg.data.dataset, dirs_exist_ok=True)
    for k in missing:
        lab, unl = generate_split(read_split(world / "train.txt"), k, cfg.data.seed)
        write_split(mine / cfg.data.dataset / str(k) / "labeled.txt", lab)
        write_split(mine / cfg.data.dataset / str(k) / "unlabeled.txt", unl)
    return [f"data.split_dir={mine}"]


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--iters", type=int, default=0, help="iterations per run (0: the default run's)")
    parser.add_argument("--out", default=None, help="run folders (default: runs/semi_vs_supervised[_<tag>])")
    parser.add_argument("--tag", default="", help="results file suffix for a variant (e.g. no-guidance)")
    parser.add_argument("--supervised-only", action="store_true",
                        help="skip SemiVL (e.g. --labels 1000: the headroom that labels alone buy)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    args = parser.parse_args(argv)

    iters = args.iters or load_config(train.default_config()).train.iters
    suffix = f"_{args.tag}" if args.tag else ""
    args.out = args.out or f"runs/semi_vs_supervised{suffix}"
    extra = [*split_dir_for(args.labels, args.overrides, Path(args.out)), *args.overrides]
    results: dict[str, dict] = {}
    for k in args.labels:
        t0 = time.time()
        for mode in ("supervised",) if args.supervised_only else ("supervised", "semivl"):
            scores = [run(mode, k, s, iters, extra, Path(args.out)) for s in args.seeds]
            results.setdefault(str(k), {})[mode] = scores
        results[str(k)].update(seeds=args.seeds, overrides=args.overrides, commit=commit(),
                               seconds=round(time.time() - t0))

    def cell(scores: list[float], sign: str = "") -> str:  # mean, ± sample sd over the seeds when there are several
        spread = f" ± {statistics.stdev(scores):.1f}" if len(scores) > 1 else ""
        return f"{statistics.mean(scores):{sign}.1f}{spread}"

    lines = ["| labeled images | supervised only | SemiVL | gain | SemiVL ahead (seeds) |",
             "|---:|---:|---:|---:|---:|"]
    for k, r in results.items():
        if "semivl" not in r:
            lines.append(f"| {k} | {cell(r['supervised'])} | | | |")
            continue
        gains = [b - a for a, b in zip(r["supervised"], r["semivl"])]
        ahead = sum(g > 0 for g in gains)
        lines.append(f"| {k} | {cell(r['supervised'])} | {cell(r['semivl'])} | {cell(gains, '+')} | "
                     f"{ahead}/{len(gains)} |")
    table = "\n".join(lines)
    print(f"\nmIoU (%) on the synthetic world's validation set, {iters} iterations, seeds {args.seeds}:\n{table}")
    out = ROOT / "results" / f"semi_vs_supervised_{iters}it{suffix}.json"
    out.parent.mkdir(exist_ok=True)
    saved = json.loads(out.read_text())["results"] if out.is_file() else {}
    saved.update(results)  # a rerun of some k replaces those; the other k stay
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"iters": iters, "results": dict(sorted(saved.items(), key=lambda kv: int(kv[0])))},
                              indent=1))
    tmp.replace(out)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
