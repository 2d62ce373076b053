"""The VLM prior of the default SemiVL run: the tiny CLIP pretrained with ViL-Seg on the synthetic world's captions.

``ensure_synthetic_prior()`` returns the cached ``clip.safetensors`` (an open_clip state dict of ``semivl-tiny``),
pretraining it once if it is missing: ``python -m semivl_fast.pretrain`` with ``configs/vilseg_synthetic.yaml``, in a
subprocess, into a temporary folder that is renamed into place (a file lock makes concurrent callers, e.g. DDP
ranks, wait for one pretraining). The cache key hashes the resolved pretraining config, so editing the recipe makes
a new prior. Location: ``$SEMIVL_FAST_CACHE/vilseg/synthetic-<key>/`` (default ``~/.cache/semivl_fast``); the
folder is a complete pretraining run (``vilseg.safetensors`` for zero-shot use, ``train.log``, ``config.yaml``).

``model.pretrained: vilseg:synthetic`` in a SemiVL config names it; ``create_clip`` resolves the name through
``resolve_pretrained``. The same file by hand::

    python -m semivl_fast.pretrain train.out_dir=runs/prior      # then model.pretrained=runs/prior/clip.safetensors
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from semivl_fast.engine.precision import resolve_amp
from semivl_fast.vilseg.checkpoint import CLIP_WEIGHTS
from semivl_fast.vilseg.config import default_pretrain_config, load_pretrain_config, to_dict

PREFIX = "vilseg:"
PRIORS = ("synthetic",)
PRIOR_VERSION = 2  # bump when the pretraining code changes what a config produces
_NOT_WEIGHTS = {"train": ("out_dir", "resume", "tensorboard", "progress", "log_every", "save_every", "compile"),
                "eval": None, "data": ("num_workers",)}
_DIST_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "TORCHELASTIC_RUN_ID", "GROUP_RANK", "ROLE_RANK")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` or ``$SEMIVL_FAST_CACHE/vilseg`` (default ``~/.cache/semivl_fast/vilseg``)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from semivl_fast.text import default_cache_dir

    return default_cache_dir().parent / "vilseg"


def prior_key(config: str | os.PathLike | None = None, overrides: list[str] | None = None) -> str:
    """Hash of everything that determines the prior's weights (config without paths/logging, code and world version)."""
    from semivl_fast.data.synthetic import WORLD_VERSION

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
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX: no locking
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_synthetic_prior(cache_dir: str | os.PathLike | None = None, config: str | os.PathLike | None = None,
                           overrides: list[str] | None = None, quiet: bool = False) -> Path:
    """Path of the cached synthetic-world CLIP prior (``clip.safetensors``), pretraining it first if missing.

    ``config`` / ``overrides`` change the recipe (default ``configs/vilseg_synthetic.yaml``); each recipe gets its own
    cache entry. ``quiet`` hides the pretraining log (it is kept in the run folder's ``train.log``).
    """
    final = prior_dir(cache_dir, config, overrides)
    target = final / CLIP_WEIGHTS
    if target.is_file():
        return target
    with _file_lock(final.with_name(f".{final.name}.lock")):
        if target.is_file():  # another process made it while we waited
            return target
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [sys.executable, "-m", "semivl_fast.pretrain", "--config", str(config or default_pretrain_config()),
               *(overrides or []), f"train.out_dir={tmp}", "train.progress=false", "train.resume="]
        env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}  # one plain process, even under torchrun
        print(f"semivl_fast: pretraining the ViL-Seg prior once (cached in {final}): {' '.join(cmd[1:])}",
              flush=True)
        t0 = time.time()
        out = subprocess.DEVNULL if quiet else None
        result = subprocess.run(cmd, env=env, stdout=out, stderr=out, check=False)
        if result.returncode != 0 or not (tmp / CLIP_WEIGHTS).is_file():
            raise RuntimeError(f"pretraining the ViL-Seg prior failed (exit code {result.returncode}); see "
                               f"{tmp / 'train.log'} or run: python {' '.join(cmd[1:])}")
        if final.exists():  # an incomplete leftover (no clip file): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
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
