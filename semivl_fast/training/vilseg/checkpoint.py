"""ViL-Seg checkpoints: the resumable train state (``last.pt``), the full model (``vilseg.safetensors``: CLIP +
clustering head, config in the metadata) and the CLIP alone as an open_clip state dict (``clip.safetensors``, loadable
with ``create_clip(name, pretrained=path)``, e.g. as SemiVL's VLM initialisation)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from semivl_fast.clip import save_clip_checkpoint
from semivl_fast.files import atomic_write
from semivl_fast.training.checkpoint import TRAIN_STATE, load_resumable, save_resumable
from semivl_fast.training.config import to_dict
from semivl_fast.training.vilseg.config import PretrainConfig, from_dict
from semivl_fast.vilseg.model import ViLSeg, build_vilseg

VILSEG_WEIGHTS = "vilseg.safetensors"
CLIP_WEIGHTS = "clip.safetensors"


def save_state(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
               scaler: Any, step: int, cfg: PretrainConfig, extra: dict[str, Any] | None = None) -> None:
    """Everything needed to resume (tensors and plain values only: loads with ``weights_only=True``), atomically."""
    save_resumable(path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, step=step,
                   config=to_dict(cfg), extra=extra)


def load_state(path: str | Path) -> dict[str, Any]:
    """A ``last.pt`` (or a run directory holding one)."""
    return load_resumable(path, "ViL-Seg checkpoint")


def export_vilseg(out_dir: str | Path, model: nn.Module, cfg: PretrainConfig,
                  metrics: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``vilseg.safetensors`` (whole model) and ``clip.safetensors`` (open_clip state dict) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": "semivl_fast.vilseg/1", "config": json.dumps(to_dict(cfg)), "metrics": json.dumps(metrics or {})}
    atomic_write(out_dir / VILSEG_WEIGHTS, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    save_clip_checkpoint(model.clip, out_dir / CLIP_WEIGHTS)
    return out_dir / VILSEG_WEIGHTS, out_dir / CLIP_WEIGHTS


def resolve_checkpoint(path: str | Path) -> Path:
    """``vilseg.safetensors`` or ``last.pt`` itself, or the one inside a run directory."""
    path = Path(path)
    if path.is_dir():
        for name in (VILSEG_WEIGHTS, TRAIN_STATE):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path} holds no {VILSEG_WEIGHTS} or {TRAIN_STATE}; is it a ViL-Seg pretraining run?")
    if not path.is_file():
        raise FileNotFoundError(f"no ViL-Seg checkpoint at {path}")
    return path


def load_vilseg(path: str | Path, device: str | torch.device = "cpu") -> tuple[ViLSeg, PretrainConfig]:
    """Rebuild a pretrained ViL-Seg (eval mode) from a run directory, ``vilseg.safetensors`` or ``last.pt``."""
    path = resolve_checkpoint(path)
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if "config" not in meta:
                raise ValueError(f"{path} is not a ViL-Seg checkpoint (no config in its metadata); for a plain CLIP "
                                 "file use the MaskCLIP baseline (--method maskclip --clip-model NAME --pretrained)")
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        cfg = from_dict(json.loads(meta["config"]))
    else:
        ckpt = load_state(path)
        cfg, state = from_dict(ckpt["config"]), ckpt["model"]
    model = build_vilseg(dataclasses.replace(cfg.model, pretrained=None))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), cfg
