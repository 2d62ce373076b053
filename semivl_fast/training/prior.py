"""The VLM prior of the default SemiVL run: the tiny CLIP pretrained with ViL-Seg on the synthetic world's captions.

``ensure_synthetic_prior()`` returns the cached ``clip.safetensors`` (an open_clip state dict of ``semivl-tiny``),
pretraining it once if it is missing: ``python -m semivl_fast.pretrain`` with the recipe ``vilseg_synthetic``, in a
subprocess, into a temporary folder that is renamed into place (a file lock makes concurrent callers, e.g. DDP
ranks, wait for one pretraining). The cache key hashes the resolved pretraining config, so editing the recipe makes
a new prior. Location: ``$SEMIVL_FAST_CACHE/vilseg/synthetic-<key>/`` (default ``~/.cache/semivl_fast``); the
folder is a complete pretraining run (``vilseg.safetensors`` for zero-shot use, ``train.log``, ``config.yaml``).

``model.pretrained: vilseg:synthetic`` in a SemiVL config names it; the trainer turns the name into the file with
``resolve_pretrained`` before it builds a model (the library's ``create_clip`` takes only tags and files). The same
file by hand::

    python -m semivl_fast.pretrain train.out_dir=runs/prior      # then model.pretrained=runs/prior/clip.safetensors
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TypeVar

import torch

from semivl_fast import files
from semivl_fast.data.synthetic import WORLD_VERSION
from semivl_fast.training.config import to_dict
from semivl_fast.training.precision import resolve_amp
from semivl_fast.training.vilseg.checkpoint import CLIP_WEIGHTS
from semivl_fast.training.vilseg.config import default_pretrain_config, load_pretrain_config

PREFIX = "vilseg:"
PRIORS = ("synthetic",)
PRIOR_VERSION = 2  # bump when the pretraining code changes what a config produces
_NOT_WEIGHTS = {"train": ("out_dir", "resume", "tensorboard", "progress", "log_every", "save_every", "compile"),
                "eval": None, "data": ("num_workers",)}
_DIST_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "TORCHELASTIC_RUN_ID", "GROUP_RANK", "ROLE_RANK")


def cache_root(folder: str | os.PathLike | None = None) -> Path:
    """``folder`` or ``$SEMIVL_FAST_CACHE/vilseg`` (default ``~/.cache/semivl_fast/vilseg``)."""
    return Path(folder).expanduser() if folder is not None else files.cache_dir("vilseg")


def prior_key(config: str | os.PathLike | None = None, overrides: list[str] | None = None) -> str:
    """Hash of everything that determines the prior's weights (config without paths/logging, code and world version)."""
    data = to_dict(load_pretrain_config(config or default_pretrain_config(), overrides))
    # train.amp=auto is bf16 or fp32 depending on the machine: the key holds what it means here
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data["train"]["amp"] = resolve_amp(data["train"]["amp"], device)
    for section, keys in _NOT_WEIGHTS.items():
        if keys is None:
            data.pop(section, None)
        else:
            for k in keys:
                data[section].pop(k, None)
    blob = json.dumps({"config": data, "prior": PRIOR_VERSION, "world": WORLD_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prior_dir(cache_dir: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
              overrides: list[str] | None = None) -> Path:
    """The run folder of the synthetic prior for this config (it may not exist yet)."""
    return cache_root(cache_dir) / f"synthetic-{prior_key(config, overrides)}"


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_synthetic_prior(cache_dir: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
                           overrides: list[str] | None = None, quiet: bool = False) -> Path:
    """Path of the cached synthetic-world CLIP prior (``clip.safetensors``), pretraining it first if missing.

    ``config`` / ``overrides`` change the recipe (default: the recipe ``vilseg_synthetic``); each recipe gets its own
    cache entry. ``quiet`` hides the pretraining log (it is kept in the run folder's ``train.log``).
    """
    final = prior_dir(cache_dir, config, overrides)
    target = final / CLIP_WEIGHTS
    if target.is_file():
        return target
    with _file_lock(final.with_name(f".{final.name}.lock")):
        if target.is_file():  # another process made it while we waited
            return target
        cmd = [sys.executable, "-m", "semivl_fast.pretrain", "--config", str(config or default_pretrain_config()),
               *(overrides or []), "train.progress=false", "train.resume="]
        env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}  # one plain process, even under torchrun
        print(f"semivl_fast: pretraining the ViL-Seg prior once (cached in {final}): {' '.join(cmd[1:])}",
              flush=True)
        t0 = time.time()
        out = subprocess.DEVNULL if quiet else None
        failed_log = final.with_name(f".{final.name}.failed.log")

        def pretrain(tmp: Path) -> None:
            result = subprocess.run([*cmd, f"train.out_dir={tmp}"], env=env, stdout=out, stderr=out, check=False)
            if result.returncode != 0 or not (tmp / CLIP_WEIGHTS).is_file():
                if (tmp / "train.log").is_file():
                    shutil.copyfile(tmp / "train.log", failed_log)
                raise RuntimeError(f"pretraining the ViL-Seg prior failed (exit code {result.returncode}); see "
                                   f"{failed_log} or run: python {' '.join(cmd[1:])}")

        if final.exists():  # an incomplete leftover (no clip file): replace it
            shutil.rmtree(final)
        files.atomic_write(final, pretrain)
        print(f"semivl_fast: ViL-Seg prior ready in {time.time() - t0:.0f} s: {target}", flush=True)
    return target


def resolve_pretrained(name: str | None) -> str | None:
    """``vilseg:<prior>`` -> the prior's file (made on first use); any other value unchanged."""
    if not name or not str(name).startswith(PREFIX):
        return name
    prior = str(name)[len(PREFIX):]
    if prior != "synthetic":
        raise ValueError(f"unknown ViL-Seg prior {name!r}; known: {', '.join(PREFIX + p for p in PRIORS)} (or give "
                         "the path of a pretrained clip.safetensors)")
    return str(ensure_synthetic_prior())


C = TypeVar("C")


def resolve_model_config(cfg: C) -> C:
    """A model config (anything with a ``pretrained`` field) with a ``vilseg:<prior>`` name replaced by its file."""
    return dataclasses.replace(cfg, pretrained=resolve_pretrained(cfg.pretrained))
