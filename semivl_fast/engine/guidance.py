"""Dense CLIP guidance: a frozen copy of the pretrained CLIP scores every pixel against the class texts (MaskCLIP).

The scores (cosine similarities at the token grid, concept max over class definitions) become pseudo-labels through
``softmax(100 * s)`` with a 0.9 confidence threshold inside the fused loss (``semivl_fast.ops.pseudo_label_loss``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from semivl_fast.models.backbone import ClipBackbone
from semivl_fast.models.clip import create_clip, get_tokenizer
from semivl_fast.models.semivl import SemiVLConfig, imagenet_to_clip
from semivl_fast.ops.cost_volume import cost_volume
from semivl_fast.text import ClassSet, TextEmbeddings, build_text_embeddings


def build_guidance(cfg: SemiVLConfig, classes: ClassSet | str, mode: str = "max") -> DenseClipGuidance:
    """A frozen copy of ``cfg``'s pretrained CLIP with the class texts in ``mode`` (concept max by default)."""
    clip = create_clip(cfg.clip_model, cfg.pretrained)
    text = build_text_embeddings(classes, model_name=cfg.clip_model, pretrained=cfg.pretrained,
                                 templates=cfg.templates, mode=mode, clip_model=clip,
                                 tokenizer=get_tokenizer(cfg.clip_model), cache_dir=cfg.text_cache_dir)
    backbone = ClipBackbone(clip.visual, cfg.image_size, (), "frozen", cfg.reference_port)
    return DenseClipGuidance(backbone, text, cfg.clip_renorm)


class DenseClipGuidance(nn.Module):
    """Frozen CLIP image tower + class text rows -> zero-shot class scores (B, num_classes, h, w)."""

    def __init__(self, backbone: ClipBackbone, text: TextEmbeddings, clip_renorm: bool = False) -> None:
        super().__init__()
        self.clip_renorm = clip_renorm
        backbone.set_finetune("frozen")
        self.backbone = backbone.eval()
        self.register_buffer("text_embeddings", text.embeddings, persistent=False)
        self.register_buffer("text_groups", text.groups, persistent=False)
        self.num_classes = text.num_classes
        self.concept_max = text.mode == "max"

    def train(self, mode: bool = True) -> DenseClipGuidance:
        return super().train(False)  # always inference: no dropout, frozen

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        dense = self.backbone(imagenet_to_clip(images) if self.clip_renorm else images).dense  # (B, D, h, w)
        groups = self.text_groups if self.concept_max else None
        return cost_volume(dense, self.text_embeddings.to(dense.dtype), groups, self.num_classes)
