"""train.amp resolution (auto -> bf16 where native) and the pass context (autocast + CPU attention kernel)."""

import contextlib

import pytest
import torch
from torch import nn

from semivl_fast.training import precision
from semivl_fast.training.precision import MATH_ATTENTION_MAX_TOKENS, PassContext, resolve_amp, vit_tokens

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_exactly_where_native(monkeypatch, native):
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    assert resolve_amp("auto", CPU) == ("bf16" if native else "none")
    assert resolve_amp("none", CPU) == "none" and resolve_amp("bf16", CPU) == "bf16"


def test_bad_amp_values_say_what_to_do():
    with pytest.raises(ValueError, match="choose one of none, bf16, fp16, auto"):
        resolve_amp("fp32", CPU)
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        resolve_amp("fp16", CPU)
    with pytest.raises(ValueError, match="resolved amp"):
        PassContext("auto", CPU)


def test_native_bf16_probe_answers_on_this_machine():
    assert isinstance(precision.native_bf16(CPU), bool)
    assert precision.native_bf16(torch.device("meta")) is False


def test_vit_tokens_counts_padded_patches_and_the_class_token():
    assert vit_tokens(96, 8) == 145
    assert vit_tokens((64, 36), 8) == 8 * 5 + 1
    assert vit_tokens(512, 16) == 1025


def _flash_enabled() -> bool:
    return torch.backends.cuda.flash_sdp_enabled()


def test_context_sets_autocast_and_math_attention_and_restores_them():
    ctx = PassContext("bf16", CPU, tokens=145)
    assert ctx.math_attention and _flash_enabled()
    for _ in range(2):  # reusable
        with ctx:
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            assert not _flash_enabled() and torch.backends.cuda.math_sdp_enabled()
            with ctx:  # and nestable
                assert not _flash_enabled()
            assert not _flash_enabled() and torch.is_autocast_enabled("cpu")
        assert _flash_enabled() and not torch.is_autocast_enabled("cpu")


def test_long_sequences_and_gpus_keep_the_default_attention():
    assert not PassContext("none", CPU, tokens=MATH_ATTENTION_MAX_TOKENS + 1).math_attention
    assert not PassContext("none", CPU).math_attention
    with PassContext("none", CPU, tokens=1025):
        assert _flash_enabled() and not torch.is_autocast_enabled("cpu")


def test_math_attention_is_the_same_function():
    """An open_clip-style attention block gives the same output and gradients (fp32) under either kernel."""
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(64, 4, batch_first=True)
    x = torch.randn(5, 37, 64, requires_grad=True)

    def run(ctx):
        x.grad = None
        attn.zero_grad()
        with ctx:
            out = attn(x, x, x, need_weights=False)[0]
        out.square().sum().backward()
        return out.detach(), x.grad.clone(), attn.in_proj_weight.grad.clone()

    for a, b in zip(run(contextlib.nullcontext()), run(PassContext("none", CPU, tokens=37))):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_prior_key_holds_what_auto_means_here(monkeypatch):
    from semivl_fast.training import prior

    keys = {amp: prior.prior_key(overrides=[f"train.amp={amp}"]) for amp in ("none", "bf16")}
    assert keys["none"] != keys["bf16"]
    for native, same in ((True, "bf16"), (False, "none")):
        monkeypatch.setattr(precision, "native_bf16", lambda device, n=native: n)
        assert prior.prior_key(overrides=["train.amp=auto"]) == keys[same]


def test_bad_amp_fails_before_anything_is_written(tmp_path):
    from semivl_fast import pretrain, train

    for main in (train.main, pretrain.main):
        with pytest.raises(ValueError, match=r"train\.amp='fp32'"):
            main(["train.amp=fp32", f"train.out_dir={tmp_path / 'run'}"])
        assert not (tmp_path / "run").exists()
