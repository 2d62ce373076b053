"""The whole SemiVL network on a tiny config: forward/backward, trainable set, FP branch, torch.compile."""

import pytest
import torch

from semivl_fast.models.decoder import DecoderConfig
from semivl_fast.models.semivl import SemiVLConfig, build_semivl

TINY_DECODER = DecoderConfig(channels=32, text_channels=32, ffn_channels=64, aspp_rates=(1, 2, 3),
                             up_channels=(32, 16), skip_channels=(8, 8))


def tiny_config(path, **kw):
    return SemiVLConfig(**{"clip_model": "semivl-tiny", "pretrained": path, "image_size": 64,
                           "guidance_layers": (0, 3), "classes": "cat,dog,grass", "decoder": TINY_DECODER, **kw})


@pytest.fixture
def tiny_model(tiny_clip_file, tmp_path):
    return build_semivl(tiny_config(tiny_clip_file[1], text_cache_dir=str(tmp_path)))


def test_forward_backward_reaches_only_trainable_parameters(tiny_model):
    model = tiny_model.train()
    images = torch.randn(2, 3, 64, 64)
    logits = model(images)
    assert logits.shape == (2, 3, 64, 64)
    assert model(images, upsample=False).shape == (2, 3, 32, 32)  # 4x the 8x8 token grid
    logits.logsumexp(1).mean().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}"
        else:
            assert p.grad is None, f"frozen {name} got a gradient"
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable and all(".attn." in n or n.endswith("positional_embedding") for n in trainable)
    assert all(p.requires_grad for p in model.decoder.parameters())


def test_feature_perturbation_branch(tiny_model):
    model = tiny_model.train()
    images = torch.randn(2, 3, 64, 64)
    torch.manual_seed(3)
    clean, perturbed = model(images, need_fp=True)
    assert clean.shape == perturbed.shape == (2, 3, 64, 64)
    torch.testing.assert_close(clean, model(images), atol=1e-5, rtol=1e-5)  # the clean half is the plain forward
    assert not torch.allclose(clean, perturbed)


def test_feature_perturbation_drops_channels_of_every_encoder_output(tiny_model, monkeypatch):
    """dropout2d(0.5) on the dense embedding and on every skip map (UniMatch's FP), clean copies kept alongside."""
    import semivl_fast.models.semivl as semivl_module

    dense, skips = tiny_model.encode(torch.randn(2, 3, 64, 64))
    seen = []
    real = semivl_module.F.dropout2d
    monkeypatch.setattr(semivl_module.F, "dropout2d",
                        lambda t, p, training: seen.append((tuple(t.shape), p, training)) or real(t, p, training))
    tiny_model.train()(torch.randn(2, 3, 64, 64), need_fp=True)
    assert seen == [(tuple(t.shape), 0.5, True) for t in (dense, *skips)]


def test_concept_max_decoder_and_set_text(tiny_clip_file, tmp_path):
    from semivl_fast.text import build_text_embeddings

    model = build_semivl(tiny_config(tiny_clip_file[1], classes="voc", decoder_text="max",
                                     text_cache_dir=str(tmp_path))).eval()
    assert model.text_embeddings.shape[0] == 98 and model.num_classes == 21
    with torch.no_grad():
        assert model(torch.randn(1, 3, 48, 40)).shape == (1, 21, 48, 40)
        new = build_text_embeddings("cat,dog", model_name="semivl-tiny", pretrained=tiny_clip_file[1],
                                    cache_dir=tmp_path)
        model.set_text(new)
        assert model(torch.randn(1, 3, 48, 40)).shape == (1, 2, 48, 40)


def test_conv_encoder_variant(tiny_clip_file, tmp_path):
    cfg = tiny_config(tiny_clip_file[1], guidance_layers=(3,), conv_encoder=True, text_cache_dir=str(tmp_path))
    model = build_semivl(cfg)
    assert model.decoder.cfg.skip_in_channels == (128, 256)
    assert model(torch.randn(1, 3, 72, 72)).shape == (1, 3, 72, 72)


def test_skip_count_mismatch_is_a_clear_error(tiny_clip_file, tmp_path):
    with pytest.raises(ValueError, match="upsampling stages"):
        build_semivl(tiny_config(tiny_clip_file[1], guidance_layers=(0, 1, 3), text_cache_dir=str(tmp_path)))


@pytest.mark.slow
def test_torch_compile_forward_matches_eager(tiny_model):
    model = tiny_model.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        eager = model(images)
        compiled = torch.compile(model, fullgraph=True)(images)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=1e-4)
