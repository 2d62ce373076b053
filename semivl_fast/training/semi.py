"""One SemiVL training step: UniMatch self-training (weak / two strong views with CutMix / feature perturbation)
plus dense CLIP guidance, with every loss through the fused op ``pseudo_label_loss``.

    L = (L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2 + lambda(t) (0.25 G_s1 + 0.25 G_s2 + 0.5 G_fp)

L_* are cross-entropies against the student's own weak-view pseudo-labels (confidence >= tau; no EMA teacher),
G_* against the frozen CLIP's zero-shot labels (softmax(100 s) >= 0.9, divided by all pixels); lambda decays
linearly. Without feature perturbation the strong views take its weight: (L_x + 0.5 L_s1 + 0.5 L_s2) / 2.

The student runs once per step on cat(x, w, s1, s2) with the FP branch on w only (the reference also perturbs the
labeled images and throws that away), at the decoder's resolution: the loss op upsamples on the fly.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from semivl_fast.ops import box_mask, pseudo_label_loss
from semivl_fast.training.config import TrainConfig
from semivl_fast.training.dist import all_reduce_sum, world_size


@dataclass
class UnlabeledBatch:
    img_w: Tensor  # (B, 3, S, S) weak view
    img_s1: Tensor  # strong views
    img_s2: Tensor
    ignore: Tensor  # (B, S, S) uint8, 1 = crop padding
    box1: Tensor  # (B, 4) CutMix boxes [y0, x0, y1, x1) for s1 / s2 (empty = no mix)
    box2: Tensor

    @classmethod
    def from_loader(cls, items: tuple | list, device: torch.device) -> UnlabeledBatch:
        return cls(*(t.to(device, non_blocking=True) for t in items[:6]))

    def rolled(self) -> UnlabeledBatch:
        """The batch shifted by one image: a CutMix partner without a second loader pass."""
        return UnlabeledBatch(*(t.roll(1, 0) for t in (self.img_w, self.img_s1, self.img_s2, self.ignore,
                                                       self.box1, self.box2)))


def guidance_weight(cfg: TrainConfig, progress: float) -> float:
    """lambda(t): linear from guidance_lambda[0] at the start to guidance_lambda[1] at the end."""
    start, end = cfg.guidance_lambda
    return start + (end - start) * min(max(progress, 0.0), 1.0)


def _global_mean(loss: Tensor, local_count: Tensor) -> Tensor:
    """Under DDP, rescale a per-process mean so that DDP's gradient averaging yields the mean over the global batch
    (each process divides by its own pixel count otherwise). A no-op in one process."""
    world = world_size()
    if world == 1:
        return loss
    total = all_reduce_sum(local_count.float().reshape(1)).clamp_min(1)
    return loss * (local_count.float() * world / total)


def _mixed_valid(u: UnlabeledBatch, partner: UnlabeledBatch, box: Tensor) -> Tensor:
    inside = box_mask(box, u.ignore.shape[-2:])
    return (torch.where(inside, partner.ignore, u.ignore) == 0).sum()


def cutmix(img: Tensor, partner: Tensor, box: Tensor) -> Tensor:
    """Paste ``partner`` into ``img`` inside each image's box."""
    return torch.where(box_mask(box, img.shape[-2:]).unsqueeze(1), partner, img)


def semi_step(model: nn.Module, raw_model: nn.Module, guidance: nn.Module | None, img_x: Tensor, mask_x: Tensor,
              u: UnlabeledBatch, other: UnlabeledBatch | None, cfg: TrainConfig, progress: float,
              autocast: contextlib.AbstractContextManager) -> tuple[Tensor, dict[str, Tensor]]:
    """Losses of one iteration; ``model`` may be DDP/compiled, ``raw_model`` is the plain module (teacher passes).

    ``other`` is the CutMix partner batch (a second pass over the unlabeled loader); None in ``roll`` mode.
    Returns the total loss and detached logs.
    """
    size = tuple(img_x.shape[-2:])
    bx, bu = img_x.shape[0], u.img_w.shape[0]
    roll = other is None
    partner = u.rolled() if roll else other
    lam = guidance_weight(cfg, progress) if cfg.guidance and guidance is not None else 0.0

    with torch.no_grad(), autocast:
        pred_o = None
        if not roll:  # the partner's pseudo-labels come from the student in eval mode, as the reference
            raw_model.eval()
            pred_o = raw_model(partner.img_w, upsample=False).float()
            raw_model.train()
        clip_w = clip_o = None
        if lam > 0:
            clip = guidance(torch.cat([u.img_w, partner.img_w]) if not roll else u.img_w).float()
            clip_w, clip_o = clip.split([bu, clip.shape[0] - bu]) if not roll else (clip, clip.roll(1, 0))

    img_s1 = cutmix(u.img_s1, partner.img_s1, u.box1)
    img_s2 = cutmix(u.img_s2, partner.img_s2, u.box2)
    images = torch.cat([img_x, u.img_w, img_s1, img_s2])
    with autocast:
        out = model(images, need_fp=cfg.use_fp, upsample=False, fp_images=slice(bx, bx + bu))
    preds, preds_fp = out if cfg.use_fp else (out, None)
    pred_x, pred_w, pred_s1, pred_s2 = preds.split([bx, bu, bu, bu])
    teacher_w = pred_w.detach().float()
    teacher_o = teacher_w.roll(1, 0) if roll else pred_o

    loss_x, _ = pseudo_label_loss(pred_x, size, target=mask_x, mode="none")
    loss_x = _global_mean(loss_x, (mask_x != 255).sum())
    pl = {"threshold": cfg.conf_thresh, "mode": cfg.conf_mode}
    losses, stats = {"x": loss_x}, {}
    for name, pred, box in (("s1", pred_s1, u.box1), ("s2", pred_s2, u.box2)):
        loss, stats[name] = pseudo_label_loss(pred, size, teacher=teacher_w, teacher_mix=teacher_o, boxes=box,
                                              ignore=u.ignore, ignore_mix=partner.ignore, **pl)
        losses[name] = _global_mean(loss, _mixed_valid(u, partner, box))
    if cfg.use_fp:
        loss, stats["fp"] = pseudo_label_loss(preds_fp, size, teacher=teacher_w, ignore=u.ignore, **pl)
        losses["fp"] = _global_mean(loss, (u.ignore == 0).sum())
        total = (losses["x"] + 0.25 * losses["s1"] + 0.25 * losses["s2"] + 0.5 * losses["fp"]) / 2
    else:
        total = (losses["x"] + 0.5 * losses["s1"] + 0.5 * losses["s2"]) / 2

    if lam > 0:  # dense CLIP guidance: divided by all pixels ("all"), so no DDP rescaling is needed
        g = {"threshold": cfg.guidance_thresh, "scale": cfg.guidance_scale, "mode": "threshold", "reduction": "all"}
        g_s1, stats["clip"] = pseudo_label_loss(pred_s1, size, teacher=clip_w, teacher_mix=clip_o, boxes=u.box1,
                                                ignore=u.ignore, ignore_mix=partner.ignore, **g)
        g_s2, _ = pseudo_label_loss(pred_s2, size, teacher=clip_w, teacher_mix=clip_o, boxes=u.box2,
                                    ignore=u.ignore, ignore_mix=partner.ignore, **g)
        if cfg.use_fp:
            g_fp, _ = pseudo_label_loss(preds_fp, size, teacher=clip_w, ignore=u.ignore, **g)
            guide = 0.25 * g_s1 + 0.25 * g_s2 + 0.5 * g_fp
        else:
            guide = 0.5 * g_s1 + 0.5 * g_s2
        losses["clip"] = guide
        total = total + lam * guide

    weak = stats["fp"] if cfg.use_fp else stats["s1"]
    logs = {f"loss_{k}": v.detach() for k, v in losses.items()}
    logs.update(loss=total.detach(), accepted=weak[0], confidence=weak[1], guidance_lambda=torch.tensor(lam))
    if "clip" in stats:
        logs["clip_accepted"] = stats["clip"][0]
    return total, logs


def supervised_step(model: nn.Module, img_x: Tensor, mask_x: Tensor,
                    autocast: contextlib.AbstractContextManager) -> tuple[Tensor, dict[str, Tensor]]:
    """The supervised-only baseline: cross-entropy on the labeled images."""
    with autocast:
        pred = model(img_x, upsample=False)
    loss, _ = pseudo_label_loss(pred, tuple(img_x.shape[-2:]), target=mask_x, mode="none")
    loss = _global_mean(loss, (mask_x != 255).sum())
    return loss, {"loss": loss.detach(), "loss_x": loss.detach()}
