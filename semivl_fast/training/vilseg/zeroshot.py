"""Zero-shot evaluation on the training side: what the CLIs and the pretraining loop segment with, and on what.

The segmenters themselves (ViL-Seg clusters classified by text, the MaskCLIP baseline) are the library's
``semivl_fast.vilseg.zeroshot``; this module loads checkpoints, resolves ``vilseg:`` prior names and picks the
evaluation dataset of a pretraining run.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

import torch
from torch import nn

from semivl_fast.clip import create_clip
from semivl_fast.metrics import evaluate
from semivl_fast.training.config import DataConfig
from semivl_fast.training.data import val_dataset
from semivl_fast.training.dist import all_reduce_sum, rank, world_size
from semivl_fast.training.prior import resolve_pretrained
from semivl_fast.training.vilseg.checkpoint import load_vilseg, resolve_checkpoint
from semivl_fast.training.vilseg.config import PretrainConfig
from semivl_fast.vilseg.model import ViLSeg
from semivl_fast.vilseg.zeroshot import METHODS, build_segmenter, zero_shot_text


@dataclass
class ZeroShotSource:
    """What the zero-shot CLIs segment with: a ViL-Seg model, or a bare open_clip CLIP (MaskCLIP only)."""

    model: nn.Module
    model_name: str
    weights: str | None  # identifies the weights for the text-embedding cache (a file or an open_clip tag)
    norm: str  # the input normalisation the weights were trained with
    config: PretrainConfig | None = None  # the ViL-Seg config, when loaded from a ViL-Seg checkpoint


def load_zero_shot_source(checkpoint: str | None = None, clip_model: str | None = None,
                          pretrained: str | None = None, device: str | torch.device = "cpu") -> ZeroShotSource:
    """A ViL-Seg checkpoint (run dir, ``vilseg.safetensors`` or ``last.pt``), or ``clip_model`` + ``pretrained`` (an
    open_clip tag, a CLIP file, or ``vilseg:synthetic``) for the MaskCLIP baseline alone."""
    if checkpoint:
        model, cfg = load_vilseg(checkpoint, device)
        return ZeroShotSource(model, cfg.model.clip_model, str(resolve_checkpoint(checkpoint).resolve()), cfg.data.norm,
                              cfg)
    if not clip_model:
        raise ValueError("give --checkpoint (a ViL-Seg pretraining run) or --clip-model [--pretrained] (a CLIP for the "
                         "MaskCLIP baseline)")
    pretrained = resolve_pretrained(pretrained)
    clip = create_clip(clip_model, pretrained).to(device).eval()
    is_tag = bool(pretrained) and not os.path.isfile(pretrained)
    return ZeroShotSource(clip, clip_model, pretrained, "clip" if is_tag else "imagenet")


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


def evaluate_zero_shot(model: ViLSeg, cfg: PretrainConfig, device: torch.device, context=None,
                       methods: tuple[str, ...] | None = None, weights: str | None = None) -> dict[str, dict]:
    """Zero-shot mIoU of ``methods`` (vilseg, maskclip) on ``cfg``'s evaluation dataset ({} when there is none).
    Under DDP every process scores its share of the images and the counts are summed."""
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
            samples = (val[i] for i in range(rank(), len(val), world_size()))
            res = evaluate(lambda x, s=seg: s(x), samples, text.num_classes, data_cfg.crop_size, mode=cfg.eval.mode,
                           max_images=cfg.eval.max_images, device=device, context=context, reduce=all_reduce_sum)
            results[method] = {**res, "classes": list(classes.classes)}
    finally:
        model.train(was_training)
    return results


def add_zero_shot_args(parser: argparse.ArgumentParser) -> None:
    """The ``--zero-shot`` options of evaluate and predict."""
    g = parser.add_argument_group("zero-shot (ViL-Seg / MaskCLIP, no segmentation training)")
    g.add_argument("--zero-shot", action="store_true", help="segment by comparing image and class-name embeddings")
    g.add_argument("--method", default="vilseg", choices=METHODS,
                   help="vilseg: clusters classified by text; maskclip: training-free dense CLIP baseline")
    g.add_argument("--clip-model", help="open_clip model for --method maskclip without a ViL-Seg checkpoint")
    g.add_argument("--pretrained", help="its weights: an open_clip tag, a CLIP file, or vilseg:synthetic")
    g.add_argument("--templates", default="single", help="single | imagenet80 | a template with {}")
    g.add_argument("--text-mode", default="max", help="class definitions: max (concept max) | avg | single")
    g.add_argument("--bg-thresh", type=float, default=None, help="best cosine below this -> the background class")
    g.add_argument("--background", default="background", help="name of the background class")
