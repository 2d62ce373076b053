"""Checkpoints: the resumable train state (atomic ``torch.save``) and the exported weights (safetensors).

``last.pt`` holds tensors and plain Python values only, so it loads with ``torch.load(weights_only=True)``:
model, optimizer, scheduler, grad scaler, RNG states (Python, NumPy, torch, CUDA), step, the resolved config and
the class texts. ``model.safetensors`` holds the model weights plus the class text embeddings, with the config in
its metadata: everything ``load_trained_model`` needs to rebuild the network without the training code.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from semivl_fast.files import atomic_write
from semivl_fast.models.semivl import SemiVL, build_semivl
from semivl_fast.text import TextEmbeddings
from semivl_fast.training.config import Config, from_dict, to_dict

TRAIN_STATE = "last.pt"
WEIGHTS = "model.safetensors"


def text_state(text: TextEmbeddings) -> dict[str, Any]:
    return {"embeddings": text.embeddings.cpu(), "groups": text.groups.cpu(), "num_classes": text.num_classes,
            "mode": text.mode, "texts": list(text.texts), "classes": list(text.classes)}


def text_from_state(state: dict[str, Any]) -> TextEmbeddings:
    return TextEmbeddings(state["embeddings"].float(), state["groups"].long(), int(state["num_classes"]),
                          state["mode"], tuple(state["texts"]), classes=tuple(state.get("classes", ())))


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_train_state(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                     scaler: Any, step: int, epoch: int, cfg: Config, text: TextEmbeddings,
                     extra: dict[str, Any] | None = None) -> None:
    """Write everything needed to resume, atomically (temp file + rename: a crash never leaves half a file)."""
    save_resumable(path, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler, step=step,
                   config=to_dict(cfg), extra=extra, epoch=int(epoch), text=text_state(text))


def save_resumable(path: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                   scaler: Any, step: int, config: dict, extra: dict[str, Any] | None = None, **fields: Any) -> None:
    """The resumable state every trainer writes (model, optimizer, scheduler, grad scaler, step, config, RNG states,
    plus ``fields``), atomically; tensors and plain values only, so it loads with ``weights_only=True``."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict() if scaler is not None else None, "step": int(step), "config": config,
             "rng": rng_state(), "extra": extra or {}, **fields}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_resumable(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """A ``last.pt`` written by ``save_resumable`` (a run directory resolves to its ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        path = path / TRAIN_STATE
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}; give a last.pt file or a run directory that has one")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_train_state(path: str | Path) -> dict[str, Any]:
    """The dict written by ``save_train_state`` (a run directory resolves to its ``last.pt``)."""
    return load_resumable(path)


def export_weights(path: str | Path, model: nn.Module, cfg: Config, text: TextEmbeddings,
                   metrics: dict[str, Any] | None = None) -> None:
    """Model weights + class texts as safetensors; config, class names and metrics in the metadata."""
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tensors["text.embeddings"] = text.embeddings.contiguous().cpu()
    tensors["text.groups"] = text.groups.contiguous().cpu()
    meta = {"config": json.dumps(to_dict(cfg)), "text_mode": text.mode, "num_classes": str(text.num_classes),
            "texts": json.dumps(list(text.texts)), "classes": json.dumps(list(text.classes)),
            "metrics": json.dumps(metrics or {})}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def _read_weights(path: Path) -> tuple[Config, dict[str, torch.Tensor], TextEmbeddings]:
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        text = TextEmbeddings(tensors.pop("text.embeddings").float(), tensors.pop("text.groups").long(),
                              int(meta["num_classes"]), meta["text_mode"], tuple(json.loads(meta["texts"])),
                              classes=tuple(json.loads(meta.get("classes", "[]"))))
        state = {k[len("model."):]: v for k, v in tensors.items()}
        return from_dict(json.loads(meta["config"])), state, text
    ckpt = load_train_state(path)
    return from_dict(ckpt["config"]), ckpt["model"], text_from_state(ckpt["text"])


def load_trained_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[SemiVL, Config]:
    """Rebuild a trained SemiVL from ``model.safetensors``, ``last.pt`` or a run directory; eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS if (path / WEIGHTS).is_file() else path / TRAIN_STATE
    if not path.is_file():
        raise FileNotFoundError(f"no trained model at {path}; give model.safetensors, last.pt or a run directory")
    cfg, state, text = _read_weights(path)
    model_cfg = dataclasses.replace(cfg.model, pretrained=None, conv_encoder_pretrained=None)  # weights: the file
    model = build_semivl(model_cfg, text=text)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), cfg
