"""Every per-dataset recipe (semivl_fast/training/configs/) resolves to the reference's training and evaluation
settings.

The expected values are literal facts from the reference (../shared/spec/semivl.md §2 optimizer table, §3.5, §4.4,
§4.5 recipe table, §5.3 evaluation protocol), not read back from the configs.
"""

import math

import pytest
import torch

from semivl_fast.data import get_spec
from semivl_fast.inference import predict_logits
from semivl_fast.training.config import RECIPES as CONFIGS
from semivl_fast.training.config import load_config, recipe_path

SPLITS = {
    "voc": ("92", "183", "366", "732", "1464"),
    "coco": ("1_512", "1_256", "1_128", "1_64", "1_32"),
    "ade": ("1_128", "1_64", "1_32", "1_16", "1_8"),
    "cityscapes": ("1_30", "1_16", "1_8", "1_4", "1_2"),
}

# Reference exp 40 (VOC), 42 (COCO), 43 (ADE20K), 44 (Cityscapes).
# lr: (base, backbone mult, effective backbone lr, effective head lr); eval: (mode, stride, merge, every_epochs).
EXPECTED = {
    "voc": dict(classes=21, crop=512, batch=2, epochs=80, iters=0, lr=(1e-4, 0.01, 1e-6, 1e-3),
                conf_mode="threshold", guidance_text="max", decoder_text="single", layers=(0, 4), conv_encoder=False,
                clip_renorm=False, skips=((768, 768), (32, 16)), eval=("sliding", 426, "logits", 1),
                resize="mmseg", val_resize=True),
    "coco": dict(classes=81, crop=512, batch=1, epochs=10, iters=0, lr=(4e-4, 0.001, 4e-7, 4e-3),
                 conf_mode="threshold", guidance_text="single", decoder_text="single", layers=(0, 4),
                 conv_encoder=False, clip_renorm=False, skips=((768, 768), (32, 16)),
                 eval=("sliding", 426, "logits", 1), resize="long_side", val_resize=False),
    "ade": dict(classes=150, crop=512, batch=1, epochs=40, iters=0, lr=(4e-4, 0.001, 4e-7, 4e-3),
                conf_mode="threshold", guidance_text="single", decoder_text="single", layers=(0, 4),
                conv_encoder=False, clip_renorm=False, skips=((768, 768), (32, 16)),
                eval=("sliding", 426, "logits", 1), resize="mmseg", val_resize=True),
    "cityscapes": dict(classes=19, crop=801, batch=1, epochs=None, iters=83_760, lr=(5e-5, 0.1, 5e-6, 5e-4),
                       conf_mode="confidence", guidance_text="max", decoder_text="avg", layers=(4,),
                       conv_encoder=True, clip_renorm=True, skips=((768, 256), (32, 32)),
                       eval=("grid", None, "probs", 10), resize="long_side", val_resize=False),
}

RECIPES = [(d, s) for d, splits in SPLITS.items() for s in splits]


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9)


@pytest.mark.parametrize("dataset,split", RECIPES, ids=[f"{d}-{s}" for d, s in RECIPES])
def test_recipe_matches_reference(dataset, split):
    path = CONFIGS / dataset / f"{split}.yaml"
    assert path.is_file(), f"missing recipe {path}"
    cfg = load_config(path)
    exp = EXPECTED[dataset]
    m, d, t, e = cfg.model, cfg.data, cfg.train, cfg.eval

    # data
    assert (d.dataset, d.split, d.crop_size, d.batch_size, d.norm) == (dataset, split, exp["crop"], exp["batch"],
                                                                       "imagenet")
    spec = get_spec(d.dataset)
    assert (spec.num_classes, spec.resize, spec.val_resize) == (exp["classes"], exp["resize"], exp["val_resize"])

    # model: OpenAI CLIP ViT-B/16 at the crop grid, spatial fine-tuning, one template
    assert (m.clip_model, m.pretrained, m.image_size, m.finetune, m.templates) == ("ViT-B-16", "openai", exp["crop"],
                                                                                    "attn", "single")
    assert m.classes == dataset and m.fp_dropout == 0.5
    assert m.reference_port  # §1: the reference's port of the vision tower (exact GELU, LayerNorm eps 1e-6)
    assert tuple(m.guidance_layers) == exp["layers"]
    assert (m.decoder_text, m.conv_encoder, m.clip_renorm) == (exp["decoder_text"], exp["conv_encoder"],
                                                               exp["clip_renorm"])
    assert (tuple(m.decoder.skip_in_channels), tuple(m.decoder.skip_channels)) == exp["skips"]

    # schedule
    if exp["iters"]:
        assert t.iters == exp["iters"]
    else:
        assert (t.iters, t.epochs) == (0, exp["epochs"])

    # optimizer: AdamW wd 0.01, poly 0.9, head x10; effective backbone / head / conv-encoder lr
    base, bb_mult, bb_lr, head_lr = exp["lr"]
    assert close(t.lr, base) and close(t.backbone_lr_mult, bb_mult) and close(t.head_lr_mult, 10.0)
    assert close(t.lr * t.backbone_lr_mult, bb_lr) and close(t.lr * t.head_lr_mult, head_lr)
    if exp["conv_encoder"]:
        assert close(t.lr * t.conv_encoder_lr_mult, 5e-6)
    assert close(t.weight_decay, 0.01) and close(t.poly_power, 0.9)
    assert t.amp == "none"  # the reference trains in fp32

    # UniMatch + dense CLIP guidance
    assert t.semi and t.use_fp and t.guidance and t.mix_partner == "same"  # §4.1: the same images, augmented anew
    assert t.conf_mode == exp["conf_mode"]
    if t.conf_mode == "threshold":
        assert close(t.conf_thresh, 0.95)
    assert t.guidance_text == exp["guidance_text"]
    assert tuple(t.guidance_lambda) == (0.1, 0.0)
    assert close(t.guidance_thresh, 0.9) and close(t.guidance_scale, 100.0)

    # evaluation
    mode, stride, merge, every_epochs = exp["eval"]
    assert (e.mode, e.merge, e.every, e.every_epochs, e.max_images) == (mode, merge, 0, every_epochs, 0)
    if stride is not None:
        assert e.stride == stride


def test_every_recipe_is_covered():
    found = {(p.parent.name, p.stem) for p in CONFIGS.glob("*/*.yaml")}
    assert found == set(RECIPES)


def test_cityscapes_grid_windows_as_the_reference():
    """UniMatch sliding_window on a 1024x2048 Cityscapes image with 801 windows: step int(801*2/3) = 534, border
    windows cut at the image edge (490 rows, 446 columns)."""
    cfg = load_config(CONFIGS / "cityscapes" / "1_16.yaml")
    seen = []

    def model(x):
        seen.append(tuple(x.shape[-2:]))
        return torch.zeros(x.shape[0], 2, *x.shape[-2:])

    predict_logits(model, torch.zeros(1, 1, 1024, 2048), cfg.data.crop_size, cfg.eval.mode, cfg.eval.stride,
                   cfg.eval.merge)
    rows, cols = (801, 490), (801, 801, 801, 446)
    assert seen == [(r, c) for r in rows for c in cols]


def test_voc_sliding_windows_as_the_reference():
    """zegclip_sliding_window: 512 windows, stride 426, ceil((H-512)/426)+1 windows per axis, clamped to the image."""
    cfg = load_config(CONFIGS / "voc" / "92.yaml")
    seen = []

    def model(x):
        seen.append(tuple(x.shape[-2:]))
        return torch.zeros(x.shape[0], 2, *x.shape[-2:])

    out = predict_logits(model, torch.zeros(1, 1, 512, 1000), cfg.data.crop_size, cfg.eval.mode, cfg.eval.stride,
                         cfg.eval.merge)
    assert seen == [(512, 512)] * 3 and out.shape == (1, 2, 512, 1000)  # x starts 0, 426, 488


def test_recipe_names_and_files(tmp_path):
    """``--config`` takes a recipe name (also in the repository's old ``configs/...yaml`` spelling) or a file."""
    assert recipe_path("voc/92") == recipe_path("configs/voc/92.yaml") == recipe_path("voc/92.yaml") == \
        CONFIGS / "voc" / "92.yaml"
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: " + str(CONFIGS / "synthetic.yaml") + "\ntrain:\n  iters: 7\n")
    assert recipe_path(str(mine)) == mine and load_config(str(mine)).train.iters == 7
    with pytest.raises(FileNotFoundError, match=r"no recipe of that name; recipes: .*voc/92"):
        recipe_path("voc/93")
