"""One ViL-Seg pretraining step: cross-modal contrast (+ phrase grounding), vision-based contrast and IIC clustering
on one batch of image-caption views, as one module that DDP and torch.compile wrap."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from semivl_fast.training.vilseg.config import LossConfig
from semivl_fast.vilseg.losses import (
    clip_loss,
    cluster_usage,
    corresponding_assignments,
    dense_contrast_loss,
    iic_loss,
    multi_crop_loss,
    multi_positive_nce,
    patch_text_similarity,
    symmetric_ce,
)
from semivl_fast.vilseg.model import ViLSeg


class PretrainStep(nn.Module):
    """One batch -> (total loss, detached logs). The module DDP and torch.compile wrap."""

    def __init__(self, model: ViLSeg, loss: LossConfig, phrase_tokens: Tensor | None = None) -> None:
        super().__init__()
        self.model, self.loss = model, loss
        # (V, ctx) token ids of the grounding vocabulary's phrases (put in ``loss.ground_template``)
        self.register_buffer("phrase_tokens", phrase_tokens if phrase_tokens is not None else
                             torch.zeros(0, 1, dtype=torch.long), persistent=False)

    def ground(self, dense: Tensor, mentions: Tensor, scale: Tensor) -> Tensor:
        """Phrase grounding loss of dense patch embeddings (B, D, h, w) and mentions (B, V) bool."""
        tokens, mentions = self.phrase_tokens, mentions.bool()
        if tokens.shape[0] > self.loss.ground_max_text:  # a large vocabulary: only the phrases this batch names
            cols = mentions.any(0).nonzero().squeeze(1)
            tokens, mentions = tokens[cols], mentions[:, cols]
        phrases = self.model.encode_text(tokens)  # (V, D)
        return multi_positive_nce(scale * patch_text_similarity(dense, phrases, self.loss.pool_temp), mentions)

    def forward(self, view1: Tensor, view2: Tensor, flipped: Tensor, local: Tensor, boxes: Tensor,
                tokens: Tensor, mentions: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        m, c = self.model, self.loss
        n = view1.shape[0]
        has_local = local.shape[1] > 0
        use_local = c.vision_weight > 0 and has_local
        iic_local = c.cluster_weight > 0 and c.cluster_views == "local"
        if iic_local and not has_local:
            raise ValueError("loss.cluster_views=local needs local views (data.local_crops > 0)")
        two_views = c.cluster_weight > 0 and not iic_local
        local_dense = iic_local or (use_local and c.vision_mode != "global")
        grounding = c.ground_weight > 0 and self.phrase_tokens.shape[0] > 0
        need_dense = c.cluster_weight > 0 or local_dense or c.clip_pool != "global" or grounding
        feats = m.encode_image(torch.cat([view1, view2]) if two_views else view1, need_dense=need_dense)
        globals_ = feats.global_embed.split(n)
        denses = feats.dense.split(n) if need_dense else ()
        text = m.encode_text(tokens)
        scale = m.logit_scale(c.max_logit_scale)
        l_clip = torch.zeros((), device=view1.device)
        if c.clip_pool != "patch":  # every global view against the caption
            l_clip = l_clip + sum(clip_loss(g, text, scale) for g in globals_) / len(globals_)
        if c.clip_pool != "global":
            l_clip = l_clip + sum(symmetric_ce(scale * patch_text_similarity(d, text, c.pool_temp))
                                  for d in denses) / len(denses)
        if c.clip_pool == "both":
            l_clip = l_clip / 2
        total = c.clip_weight * l_clip
        logs = {"clip": l_clip.detach(), "temp": (1 / scale).detach()}
        if grounding:
            l_ground = self.ground(denses[0], mentions, scale)
            total = total + c.ground_weight * l_ground
            logs["ground"] = l_ground.detach()
        lf = None
        if use_local or iic_local:
            b, n_local = local.shape[:2]
            lf = m.encode_image(local.flatten(0, 1), need_global=use_local and c.vision_mode != "dense",
                                need_dense=local_dense)
        if use_local:
            l_vis = torch.zeros((), device=view1.device)
            if c.vision_mode != "dense":
                l_vis = l_vis + multi_crop_loss(lf.global_embed.view(b, n_local, -1), globals_[0], c.vision_temp)
            if c.vision_mode != "global":
                dense = lf.dense.view(b, n_local, *lf.dense.shape[1:])
                l_vis = l_vis + dense_contrast_loss(dense, denses[0], boxes, c.vision_temp)
            total = total + c.vision_weight * l_vis
            logs["vision"] = l_vis.detach()
        if c.cluster_weight > 0:
            detach = (lambda t: t.detach()) if m.cfg.detach_clusters else (lambda t: t)
            if iic_local:
                p_global = m.assign(detach(denses[0]))  # (B, K, hg, wg)
                p_local = m.assign(detach(lf.dense))  # (B*L, K, hl, wl)
                p1, p2 = corresponding_assignments(p_global, p_local.view(b, n_local, *p_local.shape[1:]), boxes)
                usage = cluster_usage(p_global)
            else:
                probs = m.assign(detach(feats.dense))  # (2B, K, h, w)
                p1, p2 = probs[:n], probs[n:]
                p2 = torch.where(flipped.view(-1, 1, 1, 1), p2.flip(-1), p2)  # undo the mirror: patch i <-> i
                usage = cluster_usage(probs)
            l_iic = iic_loss(p1, p2, c.cluster_balance)
            total = total + c.cluster_weight * l_iic
            logs["iic"] = l_iic.detach()
            logs["clusters_used"] = torch.exp(-(usage * usage.clamp_min(1e-8).log()).sum())  # perplexity of usage
        logs["loss"] = total.detach()
        return total, logs


def freeze_untrained(model: ViLSeg, loss: LossConfig) -> None:
    """Freeze the parameters that no loss of ``loss`` trains: the clustering head when ``loss.cluster_weight == 0``.
    Every trainable parameter then takes part in each step's loss, which DDP (without the unused-parameter search)
    needs: an unused one fails the second iteration ("Expected to have finished reduction in the prior
    iteration")."""
    if loss.cluster_weight == 0:
        model.head.requires_grad_(False)
