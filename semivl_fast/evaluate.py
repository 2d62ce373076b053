"""Evaluate a trained model: dataset-level mIoU and a per-class IoU table.

    python -m semivl_fast.evaluate --checkpoint runs/default              # the run's own validation set
    python -m semivl_fast.evaluate --checkpoint model.safetensors data.root=/data/voc data.split_dir=/data/splits
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from semivl_fast.config import Config, EvalConfig
from semivl_fast.engine.dist import all_reduce_sum, is_main
from semivl_fast.inference import predict_logits, resize_to
from semivl_fast.metrics import format_iou_table, intersection_union, miou


@torch.no_grad()
def evaluate(model: Callable[[Tensor], Tensor], samples: Iterable, num_classes: int, window: int,
             cfg: EvalConfig, device: torch.device, autocast: contextlib.AbstractContextManager | None = None,
             progress: Callable[[Iterable], Iterable] | None = None) -> dict[str, Any]:
    """mIoU over ``samples`` of (image (3, h, w) normalised, mask (H, W) int64, name), one image at a time.

    Under DDP every process evaluates its shard and the counts are summed. Returns miou (%), iou (per class, %),
    and the number of images.
    """
    inter = torch.zeros(num_classes, dtype=torch.int64)
    union = torch.zeros(num_classes, dtype=torch.int64)
    autocast = autocast or contextlib.nullcontext()
    count = 0
    for i, (image, mask, _name) in enumerate(progress(samples) if progress else samples):
        if cfg.max_images and i >= cfg.max_images:
            break
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
    parser.add_argument("--checkpoint", required=True, help="model.safetensors, last.pt or a run directory")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. data.root=/data/voc")
    args = parser.parse_args(argv)

    model, cfg = load_trained_model(args.checkpoint, args.device)
    cfg: Config = from_dict(deep_update(to_dict(cfg), parse_overrides(args.overrides)))
    dataset = build_val_dataset(cfg.data)
    result = evaluate(lambda x: model(x), dataset, model.num_classes, cfg.data.crop_size, cfg.eval,
                      torch.device(args.device))
    if is_main():
        if args.json:
            print(json.dumps(result))
        else:
            names = list(model.text.classes) or [str(c) for c in range(model.num_classes)]
            print(format_iou_table(torch.tensor(result["iou"]), names,
                                   f"{cfg.data.dataset} val, {result['images']} images"))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
