"""Segment images with a trained model and write colour overlays with a legend.

    python -m semivl_fast.predict --checkpoint runs/default --input photo.jpg --output out/
    python -m semivl_fast.predict --checkpoint runs/default --input folder/ --output out/ --classes "ball,coin,grass"

``--classes`` (names, a class file or a built-in set) re-targets the model to any class list: their text embeddings
come from the run's CLIP text encoder (its ``model.pretrained`` weights).

Zero-shot (no segmentation training; ViL-Seg clusters classified by text, or the MaskCLIP baseline)::

    python -m semivl_fast.predict --zero-shot --checkpoint runs/vilseg --classes "background,ball,coin,star" \
        --input photo.png --output out/ [--method maskclip] [--bg-thresh 0.2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from semivl_fast.data.transforms import get_normalization, normalize, resize_short_side
from semivl_fast.files import atomic_write
from semivl_fast.inference import predict_logits
from semivl_fast.text import build_text_embeddings, load_class_set
from semivl_fast.training import cli
from semivl_fast.training.checkpoint import load_trained_model
from semivl_fast.training.precision import PassContext, eval_context
from semivl_fast.training.prior import resolve_pretrained
from semivl_fast.training.vilseg.zeroshot import add_zero_shot_args, load_zero_shot_source
from semivl_fast.vilseg.zeroshot import build_segmenter, zero_shot_text
from semivl_fast.visualize import overlay

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            return files
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {path}")
    raise FileNotFoundError(f"input {path} does not exist")


def main(argv: list[str] | None = None) -> list[Path]:
    parser = cli.make_parser("python -m semivl_fast.predict", __doc__)
    parser.add_argument("--checkpoint", help="model.safetensors, last.pt or a run directory (with --zero-shot: a "
                        "ViL-Seg pretraining run, vilseg.safetensors or its last.pt)")
    parser.add_argument("--input", required=True, help="an image or a folder of images")
    parser.add_argument("--output", required=True, help="folder for the overlay PNGs")
    parser.add_argument("--classes", help="class names (comma-separated), a class file, or a built-in set")
    parser.add_argument("--short-side", type=int, default=0, help="resize images to this short side (0: keep)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_zero_shot_args(parser)
    args = parser.parse_args(argv)
    if not args.zero_shot and not args.checkpoint:
        parser.error("--checkpoint is required")
    if args.zero_shot and not args.classes:
        parser.error("--zero-shot needs --classes (names, a class file or a built-in set)")
    cli.start_tool()

    images = list_images(Path(args.input))
    if args.zero_shot:
        return _predict_zero_shot(args, images)
    model, cfg = load_trained_model(args.checkpoint, args.device)
    if args.classes:  # from the run's CLIP text encoder (built only if these embeddings are not cached yet)
        text = build_text_embeddings(args.classes, model_name=cfg.model.clip_model,
                                     pretrained=resolve_pretrained(cfg.model.pretrained), templates=cfg.model.templates,
                                     mode=cfg.model.decoder_text, cache_dir=cfg.model.text_cache_dir)
        model.set_text(text)
    fp32 = eval_context(torch.device(args.device), cfg.data.crop_size, model.backbone.patch_size)
    return _segment_images(images, args, cfg.data.norm, _class_names(model),
                           lambda x: predict_logits(lambda t: model(t), x, cfg.data.crop_size, cfg.eval.mode,
                                                    cfg.eval.stride, cfg.eval.merge), fp32)


def _segment_images(images: list[Path], args: argparse.Namespace, norm: str, names: list[str], scores_fn,
                    context: PassContext) -> list[Path]:
    """Normalise each image (after the optional short-side resize), take ``scores_fn``'s argmax (under ``context``),
    write its overlay."""
    mean, std = get_normalization(norm)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        img = Image.open(path).convert("RGB")
        if args.short_side:
            img = resize_short_side(img, args.short_side)
        with torch.no_grad(), context:
            labels = scores_fn(normalize(img, mean, std).unsqueeze(0).to(args.device)).argmax(1)[0].cpu().numpy()
        written.append(_write_overlay(img, labels, names, out_dir, path))
    return written


def _write_overlay(img: Image.Image, labels: np.ndarray, names: list[str], out_dir: Path, path: Path) -> Path:
    target = out_dir / f"{path.stem}_overlay.png"
    picture = overlay(np.asarray(img), labels, names)
    atomic_write(target, lambda tmp: picture.save(tmp, format="PNG"))  # never a half-written PNG
    print(f"{path} -> {target}")
    return target


def _predict_zero_shot(args: argparse.Namespace, images: list[Path]) -> list[Path]:
    src = load_zero_shot_source(args.checkpoint, args.clip_model, args.pretrained, args.device)
    classes = load_class_set(args.classes)
    text = zero_shot_text(getattr(src.model, "clip", src.model), src.model_name, classes, args.templates,
                          args.text_mode, src.weights).to(args.device)
    seg = build_segmenter(args.method, src.model, text, args.bg_thresh, args.background).to(args.device)
    # whole images of any size (no crop): fp32 with the default attention kernel
    fp32 = PassContext("none", torch.device(args.device))
    return _segment_images(images, args, src.norm, list(classes.classes), seg, fp32)


def _class_names(model) -> list[str]:
    text = model.text
    return list(text.classes) if len(text.classes) == text.num_classes else [str(i) for i in range(text.num_classes)]


if __name__ == "__main__":
    main(sys.argv[1:])
