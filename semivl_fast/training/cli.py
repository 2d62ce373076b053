"""The command-line skeleton every entry point (train, pretrain, evaluate, predict) shares: parse, config, logging,
seed."""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from semivl_fast.training import dist
from semivl_fast.training.checkpoint import load_resumable
from semivl_fast.training.config import build, deep_update, load, parse_overrides, to_dict
from semivl_fast.training.logger import setup_logging

C = TypeVar("C")
R = TypeVar("R")


def make_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose help starts with the entry point's docstring (its usage examples)."""
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_overrides(parser: argparse.ArgumentParser, example: str) -> None:
    """Positional ``section.key=value`` config overrides."""
    parser.add_argument("overrides", nargs="*", help=f"dotted config overrides, e.g. {example}")


def add_run_args(parser: argparse.ArgumentParser, recipe: str, example: str) -> None:
    """``--config``, ``--resume`` and the overrides of a training run."""
    parser.add_argument("--config", help=f"a YAML config file or a recipe name such as voc/92 (default: {recipe}, "
                        "the built-in default run)")
    parser.add_argument("--resume", help="a run directory or last.pt to continue (its saved config is reused)")
    add_overrides(parser, example)


def run_config(args: argparse.Namespace, schema: type[C], recipe: str) -> tuple[C, bool]:
    """A training run's config and whether it resumes: the checkpoint's saved config when resuming (``--resume`` or
    ``train.resume``), else ``--config`` (default ``recipe``); the command line's overrides on top."""
    resume = args.resume
    if resume:
        cfg = build(schema, deep_update(load_resumable(resume)["config"], parse_overrides(args.overrides)))
    else:
        cfg = load(schema, args.config or recipe, args.overrides)
        resume = cfg.train.resume
    if resume:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume=str(resume)))
    return cfg, bool(resume)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def launch(run: Callable[[int, int, torch.device], R], out_dir: str | Path) -> R:
    """Join the process group when started by torchrun, log to stdout and ``out_dir/train.log``, call
    ``run(rank, world, device)``, leave the group."""
    rank, world, device = dist.init_distributed()
    setup_logging(out_dir)
    try:
        return run(rank, world, device)
    finally:
        dist.cleanup()


def start_tool(seed: int = 0) -> None:
    """Set-up of the tools that read a trained model (evaluate, predict): log lines on stderr (stdout carries the
    result), seeded generators."""
    setup_logging(stream=sys.stderr)
    seed_everything(seed)


def with_overrides(cfg: C, overrides: list[str]) -> C:
    """``cfg`` with dotted ``overrides`` applied (and validated)."""
    return build(type(cfg), deep_update(to_dict(cfg), parse_overrides(overrides)))
