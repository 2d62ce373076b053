"""Pretrain ViL-Seg on image-caption pairs (no masks): cross-modal + vision-based contrast + IIC clustering.

    python -m semivl_fast.pretrain                                   # the synthetic world's captions (the VLM prior)
    python -m semivl_fast.pretrain data.source=/data/cc/captions.tsv model.clip_model=ViT-B-16 model.pretrained=openai
    python -m semivl_fast.pretrain data.source='/data/cc12m/{00000..01242}.tar' train.out_dir=runs/cc12m
    torchrun --nproc_per_node 4 -m semivl_fast.pretrain --config my.yaml
    python -m semivl_fast.pretrain --resume runs/vilseg                # continue the same run

Writes ``<out_dir>/{config.yaml, last.pt, vilseg.safetensors, clip.safetensors, train.log, tb/}``; at the end (and
every ``eval.every`` iterations) the zero-shot mIoU of ViL-Seg and of the MaskCLIP baseline on ``eval.dataset``.
Any config key can be overridden as ``section.key=value`` (see semivl_fast/training/vilseg/config.py).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from semivl_fast.clip import get_tokenizer
from semivl_fast.metrics import format_iou_table
from semivl_fast.training import cli, dist
from semivl_fast.training.checkpoint import set_rng_state
from semivl_fast.training.config import save_config
from semivl_fast.training.data import make_loader, set_epoch
from semivl_fast.training.logger import LOG, RunLogger, log_environment
from semivl_fast.training.optim import adamw, decay_matrices, param_groups, update, warmup_poly
from semivl_fast.training.precision import PassContext, eval_context, resolve_amp, vit_tokens
from semivl_fast.training.prior import resolve_model_config
from semivl_fast.training.vilseg.checkpoint import CLIP_WEIGHTS, export_vilseg, load_state, save_state
from semivl_fast.training.vilseg.config import DEFAULT_RECIPE, PretrainConfig
from semivl_fast.training.vilseg.step import PretrainStep, freeze_untrained
from semivl_fast.training.vilseg.zeroshot import evaluate_zero_shot
from semivl_fast.vilseg.data import CaptionViews, build_phrase_vocab, load_caption_items
from semivl_fast.vilseg.model import build_vilseg


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line entry point; returns losses, zero-shot results, output paths and timings."""
    parser = cli.make_parser("python -m semivl_fast.pretrain", __doc__)
    cli.add_run_args(parser, DEFAULT_RECIPE, "train.iters=200 model.num_clusters=8")
    cfg, resuming = cli.run_config(parser.parse_args(argv), PretrainConfig, DEFAULT_RECIPE)
    out_dir = Path(cfg.train.out_dir)
    return cli.launch(lambda rank, world, device: _pretrain(cfg, resuming, rank, world, device, out_dir), out_dir)


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

    cli.seed_everything(tc.seed)
    model = build_vilseg(resolve_model_config(cfg.model)).to(device)  # vilseg:<prior> names -> their file
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
    groups = param_groups(model, tc.lr, tc.weight_decay, {"head": tc.head_lr_mult}, decay=decay_matrices)
    optimizer = adamw(groups, lr=tc.lr, betas=(0.9, 0.98), eps=1e-6)
    scheduler = warmup_poly(optimizer, total, tc.poly_power, warmup=tc.warmup_iters)
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
