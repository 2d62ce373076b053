"""CLIP backbone: MaskCLIP value-path features against a naive re-computation, fine-tuning modes, sizes."""

import pytest
import torch
import torch.nn.functional as F

from semivl_fast.clip import create_clip
from semivl_fast.models.backbone import ClipBackbone, resize_pos_embed


def _tiny_backbone(path=None, clip_kw=None, **kw):
    clip = create_clip("semivl-tiny", pretrained=path, **(clip_kw or {}))
    return ClipBackbone(clip.visual, **{"image_size": 96, "guidance_layers": (0, 3), **kw}).eval()


def _naive_value_paths(visual, images):
    """Value path of every block by the spec's formula, on block inputs from open_clip's own forward."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], 1) + visual.positional_embedding
    x = visual.ln_pre(x)
    outs = []
    for block in visual.transformer.resblocks:
        y = block.ln_1(x)
        _, _, v = F.linear(y, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, -1)
        v = block.attn.out_proj(v) + x
        v = v + block.mlp(block.ln_2(v))
        outs.append(v[:, 1:])
        x = block(x)  # open_clip's normal path (nn.MultiheadAttention)
    return outs


def test_value_path_matches_naive_recomputation(tiny_clip_file):
    bb = _tiny_backbone(tiny_clip_file[1]).double()
    images = torch.randn(2, 3, 96, 96, dtype=torch.float64)
    out = bb(images)
    naive = _naive_value_paths(bb.visual, images)
    b, g = 2, 96 // 8
    for layer, feat in zip(bb.guidance_layers, out.guidance):
        expected = naive[layer].transpose(1, 2).reshape(b, -1, g, g)
        torch.testing.assert_close(feat, expected, atol=1e-10, rtol=1e-10)
    dense = F.normalize(bb.visual.ln_post(naive[-1]) @ bb.visual.proj, dim=-1)
    torch.testing.assert_close(out.dense, dense.transpose(1, 2).reshape(b, -1, g, g), atol=1e-10, rtol=1e-10)
    assert torch.allclose(out.dense.norm(dim=1), torch.ones(()).double())


def test_any_crop_size_pads_and_resizes_pos_embed(tiny_clip_file):
    bb = _tiny_backbone(tiny_clip_file[1])
    out = bb(torch.randn(1, 3, 70, 101))  # padded to 72 x 104 -> 9 x 13 grid
    assert out.dense.shape == (1, 64, 9, 13)
    assert [t.shape for t in out.guidance] == [(1, 128, 9, 13)] * 2


def test_pos_embed_resize_keeps_cls_and_identity():
    pos = torch.randn(1 + 14 * 14, 8)
    assert resize_pos_embed(pos, (14, 14)) is pos
    big = resize_pos_embed(pos, (32, 32))
    assert big.shape == (1 + 32 * 32, 8) and torch.equal(big[0], pos[0])


def test_finetune_modes_and_gradients_reach_only_trainable(tiny_clip_file):
    bb = _tiny_backbone(tiny_clip_file[1], finetune="attn").train()
    out = bb(torch.randn(2, 3, 96, 96))
    (out.dense.square().sum() + sum(t.mean() for t in out.guidance)).backward()
    for name, p in bb.visual.named_parameters():
        trainable = name == "positional_embedding" or ".attn." in name
        assert p.requires_grad == trainable, name
        if not trainable:
            assert p.grad is None, name
    assert bb.visual.positional_embedding.grad.abs().sum() > 0
    bb.set_finetune("frozen")
    assert not any(p.requires_grad for p in bb.parameters())
    bb.set_finetune("full")
    assert all(p.requires_grad for p in bb.parameters())
    with pytest.raises(ValueError, match="finetune"):
        bb.set_finetune("lora")


@pytest.mark.parametrize("crop, total, trainable, rows, grid", [
    (512, 86_828_544, 29_135_616, 1025, 32),  # 29.14 M trainable (attention + position embedding) of 86.83 M
    (801, 87_962_112, 30_269_184, 2501, 51),  # Cityscapes: a 50x50 table, resized per forward to the 51x51 grid
])
def test_vit_b16_spatial_finetuning_counts(crop, total, trainable, rows, grid):
    bb = ClipBackbone(create_clip("ViT-B-16").visual, image_size=crop, finetune="attn")
    assert sum(p.numel() for p in bb.parameters()) == total
    assert sum(p.numel() for p in bb.parameters() if p.requires_grad) == trainable
    assert bb.visual.positional_embedding.shape == (rows, 768)
    tokens, token_grid = bb._tokens(torch.randn(1, 3, crop, crop))
    assert token_grid == (grid, grid) and tokens.shape == (1, grid * grid + 1, 768)


def test_reference_port_switches_gelu_and_eps(tiny_clip_file):
    quick = _tiny_backbone(tiny_clip_file[1], clip_kw={"force_quick_gelu": True})
    assert all(type(b.mlp.gelu) is not torch.nn.GELU for b in quick.visual.transformer.resblocks)  # CLIP's own
    bb = _tiny_backbone(tiny_clip_file[1], clip_kw={"force_quick_gelu": True}, reference_port=True)
    assert all(m.eps == 1e-6 for m in bb.modules() if isinstance(m, torch.nn.LayerNorm))
    assert all(type(b.mlp.gelu) is torch.nn.GELU for b in bb.visual.transformer.resblocks)


@pytest.mark.parametrize("tag, quick", [("openai", True), ("laion2b_s34b_b88k", False)])
def test_pretrained_tags_build_the_activation_their_weights_were_trained_with(monkeypatch, tag, quick):
    """OpenAI's weights need QuickGELU in both towers (the plain ViT-B-16 config would silently use exact GELU)."""
    import open_clip

    seen = {}
    monkeypatch.setattr(open_clip, "create_model", lambda name, pretrained=None, **kw: seen.update(kw) or "model")
    assert create_clip("ViT-B-16", tag) == "model" and seen["force_quick_gelu"] is quick
    create_clip("ViT-B-16", tag, force_quick_gelu=False)  # the caller's choice wins
    assert seen["force_quick_gelu"] is False


def test_bad_guidance_layer_is_a_clear_error(tiny_clip_file):
    with pytest.raises(ValueError, match="guidance_layers"):
        _tiny_backbone(tiny_clip_file[1], guidance_layers=(0, 5))
