"""How a model pass computes: autocast precision (``train.amp``) and, on CPU, the attention kernel.

``amp``: ``none`` (fp32), ``bf16`` (autocast on CPU and GPU), ``fp16`` (GPU, with a grad scaler) or ``auto``: bf16
where the hardware computes it natively (CUDA GPUs with bf16, CPUs with AVX512-BF16 or AMX), fp32 elsewhere (an
older laptop CPU would emulate bf16 and run slower than fp32). Training applies it to the training passes only; the
evaluations during training compute in fp32, so their scores do not depend on ``train.amp`` and equal what
``python -m semivl_fast.evaluate`` reports for the same weights.

Attention: PyTorch's CPU flash-attention kernel is slow for short sequences, above all its bf16 backward (5x the
fp32 one at 65 tokens on a 2-core AVX-512 machine); the plain math path (two batched GEMMs and a softmax) is faster
there. ``PassContext`` therefore selects the math path on CPU for sequences of at most ``MATH_ATTENTION_MAX_TOKENS``
tokens; longer ones keep flash attention, which never materialises the (L, L) attention matrix.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

AMP_CHOICES = ("none", "bf16", "fp16", "auto")
MATH_ATTENTION_MAX_TOKENS = 256


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (so bf16 autocast is faster than fp32 there)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def check_amp(amp: str) -> None:
    """One clear error for a ``train.amp`` value that is not one of ``AMP_CHOICES``."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"train.amp={amp!r}; choose one of {', '.join(AMP_CHOICES)}")


def resolve_amp(amp: str, device: torch.device) -> str:
    """``amp`` with ``auto`` replaced by what it means on ``device``: ``bf16`` or ``none``."""
    check_amp(amp)
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("train.amp=fp16 needs a GPU; use bf16 (or auto) on CPU")
    if amp == "auto":
        return "bf16" if native_bf16(device) else "none"
    return amp


class PassContext:
    """A reusable (and nestable) ``with`` block for model passes: autocast at ``amp`` and, on CPU with sequences of
    at most ``MATH_ATTENTION_MAX_TOKENS`` tokens, the math attention kernel. ``amp`` must be resolved (not auto)."""

    def __init__(self, amp: str, device: torch.device, tokens: int | None = None) -> None:
        if resolve_amp(amp, device) != amp:
            raise ValueError(f"PassContext needs a resolved amp (none, bf16 or fp16), got {amp!r}")
        self.amp, self.device = amp, device
        self.math_attention = device.type == "cpu" and tokens is not None and tokens <= MATH_ATTENTION_MAX_TOKENS
        self._stacks: list[contextlib.ExitStack] = []

    def __enter__(self) -> PassContext:
        stack = contextlib.ExitStack()
        if self.amp != "none":
            dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
            stack.enter_context(torch.autocast(self.device.type, dtype=dtype))
        if self.math_attention:
            stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        self._stacks.append(stack)
        return self

    def __exit__(self, *exc) -> None:
        self._stacks.pop().close()

    def __repr__(self) -> str:
        return f"PassContext(amp={self.amp}, attention={'math' if self.math_attention else 'default'})"


def eval_context(device: torch.device, crop_size: int | tuple[int, int], patch_size: int) -> PassContext:
    """The pass context of evaluation and prediction: fp32, the attention kernel for this crop's sequence length."""
    return PassContext("none", device, vit_tokens(crop_size, patch_size))


def vit_tokens(image_size: int | tuple[int, int], patch_size: int) -> int:
    """Sequence length of a ViT on ``image_size`` inputs: whole patches (padded up) plus the class token."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    return math.ceil(h / patch_size) * math.ceil(w / patch_size) + 1
