"""Data for a run: resolve the dataset (generating the synthetic world when asked), reproducible loaders.

Augmentations are seeded per sample from (seed, epoch, index), so the same sample gets the same views whatever the
worker, process count or resume point; the order of an epoch is a permutation seeded by (seed, epoch) and sharded
over processes like ``DistributedSampler``. One process with a global batch of 2B and two processes with B each
therefore see identical data.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from semivl_fast.data import SemiDataset, SemiDatasets, build_datasets, generate_world, get_spec, split_path
from semivl_fast.text import ClassSet, load_class_set
from semivl_fast.training.config import DataConfig


@dataclass
class RunData:
    datasets: SemiDatasets
    class_set: ClassSet
    root: Path


def resolve_data(cfg: DataConfig, generate: bool = True) -> tuple[Path, Path]:
    """(data root, split dir) of ``cfg``; the synthetic world is generated (or reused from the cache) here."""
    if cfg.dataset == "synthetic":
        world = generate_world(cfg.root or None, seed=cfg.seed, num_train=cfg.world_train, num_val=cfg.world_val,
                               size=cfg.world_size) if generate else None
        root = world.root if world else Path(cfg.root)
        return root, Path(cfg.split_dir) if cfg.split_dir else root / "splits"
    if not cfg.root:
        raise ValueError(f"set data.root to the {cfg.dataset} dataset folder (and data.split_dir to the folder "
                         "holding the split lists) on the command line or in the config")
    root = Path(cfg.root).expanduser()
    return root, Path(cfg.split_dir).expanduser() if cfg.split_dir else root / "splits"


def class_set_for(classes: str, dataset: str, root: Path) -> ClassSet:
    """The class set named by a model config; ``"dataset"`` (or the dataset's name) means the dataset's own classes."""
    if classes in ("dataset", dataset):
        return load_class_set(get_spec(dataset).class_set_source(root))
    return load_class_set(classes)


def prepare_data(cfg: DataConfig, classes: str) -> RunData:
    root, split_dir = resolve_data(cfg)
    datasets = build_datasets(cfg.dataset, root, cfg.split, split_dir, cfg.crop_size, normalization=cfg.norm)
    return RunData(datasets, class_set_for(classes, cfg.dataset, root), root)


def build_val_dataset(cfg: DataConfig) -> Dataset:
    """The validation set of ``cfg`` (the synthetic world is regenerated from its seed if the cache is gone)."""
    root, split_dir = resolve_data(cfg)
    return build_datasets(cfg.dataset, root, cfg.split, split_dir, cfg.crop_size, normalization=cfg.norm).val


def val_dataset(cfg: DataConfig, classes: str = "dataset") -> tuple[SemiDataset, ClassSet]:
    """(validation set, class set) of ``cfg`` needing only ``val.txt`` (no training split lists), as zero-shot
    evaluation does; the synthetic world is generated if missing. ``classes="dataset"``: the dataset's own."""
    root, split_dir = resolve_data(cfg)
    spec = get_spec(cfg.dataset)
    val = SemiDataset(spec, root, split_path(split_dir, spec, None, "val"), "val", crop_size=cfg.crop_size,
                      normalization=cfg.norm)
    return val, class_set_for(classes, cfg.dataset, root)


class SeededSamples(Dataset):
    """Wraps a dataset so that each item's random augmentation is seeded by (seed, epoch, index).

    The global random states of Python, NumPy and torch are restored afterwards, so data loading never changes the
    model's random stream.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int):
        seed = (self.seed * 1_000_003 + self.epoch) * 10_000_019 + index
        py, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py)
                np.random.set_state(np_state)


class EpochSampler(Sampler[int]):
    """Seeded per-epoch permutation, sharded over processes, with a start offset for exact mid-epoch resume."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True) -> None:
        self.size, self.seed, self.rank, self.world, self.shuffle = size, seed, rank, world, shuffle
        self.epoch, self.start = 0, 0
        self.per_rank = size // world  # drop the tail so every process gets the same number

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """``start``: skip this many of this process's samples (resume inside an epoch)."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.per_rank - self.start

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g)
        else:
            order = torch.arange(self.size)
        mine = order[: self.per_rank * self.world][self.rank::self.world]
        return iter(mine[self.start:].tolist())


def make_loader(dataset: Dataset, batch_size: int, seed: int, rank: int, world: int, workers: int,
                shuffle: bool = True, aug_seed: int | None = None) -> DataLoader:
    """A loader over ``SeededSamples(dataset)`` with an ``EpochSampler``; call ``set_epoch(loader, e, start)``.

    ``seed`` orders the epochs; ``aug_seed`` (default ``seed``) seeds the augmentations, so two loaders can visit
    the same images in the same order with independent random views (the reference's CutMix partner)."""
    data = SeededSamples(dataset, seed if aug_seed is None else aug_seed)
    sampler = EpochSampler(len(data), seed, rank, world, shuffle)
    # its own generator: creating an iterator must not consume the global RNG (exact resume, FP dropout masks)
    return DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False,
                      generator=torch.Generator().manual_seed(seed))


def set_epoch(loader: DataLoader, epoch: int, start_batch: int = 0) -> None:
    loader.dataset.set_epoch(epoch)
    loader.sampler.set_epoch(epoch, start_batch * loader.batch_size)
