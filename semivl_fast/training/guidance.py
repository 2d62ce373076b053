"""Dense CLIP guidance for SemiVL: a frozen copy of the pretrained CLIP scores every pixel against the class texts.

The scorer is the library's MaskCLIP (``semivl_fast.models.maskclip.MaskClip``: cosine similarities at the token
grid, concept max over class definitions); its scores become pseudo-labels through ``softmax(100 * s)`` with a 0.9
confidence threshold inside the fused loss (``semivl_fast.ops.pseudo_label_loss``).
"""

from __future__ import annotations

from semivl_fast.clip import create_clip, get_tokenizer
from semivl_fast.models.backbone import ClipBackbone
from semivl_fast.models.maskclip import MaskClip
from semivl_fast.models.semivl import SemiVLConfig
from semivl_fast.text import ClassSet, build_text_embeddings


def build_guidance(cfg: SemiVLConfig, classes: ClassSet | str, mode: str = "max") -> MaskClip:
    """A frozen copy of ``cfg``'s pretrained CLIP (a tag or a file) with the class texts in ``mode`` (concept max by
    default)."""
    clip = create_clip(cfg.clip_model, cfg.pretrained)
    text = build_text_embeddings(classes, model_name=cfg.clip_model, pretrained=cfg.pretrained,
                                 templates=cfg.templates, mode=mode, clip_model=clip,
                                 tokenizer=get_tokenizer(cfg.clip_model), cache_dir=cfg.text_cache_dir)
    backbone = ClipBackbone(clip.visual, cfg.image_size, (), "frozen", cfg.reference_port)
    return MaskClip(backbone, text, cfg.clip_renorm)
