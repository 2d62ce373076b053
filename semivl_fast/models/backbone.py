"""CLIP ViT backbone with dense features from the MaskCLIP value path, and SemiVL's spatial fine-tuning.

The normal ViT path runs unchanged. At selected blocks a side branch replaces attention by the identity (every token
attends only to itself): ``v = x + out_proj(W_v LN1(x) + b_v)``, ``v = v + MLP(LN2(v))``. The value-path maps of
the ``guidance_layers`` feed the decoder as skip features; the last block's value path, through ``ln_post`` and
``proj`` and L2-normalised, is the dense CLIP embedding that is compared with the text.

Work the reference repeats is done once here: LN1 and the QKV projection are shared by the attention and the value
path, the CLS token is dropped before the side branch, and the last block runs only its value path (its normal path
feeds nothing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import Tensor, nn

FINETUNE_MODES = ("attn", "full", "frozen")

try:  # optional GPU attention backend
    import xformers.ops as _xops
except ImportError:  # pragma: no cover - depends on the environment
    _xops = None


@dataclass
class BackboneOutput:
    dense: Tensor  # (B, D, h, w) unit-norm dense CLIP embedding (D = CLIP joint dim)
    guidance: list[Tensor]  # value-path maps (B, width, h, w), one per guidance layer, in the configured order


def resize_pos_embed(pos: Tensor, grid: tuple[int, int]) -> Tensor:
    """(1 + g*g, C) position embedding of a square grid -> (1 + gh*gw, C); bicubic, CLS row kept."""
    cls, patches = pos[:1], pos[1:]
    g = math.isqrt(patches.shape[0])
    if g * g != patches.shape[0]:
        raise ValueError(f"position embedding has {patches.shape[0]} patch rows, not a square grid")
    if (g, g) == tuple(grid):
        return pos
    patches = patches.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=grid, mode="bicubic", align_corners=False).to(pos.dtype)
    return torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(-1, pos.shape[1])], dim=0)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Softmax attention over tokens; q, k, v (B, heads, L, d) -> (B, heads, L, d).

    xformers' memory-efficient kernel when installed and on GPU, else PyTorch SDPA (flash / efficient / math).
    """
    if _xops is not None and q.is_cuda:
        return _xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v)


def check_visual(visual: nn.Module) -> None:
    """A clear error unless ``visual`` is an open_clip ViT whose blocks the MaskCLIP value path is defined for."""
    if not isinstance(visual, VisionTransformer):
        raise TypeError(f"the backbone needs an open_clip VisionTransformer, got {type(visual).__name__}; "
                        "use a ViT CLIP model (e.g. 'ViT-B-16'), not a ResNet/ConvNeXt one")
    if visual.proj is None or getattr(visual, "attn_pool", None) is not None:
        raise ValueError("dense features need a ViT with a plain linear projection (visual.proj) and no attention "
                         "pooling; this open_clip model has a different head")
    for i, block in enumerate(visual.transformer.resblocks):
        if not isinstance(block, ResidualAttentionBlock) or not isinstance(block.attn, nn.MultiheadAttention) \
                or getattr(block.attn, "in_proj_weight", None) is None or hasattr(block, "ln_1_kv"):
            raise ValueError(f"block {i} is not a standard pre-LN block with packed nn.MultiheadAttention; "
                             "the MaskCLIP value path is defined for those only")


class ClipBackbone(nn.Module):
    """open_clip ViT image tower run densely: dense CLIP embedding plus value-path guidance maps.

    Args:
        visual: ``open_clip`` ``VisionTransformer`` (``clip_model.visual``); its parameters are used as they are.
        image_size: training crop; the position embedding is resized (bicubic) to its grid once and trained there.
        guidance_layers: 0-based blocks whose value-path outputs are returned as guidance features.
        finetune: ``attn`` trains attention in/out projections of every block plus the position embedding;
            ``full`` trains everything; ``frozen`` nothing.
        reference_port: use exact GELU and LayerNorm eps 1e-6 like the reference's mmseg port of CLIP (for
            imported reference checkpoints); otherwise the open_clip model's own activation and eps are kept.
    """

    def __init__(self, visual: nn.Module, image_size: int, guidance_layers: Sequence[int] = (0, 4),
                 finetune: str = "attn", reference_port: bool = False) -> None:
        super().__init__()
        check_visual(visual)
        depth = len(visual.transformer.resblocks)
        bad = [i for i in guidance_layers if not 0 <= i < depth - 1]
        if bad:
            raise ValueError(f"guidance_layers {bad} out of range: this ViT has {depth} blocks, guidance layers must "
                             f"be in 0..{depth - 2} (the last block gives the dense embedding)")
        if finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune={finetune!r}; choose one of {FINETUNE_MODES}")
        self.visual = visual
        self.guidance_layers = tuple(int(i) for i in guidance_layers)
        self.patch_size = int(visual.conv1.kernel_size[0])
        self.width = int(visual.conv1.out_channels)
        self.embed_dim = int(visual.proj.shape[1])
        self.num_heads = int(visual.transformer.resblocks[0].attn.num_heads)
        # stored grid: floor(crop / patch) as the reference (801 -> 50x50); a padded crop's larger token grid
        # (801 -> 51x51) gets the table resized on every forward
        grid = max(1, image_size // self.patch_size)
        with torch.no_grad():
            pos = resize_pos_embed(visual.positional_embedding.data, (grid, grid))
        visual.positional_embedding = nn.Parameter(pos)
        if reference_port:
            self._use_reference_port()
        self.finetune = finetune
        self.set_finetune(finetune)

    def _use_reference_port(self) -> None:
        for module in self.visual.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = 1e-6
        for block in self.visual.transformer.resblocks:
            block.mlp.gelu = nn.GELU()

    def set_finetune(self, mode: str) -> None:
        """Spatial fine-tuning: choose which backbone parameters train (see class docstring)."""
        if mode not in FINETUNE_MODES:
            raise ValueError(f"finetune={mode!r}; choose one of {FINETUNE_MODES}")
        for name, p in self.visual.named_parameters():
            if mode == "full":
                p.requires_grad_(True)
            elif mode == "frozen":
                p.requires_grad_(False)
            else:
                p.requires_grad_(name == "positional_embedding" or ".attn." in name)
        self.finetune = mode

    @property
    def depth(self) -> int:
        return len(self.visual.transformer.resblocks)

    def _tokens(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Patch embedding (right/bottom zero padding to a multiple of the patch) + CLS + position -> ln_pre."""
        v = self.visual
        ph = (-images.shape[-2]) % self.patch_size
        pw = (-images.shape[-1]) % self.patch_size
        if ph or pw:
            images = F.pad(images, (0, pw, 0, ph))
        x = v.conv1(images)  # (B, width, h, w)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, width)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        pos = resize_pos_embed(v.positional_embedding, grid).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + pos
        return v.ln_pre(x), grid

    def _value_path(self, block: nn.Module, x: Tensor, v: Tensor) -> Tensor:
        """Side branch with identity attention; x (B, L, width) block input, v (B, L, width) value projection."""
        out = x + block.ls_1(F.linear(v, block.attn.out_proj.weight, block.attn.out_proj.bias))
        return out + block.ls_2(block.mlp(block.ln_2(out)))

    def forward(self, images: Tensor) -> BackboneOutput:
        """images (B, 3, H, W), normalised -> dense embedding (B, D, h, w) and guidance maps (B, width, h, w)."""
        x, (h, w) = self._tokens(images)
        b, n_heads, width = x.shape[0], self.num_heads, self.width
        blocks = self.visual.transformer.resblocks
        side: dict[int, Tensor] = {}
        for i, block in enumerate(blocks):
            attn = block.attn
            y = block.ln_1(x)
            if i == len(blocks) - 1:  # last block: value path only, patch tokens only
                v = F.linear(y[:, 1:], attn.in_proj_weight[2 * width:], attn.in_proj_bias[2 * width:])
                last = self._value_path(block, x[:, 1:], v)
                break
            q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)  # (B, L, width) each
            if i in self.guidance_layers:
                side[i] = self._value_path(block, x[:, 1:], v[:, 1:])
            heads = lambda t: t.unflatten(-1, (n_heads, -1)).transpose(1, 2)  # (B, heads, L, d)
            o = attention(heads(q), heads(k), heads(v)).transpose(1, 2).flatten(2)
            x = x + block.ls_1(attn.out_proj(o))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        dense = self.visual.ln_post(last) @ self.visual.proj  # (B, h*w, D)
        dense = F.normalize(dense, dim=-1).transpose(1, 2).reshape(b, -1, h, w)
        to_map = lambda t: t.transpose(1, 2).reshape(b, width, h, w)
        return BackboneOutput(dense=dense, guidance=[to_map(side[i]) for i in self.guidance_layers])
