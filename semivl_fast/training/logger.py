"""Run logging on rank 0: progress bar on a terminal (log lines otherwise), a log file, TensorBoard scalars/images."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import semivl_fast
from semivl_fast.ops import active_backends
from semivl_fast.training.dist import is_main

LOG = logging.getLogger("semivl_fast")


def setup_logging(out_dir: str | Path | None = None, stream: Any = None) -> None:
    """Log lines to ``stream`` (default stdout; rank 0) and to ``out_dir/train.log``."""
    LOG.setLevel(logging.INFO if is_main() else logging.WARNING)
    LOG.handlers.clear()
    LOG.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(stream or sys.stdout)
    stream.setFormatter(fmt)
    LOG.addHandler(stream)
    if out_dir is not None and is_main():
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(Path(out_dir) / "train.log")
        file.setFormatter(fmt)
        LOG.addHandler(file)


def git_revision(path: str | Path | None = None) -> str:
    """Short commit of the checkout holding ``path`` (default: this package); "not a git checkout" or "unknown"."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=path or Path(semivl_fast.__file__).parent).stdout.strip() or "not a git checkout"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def log_environment(device: torch.device) -> None:
    """One line each, once at the start of a run: code revision, versions and build, the face every op runs."""
    sha = git_revision()
    info = semivl_fast.build_info()
    LOG.info(f"semivl_fast {semivl_fast.__version__} ({sha}); torch {info['torch']} (CUDA {info['torch_cuda']}), "
             f"triton {info['triton']}; kernels: C++ {info['cpu_kernels']} "
             f"({info['cpu_kernel_threads']} threads), CUDA {info['cuda_kernels']}"
             + (f" (sm {info['cuda_archs']})" if info["cuda_archs"] else ""))
    LOG.info("ops on " + str(device) + ": " + ", ".join(f"{op} -> {face}"
                                                         for op, face in active_backends(device).items()))


class RunLogger:
    """Scalars and images to TensorBoard (if installed and enabled) and a progress bar / periodic log lines."""

    def __init__(self, out_dir: str | Path, total: int, tensorboard: bool = True, progress: bool = True,
                 desc: str = "train") -> None:
        self.main = is_main()
        self.writer = None
        if self.main and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # lazy: tensorboard is optional and slow to import

                self.writer = SummaryWriter(str(Path(out_dir) / "tb"))
            except ImportError:  # tensorboard not installed: scalars still go to the log
                LOG.warning("tensorboard is not installed: scalars go to the log only")
        self._last_step, self._last_time = 0, time.time()  # for the iteration rate of the log lines
        self.bar = None
        if self.main and progress and sys.stderr.isatty():
            self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True)

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def image(self, step: int, tag: str, image: torch.Tensor) -> None:
        """(3, H, W) uint8 or float in [0, 1]."""
        if self.writer is not None:
            self.writer.add_image(tag, image, step)

    def advance(self, n: int = 1, **postfix: Any) -> None:
        """Move the bar by ``n`` iterations done elsewhere (e.g. before a resume)."""
        self._last_step += n
        self._bar(n, **postfix)

    def _bar(self, n: int, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in postfix.items()},
                                     refresh=False)

    def iteration(self, step: int, total: int, logs: dict[str, Any], lr: float, every: int) -> None:
        """After iteration ``step``: advance the bar; every ``every`` steps (and at the end) log the scalars (and lr)
        to TensorBoard and as a line with the iteration rate since the last line."""
        self._bar(1, loss=float(logs["loss"]))
        if step % every and step != total:
            return
        scalars = {k: float(v) for k, v in logs.items()} | {"lr": lr}
        self.scalars(step, scalars)
        now = time.time()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        self.line(f"iter {step}/{total} " + " ".join(f"{k} {v:.4g}" for k, v in scalars.items()) +
                  f" | {rate:.2f} it/s")

    def line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            LOG.info(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
