"""Evaluate a trained model: dataset-level mIoU and a per-class IoU table.

    python -m semivl_fast.evaluate --checkpoint runs/default              # the run's own validation set
    python -m semivl_fast.evaluate --checkpoint model.safetensors data.root=/data/voc data.split_dir=/data/splits
    python -m semivl_fast.evaluate --zero-shot --checkpoint runs/vilseg                       # ViL-Seg, synthetic val
    python -m semivl_fast.evaluate --zero-shot --checkpoint runs/vilseg --method maskclip     # MaskCLIP baseline
    python -m semivl_fast.evaluate --zero-shot --method maskclip --clip-model ViT-B-16 --pretrained openai \\
        data.dataset=voc data.root=/data/voc data.norm=clip eval.mode=sliding data.crop_size=448
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from semivl_fast.metrics import evaluate, format_iou_table
from semivl_fast.training import cli
from semivl_fast.training.checkpoint import load_trained_model
from semivl_fast.training.config import from_dict, window_options
from semivl_fast.training.data import build_val_dataset, val_dataset
from semivl_fast.training.precision import eval_context
from semivl_fast.training.vilseg.zeroshot import add_zero_shot_args, load_zero_shot_source
from semivl_fast.vilseg.zeroshot import build_segmenter, zero_shot_text


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = cli.make_parser("python -m semivl_fast.evaluate", __doc__)
    parser.add_argument("--checkpoint", help="model.safetensors, last.pt or a run directory (with --zero-shot: a "
                        "ViL-Seg pretraining run, vilseg.safetensors or its last.pt)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar / progress log lines (on stderr)")
    add_zero_shot_args(parser)
    cli.add_overrides(parser, "data.root=/data/voc")
    args = parser.parse_args(argv)
    cli.start_tool()  # progress lines on stderr: stdout carries the table or the JSON
    if args.zero_shot:
        return zero_shot_main(args)
    if not args.checkpoint:
        parser.error("--checkpoint is required")

    model, cfg = load_trained_model(args.checkpoint, args.device)
    cfg = cli.with_overrides(cfg, args.overrides)
    dataset = build_val_dataset(cfg.data)
    device = torch.device(args.device)
    result = evaluate(lambda x: model(x), dataset, model.num_classes, cfg.data.crop_size, **window_options(cfg.eval),
                      device=device, context=eval_context(device, cfg.data.crop_size, model.backbone.patch_size),
                      progress=args.progress)
    if args.json:
        print(json.dumps(result))
    else:
        names = list(model.text.classes) or [str(c) for c in range(model.num_classes)]
        print(format_iou_table(torch.tensor(result["iou"]), names,
                               f"{cfg.data.dataset} val, {result['images']} images"))
    return result


def zero_shot_main(args: argparse.Namespace) -> dict[str, Any]:
    """``evaluate --zero-shot``: mIoU of ViL-Seg or MaskCLIP on any dataset the readers support."""
    device = torch.device(args.device)
    src = load_zero_shot_source(args.checkpoint, args.clip_model, args.pretrained, device)
    base = {"data": {"norm": src.norm}, "eval": {"mode": "whole"}}
    pc = src.config
    if pc is not None and pc.data.source == "synthetic":  # default: the world it was pretrained on
        base["data"].update(root=pc.data.root, seed=pc.data.seed, world_train=pc.data.world_train,
                            world_val=pc.data.world_val, world_size=pc.data.world_size)
    cfg = cli.with_overrides(from_dict(base), args.overrides)
    dataset, classes = val_dataset(cfg.data, "dataset")
    text = zero_shot_text(getattr(src.model, "clip", src.model), src.model_name, classes, args.templates,
                          args.text_mode, src.weights).to(device)
    seg = build_segmenter(args.method, src.model, text, args.bg_thresh, args.background).to(device)
    fp32 = eval_context(device, cfg.data.crop_size, seg.patch_size)
    result = evaluate(lambda x: seg(x), dataset, text.num_classes, cfg.data.crop_size, **window_options(cfg.eval),
                      device=device, context=fp32, progress=getattr(args, "progress", True))
    result["method"] = args.method
    if args.json:
        print(json.dumps(result))
    else:
        print(format_iou_table(torch.tensor(result["iou"]), list(classes.classes),
                               f"zero-shot {args.method}: {cfg.data.dataset} val, {result['images']} images"))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
