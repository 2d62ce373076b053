"""Data: dataset specs, split files, UniMatch/SemiVL augmentations, the torch datasets and the synthetic world.

Names are imported lazily (on first use), so ``python -m semivl_fast.data.splits`` and ``... .synthetic`` run their
own module cleanly.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "datasets": ("MODES", "SemiDataset", "SemiDatasets", "build_datasets"),
    "specs": ("IGNORE_INDEX", "SPECS", "DatasetSpec", "get_spec"),
    "splits": ("check_splits", "derive_unlabeled", "generate_split", "num_labeled", "read_split", "resolve_split",
               "scan_pairs", "split_path", "unlabeled_pairs", "write_split", "write_splits"),
    "synthetic": ("SyntheticWorld", "default_world_dir", "generate_world", "parse_caption", "render_scene",
                  "synthetic_class_set"),
    "transforms": ("CLIP_MEAN", "CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD", "NORMALIZATIONS", "imagenet_to_clip"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
