"""Zero-shot segmentation with any class names: ViL-Seg (clusters classified by text) and the MaskCLIP baseline.

ViL-Seg: patch embeddings -> hard cluster assignment (argmax over the K prototypes) -> per (image, cluster) the
mean of its unit patch embeddings, renormalised -> cosine with the class text rows (templates ensembled, concept
max / avg over class definitions) -> every patch takes its cluster's class scores -> scores bilinearly upsampled to
the image (so ``argmax`` gives labels, and sliding-window merging still works). Optional background threshold: a
cluster whose best class cosine is below ``bg_thresh`` is assigned to the background class.

MaskCLIP (training-free): the dense value-path embedding of every patch against the text, no clustering.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semivl_fast.clip import get_tokenizer
from semivl_fast.models.backbone import ClipBackbone
from semivl_fast.models.maskclip import MaskClip
from semivl_fast.ops.cost_volume import cost_volume
from semivl_fast.text import ClassSet, TextEmbeddings, build_text_embeddings

METHODS = ("vilseg", "maskclip")


def pool_clusters(dense: Tensor, labels: Tensor, num_clusters: int) -> tuple[Tensor, Tensor]:
    """Mask-pooled cluster embeddings.

    dense (B, D, h, w) patch embeddings (normalised here), labels (B, h, w) int64 cluster of every patch ->
    embeddings (B, K, D) (unit mean direction of the member patches; zero for an empty cluster) and counts (B, K).
    """
    if labels.shape != (dense.shape[0], *dense.shape[2:]):
        raise ValueError(f"labels {tuple(labels.shape)} must be (B, h, w) of dense {tuple(dense.shape)}")
    one_hot = F.one_hot(labels.long(), num_clusters).to(dense.dtype)  # (B, h, w, K)
    summed = torch.einsum("bhwk,bdhw->bkd", one_hot, F.normalize(dense, dim=1))
    return F.normalize(summed, dim=-1), one_hot.sum(dim=(1, 2))


def classify_rows(embeddings: Tensor, text: TextEmbeddings) -> Tensor:
    """Cosine class scores (B, N, K) of K embeddings (B, K, D) per image (concept max in text mode "max")."""
    groups = text.groups if text.mode == "max" else None
    image = embeddings.transpose(1, 2).unsqueeze(-1)  # (B, D, K, 1): the K rows as a 1-wide "image"
    rows = text.embeddings.to(image.device, image.dtype)
    return cost_volume(image, rows, groups, text.num_classes)[..., 0]


def apply_background(scores: Tensor, thresh: float | None, background: int | None) -> Tensor:
    """Scores (B, N, ...) where the best score is below ``thresh`` become one-hot on ``background``."""
    if thresh is None:
        return scores
    if background is None:
        raise ValueError("a background threshold needs a background class in the class list")
    low = scores.amax(dim=1, keepdim=True) < thresh  # (B, 1, ...)
    one_hot = torch.full_like(scores, -1.0)
    one_hot[:, background] = 1.0
    return torch.where(low, one_hot, scores)


def upsample_scores(scores: Tensor, patch_size: int, size: tuple[int, int]) -> Tensor:
    """Token-grid scores (B, N, h, w) -> (B, N, H, W): bilinear to the padded grid (h*p, w*p), cropped to the image."""
    h, w = scores.shape[-2:]
    up = F.interpolate(scores.float(), size=(h * patch_size, w * patch_size), mode="bilinear", align_corners=False)
    return up[..., :size[0], :size[1]]


def _background_index(text: TextEmbeddings, background: str | int | None) -> int | None:
    if background is None or isinstance(background, int):
        return background
    return text.classes.index(background) if background in text.classes else None


class _TextSegmenter(nn.Module):
    """What both zero-shot segmenters share: the class texts and the optional background threshold."""

    def __init__(self, text: TextEmbeddings, bg_thresh: float | None, background: str | int | None) -> None:
        super().__init__()
        self.text = text
        self.num_classes = text.num_classes
        self.bg_thresh = bg_thresh
        self.background = _background_index(text, background)
        if bg_thresh is not None and self.background is None:
            raise ValueError(f"bg_thresh={bg_thresh} needs a background class {background!r} in the classes "
                             f"{list(text.classes)}")

    def set_text(self, text: TextEmbeddings) -> None:
        self.text, self.num_classes = text, text.num_classes


class ViLSegZeroShot(_TextSegmenter):
    """images (B, 3, H, W) normalised -> class scores (B, N, H, W) by cluster classification.

    Args:
        model: a ``ViLSeg`` (its dense embedding and clustering head are used).
        text: class text rows (``build_text_embeddings`` with the model's own text encoder).
        bg_thresh: clusters whose best cosine is below it go to ``background`` (a class name or index).
    """

    def __init__(self, model: nn.Module, text: TextEmbeddings, bg_thresh: float | None = None,
                 background: str | int | None = "background") -> None:
        super().__init__(text, bg_thresh, background)
        self.model = model

    @property
    def patch_size(self) -> int:
        return self.model.patch_size

    @torch.no_grad()
    def clusters(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(dense (B, D, h, w) unit patch embeddings, labels (B, h, w) int64 hard cluster of every patch)."""
        dense = F.normalize(self.model.encode_image(images, need_global=False).dense.float(), dim=1)
        return dense, self.model.head.logits(dense).argmax(dim=1)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        dense, labels = self.clusters(images)
        b, _, h, w = dense.shape
        emb, _ = pool_clusters(dense, labels, self.model.head.num_clusters)
        scores = apply_background(classify_rows(emb, self.text), self.bg_thresh, self.background)  # (B, N, K)
        index = labels.view(b, 1, h * w).expand(-1, scores.shape[1], -1)
        per_patch = scores.gather(2, index).view(b, -1, h, w)
        return upsample_scores(per_patch, self.model.patch_size, tuple(images.shape[-2:]))


class MaskClipZeroShot(_TextSegmenter):
    """Training-free MaskCLIP (``MaskClip``: dense value-path CLIP embeddings vs the class text, per patch), scores
    upsampled to the image."""

    def __init__(self, backbone: ClipBackbone, text: TextEmbeddings, bg_thresh: float | None = None,
                 background: str | int | None = "background") -> None:
        super().__init__(text, bg_thresh, background)
        self.scorer = MaskClip(backbone, text)

    @property
    def patch_size(self) -> int:
        return self.scorer.patch_size

    def set_text(self, text: TextEmbeddings) -> None:
        super().set_text(text)
        self.scorer.set_text(text)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        scores = apply_background(self.scorer(images).float(), self.bg_thresh, self.background)
        return upsample_scores(scores, self.patch_size, tuple(images.shape[-2:]))


def maskclip_from_clip(clip: nn.Module, text: TextEmbeddings, bg_thresh: float | None = None,
                       background: str | int | None = "background") -> MaskClipZeroShot:
    """The MaskCLIP baseline on a frozen copy of an open_clip model's image tower, at its stored position grid
    (``ClipBackbone`` resizes the position embedding on the fly for other input sizes)."""
    visual = copy.deepcopy(clip.visual)
    native = math.isqrt(visual.positional_embedding.shape[0] - 1) * int(visual.conv1.kernel_size[0])
    return MaskClipZeroShot(ClipBackbone(visual, native, (), "frozen"), text, bg_thresh, background)


def zero_shot_text(clip: nn.Module, model_name: str, classes: ClassSet | str, templates: str = "single",
                   mode: str = "max", weights: str | None = None, cache_dir: str | None = None) -> TextEmbeddings:
    """Class text rows from ``clip``'s own text encoder; cached on disk only when ``weights`` (a tag or file that
    identifies these weights) is given."""
    return build_text_embeddings(classes, model_name=model_name, pretrained=weights, templates=templates, mode=mode,
                                 clip_model=clip, tokenizer=get_tokenizer(model_name), cache_dir=cache_dir)


def build_segmenter(method: str, model: nn.Module, text: TextEmbeddings, bg_thresh: float | None = None,
                    background: str | int | None = "background") -> nn.Module:
    """``"vilseg"`` (needs a ViLSeg) or ``"maskclip"`` (a ViLSeg's CLIP, or any open_clip ViT CLIP)."""
    if method == "vilseg":
        if not hasattr(model, "head"):
            raise ValueError("method 'vilseg' needs a pretrained ViL-Seg checkpoint (with a clustering head); a plain "
                             "CLIP supports only the 'maskclip' baseline")
        return ViLSegZeroShot(model, text, bg_thresh, background)
    if method == "maskclip":
        return maskclip_from_clip(getattr(model, "clip", model), text, bg_thresh, background)
    raise ValueError(f"zero-shot method {method!r}; choose one of {METHODS}")
