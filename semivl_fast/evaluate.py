"""Evaluate a trained model: dataset-level mIoU and a per-class IoU table.

    python -m semivl_fast.evaluate --checkpoint runs/default              # the run's own validation set
    python -m semivl_fast.evaluate --checkpoint model.safetensors data.root=/data/voc data.split_dir=/data/splits
    python -m semivl_fast.evaluate --zero-shot --checkpoint runs/vilseg                       # ViL-Seg, synthetic val
    python -m semivl_fast.evaluate --zero-shot --checkpoint runs/vilseg --method maskclip     # MaskCLIP baseline
    python -m semivl_fast.evaluate --zero-shot --method maskclip --clip-model ViT-B-16 --pretrained openai \
        data.dataset=voc data.root=/data/voc data.norm=clip eval.mode=sliding data.crop_size=448
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from semivl_fast.config import Config, EvalConfig
from semivl_fast.engine.dist import all_reduce_sum, is_main
from semivl_fast.engine.logger import LOG, setup_logging
from semivl_fast.engine.precision import eval_context
from semivl_fast.inference import predict_logits, resize_to
from semivl_fast.metrics import format_iou_table, intersection_union, miou


def progress_iter(items: Iterable, total: int | None = None, desc: str = "eval", every_s: float = 30.0) -> Iterator:
    """``items``, reporting progress on rank 0: a tqdm bar when stderr is a terminal, otherwise a log line (logger
    ``semivl_fast``) at most every ``every_s`` seconds and one at the end. Other ranks stay silent."""
    if not is_main():
        yield from items
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(items, total=total, desc=desc, unit="img", dynamic_ncols=True, leave=False) as bar:
            yield from bar
        return
    start = last = time.time()
    of = f"/{total}" if total is not None else ""
    n = 0
    for n, item in enumerate(items, 1):
        yield item
        now = time.time()
        if now - last >= every_s and n != total:
            last = now
            LOG.info(f"{desc}: {n}{of} images, {n / max(now - start, 1e-9):.2f} img/s")
    LOG.info(f"{desc}: {n}{of} images in {time.time() - start:.1f} s")


@torch.no_grad()
def evaluate(model: Callable[[Tensor], Tensor], samples: Iterable, num_classes: int, window: int,
             cfg: EvalConfig, device: torch.device, autocast: contextlib.AbstractContextManager | None = None,
             progress: bool | Callable[[Iterable], Iterable] | None = None) -> dict[str, Any]:
    """mIoU over ``samples`` of (image (3, h, w) normalised, mask (H, W) int64, name), one image at a time.

    ``progress``: True for ``progress_iter`` (a bar on a terminal, log lines otherwise; rank 0 only), a callable
    wrapping the samples, or None/False for none. Under DDP every process evaluates its shard and the counts are
    summed. Returns miou (%), iou (per class, %), and the number of images.
    """
    inter = torch.zeros(num_classes, dtype=torch.int64)
    union = torch.zeros(num_classes, dtype=torch.int64)
    autocast = autocast or contextlib.nullcontext()
    total = len(samples) if hasattr(samples, "__len__") else None
    if cfg.max_images:
        samples = itertools.islice(samples, cfg.max_images)
        total = min(total, cfg.max_images) if total is not None else None
    if progress is True:
        samples = progress_iter(samples, total)
    elif progress:
        samples = progress(samples)
    count = 0
    for image, mask, _name in samples:
        image = image.to(device)
        if image.dim() == 3:
            image, mask = image.unsqueeze(0), mask.unsqueeze(0)
        with autocast:
            scores = predict_logits(model, image, window, cfg.mode, cfg.stride, cfg.merge)
        pred = resize_to(scores.float(), tuple(mask.shape[-2:])).argmax(1).cpu()
        i_c, u_c = intersection_union(pred, mask.long(), num_classes)
        inter += i_c
        union += u_c
        count += image.shape[0]
    inter, union = all_reduce_sum(inter.to(device)).cpu(), all_reduce_sum(union.to(device)).cpu()
    m, iou = miou(inter, union)
    return {"miou": m, "iou": iou.tolist(), "images": int(all_reduce_sum(torch.tensor(count, device=device)))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from semivl_fast.checkpoint import load_trained_model
    from semivl_fast.config import deep_update, from_dict, parse_overrides, to_dict
    from semivl_fast.engine.data import build_val_dataset

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="model.safetensors, last.pt or a run directory (with --zero-shot: a "
                        "ViL-Seg pretraining run, vilseg.safetensors or its last.pt)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar / progress log lines (on stderr)")
    add_zero_shot_args(parser)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. data.root=/data/voc")
    args = parser.parse_args(argv)
    if args.progress:  # progress lines to stderr: stdout carries the table or the JSON
        setup_logging(stream=sys.stderr)
    if args.zero_shot:
        return zero_shot_main(args)
    if not args.checkpoint:
        parser.error("--checkpoint is required")

    model, cfg = load_trained_model(args.checkpoint, args.device)
    cfg: Config = from_dict(deep_update(to_dict(cfg), parse_overrides(args.overrides)))
    dataset = build_val_dataset(cfg.data)
    device = torch.device(args.device)
    result = evaluate(lambda x: model(x), dataset, model.num_classes, cfg.data.crop_size, cfg.eval, device,
                      eval_context(device, cfg.data.crop_size, model.backbone.patch_size), progress=args.progress)
    if is_main():
        if args.json:
            print(json.dumps(result))
        else:
            names = list(model.text.classes) or [str(c) for c in range(model.num_classes)]
            print(format_iou_table(torch.tensor(result["iou"]), names,
                                   f"{cfg.data.dataset} val, {result['images']} images"))
    return result


def add_zero_shot_args(parser: argparse.ArgumentParser) -> None:
    """The ``--zero-shot`` options shared by evaluate and predict."""
    g = parser.add_argument_group("zero-shot (ViL-Seg / MaskCLIP, no segmentation training)")
    g.add_argument("--zero-shot", action="store_true", help="segment by comparing image and class-name embeddings")
    g.add_argument("--method", default="vilseg", choices=("vilseg", "maskclip"),
                   help="vilseg: clusters classified by text; maskclip: training-free dense CLIP baseline")
    g.add_argument("--clip-model", help="open_clip model for --method maskclip without a ViL-Seg checkpoint")
    g.add_argument("--pretrained", help="its weights: an open_clip tag, a CLIP file, or vilseg:synthetic")
    g.add_argument("--templates", default="single", help="single | imagenet80 | a template with {}")
    g.add_argument("--text-mode", default="max", help="class definitions: max (concept max) | avg | single")
    g.add_argument("--bg-thresh", type=float, default=None, help="best cosine below this -> the background class")
    g.add_argument("--background", default="background", help="name of the background class")


def zero_shot_main(args: argparse.Namespace) -> dict[str, Any]:
    """``evaluate --zero-shot``: mIoU of ViL-Seg or MaskCLIP on any dataset the readers support."""
    from semivl_fast.config import deep_update, from_dict, parse_overrides, to_dict
    from semivl_fast.vilseg.zeroshot import build_segmenter, load_zero_shot_source, val_dataset, zero_shot_text

    device = torch.device(args.device)
    src = load_zero_shot_source(args.checkpoint, args.clip_model, args.pretrained, device)
    base = {"data": {"norm": src.norm}, "eval": {"mode": "whole"}}
    pc = src.config
    if pc is not None and pc.data.source == "synthetic":  # default: the world it was pretrained on
        base["data"].update(root=pc.data.root, seed=pc.data.seed, world_train=pc.data.world_train,
                            world_val=pc.data.world_val, world_size=pc.data.world_size)
    cfg = from_dict(deep_update(deep_update(to_dict(Config()), base), parse_overrides(args.overrides)))
    dataset, classes = val_dataset(cfg.data, "dataset")
    text = zero_shot_text(getattr(src.model, "clip", src.model), src.model_name, classes, args.templates,
                          args.text_mode, src.weights).to(device)
    seg = build_segmenter(args.method, src.model, text, args.bg_thresh, args.background).to(device)
    fp32 = eval_context(device, cfg.data.crop_size, seg.patch_size)
    result = evaluate(lambda x: seg(x), dataset, text.num_classes, cfg.data.crop_size, cfg.eval, device, fp32,
                      progress=getattr(args, "progress", True))
    result["method"] = args.method
    if is_main():
        if args.json:
            print(json.dumps(result))
        else:
            print(format_iou_table(torch.tensor(result["iou"]), list(classes.classes),
                                   f"zero-shot {args.method}: {cfg.data.dataset} val, {result['images']} images"))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
