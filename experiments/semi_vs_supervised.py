"""Reproduce SemiVL's qualitative claim on the synthetic world: with k labeled images, semi-supervised SemiVL
(pseudo-labels, feature perturbation, CLIP guidance) beats supervised-only training on the same k labels.

    python experiments/semi_vs_supervised.py                      # k = 4, 8, 16, seed 0, the default run's recipe
    python experiments/semi_vs_supervised.py --labels 4 8 --iters 600 --seeds 0 1 2
    python experiments/semi_vs_supervised.py --labels 4 --iters 600 --tag no-guidance train.guidance=false

Every run uses the default recipe (synthetic) with the same iterations, model and initialisation; only the training mode
(and the labeled subset) differs. A k the world has no split list for (it ships 8, 16, 32, 64) is drawn with the
world's own split seed into ``<out>/splits``, so the labeled sets nest (the 4 images of k=4 are the first 4 of k=8).
Results (mIoU on the world's validation set) are merged per k and seed into
experiments/results/semi_vs_supervised_<iters>it[_<tag>].json (rerunning a seed replaces it; more seeds pool into
the same row) and printed as a Markdown table over every recorded seed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from semivl_fast import train
from semivl_fast.data.splits import read_split, write_splits
from semivl_fast.files import atomic_write
from semivl_fast.training.config import load_config
from semivl_fast.training.data import resolve_data
from semivl_fast.training.logger import git_revision

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
    cfg = load_config(train.RECIPE, overrides)
    _, split_dir = resolve_data(cfg.data)  # generates the world if it is not cached
    world = split_dir / cfg.data.dataset
    missing = [k for k in labels if not (world / str(k) / "labeled.txt").is_file()]
    if not missing:
        return []
    mine = out / "splits"
    shutil.copytree(world, mine / cfg.data.dataset, dirs_exist_ok=True)
    write_splits(mine / cfg.data.dataset, read_split(world / "train.txt"), missing, cfg.data.seed)
    return [f"data.split_dir={mine}"]


def load_results(path: Path) -> dict[str, dict[str, dict]]:
    """k -> seed -> {"supervised": mIoU, "semivl": mIoU, "overrides": [...], "commit": ...}."""
    return json.loads(path.read_text())["results"] if path.is_file() else {}


def save_results(path: Path, iters: int, results: dict[str, dict[str, dict]]) -> None:
    ordered = {k: dict(sorted(runs.items(), key=lambda kv: int(kv[0])))
               for k, runs in sorted(results.items(), key=lambda kv: int(kv[0]))}
    text = json.dumps({"iters": iters, "results": ordered}, indent=1)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def check_same_variant(results: dict[str, dict[str, dict]], labels: list[int], overrides: list[str]) -> None:
    """Seeds of one k are pooled into one row, so they must all come from the same overrides."""
    for k in labels:
        others = {tuple(r["overrides"]) for r in results.get(str(k), {}).values()}
        if others - {tuple(overrides)}:
            raise ValueError(f"k={k} already has runs with overrides {sorted(others)}, not {overrides}: give this "
                             "variant its own --tag")


def cell(scores: list[float], sign: str = "") -> str:
    """Mean, ± sample sd over the seeds when there are several."""
    if not scores:
        return ""
    spread = f" ± {statistics.stdev(scores):.1f}" if len(scores) > 1 else ""
    return f"{statistics.mean(scores):{sign}.1f}{spread}"


def table(results: dict[str, dict[str, dict]], labels: list[int]) -> str:
    """Markdown rows over every seed recorded for each k."""
    lines = ["| labeled images | seeds | supervised only | SemiVL | gain | SemiVL ahead |",
             "|---:|---|---:|---:|---:|---:|"]
    for k in labels:
        runs = results[str(k)]
        seeds = sorted(runs, key=int)
        sup = [runs[s]["supervised"] for s in seeds]
        pairs = [(runs[s]["supervised"], runs[s]["semivl"]) for s in seeds if "semivl" in runs[s]]
        gains = [b - a for a, b in pairs]
        ahead = f"{sum(g > 0 for g in gains)}/{len(gains)}" if gains else ""
        lines.append(f"| {k} | {' '.join(seeds)} | {cell(sup)} | {cell([b for _, b in pairs])} | "
                     f"{cell(gains, '+')} | {ahead} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--iters", type=int, default=0, help="iterations per run (0: the default run's)")
    parser.add_argument("--out", default=None, help="run folders (default: runs/semi_vs_supervised[_<tag>])")
    parser.add_argument("--tag", default="", help="results file suffix for a variant (e.g. no-guidance)")
    parser.add_argument("--supervised-only", action="store_true",
                        help="skip SemiVL (e.g. --labels 1000: the headroom that labels alone buy)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    args = parser.parse_args(argv)

    iters = args.iters or load_config(train.RECIPE).train.iters
    suffix = f"_{args.tag}" if args.tag else ""
    out_dir = Path(args.out or f"runs/semi_vs_supervised{suffix}")
    path = ROOT / "results" / f"semi_vs_supervised_{iters}it{suffix}.json"
    results = load_results(path)
    check_same_variant(results, args.labels, args.overrides)  # before hours of training, not after
    extra = [*args.overrides, *split_dir_for(args.labels, args.overrides, out_dir)]  # last: wins over a given split_dir
    modes = ("supervised",) if args.supervised_only else ("supervised", "semivl")
    revision = git_revision(ROOT)
    for k in args.labels:
        for seed in args.seeds:  # saved after every seed: an interrupted experiment keeps what it finished
            scores = {mode: run(mode, k, seed, iters, extra, out_dir) for mode in modes}
            results.setdefault(str(k), {})[str(seed)] = {**scores, "overrides": args.overrides, "commit": revision}
            save_results(path, iters, results)
    print(f"\nmIoU (%) on the synthetic world's validation set, {iters} iterations ({path}):\n"
          f"{table(results, args.labels)}")
    return {str(k): results[str(k)] for k in args.labels}


if __name__ == "__main__":
    main(sys.argv[1:])
