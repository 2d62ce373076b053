"""Segment images with a trained model and write colour overlays with a legend.

    python -m semivl_fast.predict --checkpoint runs/default --input photo.jpg --output out/
    python -m semivl_fast.predict --checkpoint runs/default --input folder/ --output out/ --classes "ball,coin,grass"

``--classes`` (names, a class file or a built-in set) re-targets the model to any class list: their text embeddings
come from the run's CLIP text encoder (its ``model.pretrained`` weights).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from semivl_fast.data.transforms import get_normalization, normalize, resize_short_side
from semivl_fast.inference import predict_logits
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
    from semivl_fast.checkpoint import load_trained_model
    from semivl_fast.text import build_text_embeddings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="model.safetensors, last.pt or a run directory")
    parser.add_argument("--input", required=True, help="an image or a folder of images")
    parser.add_argument("--output", required=True, help="folder for the overlay PNGs")
    parser.add_argument("--classes", help="class names (comma-separated), a class file, or a built-in set")
    parser.add_argument("--short-side", type=int, default=0, help="resize images to this short side (0: keep)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    images = list_images(Path(args.input))
    model, cfg = load_trained_model(args.checkpoint, args.device)
    if args.classes:
        text = build_text_embeddings(args.classes, model_name=cfg.model.clip_model, pretrained=cfg.model.pretrained,
                                     templates=cfg.model.templates, mode=cfg.model.decoder_text,
                                     cache_dir=cfg.model.text_cache_dir)
        model.set_text(text)
    names = _class_names(model)
    mean, std = get_normalization(cfg.data.norm)
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        img = Image.open(path).convert("RGB")
        if args.short_side:
            img = resize_short_side(img, args.short_side)
        x = normalize(img, mean, std).unsqueeze(0).to(args.device)
        with torch.no_grad():
            scores = predict_logits(lambda t: model(t), x, cfg.data.crop_size, cfg.eval.mode, cfg.eval.stride,
                                    cfg.eval.merge)
        labels = scores.argmax(1)[0].cpu().numpy()
        target = out_dir / f"{path.stem}_overlay.png"
        tmp = target.with_name(f".{target.name}.tmp.png")
        overlay(np.asarray(img), labels, names).save(tmp)
        tmp.replace(target)  # never a half-written PNG
        written.append(target)
        print(f"{path} -> {target}")
    return written


def _class_names(model) -> list[str]:
    text = model.text
    return list(text.classes) if len(text.classes) == text.num_classes else [str(i) for i in range(text.num_classes)]


if __name__ == "__main__":
    main(sys.argv[1:])
