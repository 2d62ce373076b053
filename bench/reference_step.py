"""An eager port of the reference's SemiVL training iteration (google-research/semivl ``semivl.py``), the baseline
``bench/step.py`` times the engine against.

What the reference computes, and how, as the spec describes it (shared/spec/semivl.md §1.2, §4.2, §4.3):

- **Backbone**: every block's normal path with ``nn.MultiheadAttention(need_weights=True)`` (mmcv on torch 1.10:
  the attention probabilities are materialised), the MaskCLIP value path recomputed as a side branch at the output
  layers (LN1 and ``in_proj`` again, ``out_proj`` applied to q, k and v), and the last block's normal path although
  only its value path is used.
- **Head**: ``semivl_fast.models.reference_head.ReferenceVLGHead`` (repeated guidance maps, concatenations).
- **Step**: three forwards of the student (the mix partner in eval mode; ``cat(x, w)`` with feature perturbation of
  both; ``cat(s1, s2)``), the frozen guidance CLIP on ``cat(w, w_mix)``, every logit map upsampled to the crop before
  its loss, unfused cross-entropies on full-resolution tensors, fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semivl_fast.models.backbone import resize_pos_embed
from semivl_fast.models.reference_head import ReferenceVLGHead

IGNORE = 255


class ReferenceBackbone(nn.Module):
    """The reference's MaskCLIP ViT on an open_clip ``visual`` tower: (value-path maps of ``out_layers``, dense
    embedding (B, D, h, w))."""

    def __init__(self, visual: nn.Module, image_size: int, out_layers: tuple[int, ...], trainable: bool = True):
        super().__init__()
        self.visual = visual
        self.out_layers = out_layers
        self.patch = int(visual.conv1.kernel_size[0])
        grid = image_size // self.patch
        with torch.no_grad():
            visual.positional_embedding = nn.Parameter(resize_pos_embed(visual.positional_embedding.data,
                                                                        (grid, grid)))
        for name, p in visual.named_parameters():  # spatial fine-tuning: attention and position embedding
            p.requires_grad_(trainable and (name == "positional_embedding" or ".attn." in name))

    @staticmethod
    def _value_path(block: nn.Module, x: Tensor) -> Tensor:
        """``forward_qkv``: LN1 and in_proj recomputed, out_proj on q, k and v, identity attention, the FFN."""
        attn = block.attn
        q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (F.linear(t, attn.out_proj.weight, attn.out_proj.bias) for t in (q, k, v))
        v = v + x
        return v + block.mlp(block.ln_2(v))

    def forward(self, images: Tensor) -> tuple[list[Tensor], Tensor]:
        v = self.visual
        x = v.conv1(images)  # (B, width, h, w)
        b, width, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([v.class_embedding.expand(b, 1, -1), x], dim=1)
        x = v.ln_pre(x + resize_pos_embed(v.positional_embedding, (h, w)))
        blocks = v.transformer.resblocks
        maps, last = [], None
        for i, block in enumerate(blocks):
            if i in self.out_layers or i == len(blocks) - 1:
                side = self._value_path(block, x)
                if i == len(blocks) - 1:
                    last = side
                else:
                    maps.append(side[:, 1:].transpose(1, 2).reshape(b, width, h, w))
            y = block.ln_1(x)
            x = x + block.attn(y, y, y, need_weights=True)[0]
            x = x + block.mlp(block.ln_2(x))
        x = v.ln_post(x)  # the normal path's output feeds only the (unused) global embedding
        _global = x[:, 0] @ v.proj
        dense = F.normalize(v.ln_post(last)[:, 1:] @ v.proj, dim=-1)  # (B, h*w, D)
        return maps, dense.transpose(1, 2).reshape(b, -1, h, w)


class ReferenceModel(nn.Module):
    """Backbone + head; ``forward`` returns logits at the crop size, as the reference's ``forward_wrapper``."""

    def __init__(self, backbone: ReferenceBackbone, head: ReferenceVLGHead, text: Tensor):
        super().__init__()
        self.backbone, self.decode_head = backbone, head
        self.register_buffer("text", text)

    def forward(self, images: Tensor, need_fp: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        maps, dense = self.backbone(images)
        pyramid = [*maps, dense]
        if need_fp:  # dropout2d on every encoder output, the perturbed copies concatenated to the clean ones
            pyramid = [torch.cat([t, F.dropout2d(t, 0.5, training=True)]) for t in pyramid]
        logits = self.decode_head(pyramid[-1], pyramid[:-1][::-1], self.text)  # skips deep -> shallow
        logits = self.to_crop(logits, images.shape[-2:])
        return logits.chunk(2) if need_fp else logits

    def to_crop(self, logits: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, N, 4h, 4w) -> (B, N, H, W): every loss and pseudo-label of the reference works at the crop size."""
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class ReferenceGuidance(nn.Module):
    """The frozen guidance CLIP: dense embedding -> cosine with the text rows -> concept max."""

    def __init__(self, backbone: ReferenceBackbone, rows: Tensor, groups: Tensor, num_classes: int):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.register_buffer("rows", F.normalize(rows, dim=-1))
        self.register_buffer("groups", groups)
        self.num_classes = num_classes

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        _, dense = self.backbone(images)
        s = F.conv2d(dense, self.rows[:, :, None, None])  # (B, R, h, w)
        return torch.stack([s[:, self.groups == c].amax(1) for c in range(self.num_classes)], 1)


@dataclass
class ReferenceBatch:
    """One labeled and one unlabeled image with its strong views, CutMix boxes and the mix partner (B each)."""

    img_x: Tensor
    mask_x: Tensor
    img_w: Tensor
    img_s1: Tensor
    img_s2: Tensor
    ignore: Tensor  # (B, S, S) 255 = crop padding
    box1: Tensor  # (B, S, S) 1 inside the CutMix box
    box2: Tensor
    img_w_mix: Tensor
    img_s1_mix: Tensor
    img_s2_mix: Tensor
    ignore_mix: Tensor


def clip_labels(guidance: ReferenceGuidance, images: Tensor, ignore: Tensor, size: tuple[int, int],
                thresh: float = 0.9) -> Tensor:
    """Zero-shot labels: scores upsampled to the crop, softmax(100 s), 255 where unsure or padding."""
    s = F.interpolate(guidance(images), size=size, mode="bilinear", align_corners=False)
    conf, label = torch.softmax(100 * s, dim=1).max(dim=1)
    label[conf < thresh] = IGNORE
    label[ignore == IGNORE] = IGNORE
    return label


def pseudo_labels(logits: Tensor) -> tuple[Tensor, Tensor]:
    """(confidence, label) of every pixel: softmax over the classes, then its max."""
    return logits.softmax(1).max(1)


def mixed(box: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``a`` with ``b`` pasted inside the CutMix box (``box == 1``)."""
    out = a.clone()
    out[box == 1] = b[box == 1]
    return out


def mean_all(pred: Tensor, label: Tensor) -> Tensor:
    """The guidance loss's ``mean_all`` reduction: summed cross-entropy (255 ignored) over all B·H·W pixels."""
    return F.cross_entropy(pred, label, ignore_index=IGNORE, reduction="sum") / label.numel()


def confidence_weighted(pred: Tensor, label: Tensor, conf: Tensor, ignore: Tensor, tau: float) -> Tensor:
    """``pixelwise`` mode: sum CE · [conf ≥ τ] · [valid] / #valid."""
    loss = F.cross_entropy(pred, label, reduction="none")
    valid = ignore != IGNORE
    return (loss * ((conf >= tau) & valid)).sum() / valid.sum()


def reference_step(model: nn.Module, raw_model: nn.Module, guidance: ReferenceGuidance,
                   optimizer: torch.optim.Optimizer, batch: ReferenceBatch, lam: float, tau: float = 0.95) -> Tensor:
    """One training iteration as ``semivl.py`` computes it; returns the loss (after the optimizer step).
    ``model`` may be compiled; ``raw_model`` is the plain module (mode switches)."""
    bt = batch
    size = tuple(bt.img_x.shape[-2:])
    with torch.no_grad():
        raw_model.eval()
        conf_mix, mask_mix = pseudo_labels(model(bt.img_w_mix))
        clip = clip_labels(guidance, torch.cat([bt.img_w, bt.img_w_mix]), torch.cat([bt.ignore, bt.ignore_mix]),
                           size)
        clip_w, clip_mix = clip.chunk(2)
    img_s1, img_s2 = bt.img_s1.clone(), bt.img_s2.clone()
    img_s1[bt.box1.unsqueeze(1).expand_as(img_s1) == 1] = bt.img_s1_mix[bt.box1.unsqueeze(1).expand_as(img_s1) == 1]
    img_s2[bt.box2.unsqueeze(1).expand_as(img_s2) == 1] = bt.img_s2_mix[bt.box2.unsqueeze(1).expand_as(img_s2) == 1]
    raw_model.train()
    nb = bt.img_x.shape[0]
    preds, preds_fp = model(torch.cat([bt.img_x, bt.img_w]), need_fp=True)
    pred_x, pred_w = preds.split([nb, bt.img_w.shape[0]])
    pred_w_fp = preds_fp[nb:]
    pred_s1, pred_s2 = model(torch.cat([img_s1, img_s2])).chunk(2)
    conf_w, mask_w = pseudo_labels(pred_w.detach())
    loss_x = F.cross_entropy(pred_x, bt.mask_x, ignore_index=IGNORE)
    losses = []
    for pred, box in ((pred_s1, bt.box1), (pred_s2, bt.box2)):
        losses.append(confidence_weighted(pred, mixed(box, mask_w, mask_mix), mixed(box, conf_w, conf_mix),
                                          mixed(box, bt.ignore, bt.ignore_mix), tau))
    loss_fp = confidence_weighted(pred_w_fp, mask_w, conf_w, bt.ignore, tau)
    loss = (loss_x + 0.25 * losses[0] + 0.25 * losses[1] + 0.5 * loss_fp) / 2
    l_mc = (0.25 * mean_all(pred_s1, mixed(bt.box1, clip_w, clip_mix))
            + 0.25 * mean_all(pred_s2, mixed(bt.box2, clip_w, clip_mix)) + 0.5 * mean_all(pred_w_fp, clip_w))
    loss = loss + lam * l_mc
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def reference_optimizer(model: ReferenceModel, lr: float, backbone_mult: float, head_mult: float,
                        weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW with the reference's groups: backbone at lr·mult, head at lr·10, weight decay everywhere (plain loop)."""
    groups = [{"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr": lr * backbone_mult},
              {"params": list(model.decode_head.parameters()), "lr": lr * head_mult}]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)

