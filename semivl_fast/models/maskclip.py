"""MaskCLIP: training-free dense class scores from a frozen CLIP image tower and the class texts.

Every patch's dense embedding (the value path of the last block, ``ClipBackbone``) is compared with the class text
rows by cosine similarity; with class definitions (text mode "max") a class scores its best concept. SemiVL's dense
CLIP guidance and the zero-shot MaskCLIP baseline are this one scorer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from semivl_fast.data.transforms import imagenet_to_clip
from semivl_fast.models.backbone import ClipBackbone
from semivl_fast.models.class_texts import ClassTextModule
from semivl_fast.ops.cost_volume import cost_volume
from semivl_fast.text import TextEmbeddings


class MaskClip(ClassTextModule):
    """images (B, 3, H, W) -> cosine class scores (B, num_classes, h, w) at the token grid; frozen, always eval.

    Args:
        backbone: the CLIP image tower (set to frozen here).
        text: class text rows; concept max over a class's rows in mode "max".
        clip_renorm: the images are ImageNet-normalised; convert them to CLIP's statistics first (Cityscapes).
    """

    def __init__(self, backbone: ClipBackbone, text: TextEmbeddings, clip_renorm: bool = False) -> None:
        super().__init__()
        backbone.set_finetune("frozen")
        self.backbone = backbone.eval()
        self.clip_renorm = clip_renorm
        self.set_text(text)

    @property
    def patch_size(self) -> int:
        return self.backbone.patch_size

    def train(self, mode: bool = True) -> MaskClip:
        return super().train(False)  # always inference: no dropout, frozen

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        dense = self.backbone(imagenet_to_clip(images) if self.clip_renorm else images).dense  # (B, D, h, w)
        groups = self.text_groups if self.text_mode == "max" else None
        return cost_volume(dense, self.text_embeddings.to(dense.dtype), groups, self.num_classes)
