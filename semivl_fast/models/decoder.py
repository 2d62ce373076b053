"""SemiVL's language-guided decoder (the reference ``VLGHead``), with module names that follow the paper's figure.

Pipeline (B images, N classes, dense CLIP grid h×w):
``cost_volume`` (B, N, h, w) → per class map ``cost_embed`` (B·N, 128, h, w) → ``spatial_aggregation`` (residual
ASPP) → ``class_aggregation`` (text-conditioned attention over the N classes) → ``upsampling`` (two guided ×2 stages)
→ ``head`` → logits (B, N, 4h, 4w). The caller resizes the logits to the crop.

The math is the reference's exactly; two algebraically exact rewrites avoid tensors the reference materialises:
the class-independent guidance maps enter the first conv of each ``Up`` through the weight columns that read them
(``conv(cat(u, repeat_N(s))) = conv_{w[:, :Cu]}(u) + broadcast_N(conv_{w[:, Cu:]}(s))``), and the constant
image-pooling branch of the ASPP enters the projection the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semivl_fast.ops.class_attention import class_attention
from semivl_fast.ops.cost_volume import cost_volume, ensemble_text


@dataclass(frozen=True)
class DecoderConfig:
    """Hyper-parameters of the decoder; the defaults are the reference VOC/COCO/ADE20K head.

    ``skip_in_channels``/``skip_channels`` are ordered deep → shallow: entry k feeds upsampling stage k.
    Stage k's ConvTranspose outputs ``in_k - skip_channels[k]`` channels (``in_0 = channels``,
    ``in_k = up_channels[k-1]``), so that the concatenation with the guidance has ``in_k`` channels.
    """

    embed_dim: int = 512  # CLIP joint embedding dim = text embedding dim
    channels: int = 128  # hidden width of the per-class maps
    text_channels: int = 128  # projected text width; class-attention width = channels + text_channels
    num_layers: int = 2  # class-attention layers
    num_heads: int = 4
    pool_size: int = 4  # class attention runs on pool_size × pool_size average-pooled maps
    embed_kernel: int = 7  # cost_embed kernel size
    aspp_rates: tuple[int, ...] = (6, 12, 18)  # dilations of the 3×3 ASPP branches (plus a 1×1 branch)
    ffn_channels: int = 512
    up_channels: tuple[int, ...] = (64, 32)
    skip_in_channels: tuple[int, ...] = (768, 768)
    skip_channels: tuple[int, ...] = (32, 16)
    ln_eps: float = 1e-5  # class-attention LayerNorms
    # Guided upsampling in channels-last memory (same math): oneDNN's convolutions with few channels at high
    # resolution run 2-3x faster fwd+bwd in NHWC on CPU (the dilated ASPP convolutions do not, so they stay NCHW).
    channels_last: bool = True

    @classmethod
    def voc(cls, **overrides) -> DecoderConfig:
        """The reference head for VOC, COCO and ADE20K (guidance from ViT layers 4 and 0)."""
        return cls(**overrides)

    @classmethod
    def cityscapes(cls, **overrides) -> DecoderConfig:
        """The reference Cityscapes head: up2's guidance is the 256-channel ResNet stem map, projected to 32."""
        return cls(**{"skip_in_channels": (768, 256), "skip_channels": (32, 32), **overrides})

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        width = self.channels + self.text_channels
        if width % self.num_heads:
            raise ValueError(f"DecoderConfig: channels + text_channels = {width} must be divisible by "
                             f"num_heads = {self.num_heads}")
        named = [("channels", self.channels)] + [(f"up_channels[{k}]", u) for k, u in enumerate(self.up_channels)]
        for name, c in named:
            if c < 16 or c % (c // 16):
                raise ValueError(f"DecoderConfig: {name} = {c} must be >= 16 and divisible by {c} // 16 "
                                 "(GroupNorm(c // 16, c) as in the reference)")
        n = len(self.up_channels)
        if n == 0 or len(self.skip_in_channels) != n or len(self.skip_channels) != n:
            raise ValueError(f"DecoderConfig: up_channels {self.up_channels}, skip_in_channels "
                             f"{self.skip_in_channels} and skip_channels {self.skip_channels} must have the same "
                             "non-zero length (one entry per upsampling stage)")
        ins = (self.channels, *self.up_channels[:-1])
        for k, (c_in, c_skip) in enumerate(zip(ins, self.skip_channels)):
            if not 0 < c_skip < c_in:
                raise ValueError(f"DecoderConfig: stage {k} has {c_in} input channels, so skip_channels[{k}] = "
                                 f"{c_skip} must lie in [1, {c_in - 1}] (ConvTranspose outputs the difference)")
        if self.pool_size < 1 or self.embed_kernel % 2 == 0:
            raise ValueError(f"DecoderConfig: pool_size = {self.pool_size} must be >= 1 and embed_kernel = "
                             f"{self.embed_kernel} odd")


class CostVolume(nn.Module):
    """Cosine similarity of every pixel embedding with every class text embedding; no parameters."""

    def forward(self, dense: Tensor, text: Tensor) -> Tensor:
        """dense (B, C, h, w), text (N, C) unit rows → (B, N, h, w) in [-1, 1]."""
        return cost_volume(dense, text)


class ConvNormReLU(nn.Module):
    """Conv (no bias) → GroupNorm(c/16) → ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False)
        self.norm = nn.GroupNorm(c_out // 16, c_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(self.conv(x)))


class SpatialAggregation(nn.Module):
    """Residual ASPP on every class map: 1×1, dilated 3×3 branches and image pooling → 1×1 projection, + input."""

    def __init__(self, channels: int, rates: Sequence[int]):
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvNormReLU(channels, channels, 1)] + [ConvNormReLU(channels, channels, 3, dilation=r) for r in rates])
        self.image_pool = ConvNormReLU(channels, channels, 1)
        # input channels: branches in order, then the image-pooling branch (the reference's concat order)
        self.project = ConvNormReLU(channels * (len(rates) + 2), channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x (M, c, h, w) → (M, c, h, w)."""
        feats = torch.cat([branch(x) for branch in self.branches], dim=1)  # (M, c·(R+1), h, w)
        pooled = self.image_pool(x.mean(dim=(2, 3), keepdim=True))  # (M, c, 1, 1)
        # The pooled branch is spatially constant (the reference broadcasts it with a 1×1 → h×w bilinear resize),
        # so its share of the 1×1 projection is computed once per map and broadcast: no concat of a constant map.
        w = self.project.conv.weight  # (c, c·(R+2), 1, 1)
        y = F.conv2d(feats, w[:, :feats.shape[1]]) + F.conv2d(pooled, w[:, feats.shape[1]:])
        return x + F.relu(self.project.norm(y))


class ClassAttention(nn.Module):
    """Softmax multi-head self-attention over the class axis; packed ``qkv`` (rows Q, K, V) and output ``proj``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """x (L, N, D): L independent sequences of N class tokens → (L, N, D)."""
        # The fused op reads q, k, v straight from the packed projection (L, N, 3D) and writes (L, N, D) for
        # ``proj``: no head split / merge copies; C++ kernel on CPU, Triton on CUDA (semivl_fast.ops.class_attention).
        return self.proj(class_attention(self.qkv(x), self.num_heads))


class FeedForward(nn.Module):
    """Linear → GELU (erf) → Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, keep: int | None = None) -> Tensor:
        """``keep``: compute only the first ``keep`` output channels (the rows of fc2 that are used)."""
        h = F.gelu(self.fc1(x))
        if keep is None:
            return self.fc2(h)
        return F.linear(h, self.fc2.weight[:keep], self.fc2.bias[:keep])


class ClassAttentionLayer(nn.Module):
    """Pre-LN transformer layer over the classes: x + attn(norm1 x), then + mlp(norm2 x)."""

    def __init__(self, dim: int, num_heads: int, ffn_channels: int, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = ClassAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = FeedForward(dim, ffn_channels)

    def forward(self, x: Tensor, keep: int | None = None) -> Tensor:
        """x (L, N, D) -> (L, N, D), or only its first ``keep`` channels (exact: the FFN's other rows are skipped)."""
        x = x + self.attn(self.norm1(x))
        if keep is None:
            return x + self.mlp(self.norm2(x))
        return x[..., :keep] + self.mlp(self.norm2(x), keep)


class ClassAggregation(nn.Module):
    """Text-conditioned attention across classes on pooled maps, added back as an upsampled residual."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.pool_size = cfg.pool_size
        self.text_proj = nn.Linear(cfg.embed_dim, cfg.text_channels)  # shared by all layers, ReLU follows
        width = cfg.channels + cfg.text_channels
        self.layers = nn.ModuleList(
            [ClassAttentionLayer(width, cfg.num_heads, cfg.ffn_channels, cfg.ln_eps) for _ in range(cfg.num_layers)])

    def forward(self, x: Tensor, text: Tensor) -> Tensor:
        """x (B·N, c, h, w), text (N, embed_dim) → (B·N, c, h, w)."""
        n = text.shape[0]
        m, c, h, w = x.shape
        b = m // n
        t = F.relu(self.text_proj(text))  # (N, ct)
        for layer in self.layers:
            xp = F.avg_pool2d(x, self.pool_size)  # (B·N, c, h', w'); floors like nn.AvgPool2d
            hp, wp = xp.shape[-2:]
            tokens = xp.reshape(b, n, c, hp * wp).permute(0, 3, 1, 2).reshape(b * hp * wp, n, c)  # (B·h'w', N, c)
            tokens = torch.cat([tokens, t.expand(b * hp * wp, -1, -1)], dim=-1)  # (B·h'w', N, c + ct)
            tokens = layer(tokens, keep=c)  # only the visual channels are kept: (B·h'w', N, c)
            xp = tokens.reshape(b, hp * wp, n, c).permute(0, 2, 3, 1).reshape(m, c, hp, wp)
            x = x + F.interpolate(xp, size=(h, w), mode="bilinear", align_corners=True)
        return x


class Up(nn.Module):
    """ConvTranspose ×2, concatenated guidance, double conv (Conv3×3 no bias → GN(c/16) → ReLU, twice).

    ``conv1`` keeps the reference's weight shape (out, c_up + c_skip, 3, 3); its columns are applied separately to
    the per-class ConvT output and to the class-independent guidance map (exact: the conv has no bias).
    """

    def __init__(self, c_in: int, c_out: int, c_skip: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_in - c_skip, kernel_size=2, stride=2)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)  # input: ConvT channels, then guidance
        self.norm1 = nn.GroupNorm(c_out // 16, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(c_out // 16, c_out)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """x (B·N, c_in, h, w), skip (B, c_skip, hs, ws) projected guidance → (B·N, c_out, 2h, 2w)."""
        x = self.up(x)  # (B·N, c_up, 2h, 2w)
        m, c_up, h2, w2 = x.shape
        b = skip.shape[0]
        if skip.shape[-2:] != x.shape[-2:]:
            skip = F.interpolate(skip, size=(h2, w2), mode="bilinear", align_corners=True)
        w = self.conv1.weight
        y = F.conv2d(x, w[:, :c_up], padding=1)  # (B·N, c_out, 2h, 2w)
        s = F.conv2d(skip, w[:, c_up:], padding=1)  # (B, c_out, 2h, 2w), once per image
        y = (y.unflatten(0, (b, m // b)) + s.unsqueeze(1)).flatten(0, 1)  # broadcast over the N classes
        y = F.relu(self.norm1(y))
        return F.relu(self.norm2(self.conv2(y)))


class GuidedUpsampling(nn.Module):
    """Guidance projections (Conv3×3 + ReLU per skip map) and the ``Up`` stages they feed (deep → shallow)."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.skip_proj = nn.ModuleList(
            [nn.Conv2d(ci, co, 3, padding=1) for ci, co in zip(cfg.skip_in_channels, cfg.skip_channels)])
        ins = (cfg.channels, *cfg.up_channels[:-1])
        self.stages = nn.ModuleList(
            [Up(ci, co, cs) for ci, co, cs in zip(ins, cfg.up_channels, cfg.skip_channels)])

    def forward(self, x: Tensor, skips: Sequence[Tensor]) -> Tensor:
        """x (B·N, c, h, w), skips[k] (B, skip_in_channels[k], *, *) → (B·N, up_channels[-1], 2^K h, 2^K w)."""
        for proj, stage, skip in zip(self.skip_proj, self.stages, skips):
            # project at the guidance map's own resolution; Up resizes the projection to its ConvT output
            x = stage(x, F.relu(proj(skip)))
        return x


class LanguageGuidedDecoder(nn.Module):
    """SemiVL's decoder: cost volume → spatial and class aggregation → guided upsampling → per-class logits."""

    def __init__(self, cfg: DecoderConfig | None = None):
        super().__init__()
        cfg = cfg if cfg is not None else DecoderConfig()
        cfg.validate()
        self.cfg = cfg
        self.cost_volume = CostVolume()
        self.cost_embed = nn.Conv2d(1, cfg.channels, cfg.embed_kernel, padding=cfg.embed_kernel // 2)
        self.spatial_aggregation = SpatialAggregation(cfg.channels, cfg.aspp_rates)
        self.class_aggregation = ClassAggregation(cfg)
        self.upsampling = GuidedUpsampling(cfg)
        self.head = nn.Conv2d(cfg.up_channels[-1], 1, 3, padding=1)  # one conv scores every class map

    def _check(self, dense: Tensor, skips: Sequence[Tensor], text: Tensor) -> None:
        cfg = self.cfg
        if dense.dim() != 4 or dense.shape[1] != cfg.embed_dim:
            raise ValueError(f"decoder: dense must be (B, {cfg.embed_dim}, h, w), got {tuple(dense.shape)}")
        if min(dense.shape[-2:]) < cfg.pool_size:
            raise ValueError(f"decoder: dense grid {tuple(dense.shape[-2:])} is smaller than pool_size "
                             f"{cfg.pool_size}; class attention needs at least one pooled position")
        if text.dim() not in (2, 3) or text.shape[-1] != cfg.embed_dim or text.shape[0] == 0:
            raise ValueError(f"decoder: text must be (N, {cfg.embed_dim}) or (N, T, {cfg.embed_dim}) with N >= 1, "
                             f"got {tuple(text.shape)}")
        if len(skips) != len(cfg.skip_in_channels):
            raise ValueError(f"decoder: expected {len(cfg.skip_in_channels)} skip maps (deep → shallow, channels "
                             f"{cfg.skip_in_channels}), got {len(skips)}")
        for k, (s, c) in enumerate(zip(skips, cfg.skip_in_channels)):
            if s.dim() != 4 or s.shape[0] != dense.shape[0] or s.shape[1] != c:
                raise ValueError(f"decoder: skips[{k}] must be ({dense.shape[0]}, {c}, H, W), got {tuple(s.shape)}")

    def forward(self, dense: Tensor, skips: Sequence[Tensor], text: Tensor) -> Tensor:
        """Per-class logits at 2^K × the dense grid (K = 2 stages: (B, N, 4h, 4w)); no temperature.

        dense (B, embed_dim, h, w) dense CLIP embeddings; skips: guidance maps deep → shallow, e.g. ``[v4, v0]``
        or ``[v4, resnet_map]``, any spatial size (resized after projection); text (N, embed_dim) or
        (N, T, embed_dim) class embeddings, templates averaged by ``ensemble_text``.
        """
        self._check(dense, skips, text)
        b, _, h, w = dense.shape
        text = ensemble_text(text.to(dense.dtype))  # (N, C) unit rows
        n = text.shape[0]
        cost = self.cost_volume(dense, text)  # (B, N, h, w)
        x = self.cost_embed(cost.reshape(b * n, 1, h, w))  # (B·N, c, h, w)
        x = self.spatial_aggregation(x)
        x = self.class_aggregation(x, text)
        if self.cfg.channels_last:  # every later convolution keeps its input's memory format
            x = x.contiguous(memory_format=torch.channels_last)
            skips = [s.contiguous(memory_format=torch.channels_last) for s in skips]
        x = self.upsampling(x, skips)  # (B·N, c_last, 4h, 4w)
        x = self.head(x)  # (B·N, 1, 4h, 4w)
        return x.reshape(b, n, *x.shape[-2:])
