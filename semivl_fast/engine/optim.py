"""AdamW with SemiVL's parameter groups and the per-iteration poly learning-rate schedule."""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, lr: float, weight_decay: float, multipliers: dict[str, float]) -> list[dict]:
    """One group per top-level child (backbone, decoder, conv_encoder, ...); lr = base * multiplier[child].

    Only trainable parameters enter; weight decay applies to all of them (norms included, as the reference's head).
    Children without a multiplier train at the base lr.
    """
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(name.split(".", 1)[0], []).append(p)
    return [{"name": child, "params": params, "lr": lr * multipliers.get(child, 1.0), "weight_decay": weight_decay}
            for child, params in groups.items()]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float,
                    multipliers: dict[str, float]) -> torch.optim.AdamW:
    groups = param_groups(model, lr, weight_decay, multipliers)
    if not groups:
        raise ValueError("the model has no trainable parameters; check model.finetune")
    return adamw(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)


def adamw(groups: list[dict], **kwargs) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with its fused kernel (one pass per tensor, CPU and CUDA; same update rule) when every
    parameter is a floating-point tensor on one device type, else the plain per-tensor loop."""
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_floating_point() for p in params) and len({p.device.type for p in params}) == 1
    return torch.optim.AdamW(groups, fused=fused, **kwargs)


def poly_schedule(optimizer: torch.optim.Optimizer, total_iters: int,
                  power: float = 0.9) -> torch.optim.lr_scheduler.LambdaLR:
    """lr_g(it) = lr_g(0) * (1 - it / total_iters) ** power, stepped after every iteration, no warm-up."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: max(0.0, 1.0 - it / total_iters) ** power)


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
