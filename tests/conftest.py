"""Test set-up: Triton interpreter on machines without a GPU, offline hubs, seeds, poisoned kernel outputs."""

import os

import torch

# Must happen before anything imports semivl_fast.kernels: Triton reads it when @triton.jit decorates.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest

from semivl_fast.ops import _common


@pytest.fixture(autouse=True)
def _seed_and_poison():
    """Every test starts from the same seed, and kernels write into poisoned buffers (unwritten = caught)."""
    torch.manual_seed(0)
    previous = _common.set_poison(True)
    yield
    _common.set_poison(previous)


@pytest.fixture(scope="session")
def tiny_clip_file(tmp_path_factory):
    """(model name, path) of a randomly initialised tiny open_clip model saved as safetensors."""
    from semivl_fast.clip import create_clip, save_clip_checkpoint

    torch.manual_seed(1234)
    model = create_clip("semivl-tiny")
    path = tmp_path_factory.mktemp("clip") / "semivl-tiny.safetensors"
    save_clip_checkpoint(model, path)
    return "semivl-tiny", str(path)
