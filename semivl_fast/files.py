"""Where and how the package writes files: the cache folder and atomic writes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """``$SEMIVL_FAST_CACHE/<kind>`` (default ``$XDG_CACHE_HOME/semivl_fast/<kind>``, i.e. ``~/.cache/...``)."""
    root = os.environ.get("SEMIVL_FAST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "semivl_fast")
    return Path(root).expanduser() / kind


def temp_path(path: str | os.PathLike) -> Path:
    """The temporary name ``atomic_write`` gives ``path`` while writing: ``.<name>.<pid>.tmp`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Write ``path`` through ``write(tmp)`` into a temporary file (or folder) beside it, then rename it into place.

    A crash or an error never leaves a half-written ``path``: the temporary is removed and the old ``path``, if any,
    stays as it was. Parent folders are created. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
    return path
