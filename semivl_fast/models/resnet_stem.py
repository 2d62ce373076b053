"""The Cityscapes ``conv_encoder``: ResNet-101-v1c deep stem + max-pool + layer1 (mmseg ``ResNetV1c``, 1 stage).

Parameter names equal mmseg's (``stem.{0,1,3,4,6,7}``, ``layer1.{j}.conv1/bn1/.../downsample.{0,1}``), so mmseg
checkpoints load as they are. Output: (B, 256, H/4, W/4) rounded like the convs (801 → 401 → 201).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck

# timm's deep-stem ResNets ("resnet101c"-style) name the same stem conv1.{0,1,3,4,6} + bn1
_TIMM_STEM = {"conv1.0.": "stem.0.", "conv1.1.": "stem.1.", "conv1.3.": "stem.3.", "conv1.4.": "stem.4.",
              "conv1.6.": "stem.6.", "bn1.": "stem.7."}


class ResNetStem(nn.Module):
    """Deep stem (3×3 s2 3→32, 3×3 32→32, 3×3 32→64, each BN + ReLU), 3×3 s2 max-pool, layer1 (3 Bottlenecks)."""

    out_channels = 256

    def __init__(self, in_channels: int = 3, stem_channels: int = 64, blocks: int = 3):
        super().__init__()
        half = stem_channels // 2
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, half, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
            nn.Conv2d(half, stem_channels, 3, padding=1, bias=False), nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        width = Bottleneck.expansion * 64
        downsample = nn.Sequential(nn.Conv2d(stem_channels, width, 1, bias=False), nn.BatchNorm2d(width))
        self.layer1 = nn.Sequential(
            Bottleneck(stem_channels, 64, downsample=downsample),
            *[Bottleneck(width, 64) for _ in range(blocks - 1)])

    def forward(self, x: Tensor) -> Tensor:
        """x (B, 3, H, W) ImageNet-normalised → (B, 256, H', W'), H' = ⌈⌈H/2⌉/2⌉."""
        return self.layer1(self.maxpool(self.stem(x)))


def stem_state_dict_from_checkpoint(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keep the ``stem.*`` and ``layer1.*`` entries of an mmseg/timm ResNet state dict (prefixes removed)."""
    for key in ("state_dict", "model"):
        if key in state and isinstance(state[key], Mapping):
            state = state[key]
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        for prefix in ("module.", "backbone.", "conv_encoder."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        if not any(k.startswith(p) for p in ("stem.", "conv1.", "bn1.", "layer1.")):
            continue
        for timm, ours in _TIMM_STEM.items():
            if k.startswith(timm):
                k = ours + k[len(timm):]
                break
        out[k] = v
    return out


def load_stem_checkpoint(model: ResNetStem, path: str | os.PathLike) -> None:
    """Load stem + layer1 from a local mmseg (``resnet101_v1c-e67eebb6.pth``) or timm checkpoint, strictly."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ResNet checkpoint {os.fspath(path)!r} does not exist; download "
                                "resnet101_v1c-e67eebb6.pth (open-mmlab) and pass its local path")
    state = torch.load(path, map_location="cpu", weights_only=True)
    sd = stem_state_dict_from_checkpoint(state)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        raise ValueError(f"ResNet checkpoint {os.fspath(path)!r} lacks {len(missing)} stem/layer1 entries, e.g. "
                       f"{missing[:5]}; expected an mmseg ResNetV1c ('stem.*', 'layer1.*') or timm deep-stem "
                       "('conv1.*', 'bn1.*', 'layer1.*') state dict")
    bad = [f"{k}: {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if sd[k].shape != v.shape]
    if bad:
        raise ValueError(f"ResNet checkpoint {os.fspath(path)!r} has wrong shapes (file vs model): {bad[:5]}")
    model.load_state_dict({k: sd[k] for k in own}, strict=True)
