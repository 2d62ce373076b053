"""The language-guided decoder: sizes, shapes, each block against a naive float64 re-computation, the whole head
against a reference-structured naive head (reference module names, loaded through the converter), gradients,
torch.compile."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semivl_fast.models.convert import convert_section
from semivl_fast.models.decoder import (
    ClassAggregation,
    ClassAttention,
    DecoderConfig,
    LanguageGuidedDecoder,
    SpatialAggregation,
    Up,
)
from semivl_fast.models.reference_head import ReferenceSemantic, ReferenceVLGHead

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "semivl_state_dict.md"
TINY = DecoderConfig(embed_dim=16, channels=32, text_channels=16, num_heads=2, ffn_channels=64,
                     up_channels=(32, 16), skip_in_channels=(24, 8), skip_channels=(8, 4))
F64 = {"atol": 1e-10, "rtol": 1e-10}


def _randomize(module: nn.Module) -> nn.Module:
    """Non-trivial values everywhere (GroupNorm/LayerNorm affine included), so no parameter is a no-op."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            is_norm_scale = p.dim() == 1 and name.endswith("weight")
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if is_norm_scale else 0.0))
    return module


def _inputs(cfg: DecoderConfig, b: int, n: int, h: int, w: int, skip_sizes=None, dtype=torch.float64):
    dense = F.normalize(torch.randn(b, cfg.embed_dim, h, w, dtype=dtype), dim=1)
    sizes = skip_sizes or [(h, w)] * len(cfg.skip_in_channels)
    skips = [torch.randn(b, c, *s, dtype=dtype) for c, s in zip(cfg.skip_in_channels, sizes)]
    text = F.normalize(torch.randn(n, cfg.embed_dim, dtype=dtype), dim=-1)
    return dense, skips, text


def _spec_decode_head() -> dict[str, tuple[int, ...]]:
    if not SPEC.is_file():
        pytest.skip(f"{SPEC} not available")
    rows = re.findall(r"^\| `decode_head\.([^`]+)` \| \(([^)]*)\) \|", SPEC.read_text(), flags=re.M)
    return {k: tuple(int(d) for d in s.split(",") if d.strip()) for k, s in rows}


# ------------------------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize(("cfg", "expected", "skip_hw"), [(DecoderConfig.voc(), 2_217_185, (8, 8)),
                                                          (DecoderConfig.cityscapes(), 2_176_225, (31, 31))])
def test_real_configs(cfg, expected, skip_hw):
    """Parameter counts of the reference heads; a small forward (the shallow skip: v0, or the ResNet map)."""
    decoder = LanguageGuidedDecoder(cfg)
    assert sum(p.numel() for p in decoder.parameters()) == expected
    assert len(decoder.state_dict()) == 68
    dense, skips, text = _inputs(cfg, 1, 2, 8, 8, skip_sizes=[(8, 8), skip_hw], dtype=torch.float32)
    with torch.no_grad():
        assert decoder(dense, skips, text).shape == (1, 2, 32, 32)


def test_naive_head_has_reference_names():
    """The oracle below is only as good as its names: they must be the spec's decode_head keys and shapes."""
    spec = _spec_decode_head()
    naive = {k: tuple(v.shape) for k, v in ReferenceVLGHead(DecoderConfig.voc()).state_dict().items()}
    assert list(naive.items()) == list(spec.items())


@pytest.mark.parametrize("n", [1, 3, 21])
def test_matches_reference_structured_head(n):
    """Whole decoder vs the naive reference head in float64, weights mapped by the converter; odd 7×9 grid
    (AvgPool floors to 1×2), skip maps of other sizes than the ConvT outputs."""
    torch.manual_seed(n)
    naive = _randomize(ReferenceVLGHead(TINY)).double()
    ours = LanguageGuidedDecoder(TINY).double()
    ours.load_state_dict(convert_section(naive.state_dict(), "decode_head"), strict=True)
    dense, skips, text = _inputs(TINY, 2, n, 7, 9, skip_sizes=[(7, 9), (13, 20)])
    out = ours(dense, skips, text)
    assert out.shape == (2, n, 28, 36)
    torch.testing.assert_close(out, naive(dense, skips, text), **F64)


def test_cityscapes_skip_sizes():
    """Cityscapes: the ResNet map (201² for 801 crops) is projected, then resized to the ConvT output (204²)."""
    cfg = dataclasses.replace(TINY, skip_in_channels=(24, 12), skip_channels=(8, 8))
    naive = _randomize(ReferenceVLGHead(cfg)).double()
    ours = LanguageGuidedDecoder(cfg).double()
    ours.load_state_dict(convert_section(naive.state_dict(), "decode_head"), strict=True)
    dense, skips, text = _inputs(cfg, 1, 4, 12, 12, skip_sizes=[(12, 12), (45, 45)])
    out = ours(dense, skips, text)
    assert out.shape == (1, 4, 48, 48)
    torch.testing.assert_close(out, naive(dense, skips, text), **F64)


def test_class_attention_matches_multihead_attention():
    attn = _randomize(ClassAttention(48, 4)).double()
    mha = nn.MultiheadAttention(48, 4, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.qkv.weight)
        mha.in_proj_bias.copy_(attn.qkv.bias)
        mha.out_proj.weight.copy_(attn.proj.weight)
        mha.out_proj.bias.copy_(attn.proj.bias)
    x = torch.randn(5, 7, 48, dtype=torch.float64)
    torch.testing.assert_close(attn(x), mha(x, x, x, need_weights=False)[0], **F64)


def test_class_aggregation_matches_naive():
    agg = _randomize(ClassAggregation(TINY)).double()
    ref = nn.ModuleList([ReferenceSemantic(TINY) for _ in range(TINY.num_layers)]).double()
    text_proj = nn.Linear(TINY.embed_dim, TINY.text_channels).double()
    with torch.no_grad():
        for ours, theirs in zip(agg.layers, ref):
            t = theirs.transformer
            t.ln1.load_state_dict(ours.norm1.state_dict())
            t.ln2.load_state_dict(ours.norm2.state_dict())
            t.attn.attn.in_proj_weight.copy_(ours.attn.qkv.weight)
            t.attn.attn.in_proj_bias.copy_(ours.attn.qkv.bias)
            t.attn.attn.out_proj.load_state_dict(ours.attn.proj.state_dict())
            t.ffn.layers[0][0].load_state_dict(ours.mlp.fc1.state_dict())
            t.ffn.layers[1].load_state_dict(ours.mlp.fc2.state_dict())
        text_proj.load_state_dict(agg.text_proj.state_dict())
    b, n, h, w = 2, 5, 9, 7
    x = torch.randn(b * n, TINY.channels, h, w, dtype=torch.float64)
    text = torch.randn(n, TINY.embed_dim, dtype=torch.float64)
    expected = x.reshape(b, n, -1, h, w).permute(0, 2, 1, 3, 4)
    t = F.relu(text_proj(text)).expand(b, -1, -1)
    for layer in ref:
        expected = layer(expected, t)
    expected = expected.permute(0, 2, 1, 3, 4).reshape(b * n, -1, h, w)
    torch.testing.assert_close(agg(x, text), expected, **F64)


def test_spatial_aggregation_matches_naive():
    aspp = _randomize(SpatialAggregation(32, (6, 12, 18))).double()
    x = torch.randn(3, 32, 11, 13, dtype=torch.float64)
    feats = [b(x) for b in aspp.branches]
    pooled = aspp.image_pool(F.adaptive_avg_pool2d(x, 1))
    feats.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=True))
    expected = x + aspp.project(torch.cat(feats, dim=1))
    torch.testing.assert_close(aspp(x), expected, **F64)


def test_up_split_matches_concat():
    up = _randomize(Up(32, 16, 8)).double()
    b, n = 2, 3
    x = torch.randn(b * n, 32, 5, 6, dtype=torch.float64)
    skip = torch.randn(b, 8, 7, 4, dtype=torch.float64)
    u = up.up(x)
    s = F.interpolate(skip, size=u.shape[-2:], mode="bilinear", align_corners=True).repeat_interleave(n, dim=0)
    y = F.relu(up.norm1(up.conv1(torch.cat([u, s], dim=1))))
    expected = F.relu(up.norm2(up.conv2(y)))
    torch.testing.assert_close(up(x, skip), expected, **F64)


def test_template_axis_is_ensembled():
    decoder = LanguageGuidedDecoder(TINY).double()
    dense, skips, _ = _inputs(TINY, 1, 3, 8, 8)
    text = torch.randn(3, 4, TINY.embed_dim, dtype=torch.float64)
    ensembled = F.normalize(F.normalize(text, dim=-1).mean(1), dim=-1)
    torch.testing.assert_close(decoder(dense, skips, text), decoder(dense, skips, ensembled), **F64)


def test_backward_reaches_every_parameter():
    decoder = _randomize(LanguageGuidedDecoder(TINY))
    dense, skips, text = _inputs(TINY, 2, 3, 8, 8, dtype=torch.float32)
    decoder(dense, skips, text).square().mean().backward()
    silent = [k for k, p in decoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent


def test_channels_last_is_layout_only():
    """channels_last (the default) changes memory layout, not math: same output and gradients as NCHW (float64),
    and the upsampling maps really are channels-last."""
    torch.manual_seed(0)
    nchw = _randomize(LanguageGuidedDecoder(dataclasses.replace(TINY, channels_last=False))).double()
    nhwc = LanguageGuidedDecoder(TINY).double()
    nhwc.load_state_dict(nchw.state_dict())
    dense, skips, text = _inputs(TINY, 2, 5, 7, 9, skip_sizes=[(7, 9), (13, 20)])
    seen = []
    nhwc.upsampling.stages[-1].conv2.register_forward_hook(
        lambda m, i, o: seen.append(i[0].is_contiguous(memory_format=torch.channels_last) and not i[0].is_contiguous()))
    grads = []
    for dec in (nchw, nhwc):
        out = dec(dense, skips, text)
        out.square().mean().backward()
        grads.append((out.detach(), [p.grad for p in dec.parameters()]))
    assert seen == [True]
    torch.testing.assert_close(grads[1][0], grads[0][0], **F64)
    for a, b in zip(grads[1][1], grads[0][1]):
        torch.testing.assert_close(a, b, **F64)


def test_bad_inputs_are_reported():
    decoder = LanguageGuidedDecoder(TINY)
    dense, skips, text = _inputs(TINY, 1, 2, 8, 8, dtype=torch.float32)
    with pytest.raises(ValueError, match="dense must be"):
        decoder(dense[:, :8], skips, text)
    with pytest.raises(ValueError, match="smaller than pool_size"):
        decoder(dense[..., :3, :3], skips, text)
    with pytest.raises(ValueError, match="skip maps"):
        decoder(dense, skips[:1], text)
    with pytest.raises(ValueError, match=r"skips\[1\]"):
        decoder(dense, [skips[0], skips[0]], text)
    with pytest.raises(ValueError, match="text must be"):
        decoder(dense, skips, text[:, :4])
    with pytest.raises(ValueError, match="skip_channels"):
        DecoderConfig(skip_channels=(128, 16)).validate()


@pytest.mark.slow
def test_compile_matches_eager():
    decoder = _randomize(LanguageGuidedDecoder(TINY))
    dense, skips, text = _inputs(TINY, 2, 3, 8, 8, dtype=torch.float32)
    compiled = torch.compile(decoder, fullgraph=True)
    with torch.no_grad():
        expected = decoder(dense, skips, text)
        actual = compiled(dense, skips, text)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
