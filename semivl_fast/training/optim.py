"""Optimisation shared by both trainers: AdamW parameter groups, the warm-up + poly schedule, one update step.

SemiVL groups by top-level child (backbone, decoder, conv_encoder) with a learning-rate multiplier each and weight
decay on every parameter, as the reference; ViL-Seg groups by child and by decay, with decay on weight matrices only
(CLIP's recipe) and a multiplier for the clustering head.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

DecayRule = Callable[[str, nn.Parameter], bool]


def decay_all(name: str, p: nn.Parameter) -> bool:
    """Weight decay on every parameter (the SemiVL reference, norms included)."""
    return True


def decay_matrices(name: str, p: nn.Parameter) -> bool:
    """Weight decay on weight matrices only: not on gains, biases, embeddings' scale, the logit scale or the
    clustering head (CLIP's recipe, ViL-Seg)."""
    return p.ndim >= 2 and "embedding" not in name and not name.startswith("head.")


def param_groups(model: nn.Module, lr: float, weight_decay: float, multipliers: dict[str, float] | None = None,
                 decay: DecayRule = decay_all) -> list[dict]:
    """Trainable parameters grouped by (top-level child, decay), in order of first appearance.

    A group's lr is ``lr * multipliers[child]`` (1 for children without one); its weight decay ``weight_decay``
    where ``decay(name, p)``, else 0.
    """
    multipliers = multipliers or {}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.split(".", 1)[0], decay(name, p)), []).append(p)
    return [{"name": child, "params": params, "lr": lr * multipliers.get(child, 1.0),
             "weight_decay": weight_decay if decays else 0.0} for (child, decays), params in groups.items()]


def adamw(groups: list[dict], **kwargs) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with its fused kernel (one pass per tensor, CPU and CUDA; same update rule) when every
    parameter is a floating-point tensor on one device type, else the plain per-tensor loop."""
    if not groups:
        raise ValueError("the model has no trainable parameters; check model.finetune")
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_floating_point() for p in params) and len({p.device.type for p in params}) == 1
    return torch.optim.AdamW(groups, fused=fused, **kwargs)


def warmup_poly(optimizer: torch.optim.Optimizer, total: int, power: float = 0.9,
                warmup: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule: linear warm-up over ``warmup`` iterations, then lr * (1 - t / T) ** power down to 0 at
    ``total`` (t, T counted after the warm-up; SemiVL uses no warm-up)."""
    def factor(it: int) -> float:
        if it < warmup:
            return (it + 1) / warmup
        return max(0.0, 1 - (it - warmup) / max(1, total - warmup)) ** power
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def update(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
           scaler: torch.amp.GradScaler | None, step: int) -> None:
    """One optimiser update from ``loss``: a clear error if it is not finite, then zero_grad, (scaled) backward,
    optimiser step and scheduler step."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()} at iteration {step}; lower train.lr or use amp=none")
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    scheduler.step()
