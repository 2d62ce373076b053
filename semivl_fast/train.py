"""Train SemiVL (semi-supervised; or the supervised-only baseline).

    python -m semivl_fast.train                                    # synthetic world, tiny model, a few minutes on CPU
    python -m semivl_fast.train --config voc/92 data.root=/data/voc data.split_dir=/data/splits
    torchrun --nproc_per_node 4 -m semivl_fast.train --config voc/92 ...
    python -m semivl_fast.train --resume runs/default               # continue the same run

``--config`` takes a recipe (synthetic, vilseg_synthetic, voc/92 ... cityscapes/1_2; see semivl_fast/training/configs)
or a YAML file. Any config key can be overridden as ``section.key=value`` (see semivl_fast/training/config.py).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from semivl_fast.metrics import evaluate, format_iou_table
from semivl_fast.models.semivl import build_semivl
from semivl_fast.training import cli, dist
from semivl_fast.training.checkpoint import (
    TRAIN_STATE,
    WEIGHTS,
    export_weights,
    load_train_state,
    save_train_state,
    set_rng_state,
)
from semivl_fast.training.config import Config, save_config, window_options
from semivl_fast.training.data import make_loader, prepare_data, set_epoch
from semivl_fast.training.guidance import build_guidance
from semivl_fast.training.logger import LOG, RunLogger, log_environment
from semivl_fast.training.optim import adamw, param_groups, update, warmup_poly
from semivl_fast.training.precision import PassContext, eval_context, resolve_amp, vit_tokens
from semivl_fast.training.prior import resolve_model_config
from semivl_fast.training.semi import UnlabeledBatch, semi_step, supervised_step
from semivl_fast.visualize import denormalize, overlay

RECIPE = "synthetic"  # the built-in default run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = cli.make_parser("python -m semivl_fast.train", __doc__)
    cli.add_run_args(parser, RECIPE, "train.iters=200 data.split=8")
    cfg, resuming = cli.run_config(parser.parse_args(argv), Config, RECIPE)
    out_dir = Path(cfg.train.out_dir)
    return cli.launch(lambda rank, world, device: _train(cfg, resuming, rank, world, device, out_dir), out_dir)


def _train(cfg: Config, resuming: bool, rank: int, world: int, device: torch.device, out_dir: Path) -> dict:
    t_start = time.time()
    tc = cfg.train
    state = load_train_state(tc.resume) if resuming else None
    if dist.is_main():
        save_config(cfg, out_dir / "config.yaml")
        LOG.info(f"semivl_fast run -> {out_dir} ({world} process{'es' if world > 1 else ''}, {device})")
        log_environment(device)

    if dist.is_main():  # rank 0 generates/validates the data first (synthetic world), the others reuse it
        data = prepare_data(cfg.data, cfg.model.classes)
    dist.barrier()
    if not dist.is_main():
        data = prepare_data(cfg.data, cfg.model.classes)
    train_l, train_u, val = data.datasets
    LOG.info(f"data: {cfg.data.dataset} split {cfg.data.split}: {len(set(train_l.pairs))} labeled, {len(train_u)} "
             f"unlabeled, {len(val)} val images; classes: {data.class_set.num_classes}")

    cli.seed_everything(tc.seed)  # initial weights depend on the seed only (DDP also broadcasts them)
    model_cfg = resolve_model_config(cfg.model)  # vilseg:<prior> -> its file (pretrained once, then cached)
    model = build_semivl(model_cfg, classes=data.class_set).to(device)
    if cfg.model.conv_encoder and not cfg.model.conv_encoder_pretrained:
        LOG.warning("the ResNet stem (model.conv_encoder) starts from random weights; the reference initialises it "
                    "from ImageNet: pass model.conv_encoder_pretrained=/path/resnet101_v1c-e67eebb6.pth")
    text = model.text
    guidance = None
    if tc.semi and tc.guidance:
        guidance = build_guidance(model_cfg, data.class_set, tc.guidance_text).to(device)
    if world > 1 and model.conv_encoder is not None:
        model.conv_encoder = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.conv_encoder)
    multipliers = {"backbone": tc.backbone_lr_mult, "decoder": tc.head_lr_mult,
                   "conv_encoder": tc.conv_encoder_lr_mult}
    optimizer = adamw(param_groups(model, tc.lr, tc.weight_decay, multipliers), lr=tc.lr, betas=(0.9, 0.999),
                      eps=1e-8, weight_decay=tc.weight_decay)
    bs = cfg.data.batch_size
    loader_l = make_loader(train_l, bs, tc.seed, rank, world, cfg.data.num_workers)
    loader_u = make_loader(train_u, bs, tc.seed + 1, rank, world, cfg.data.num_workers) if tc.semi else None
    loader_o = None
    if tc.semi and tc.mix_partner != "roll":  # "same": loader_u's order, its own augmentation seed
        order_seed = tc.seed + 1 if tc.mix_partner == "same" else tc.seed + 2
        loader_o = make_loader(train_u, bs, order_seed, rank, world, cfg.data.num_workers, aug_seed=tc.seed + 2)
    per_epoch = len(loader_u.sampler) // bs if tc.semi else len(loader_l.sampler) // bs
    if per_epoch == 0:
        raise ValueError(f"batch size {bs} x {world} processes is larger than the training set")
    total = tc.iters or tc.epochs * per_epoch
    scheduler = warmup_poly(optimizer, total, tc.poly_power)
    amp = resolve_amp(tc.amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    autocast = PassContext(amp, device, vit_tokens(cfg.data.crop_size, model.backbone.patch_size))
    fp32 = eval_context(device, cfg.data.crop_size, model.backbone.patch_size)  # as python -m semivl_fast.evaluate
    LOG.info(f"precision: train.amp={tc.amp} -> {autocast}; evaluation in fp32")

    step, best = 0, -1.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        step, best = state["step"], state["extra"].get("best_miou", -1.0)
        set_rng_state(state["rng"])
        LOG.info(f"resumed from {tc.resume} at iteration {step}/{total}")

    net = model
    if world > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if tc.compile:
        net = torch.compile(net, dynamic=False)  # training shapes are fixed: static graphs, no symbolic sizes

    def evaluate_now() -> dict:
        model.eval()
        shard = torch.utils.data.Subset(val, range(rank, min(len(val), cfg.eval.max_images or len(val)), world))
        res = evaluate(lambda x: model(x), shard, model.num_classes, cfg.data.crop_size, **window_options(cfg.eval),
                       device=device, context=fp32, progress=tc.progress and dist.is_main(),
                       reduce=dist.all_reduce_sum)
        if logger.writer is not None:  # one prediction overlay per evaluation
            image, _, _ = val[0]
            with torch.no_grad(), fp32:
                labels = model(image[None].to(device)).argmax(1)[0].cpu().numpy()
            picture = overlay(denormalize(image, val.mean, val.std), labels, list(data.class_set.classes))
            logger.image(step, "val/prediction", torch.from_numpy(np.array(picture)).permute(2, 0, 1))
        model.train()
        return res

    def checkpoint(metrics: dict | None = None) -> None:
        if dist.is_main():
            save_train_state(out_dir / TRAIN_STATE, model=model, optimizer=optimizer, scheduler=scheduler,
                             scaler=scaler, step=step, epoch=step // per_epoch, cfg=cfg, text=text,
                             extra={"best_miou": best})
            export_weights(out_dir / WEIGHTS, model, cfg, text, metrics)

    logger = RunLogger(out_dir, total, tc.tensorboard and dist.is_main(), tc.progress)
    logger.advance(step)
    losses: list[float] = []
    eval_every = cfg.eval.every or per_epoch * max(1, cfg.eval.every_epochs)
    result: dict[str, Any] = {}
    model.train()
    iters = None
    while step < total:
        epoch, offset = divmod(step, per_epoch)
        if iters is None or offset == 0:
            loaders = [loader for loader in (loader_l, loader_u, loader_o) if loader is not None]
            for loader in loaders:
                set_epoch(loader, epoch, offset)
            iters = [iter(loader) for loader in loaders]
        batch = [next(it) for it in iters]
        img_x, mask_x = batch[0][0].to(device), batch[0][1].to(device)
        if tc.semi:
            u = UnlabeledBatch.from_loader(batch[1], device)
            other = UnlabeledBatch.from_loader(batch[2], device) if loader_o is not None else None
            loss, logs = semi_step(net, model, guidance, img_x, mask_x, u, other, tc, step / total, autocast)
        else:
            loss, logs = supervised_step(net, img_x, mask_x, autocast)
        update(loss, optimizer, scheduler, scaler, step)
        step += 1
        losses.append(float(logs["loss"]))
        logger.iteration(step, total, logs, optimizer.param_groups[0]["lr"], tc.log_every)
        if step % eval_every == 0 or step == total:
            res = evaluate_now()
            best = max(best, res["miou"])
            result = {**res, "best_miou": best}
            logger.scalars(step, {"miou": res["miou"]}, prefix="val")
            logger.line(f"iter {step}/{total} val mIoU {res['miou']:.2f} (best {best:.2f})")
            checkpoint({"miou": res["miou"], "step": step})
        elif tc.save_every and step % tc.save_every == 0:
            checkpoint()
    logger.close()
    if dist.is_main() and result:
        print(format_iou_table(torch.tensor(result["iou"]), list(data.class_set.classes),
                               f"{cfg.data.dataset} val after {total} iterations"))
        print(f"mIoU {result['miou']:.2f}  ({time.time() - t_start:.0f} s, weights: {out_dir / WEIGHTS})")
    return {"miou": result.get("miou"), "best_miou": best, "iou": result.get("iou"), "losses": losses,
            "steps": step, "out_dir": str(out_dir), "seconds": time.time() - t_start}


if __name__ == "__main__":
    main(sys.argv[1:])
