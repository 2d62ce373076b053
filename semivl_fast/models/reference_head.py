"""The reference's language-guided head (google-research/semivl ``VLGHead``), written plainly with its module names.

It is the spec ``models/decoder.py`` is checked against (tests/test_decoder.py loads the same weights into both)
and the baseline the benchmarks time: it materialises what the engine's decoder avoids (the N-times repeated
guidance maps and their concatenation, the broadcast image-pooling branch, ``nn.MultiheadAttention`` with head
split/merge copies). State-dict keys are the reference checkpoint's ``decode_head.*`` keys without the prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semivl_fast.models.decoder import DecoderConfig


class _RefAttn(nn.Module):  # mmcv MultiheadAttention wrapper: identity + MHA(x), batch-first
    def __init__(self, dim, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, x, identity):
        return identity + self.attn(x, x, x)[0]


class _RefFFN(nn.Module):  # mmcv FFN: identity + Linear → GELU → Dropout → Linear → Dropout
    def __init__(self, dim, hidden):
        super().__init__()
        self.layers = nn.Sequential(nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0)),
                                    nn.Linear(hidden, dim), nn.Dropout(0.0))

    def forward(self, x, identity):
        return identity + self.layers(x)


class _RefTransformerLayer(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(dim), _RefAttn(dim, heads)
        self.ln2, self.ffn = nn.LayerNorm(dim), _RefFFN(dim, hidden)

    def forward(self, x):
        x = self.attn(self.ln1(x), identity=x)
        return self.ffn(self.ln2(x), identity=x)


class ReferenceSemantic(nn.Module):
    """One class-aggregation layer of the reference: pooled maps + text -> transformer over the classes -> upsampled
    residual."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.pool_size = cfg.pool_size
        self.transformer = _RefTransformerLayer(cfg.channels + cfg.text_channels, cfg.num_heads, cfg.ffn_channels)

    def forward(self, x: Tensor, text: Tensor) -> Tensor:  # x (B, C, N, H, W); text (B, N, Ct)
        b, c, n, h, w = x.shape
        xp = F.avg_pool2d(x.permute(0, 2, 1, 3, 4).reshape(b * n, c, h, w), self.pool_size)
        hp, wp = xp.shape[-2:]
        tokens = xp.reshape(b, n, c, hp, wp).permute(0, 3, 4, 1, 2).reshape(b * hp * wp, n, c)
        t = text[:, None].expand(b, hp * wp, n, text.shape[-1]).reshape(b * hp * wp, n, -1)
        out = self.transformer(torch.cat([tokens, t], dim=-1))[..., :c]
        out = out.reshape(b, hp, wp, n, c).permute(0, 3, 4, 1, 2).reshape(b * n, c, hp, wp)
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=True)
        return x + out.reshape(b, n, c, h, w).permute(0, 2, 1, 3, 4)


class _RefPool(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1, bias=False), nn.GroupNorm(c // 16, c),
                                 nn.ReLU())

    def forward(self, x):
        return F.interpolate(self.gap(x), x.shape[-2:], mode="bilinear", align_corners=True)


class _RefASPP(nn.Module):
    def __init__(self, c, rates):
        super().__init__()
        self.aspp_convs = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(c, c, 1 if r == 1 else 3, padding=0 if r == 1 else r, dilation=r, bias=False),
                           nn.GroupNorm(c // 16, c), nn.ReLU()) for r in (1, *rates)] + [_RefPool(c)])
        self.project = nn.Sequential(nn.Conv2d(c * (len(rates) + 2), c, 1, bias=False), nn.GroupNorm(c // 16, c),
                                     nn.ReLU())

    def forward(self, x):
        return x + self.project(torch.cat([m(x) for m in self.aspp_convs], 1))


class _RefUp(nn.Module):
    def __init__(self, c_in, c_out, c_skip):
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_in - c_skip, 2, stride=2)
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.GroupNorm(c_out // 16, c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.GroupNorm(c_out // 16, c_out), nn.ReLU())

    def forward(self, x, skip):
        x = self.up(x)
        skip = F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=True)
        skip = skip.repeat_interleave(x.shape[0] // skip.shape[0], dim=0)  # (b n): classes of an image adjacent
        return self.conv(torch.cat([x, skip], dim=1))


class ReferenceVLGHead(nn.Module):
    """The reference VLGHead's computation with its module names (state dict keys = ``decode_head.*`` minus the
    prefix), written plainly: concat + repeat, nn.MultiheadAttention, interpolated pooling branch.

    forward(dense (B, embed_dim, h, w), skips deep -> shallow, text (N, embed_dim)) -> logits (B, N, 4h, 4w).
    """

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(1, cfg.channels, cfg.embed_kernel, padding=cfg.embed_kernel // 2)
        self.aspp = _RefASPP(cfg.channels, cfg.aspp_rates)
        self.layers = nn.ModuleList([ReferenceSemantic(cfg) for _ in range(cfg.num_layers)])
        self.text_proj = nn.Sequential(nn.Linear(cfg.embed_dim, cfg.text_channels), nn.ReLU())
        self.skip_proj = nn.ModuleList([nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.ReLU())
                                        for a, b in zip(cfg.skip_in_channels, cfg.skip_channels)])
        self.up1 = _RefUp(cfg.channels, cfg.up_channels[0], cfg.skip_channels[0])
        self.up2 = _RefUp(cfg.up_channels[0], cfg.up_channels[1], cfg.skip_channels[1])
        self.head = nn.Conv2d(cfg.up_channels[1], 1, 3, padding=1)

    def forward(self, dense: Tensor, skips: list[Tensor], text: Tensor) -> Tensor:
        b, _, h, w = dense.shape
        text = F.normalize(text.unsqueeze(0).repeat(b, 1, 1), dim=-1)  # (B, N, C)
        x = torch.einsum("bchw,bnc->bnhw", F.normalize(dense, dim=1), text)
        n = x.shape[1]
        x = self.aspp(self.conv1(x.reshape(b * n, 1, h, w)))
        x = x.reshape(b, n, -1, h, w).permute(0, 2, 1, 3, 4)  # (B, C, N, H, W)
        t = self.text_proj(text)
        for layer in self.layers:
            x = layer(x, t)
        skips = [proj(s) for proj, s in zip(self.skip_proj, skips)]
        x = x.permute(0, 2, 1, 3, 4).reshape(b * n, -1, h, w)
        x = self.head(self.up2(self.up1(x, skips[0]), skips[1]))
        return x.reshape(b, n, *x.shape[-2:])
