"""How good is the unlabeled signal? Score the pseudo-labels SemiVL trains on against the unlabeled images' masks.

    python experiments/pseudo_label_quality.py runs/default                  # a trained run: student + CLIP guidance
    python experiments/pseudo_label_quality.py runs/default --images 200 --threshold 0.95

For each source, on whole unlabeled images (no augmentation; the synthetic world and VOC keep masks for them):

- student: the trained run's weak-view prediction, ``softmax(logits)`` kept where confidence >= ``--threshold``
  (the UniMatch pseudo-labels at the end of training);
- clip: the frozen guidance CLIP of the run's config, ``softmax(100 s)`` kept where confidence >= 0.9
  (the dense CLIP guidance labels).

Printed per source: coverage (kept fraction of the labelled pixels), pixel accuracy of the kept labels, accuracy of
all argmax labels, and the mIoU of the argmax labels. A signal only helps when it is both broad and more accurate
than what the labeled images already teach.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from semivl_fast.data import IGNORE_INDEX, SemiDataset, get_spec
from semivl_fast.data.splits import split_path
from semivl_fast.files import atomic_write
from semivl_fast.metrics import intersection_union, miou
from semivl_fast.training.checkpoint import load_trained_model
from semivl_fast.training.data import class_set_for, resolve_data
from semivl_fast.training.guidance import build_guidance
from semivl_fast.training.precision import eval_context
from semivl_fast.training.prior import resolve_model_config


def score(probs: torch.Tensor, mask: torch.Tensor, threshold: float, num_classes: int) -> dict[str, torch.Tensor]:
    """Counts for one image: probs (N, H, W), mask (H, W) with 255 = ignore."""
    conf, label = probs.max(0)
    valid = mask != IGNORE_INDEX
    kept = valid & (conf >= threshold)
    inter, union = intersection_union(label[None], mask[None], num_classes)
    return {"valid": valid.sum(), "kept": kept.sum(), "kept_right": (kept & (label == mask)).sum(),
            "right": (valid & (label == mask)).sum(), "inter": inter, "union": union}


def summarise(totals: dict[str, torch.Tensor]) -> dict[str, float]:
    return {"coverage": float(totals["kept"] / totals["valid"]) * 100,
            "kept_accuracy": float(totals["kept_right"] / totals["kept"].clamp_min(1)) * 100,
            "accuracy": float(totals["right"] / totals["valid"]) * 100,
            "miou": miou(totals["inter"], totals["union"])[0]}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a training run's folder (or its weights file)")
    ap.add_argument("--images", type=int, default=300, help="unlabeled images to score (the first N of the list)")
    ap.add_argument("--threshold", type=float, default=None, help="student threshold (default: the run's tau)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    model, cfg = load_trained_model(args.run, args.device)
    model.eval()
    root, split_dir = resolve_data(cfg.data)
    spec = get_spec(cfg.data.dataset)
    unlabeled = SemiDataset(spec, root, split_path(split_dir, spec, cfg.data.split, "unlabeled"), "val",
                            crop_size=cfg.data.crop_size, normalization=cfg.data.norm)
    guidance = build_guidance(resolve_model_config(cfg.model), class_set_for(cfg.model.classes, cfg.data.dataset, root),
                              cfg.train.guidance_text).to(device)
    tau = cfg.train.conf_thresh if args.threshold is None else args.threshold
    sources = {"student": (tau, 1.0), "clip": (cfg.train.guidance_thresh, cfg.train.guidance_scale)}
    totals: dict[str, dict[str, torch.Tensor]] = {}
    context = eval_context(device, cfg.data.crop_size, model.backbone.patch_size)
    with torch.no_grad(), context:
        for i in range(min(args.images, len(unlabeled))):
            image, mask, _ = unlabeled[i]
            image, mask = image[None].to(device), mask.to(device)
            size = tuple(mask.shape)
            logits = {"student": model(image), "clip": guidance(image)}
            for name, out in logits.items():
                thresh, scale = sources[name]
                out = F.interpolate(out.float(), size=size, mode="bilinear", align_corners=False)
                counts = score(torch.softmax(scale * out[0], 0), mask, thresh, model.num_classes)
                acc = totals.setdefault(name, {})
                for k, v in counts.items():
                    acc[k] = acc[k] + v if k in acc else v.clone()
    result = {name: summarise(t) for name, t in totals.items()}
    print(f"pseudo-labels on {min(args.images, len(unlabeled))} unlabeled images of {cfg.data.dataset} "
          f"split {cfg.data.split}:")
    print("| source | threshold | coverage % | accuracy of kept % | accuracy of argmax % | mIoU of argmax |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in result.items():
        print(f"| {name} | {sources[name][0]} | {r['coverage']:.1f} | {r['kept_accuracy']:.1f} | "
              f"{r['accuracy']:.1f} | {r['miou']:.1f} |")
    out = Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent
    atomic_write(out / "pseudo_label_quality.json", lambda tmp: tmp.write_text(json.dumps(result, indent=1)))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
