"""Dense vision-text cost volume: cosine similarity of every pixel feature with every class text embedding.

So far only the PyTorch reference; the fused kernels come with the kernels issue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from semivl_fast.ops import _common

OP = "cost_volume"


def ensemble_text(text: Tensor) -> Tensor:
    """(N, C) or (N, T, C) text embeddings -> (N, C) unit vectors; templates are averaged after normalisation."""
    if text.dim() == 3:
        text = F.normalize(text, dim=-1).mean(dim=1)
    return F.normalize(text, dim=-1)


def concept_max(scores: Tensor, groups: Tensor, num_classes: int) -> Tensor:
    """(B, R, H, W) scores of R concept rows -> (B, num_classes, H, W): max over each class's concepts.

    ``groups`` (R,) int64 gives the class of every row; every class must have at least one row.
    """
    b, _, h, w = scores.shape
    index = groups.to(scores.device).view(1, -1, 1, 1).expand_as(scores)
    out = scores.new_full((b, num_classes, h, w), float("-inf"))
    return out.scatter_reduce(1, index, scores, reduce="amax", include_self=True)


def cost_volume_reference(image: Tensor, text: Tensor, groups: Tensor | None = None,
                          num_classes: int | None = None) -> Tensor:
    """Reference: ``einsum('bchw,nc->bnhw', normalize(image), ensemble_text(text))``, then the concept max.

    image (B, C, H, W); text (N, C) or (N, T, C) with T prompt templates; groups (N,) class of each text row.
    Returns (B, N, H, W), or (B, num_classes, H, W) when ``groups`` is given.
    """
    _common.check_tensor(OP, "image", image, dim=4, floating=True)
    _common.check_tensor(OP, "text", text, floating=True)
    if text.dim() not in (2, 3) or text.shape[-1] != image.shape[1]:
        raise ValueError(f"{OP}: argument 'text' must be (N, C) or (N, T, C) with C = {image.shape[1]} "
                         f"(the image channels), got {tuple(text.shape)}")
    scores = torch.einsum("bchw,nc->bnhw", F.normalize(image, dim=1), ensemble_text(text).to(image.dtype))
    if groups is None:
        return scores
    if groups.shape != (text.shape[0],):
        raise ValueError(f"{OP}: argument 'groups' must have shape ({text.shape[0]},), got {tuple(groups.shape)}")
    return concept_max(scores, groups, int(num_classes if num_classes is not None else groups.max() + 1))


def cost_volume(image: Tensor, text: Tensor, groups: Tensor | None = None, num_classes: int | None = None) -> Tensor:
    """Cosine cost volume (B, N, H, W) of image features (B, C, H, W) and text (N, C) / (N, T, C); see reference."""
    return cost_volume_reference(image, text, groups, num_classes)
