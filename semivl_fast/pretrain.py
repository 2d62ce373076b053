"""Pretrain ViL-Seg on image-caption pairs (no masks): cross-modal + vision-based contrast + IIC clustering.

    python -m semivl_fast.pretrain                                   # the synthetic world's captions (the VLM prior)
    python -m semivl_fast.pretrain data.source=/data/cc/captions.tsv model.clip_model=ViT-B-16 model.pretrained=openai
    python -m semivl_fast.pretrain data.source='/data/cc12m/{00000..01242}.tar' train.out_dir=runs/cc12m
    torchrun --nproc_per_node 4 -m semivl_fast.pretrain --config my.yaml
    python -m semivl_fast.pretrain --resume runs/vilseg                # continue the same run

Writes ``<out_dir>/{config.yaml, last.pt, vilseg.safetensors, clip.safetensors, train.log, tb/}``; at the end (and
every ``eval.every`` iterations) the zero-shot mIoU of ViL-Seg and of the MaskCLIP baseline on ``eval.dataset``.
Any config key can be overridden as ``section.key=value`` (see semivl_fast/vilseg/config.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from semivl_fast.checkpoint import set_rng_state
from semivl_fast.config import DataConfig, EvalConfig, deep_update, parse_overrides, save_config
from semivl_fast.engine import dist
from semivl_fast.engine.data import make_loader, set_epoch
from semivl_fast.engine.logger import LOG, RunLogger, log_environment, setup_logging
from semivl_fast.engine.optim import adamw, update
from semivl_fast.engine.precision import PassContext, eval_context, resolve_amp, vit_tokens
from semivl_fast.models.clip import get_tokenizer
from semivl_fast.train import seed_everything
from semivl_fast.vilseg.checkpoint import CLIP_WEIGHTS, export_vilseg, load_state, save_state
from semivl_fast.vilseg.config import (
    LossConfig,
    PretrainConfig,
    default_pretrain_config,
    from_dict,
    load_pretrain_config,
)
from semivl_fast.vilseg.data import CaptionViews, build_phrase_vocab, load_caption_items
from semivl_fast.vilseg.losses import (
    clip_loss,
    cluster_usage,
    corresponding_assignments,
    dense_contrast_loss,
    iic_loss,
    multi_crop_loss,
    multi_positive_nce,
    patch_text_similarity,
    symmetric_ce,
)
from semivl_fast.vilseg.model import ViLSeg, build_vilseg


class PretrainStep(nn.Module):
    """One batch -> (total loss, detached logs). The module DDP and torch.compile wrap."""

    def __init__(self, model: ViLSeg, loss: LossConfig, phrase_tokens: Tensor | None = None) -> None:
        super().__init__()
        self.model, self.loss = model, loss
        # (V, ctx) token ids of the grounding vocabulary's phrases (put in ``loss.ground_template``)
        self.register_buffer("phrase_tokens", phrase_tokens if phrase_tokens is not None else
                             torch.zeros(0, 1, dtype=torch.long), persistent=False)

    def ground(self, dense: Tensor, mentions: Tensor, scale: Tensor) -> Tensor:
        """Phrase grounding loss of dense patch embeddings (B, D, h, w) and mentions (B, V) bool."""
        tokens, mentions = self.phrase_tokens, mentions.bool()
        if tokens.shape[0] > self.loss.ground_max_text:  # a large vocabulary: only the phrases this batch names
            cols = mentions.any(0).nonzero().squeeze(1)
            tokens, mentions = tokens[cols], mentions[:, cols]
        phrases = self.model.encode_text(tokens)  # (V, D)
        return multi_positive_nce(scale * patch_text_similarity(dense, phrases, self.loss.pool_temp), mentions)

    def forward(self, view1: Tensor, view2: Tensor, flipped: Tensor, local: Tensor, boxes: Tensor,
                tokens: Tensor, mentions: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        m, c = self.model, self.loss
        n = view1.shape[0]
        has_local = local.shape[1] > 0
        use_local = c.vision_weight > 0 and has_local
        iic_local = c.cluster_weight > 0 and c.cluster_views == "local"
        if iic_local and not has_local:
            raise ValueError("loss.cluster_views=local needs local views (data.local_crops > 0)")
        two_views = c.cluster_weight > 0 and not iic_local
        local_dense = iic_local or (use_local and c.vision_mode != "global")
        grounding = c.ground_weight > 0 and self.phrase_tokens.shape[0] > 0
        need_dense = c.cluster_weight > 0 or local_dense or c.clip_pool != "global" or grounding
        feats = m.encode_image(torch.cat([view1, view2]) if two_views else view1, need_dense=need_dense)
        globals_ = feats.global_embed.split(n)
        denses = feats.dense.split(n) if need_dense else ()
        text = m.encode_text(tokens)
        scale = m.logit_scale(c.max_logit_scale)
        l_clip = torch.zeros((), device=view1.device)
        if c.clip_pool != "patch":  # every global view against the caption
            l_clip = l_clip + sum(clip_loss(g, text, scale) for g in globals_) / len(globals_)
        if c.clip_pool != "global":
            l_clip = l_clip + sum(symmetric_ce(scale * patch_text_similarity(d, text, c.pool_temp))
                                  for d in denses) / len(denses)
        if c.clip_pool == "both":
            l_clip = l_clip / 2
        total = c.clip_weight * l_clip
        logs = {"clip": l_clip.detach(), "temp": (1 / scale).detach()}
        if grounding:
            l_ground = self.ground(denses[0], mentions, scale)
            total = total + c.ground_weight * l_ground
            logs["ground"] = l_ground.detach()
        lf = None
        if use_local or iic_local:
            b, n_local = local.shape[:2]
            lf = m.encode_image(local.flatten(0, 1), need_global=use_local and c.vision_mode != "dense",
                                need_dense=local_dense)
        if use_local:
            l_vis = torch.zeros((), device=view1.device)
            if c.vision_mode != "dense":
                l_vis = l_vis + multi_crop_loss(lf.global_embed.view(b, n_local, -1), globals_[0], c.vision_temp)
            if c.vision_mode != "global":
                dense = lf.dense.view(b, n_local, *lf.dense.shape[1:])
                l_vis = l_vis + dense_contrast_loss(dense, denses[0], boxes, c.vision_temp)
            total = total + c.vision_weight * l_vis
            logs["vision"] = l_vis.detach()
        if c.cluster_weight > 0:
            detach = (lambda t: t.detach()) if m.cfg.detach_clusters else (lambda t: t)
            if iic_local:
                p_global = m.assign(detach(denses[0]))  # (B, K, hg, wg)
                p_local = m.assign(detach(lf.dense))  # (B*L, K, hl, wl)
                p1, p2 = corresponding_assignments(p_global, p_local.view(b, n_local, *p_local.shape[1:]), boxes)
                usage = cluster_usage(p_global)
            else:
                probs = m.assign(detach(feats.dense))  # (2B, K, h, w)
                p1, p2 = probs[:n], probs[n:]
                p2 = torch.where(flipped.view(-1, 1, 1, 1), p2.flip(-1), p2)  # undo the mirror: patch i <-> i
                usage = cluster_usage(probs)
            l_iic = iic_loss(p1, p2, c.cluster_balance)
            total = total + c.cluster_weight * l_iic
            logs["iic"] = l_iic.detach()
            logs["clusters_used"] = torch.exp(-(usage * usage.clamp_min(1e-8).log()).sum())  # perplexity of usage
        logs["loss"] = total.detach()
        return total, logs


def freeze_untrained(model: ViLSeg, loss: LossConfig) -> None:
    """Freeze the parameters that no loss of ``loss`` trains: the clustering head when ``loss.cluster_weight == 0``.
    Every trainable parameter then takes part in each step's loss, which DDP (without the unused-parameter search)
    needs: an unused one fails the second iteration ("Expected to have finished reduction in the prior
    iteration")."""
    if loss.cluster_weight == 0:
        model.head.requires_grad_(False)


def param_groups(model: ViLSeg, lr: float, weight_decay: float, head_lr_mult: float) -> list[dict]:
    """Weight decay on matrices only (CLIP's recipe: no decay on gains, biases, embeddings' scale, logit scale)."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decay = p.ndim >= 2 and "embedding" not in name and not name.startswith("head.")
            groups.setdefault((name.startswith("head."), decay), []).append(p)
    return [{"params": ps, "lr": lr * (head_lr_mult if head else 1.0), "weight_decay": weight_decay if decay else 0.0}
            for (head, decay), ps in groups.items()]


def warmup_poly(optimizer: torch.optim.Optimizer, total: int, warmup: int,
                power: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` iterations, then poly decay to 0 at ``total``."""
    def factor(it: int) -> float:
        if it < warmup:
            return (it + 1) / warmup
        return max(0.0, 1 - (it - warmup) / max(1, total - warmup)) ** power
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def parse_args(argv: list[str] | None) -> tuple[PretrainConfig, bool]:
    parser = argparse.ArgumentParser(prog="python -m semivl_fast.pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (default: configs/vilseg_synthetic.yaml, the default prior)")
    parser.add_argument("--resume", help="a run directory or last.pt to continue (its saved config is reused)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.iters=200 model.num_clusters=8")
    args = parser.parse_args(argv)
    resume = args.resume
    if resume:
        cfg = from_dict(deep_update(load_state(resume)["config"], parse_overrides(args.overrides)))
    else:
        cfg = load_pretrain_config(args.config or default_pretrain_config(), args.overrides)
        resume = cfg.train.resume
    if resume:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume=str(resume)))
    return cfg, bool(resume)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line entry point; returns losses, zero-shot results, output paths and timings."""
    cfg, resuming = parse_args(argv)
    rank, world, device = dist.init_distributed()
    out_dir = Path(cfg.train.out_dir)
    setup_logging(out_dir)
    try:
        return _pretrain(cfg, resuming, rank, world, device, out_dir)
    finally:
        dist.cleanup()


def eval_data_config(cfg: PretrainConfig) -> DataConfig | None:
    """The segmentation dataset for zero-shot evaluation, or None (``eval.dataset`` empty, or auto without one)."""
    e, d = cfg.eval, cfg.data
    dataset = e.dataset
    if dataset == "auto":
        dataset = "synthetic" if d.source == "synthetic" else ""
    if not dataset:
        return None
    same_world = dataset == "synthetic" and d.source == "synthetic"
    return DataConfig(dataset=dataset, root=e.root or (d.root if same_world else ""), split_dir=e.split_dir,
                      crop_size=e.crop_size, norm=e.norm or d.norm, seed=d.seed, world_train=d.world_train,
                      world_val=d.world_val, world_size=d.world_size)


def evaluate_zero_shot(model: ViLSeg, cfg: PretrainConfig, device: torch.device, autocast=None,
                       methods: tuple[str, ...] | None = None, weights: str | None = None) -> dict[str, dict]:
    """Zero-shot mIoU of ``methods`` (vilseg, maskclip) on ``cfg``'s evaluation dataset ({} when there is none)."""
    from semivl_fast.evaluate import evaluate
    from semivl_fast.vilseg.zeroshot import build_segmenter, val_dataset, zero_shot_text

    data_cfg = eval_data_config(cfg)
    if data_cfg is None:
        return {}
    zs = cfg.zeroshot
    val, classes = val_dataset(data_cfg, zs.classes)
    text = zero_shot_text(model.clip, cfg.model.clip_model, classes, zs.templates, zs.text_mode, weights)
    results = {}
    was_training = model.training
    model.eval()
    try:
        for method in methods or cfg.eval.methods:
            seg = build_segmenter(method, model, text.to(device), zs.bg_thresh, zs.background).to(device)
            samples = (val[i] for i in range(dist_rank(), len(val), dist.world_size()))
            ecfg = EvalConfig(mode=cfg.eval.mode, max_images=cfg.eval.max_images)
            res = evaluate(lambda x, s=seg: s(x), samples, text.num_classes, data_cfg.crop_size, ecfg, device,
                           autocast)
            results[method] = {**res, "classes": list(classes.classes)}
    finally:
        model.train(was_training)
    return results


def dist_rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _pretrain(cfg: PretrainConfig, resuming: bool, rank: int, world: int, device: torch.device,
              out_dir: Path) -> dict[str, Any]:
    t_start = time.time()
    tc, dc = cfg.train, cfg.data
    state = load_state(tc.resume) if resuming else None
    if dist.is_main():
        save_config(cfg, out_dir / "config.yaml")
        LOG.info(f"ViL-Seg pretraining -> {out_dir} ({world} process{'es' if world > 1 else ''}, {device})")
        log_environment(device)
    if dist.is_main():  # rank 0 generates the synthetic world first, the others reuse it
        items = load_caption_items(dc)
    dist.barrier()
    if not dist.is_main():
        items = load_caption_items(dc)
    LOG.info(f"data: {len(items)} image-caption pairs from {dc.source}")

    seed_everything(tc.seed)
    model = build_vilseg(cfg.model).to(device)
    freeze_untrained(model, cfg.loss)  # before the optimiser and DDP see the parameters
    tokenizer = get_tokenizer(cfg.model.clip_model)
    phrases = build_phrase_vocab([it.caption for it in items], dc.phrase_min_count, dc.phrase_vocab)
    phrase_tokens = None
    if cfg.loss.ground_weight > 0:
        if not len(phrases):
            raise ValueError(f"loss.ground_weight={cfg.loss.ground_weight} but no caption phrase occurs "
                             f"data.phrase_min_count={dc.phrase_min_count} times; lower it or set loss.ground_weight=0")
        phrase_tokens = tokenizer([cfg.loss.ground_template.format(t) for t in phrases.texts]).long().to(device)
        LOG.info(f"phrase grounding: {len(phrases)} phrases, e.g. " + ", ".join(phrases.texts[:8]))
    step_module = PretrainStep(model, cfg.loss, phrase_tokens)
    dataset = CaptionViews(items, dc, tokenizer, phrases if phrase_tokens is not None else None)
    loader = make_loader(dataset, dc.batch_size, tc.seed, rank, world, dc.num_workers)
    per_epoch = len(loader.sampler) // dc.batch_size
    if per_epoch == 0:
        raise ValueError(f"batch size {dc.batch_size} x {world} processes is larger than the {len(items)} pairs")
    total = tc.iters
    optimizer = adamw(param_groups(model, tc.lr, tc.weight_decay, tc.head_lr_mult), lr=tc.lr, betas=(0.9, 0.98),
                      eps=1e-6)
    scheduler = warmup_poly(optimizer, total, tc.warmup_iters, tc.poly_power)
    amp = resolve_amp(tc.amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    autocast = PassContext(amp, device, vit_tokens(dc.global_size, model.patch_size))  # local views are smaller
    fp32 = eval_context(device, cfg.eval.crop_size, model.patch_size)  # as python -m semivl_fast.evaluate --zero-shot
    LOG.info(f"precision: train.amp={tc.amp} -> {autocast}; evaluation in fp32")

    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        step = state["step"]
        set_rng_state(state["rng"])
        LOG.info(f"resumed from {tc.resume} at iteration {step}/{total}")

    net: nn.Module = step_module
    if world > 1:
        net = DistributedDataParallel(step_module, device_ids=[device.index] if device.type == "cuda" else None)
    if tc.compile:
        net = torch.compile(net, dynamic=False)

    logger = RunLogger(out_dir, total, tc.tensorboard and dist.is_main(), tc.progress, desc="pretrain")
    logger.advance(step)
    zero_shot: dict[str, dict] = {}

    def run_eval() -> None:
        nonlocal zero_shot
        zero_shot = evaluate_zero_shot(model, cfg, device, fp32)
        for method, res in zero_shot.items():
            logger.scalars(step, {f"{method}_miou": res["miou"]}, prefix="zeroshot")
        if zero_shot:
            logger.line(f"iter {step}/{total} zero-shot mIoU " +
                        ", ".join(f"{m} {r['miou']:.2f}" for m, r in zero_shot.items()))

    def checkpoint() -> None:
        if dist.is_main():
            save_state(out_dir / "last.pt", model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                       step=step, cfg=cfg)
            metrics = {f"{m}_miou": r["miou"] for m, r in zero_shot.items()} | {"step": step}
            export_vilseg(out_dir, model, cfg, metrics)

    losses: list[float] = []
    model.train()
    iterator = None
    while step < total:
        epoch, offset = divmod(step, per_epoch)
        if iterator is None or offset == 0:
            set_epoch(loader, epoch, offset)
            iterator = iter(loader)
        batch = [t.to(device, non_blocking=True) for t in next(iterator)]
        with autocast:
            loss, logs = net(*batch)
        update(loss, optimizer, scheduler, scaler, step)
        step += 1
        losses.append(float(logs["loss"]))
        logger.iteration(step, total, logs, optimizer.param_groups[0]["lr"], tc.log_every)
        if step < total and cfg.eval.every and step % cfg.eval.every == 0:
            run_eval()
            checkpoint()
        elif step < total and tc.save_every and step % tc.save_every == 0:
            checkpoint()
    t_train = time.time() - t_start
    run_eval()
    checkpoint()
    logger.close()
    if dist.is_main():
        from semivl_fast.metrics import format_iou_table

        for method, res in zero_shot.items():
            print(format_iou_table(torch.tensor(res["iou"]), res["classes"], f"zero-shot {method} after {step} "
                                   f"iterations"))
        print(f"pretrained in {t_train:.0f} s; CLIP for SemiVL: {out_dir / CLIP_WEIGHTS}")
    return {"losses": losses, "steps": step, "zero_shot": {m: r["miou"] for m, r in zero_shot.items()},
            "zero_shot_iou": {m: r["iou"] for m, r in zero_shot.items()}, "out_dir": str(out_dir),
            "clip": str(out_dir / CLIP_WEIGHTS), "seconds": time.time() - t_start, "train_seconds": t_train,
            "finite": all(math.isfinite(v) for v in losses)}


if __name__ == "__main__":
    main(sys.argv[1:])
