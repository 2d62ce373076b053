"""Reference checkpoint conversion, against the names and shapes of ../shared/spec/semivl_state_dict.md (parsed
here, not copied), and the Cityscapes ResNet stem."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semivl_fast.models.convert import (
    convert_clip_backbone_state_dict,
    convert_reference_state_dict,
    load_clip_backbone_file,
    load_reference_checkpoint,
    to_reference_state_dict,
)
from semivl_fast.models.decoder import DecoderConfig, LanguageGuidedDecoder
from semivl_fast.models.resnet_stem import ResNetStem, load_stem_checkpoint

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "semivl_state_dict.md"
Shapes = dict[str, tuple[int, ...]]


# ------------------------------------------------------------------------------------------ parsing the spec

def _shape(cell: str) -> tuple[int, ...]:
    inner = re.match(r"\(([^)]*)\)", cell.strip()).group(1)
    return tuple(int(d.replace(",", "")) for d in inner.split(", ") if d.strip(" ,"))


def _expand_key(key: str, shape_cell: str) -> Shapes:
    """``a.{w,b}`` → a.w, a.b (in order); a BatchNorm cell '(C,) each; `num_batches_tracked` ()' adds the counter."""
    m = re.search(r"\{([^}]*,[^}]*)\}", key)
    keys = [key[:m.start()] + alt + key[m.end():] for alt in m.group(1).split(",")] if m else [key]
    out = {k: _shape(shape_cell) for k in keys}
    if "num_batches_tracked" in shape_cell:
        out[keys[0].rsplit(".", 1)[0] + ".num_batches_tracked"] = ()
    return out


def _expand_rows(rows: list[tuple[str, str]], layers: int = 12) -> Shapes:
    """Consecutive ``{i}`` rows form one block, repeated for i = 0..layers-1 (state_dict order)."""
    out: Shapes = {}
    for is_block, group in itertools.groupby(rows, key=lambda r: "{i}" in r[0]):
        group = list(group)
        for i in range(layers) if is_block else [None]:
            for key, cell in group:
                out.update(_expand_key(key if i is None else key.replace("{i}", str(i)), cell))
    return out


def _parse_spec() -> tuple[Shapes, Shapes]:
    """(VOC checkpoint, Cityscapes checkpoint) key → shape, in the reference's order."""
    if not SPEC.is_file():
        pytest.skip(f"{SPEC} not available (../shared is not checked out)")
    section, rows, overrides = "", {"backbone": [], "decode_head": [], "conv_encoder": []}, {}
    for line in SPEC.read_text().splitlines():
        if line.startswith("## "):
            section = line.split()[1].rstrip(".")
            continue
        m = re.match(r"^\| `((backbone|decode_head|conv_encoder)\.[^`]+)` \| ([^|]+)\|(?: ([^|]+)\|)?", line)
        if not m:
            continue
        key, top, cell, cell2 = m.group(1), m.group(2), m.group(3), m.group(4)
        if section == "5" and cell2 is not None and cell2.strip().startswith("("):
            overrides[key] = _shape(cell2)  # the VOC → Cityscapes shape table
        elif section in ("2", "3") or (section == "5" and top == "conv_encoder"):
            rows[top].append((key, cell))
    backbone, head = _expand_rows(rows["backbone"]), _expand_rows(rows["decode_head"])
    clip = {k.replace("backbone.", "clip_encoder.", 1): s for k, s in backbone.items()}  # §4: same names/shapes
    voc = {**backbone, **head, **clip}
    cityscapes = {**{k: overrides.get(k, s) for k, s in {**backbone, **head}.items()}, **clip,
                  **_expand_rows(rows["conv_encoder"])}
    assert set(overrides) <= set(cityscapes)
    return voc, cityscapes


def _random(shapes: Shapes, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randint(0, 1000, (), dtype=torch.int64, generator=g) if k.endswith("num_batches_tracked")
            else torch.randn(s, generator=g) for k, s in shapes.items()}


def _skeleton(shapes: Shapes) -> dict[str, torch.Tensor]:
    """Same keys and ranks, one element each: enough for the key handling, cheap to save."""
    return {k: torch.full((1,) * len(s), float(i)) if s else torch.tensor(i) for i, (k, s) in enumerate(shapes.items())}


@pytest.fixture(scope="module")
def spec() -> tuple[Shapes, Shapes]:
    return _parse_spec()


@pytest.fixture(scope="module")
def visual() -> nn.Module:
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-16").visual


def _sub(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _load_visual(visual: nn.Module, sd: dict) -> None:
    """Strict load into open_clip's ViT-B-16 after resizing its positional_embedding parameter to the checkpoint's."""
    visual.positional_embedding = nn.Parameter(torch.empty_like(sd["positional_embedding"]))
    visual.load_state_dict(sd, strict=True)


def _assert_round_trip(ref: dict, back: dict) -> None:
    assert list(back) == list(ref)
    for k, v in ref.items():
        assert back[k].shape == v.shape and back[k].dtype == v.dtype, k
        assert torch.equal(back[k], v), k


# ------------------------------------------------------------------------------------------------------ tests

def test_spec_totals(spec):
    voc, cityscapes = spec
    assert len(voc) == 372
    assert sum(torch.Size(s).numel() for s in voc.values()) == 175_874_273

    def params(shapes, prefix):
        return sum(torch.Size(s).numel() for k, s in shapes.items() if k.startswith(prefix)
                   and not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert params(cityscapes, "backbone.") == 87_962_112
    assert params(cityscapes, "decode_head.") == 2_176_225
    assert params(cityscapes, "conv_encoder.") == 244_576
    assert sum(k.startswith("conv_encoder.") for k in cityscapes) == 78
    assert list(cityscapes)[-78:] == [k for k in cityscapes if k.startswith("conv_encoder.")]


def test_voc_round_trip(spec, visual):
    ref = _random(spec[0], seed=1)
    conv = convert_reference_state_dict(ref)
    assert conv.guidance is not None
    assert {k.split(".")[0] for k in conv.model} == {"backbone", "decoder"}
    _load_visual(visual, _sub(conv.model, "backbone.visual."))
    _load_visual(visual, _sub(conv.guidance, "visual."))
    assert visual.positional_embedding.shape == (1025, 768)
    LanguageGuidedDecoder(DecoderConfig.voc()).load_state_dict(_sub(conv.model, "decoder."), strict=True)
    # the 1×1-conv projection (E, D, 1, 1) becomes open_clip's (D, E) matrix: x @ proj
    x = torch.randn(2, 768, dtype=torch.float64)
    expected = F.conv2d(x[:, :, None, None], ref["clip_encoder.proj.weight"].double())[:, :, 0, 0]
    torch.testing.assert_close(x @ visual.proj.double(), expected)
    torch.testing.assert_close(visual.class_embedding, ref["clip_encoder.cls_token"].reshape(-1), rtol=0, atol=0)
    _assert_round_trip(ref, to_reference_state_dict(conv.model, conv.guidance))


def test_cityscapes_round_trip(spec, visual):
    ref = _random(spec[1], seed=2)
    conv = convert_reference_state_dict(ref)
    assert {k.split(".")[0] for k in conv.model} == {"backbone", "decoder", "conv_encoder"}
    _load_visual(visual, _sub(conv.model, "backbone.visual."))
    assert visual.positional_embedding.shape == (2501, 768)
    _load_visual(visual, _sub(conv.guidance, "visual."))
    assert visual.positional_embedding.shape == (1025, 768)
    LanguageGuidedDecoder(DecoderConfig.cityscapes()).load_state_dict(_sub(conv.model, "decoder."), strict=True)
    stem = ResNetStem()
    stem.load_state_dict(_sub(conv.model, "conv_encoder."), strict=True)
    assert stem.stem[1].num_batches_tracked == ref["conv_encoder.stem.1.num_batches_tracked"]
    _assert_round_trip(ref, to_reference_state_dict(conv.model, conv.guidance))


def test_training_checkpoint_file(spec, tmp_path):
    """best.pth: {'model': DDP state dict ('module.' keys), 'optimizer': ..., 'epoch': e}, loaded weights_only."""
    ref = _skeleton(spec[0])
    opt = torch.optim.AdamW(nn.Linear(2, 2).parameters())
    opt.step()
    path = tmp_path / "best.pth"
    torch.save({"model": {f"module.{k}": v for k, v in ref.items()}, "optimizer": opt.state_dict(), "epoch": 7}, path)
    conv = load_reference_checkpoint(path)
    assert conv.epoch == 7
    _assert_round_trip(ref, to_reference_state_dict(conv.model, conv.guidance))
    # the evaluation checkpoint layout: no clip_encoder, no prefix
    no_guidance = convert_reference_state_dict({k: v for k, v in ref.items() if "clip_encoder" not in k})
    assert no_guidance.guidance is None
    back = to_reference_state_dict(no_guidance.model, prefix="module.")
    assert list(back) == [f"module.{k}" for k in ref if "clip_encoder" not in k]


def test_clip_backbone_file(spec, visual, tmp_path):
    """clip2mmseg_ViT16_clip_backbone.pth: 'backbone.*' + unprefixed proj.weight (512, 768), 14×14 pos_embed."""
    shapes = {k: s for k, s in spec[0].items() if k.startswith("backbone.") and k != "backbone.proj.weight"}
    shapes["backbone.pos_embed"] = (1, 197, 768)
    shapes["proj.weight"] = (512, 768)
    sd = _random(shapes, seed=3)
    out = convert_clip_backbone_state_dict({"meta": {}, "state_dict": sd})
    _load_visual(visual, _sub(out, "visual."))
    assert visual.positional_embedding.shape == (197, 768)
    assert torch.equal(visual.proj, sd["proj.weight"].t())
    assert torch.equal(visual.transformer.resblocks[3].attn.in_proj_weight,
                       sd["backbone.layers.3.attn.attn.in_proj_weight"])
    path = tmp_path / "clip.pth"
    skeleton = _skeleton(shapes)
    torch.save({"meta": {}, "state_dict": skeleton}, path)
    assert list(load_clip_backbone_file(path)) == list(out)
    with pytest.raises(ValueError, match="convert_clip_backbone_state_dict"):
        convert_reference_state_dict({"meta": {}, "state_dict": skeleton})


def test_bad_keys_are_reported(spec):
    ref = _skeleton(spec[0])
    broken = {k: v for k, v in ref.items() if k != "decode_head.up2.conv.3.weight"}
    broken["decode_head.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"1 missing .*up2\.conv\.3\.weight.*1 unexpected .*extra\.weight"):
        convert_reference_state_dict(broken)
    with pytest.raises(ValueError, match=r"missing .*backbone\.cls_token"):
        convert_reference_state_dict({k: v for k, v in ref.items() if not k.startswith("backbone.")})
    with pytest.raises(ValueError, match=r"'backbone\.cls_token' must have shape \(1, 1, D\)"):
        convert_reference_state_dict({**ref, "backbone.cls_token": torch.zeros(3)})
    conv = convert_reference_state_dict(ref)
    with pytest.raises(ValueError, match=r"unexpected .*text_embeddings"):
        to_reference_state_dict({**conv.model, "text_embeddings": torch.zeros(1)})
    assert list(to_reference_state_dict({**conv.model, "text_embeddings": torch.zeros(1)}, strict=False)) == [
        k for k in ref if not k.startswith("clip_encoder.")]


def test_resnet_stem_shape_and_size():
    stem = ResNetStem().eval()
    assert sum(p.numel() for p in stem.parameters()) == 244_576
    assert len(stem.state_dict()) == 78
    with torch.no_grad():
        assert stem(torch.randn(1, 3, 801, 801)).shape == (1, 256, 201, 201)
        assert stem(torch.randn(2, 3, 33, 50)).shape == (2, 256, 9, 13)


def test_resnet_stem_checkpoint(tmp_path):
    source = ResNetStem()
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    mmseg = {"state_dict": {**source.state_dict(), "layer2.0.conv1.weight": torch.zeros(1),
                            "fc.weight": torch.zeros(1)}}
    torch.save(mmseg, tmp_path / "resnet101_v1c.pth")
    target = ResNetStem()
    load_stem_checkpoint(target, tmp_path / "resnet101_v1c.pth")
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))
    # timm deep-stem names (conv1.{0,1,3,4,6}, bn1) and a 'backbone.' prefix
    timm_names = {"stem.0.": "conv1.0.", "stem.1.": "conv1.1.", "stem.3.": "conv1.3.", "stem.4.": "conv1.4.",
                  "stem.6.": "conv1.6.", "stem.7.": "bn1."}
    timm = {}
    for k, v in source.state_dict().items():
        for ours, theirs in timm_names.items():
            if k.startswith(ours):
                k = theirs + k[len(ours):]
        timm[f"backbone.{k}"] = v
    torch.save(timm, tmp_path / "timm.pth")
    target = ResNetStem()
    load_stem_checkpoint(target, tmp_path / "timm.pth")
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))
    torch.save({k: v for k, v in source.state_dict().items() if not k.startswith("layer1.2.")}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"lacks 18 stem/layer1 entries.*layer1\.2\.conv1\.weight"):
        load_stem_checkpoint(ResNetStem(), tmp_path / "bad.pth")


@pytest.mark.parametrize("variant", ["voc", "cityscapes"])
def test_reference_checkpoint_loads_into_semivl_and_round_trips(variant):
    """A checkpoint with exactly the reference's names and shapes loads strictly into SemiVL and converts back."""
    from semivl_fast.models.semivl import SemiVLConfig, semivl_from_reference

    shapes = _parse_spec()[0 if variant == "voc" else 1]
    ref = {k: (torch.randn(s) if s else torch.tensor(7)) for k, s in shapes.items()}
    model, guidance = semivl_from_reference({"model": {f"module.{k}": v for k, v in ref.items()}, "epoch": 3},
                                           SemiVLConfig(classes="cat,dog"))
    assert model.backbone.visual.transformer.resblocks[0].ln_1.eps == 1e-6
    back = to_reference_state_dict(model.state_dict(), guidance)
    assert list(back) == list(ref)
    for k, v in ref.items():
        assert torch.equal(back[k], v), k
    with torch.no_grad():
        size = 64 if variant == "voc" else 72
        assert model.eval()(torch.randn(1, 3, size, size)).shape == (1, 2, size, size)
