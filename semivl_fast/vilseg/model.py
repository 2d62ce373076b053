"""The ViL-Seg network: open_clip image and text encoders plus an online clustering head on the patch embeddings.

One pass of the ViT gives what every objective needs:

- ``dense`` (B, D, h, w): patch embeddings in the joint space. ``model.dense="value"`` takes the MaskCLIP value path
  of the last block (identity attention, as ``semivl_fast.models.backbone.ClipBackbone``, the features SemiVL and the
  MaskCLIP baseline use); ``"token"`` the last block's ordinary patch tokens. Both go through ``ln_post`` and ``proj``.
- ``global_embed`` (B, D): ``"cls"`` is open_clip's ``encode_image`` (class token); ``"avg"`` the mean of the dense
  patch embeddings (open_clip's ``pool_type="avg"`` on those tokens), which makes the cross-modal contrast shape the
  patch embeddings that zero-shot segmentation compares with the text.

The clustering head holds K prototypes; a patch's soft assignment is ``softmax(cos(patch, prototype_k) / T)`` with
the cosines from the cost-volume op.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semivl_fast.clip import create_clip
from semivl_fast.models.backbone import check_visual, resize_pos_embed
from semivl_fast.ops.cost_volume import cost_volume

DENSE_SOURCES = ("value", "token")
GLOBAL_EMBEDS = ("cls", "avg", "max")


@dataclass
class ViLSegModelConfig:
    clip_model: str = "semivl-tiny"  # any open_clip ViT with a linear projection
    pretrained: str | None = None  # open_clip tag, local checkpoint file, or None (from scratch)
    dense: str = "value"  # patch embeddings: value (MaskCLIP value path of the last block) | token (last block tokens)
    global_embed: str = "avg"  # cls (open_clip encode_image) | avg / max (mean / per-channel max of the dense patch
    #                            embeddings)
    num_clusters: int = 16  # K prototypes of the online clustering head
    cluster_temp: float = 0.1  # softmax temperature on the patch-prototype cosine similarities
    detach_clusters: bool = False  # True: the clustering loss trains the prototypes only, not the encoder
    freeze_token_embedding: bool = False  # keep the (large, sparsely used) token embedding table fixed


@dataclass
class ImageFeatures:
    global_embed: Tensor | None  # (B, D) un-normalised
    dense: Tensor | None  # (B, D, h, w) un-normalised patch embeddings


class ClusterHead(nn.Module):
    """K learnable prototypes; ``forward(dense (B, D, h, w)) -> soft assignments (B, K, h, w)`` (softmax over K)."""

    def __init__(self, dim: int, num_clusters: int, temperature: float = 0.1) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(F.normalize(torch.randn(num_clusters, dim), dim=-1))
        self.temperature = float(temperature)

    @property
    def num_clusters(self) -> int:
        return self.prototypes.shape[0]

    def logits(self, dense: Tensor) -> Tensor:
        """Patch-to-prototype cosine similarities / T, (B, K, h, w)."""
        return cost_volume(dense, self.prototypes.to(dense.dtype)) / self.temperature

    def forward(self, dense: Tensor) -> Tensor:
        return self.logits(dense).float().softmax(dim=1)


class ViLSeg(nn.Module):
    """CLIP (``self.clip``: an open_clip ViT CLIP, exported as is) + clustering head (``self.head``)."""

    def __init__(self, clip: nn.Module, cfg: ViLSegModelConfig) -> None:
        super().__init__()
        check_visual(clip.visual)
        if cfg.dense not in DENSE_SOURCES or cfg.global_embed not in GLOBAL_EMBEDS:
            raise ValueError(f"dense={cfg.dense!r} / global_embed={cfg.global_embed!r}: choose value|token and "
                             "cls|avg|max")
        self.clip = clip
        self.cfg = cfg
        self.patch_size = int(clip.visual.conv1.kernel_size[0])
        self.embed_dim = int(clip.visual.proj.shape[1])
        self.head = ClusterHead(self.embed_dim, cfg.num_clusters, cfg.cluster_temp)
        if cfg.freeze_token_embedding:
            clip.token_embedding.requires_grad_(False)

    # ------------------------------------------------------------------------------------------------ encoders
    def _tokens(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        v = self.clip.visual
        ph, pw = (-images.shape[-2]) % self.patch_size, (-images.shape[-1]) % self.patch_size
        if ph or pw:  # right/bottom zero padding to whole patches, as ClipBackbone
            images = F.pad(images, (0, pw, 0, ph))
        x = v.conv1(images)  # (B, width, h, w)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + resize_pos_embed(v.positional_embedding, grid).to(x.dtype)
        return v.ln_pre(x), grid

    def encode_image(self, images: Tensor, need_global: bool = True, need_dense: bool = True) -> ImageFeatures:
        """images (B, 3, H, W) normalised -> global embedding (B, D) and dense patch embeddings (B, D, h, w)."""
        v = self.clip.visual
        x, (h, w) = self._tokens(images)
        blocks = v.transformer.resblocks
        for block in blocks[:-1]:
            x = block(x)
        last = blocks[-1]
        need_dense = need_dense or (need_global and self.cfg.global_embed != "cls")
        patches = cls = None
        if need_dense and self.cfg.dense == "value":
            width = x.shape[-1]
            attn = last.attn
            val = F.linear(last.ln_1(x[:, 1:]), attn.in_proj_weight[2 * width:], attn.in_proj_bias[2 * width:])
            out = x[:, 1:] + last.ls_1(F.linear(val, attn.out_proj.weight, attn.out_proj.bias))
            out = out + last.ls_2(last.mlp(last.ln_2(out)))
            patches = v.ln_post(out) @ v.proj  # (B, h*w, D)
        if (need_dense and self.cfg.dense == "token") or (need_global and self.cfg.global_embed == "cls"):
            tokens = v.ln_post(last(x)) @ v.proj  # (B, 1 + h*w, D)
            cls = tokens[:, 0]
            if self.cfg.dense == "token":
                patches = tokens[:, 1:]
        glob = None
        if need_global:
            pool = self.cfg.global_embed
            glob = cls if pool == "cls" else patches.mean(dim=1) if pool == "avg" else patches.amax(dim=1)
        dense = patches.transpose(1, 2).reshape(x.shape[0], -1, h, w) if need_dense else None
        return ImageFeatures(glob, dense)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """Token ids (B, L) -> caption embeddings (B, D), un-normalised (open_clip ``encode_text``)."""
        return self.clip.encode_text(tokens)

    def logit_scale(self, max_scale: float = 100.0) -> Tensor:
        """1 / temperature of the cross-modal contrast (CLIP's learnable ``logit_scale``, clamped)."""
        return self.clip.logit_scale.exp().clamp(max=max_scale)

    def assign(self, dense: Tensor) -> Tensor:
        """Soft cluster assignments (B, K, h, w) of dense patch embeddings (B, D, h, w)."""
        return self.head(dense)


def build_vilseg(cfg: ViLSegModelConfig) -> ViLSeg:
    """The ViL-Seg network from ``cfg``: open_clip CLIP (tag, file or random) + a fresh clustering head."""
    return ViLSeg(create_clip(cfg.clip_model, cfg.pretrained), cfg)
