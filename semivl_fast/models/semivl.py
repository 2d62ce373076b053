"""The SemiVL segmentor: CLIP backbone (dense value-path features) + language-guided decoder + class texts."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from semivl_fast.clip import create_clip, get_tokenizer
from semivl_fast.data.transforms import imagenet_to_clip
from semivl_fast.models.backbone import ClipBackbone
from semivl_fast.models.class_texts import ClassTextModule
from semivl_fast.models.convert import convert_reference_state_dict, load_reference_checkpoint
from semivl_fast.models.decoder import DecoderConfig, LanguageGuidedDecoder
from semivl_fast.models.resnet_stem import ResNetStem, load_stem_checkpoint
from semivl_fast.ops.cost_volume import concept_max
from semivl_fast.text import ClassSet, TextEmbeddings, build_text_embeddings


@dataclass
class SemiVLConfig:
    """Everything that defines the network. Defaults: the reference VOC model (CLIP ViT-B/16, 512 crops)."""

    clip_model: str = "ViT-B-16"  # any open_clip ViT
    pretrained: str | None = "openai"  # open_clip tag, local checkpoint file, or None (random init)
    image_size: int = 512  # training crop; the position embedding is trained at its grid
    guidance_layers: tuple[int, ...] = (0, 4)  # value-path blocks feeding the decoder's upsampling (shallow first)
    finetune: str = "attn"  # attn | full | frozen (spatial fine-tuning = attn)
    reference_port: bool = False  # exact GELU + LayerNorm eps 1e-6, as the reference's port of CLIP
    classes: str = "voc"  # built-in name, YAML/text file, or comma-separated class names
    templates: str = "single"  # single | imagenet80 | a template containing {}
    decoder_text: str = "single"  # single | avg (concept average) | max (decoder per concept, then max)
    conv_encoder: bool = False  # Cityscapes: the shallowest skip comes from a ResNet stem + layer1
    conv_encoder_pretrained: str | None = None  # local mmseg/timm ResNet checkpoint for the stem
    fp_dropout: float = 0.5  # feature perturbation: dropout2d on every encoder output
    clip_renorm: bool = False  # inputs are ImageNet-normalised; convert to CLIP's statistics for the ViT (Cityscapes)
    text_cache_dir: str | None = None
    decoder: DecoderConfig = field(default_factory=DecoderConfig)


class SemiVL(ClassTextModule):
    """Images -> per-class logits, guided by class text embeddings.

    ``forward(images, need_fp=True)`` also runs the decoder on feature-perturbed encoder outputs (dropout2d on
    every map, UniMatch's FP branch) and returns ``(logits, logits_fp)``.
    """

    def __init__(self, backbone: ClipBackbone, decoder: LanguageGuidedDecoder, text: TextEmbeddings,
                 conv_encoder: ResNetStem | None = None, fp_dropout: float = 0.5, clip_renorm: bool = False) -> None:
        super().__init__()
        self.clip_renorm = clip_renorm
        self.backbone = backbone
        self.decoder = decoder
        self.conv_encoder = conv_encoder
        self.fp_dropout = fp_dropout
        self.set_text(text)  # any class list: the decoder is class-agnostic

    def encode(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """images (B, 3, H, W) -> dense embedding (B, D, h, w) and the decoder's skips, deep -> shallow."""
        feats = self.backbone(imagenet_to_clip(images) if self.clip_renorm else images)
        skips = feats.guidance[::-1]
        if self.conv_encoder is not None:
            skips.append(self.conv_encoder(images))
        return feats.dense, skips

    def decode(self, dense: Tensor, skips: list[Tensor]) -> Tensor:
        """Encoder outputs -> low-resolution logits (B, num_classes, 4h, 4w)."""
        logits = self.decoder(dense, skips, self.text_embeddings)
        if self.text_mode == "max":  # the decoder scored every concept: a class takes its best concept
            logits = concept_max(logits, self.text_groups, self.num_classes)
        return logits

    def forward(self, images: Tensor, need_fp: bool = False, upsample: bool = True,
                fp_images: slice | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Logits (B, num_classes, H, W), or at the decoder's resolution (4h, 4w) with ``upsample=False``.

        With ``need_fp`` the decoder also runs on dropout2d-perturbed encoder outputs of the images in
        ``fp_images`` (default: all) and ``(logits, logits_fp)`` is returned.
        """
        h, w = images.shape[-2:]
        side = self.decoder.cfg.pool_size * self.backbone.patch_size  # smallest input class attention can pool
        if upsample and (h < side or w < side):  # e.g. a thin border window of sliding inference: pad, then crop
            padded = F.pad(images, (0, max(0, side - w), 0, max(0, side - h)))
            out = self.forward(padded, need_fp, upsample, fp_images)
            return tuple(o[..., :h, :w] for o in out) if need_fp else out[..., :h, :w]
        dense, skips = self.encode(images)
        n = images.shape[0]
        if need_fp:
            sel = fp_images or slice(0, n)
            perturb = lambda t: torch.cat([t, F.dropout2d(t[sel], self.fp_dropout, training=True)])
            dense, skips = perturb(dense), [perturb(s) for s in skips]
        logits = self.decode(dense, skips)
        if upsample:
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return (logits[:n], logits[n:]) if need_fp else logits


def decoder_config_for(cfg: SemiVLConfig, backbone: ClipBackbone) -> DecoderConfig:
    """The decoder config with input widths taken from the backbone (any open_clip ViT) and the conv encoder."""
    # deep -> shallow, as SemiVL.encode orders them: value-path maps, then the conv encoder's map
    skips = [backbone.width] * len(cfg.guidance_layers) + ([ResNetStem.out_channels] if cfg.conv_encoder else [])
    if len(skips) != len(cfg.decoder.up_channels):
        raise ValueError(f"the decoder has {len(cfg.decoder.up_channels)} upsampling stages but gets {len(skips)} "
                         f"skip maps ({len(cfg.guidance_layers)} guidance_layers"
                         f"{' + conv_encoder' if cfg.conv_encoder else ''}); make them equal")
    return dataclasses.replace(cfg.decoder, embed_dim=backbone.embed_dim, skip_in_channels=tuple(skips))


def build_semivl(cfg: SemiVLConfig, text: TextEmbeddings | None = None, classes: ClassSet | None = None) -> SemiVL:
    """Build the network: CLIP from open_clip (tag, file or random), text embeddings (cached), decoder.

    ``text`` skips the text encoder (precomputed embeddings); ``classes`` replaces ``cfg.classes``.
    """
    clip = create_clip(cfg.clip_model, cfg.pretrained)
    if text is None:
        text = build_text_embeddings(classes if classes is not None else cfg.classes, model_name=cfg.clip_model,
                                     pretrained=cfg.pretrained, templates=cfg.templates, mode=cfg.decoder_text,
                                     clip_model=clip, tokenizer=get_tokenizer(cfg.clip_model),
                                     cache_dir=cfg.text_cache_dir)
    backbone = ClipBackbone(clip.visual, cfg.image_size, cfg.guidance_layers, cfg.finetune, cfg.reference_port)
    del clip  # the text tower is not needed any more
    decoder = LanguageGuidedDecoder(decoder_config_for(cfg, backbone))
    conv_encoder = None
    if cfg.conv_encoder:
        conv_encoder = ResNetStem()
        if cfg.conv_encoder_pretrained:
            load_stem_checkpoint(conv_encoder, cfg.conv_encoder_pretrained)
    return SemiVL(backbone, decoder, text, conv_encoder, cfg.fp_dropout, cfg.clip_renorm)


def semivl_from_reference(checkpoint: str | dict, cfg: SemiVLConfig | None = None,
                          text: TextEmbeddings | None = None) -> tuple[SemiVL, dict[str, Tensor] | None]:
    """A SemiVL with the weights of a reference (google-research/semivl) checkpoint: a ``best.pth`` path or its
    loaded dict. Returns ``(model, guidance_state_dict)``; the second is the frozen guidance CLIP's visual tower
    (``visual.*`` open_clip names) or None when the checkpoint has none.

    ``cfg`` defaults to the reference VOC model; the reference's CLIP port is used (exact GELU, LayerNorm eps 1e-6),
    the stored position-embedding grid is kept (Cityscapes: 50x50, resized to the 51x51 token grid of 801 crops on
    every forward, as the reference does), and the Cityscapes conv encoder is switched on when present.
    """
    converted = (load_reference_checkpoint(checkpoint) if isinstance(checkpoint, str)
                 else convert_reference_state_dict(checkpoint))
    cfg = cfg or SemiVLConfig()
    pos = converted.model["backbone.visual.positional_embedding"]
    patch = converted.model["backbone.visual.conv1.weight"].shape[-1]
    has_stem = any(k.startswith("conv_encoder.") for k in converted.model)
    guidance_layers = cfg.guidance_layers if not has_stem or len(cfg.guidance_layers) == 1 else (4,)
    decoder = cfg.decoder if not has_stem else DecoderConfig.cityscapes()
    grid = math.isqrt(pos.shape[0] - 1)
    cfg = dataclasses.replace(cfg, pretrained=None, reference_port=True, image_size=grid * patch,
                              conv_encoder=has_stem, guidance_layers=guidance_layers, decoder=decoder)
    model = build_semivl(cfg, text)
    model.load_state_dict(converted.model, strict=True)
    return model, converted.guidance
