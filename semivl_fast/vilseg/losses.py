"""ViL-Seg's objectives: cross-modal contrast (global, and phrase grounding on the patches), vision-based
(multi-crop / dense) contrast, IIC clustering.

All losses are computed in float32 (also under autocast) on the local batch (under DDP each process contrasts its
own batch; the gradients are averaged as usual).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-8


def info_nce(query: Tensor, keys: Tensor, targets: Tensor, temperature: float | Tensor) -> Tensor:
    """Mean cross-entropy of ``cos(query_i, keys_j) / temperature`` over j, with ``keys[targets[i]]`` positive.

    query (N, D), keys (M, D), targets (N,) int64 in [0, M).
    """
    logits = F.normalize(query.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).t() / temperature
    return F.cross_entropy(logits, targets)


def clip_loss(image: Tensor, text: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric image-caption InfoNCE (CLIP): pair i is the positive of row and column i.

    image, text (B, D) (normalised here); ``logit_scale`` = 1 / temperature (already exponentiated).
    """
    if image.shape != text.shape:
        raise ValueError(f"clip_loss: image {tuple(image.shape)} and text {tuple(text.shape)} must match")
    logits = logit_scale * F.normalize(image.float(), dim=-1) @ F.normalize(text.float(), dim=-1).t()
    return symmetric_ce(logits)


def symmetric_ce(logits: Tensor) -> Tensor:
    """Mean of the row-wise and column-wise cross-entropy of a square (B, B) logit matrix with positives i == j."""
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def patch_text_similarity(dense: Tensor, text: Tensor, pool_temp: float) -> Tensor:
    """Text-conditioned pooling (PACL-style): for every (image i, caption j) the image's unit patch embeddings are
    averaged with weights ``softmax_n(cos(p_in, t_j) / pool_temp)`` and the result's cosine with ``t_j`` is returned.

    dense (B, D, h, w), text (T, D) -> (B, T) cosine similarities.
    """
    p = F.normalize(dense.float(), dim=1).flatten(2)  # (B, D, N)
    t = F.normalize(text.float(), dim=-1)  # (T, D)
    sim = torch.einsum("bdn,td->btn", p, t)
    pooled = F.normalize(torch.einsum("btn,bdn->btd", (sim / pool_temp).softmax(-1), p), dim=-1)
    return (pooled * t[None]).sum(-1)


def multi_positive_nce(logits: Tensor, positives: Tensor) -> Tensor:
    """Symmetric InfoNCE with several positives per row and column (phrase grounding).

    logits (B, V) image-phrase scores, positives (B, V) bool. Every positive pair (i, v) is one term on each side:
    image side ``-log(e^{l_iv} / (e^{l_iv} + sum_{u not in pos(i)} e^{l_iu}))`` (the image's other positives are
    neither positive nor negative) and phrase side the same over the images (``j`` with ``v not in pos(j)`` are the
    negatives). With exactly one positive per row and column it is ``symmetric_ce``. Mean over the positive pairs.
    """
    if logits.shape != positives.shape:
        raise ValueError(f"multi_positive_nce: logits {tuple(logits.shape)} and positives {tuple(positives.shape)} "
                         "must match")
    logits = logits.float()
    pos = positives.bool()
    count = pos.sum().clamp_min(1)  # branchless (no positives: 0, no graph break under torch.compile)
    neg_inf = torch.finfo(logits.dtype).min
    negatives = logits.masked_fill(pos, neg_inf)  # only the negatives compete with a positive
    row_neg = torch.logsumexp(negatives, dim=1, keepdim=True)  # (B, 1)
    col_neg = torch.logsumexp(negatives, dim=0, keepdim=True)  # (1, V)
    image_side = torch.logaddexp(logits, row_neg) - logits  # -log softmax of each positive among the negatives
    phrase_side = torch.logaddexp(logits, col_neg) - logits
    return 0.5 * (torch.where(pos, image_side + phrase_side, 0).sum() / count)


def multi_crop_loss(local: Tensor, global_: Tensor, temperature: float) -> Tensor:
    """Vision-based contrast: every local view (B, L, D) is pulled to its own image's global view (B, D) and pushed
    from the other images' global views (InfoNCE over the batch)."""
    b, n_local, d = local.shape
    if global_.shape != (b, d):
        raise ValueError(f"multi_crop_loss: global views must be ({b}, {d}), got {tuple(global_.shape)}")
    targets = torch.arange(b, device=local.device).repeat_interleave(n_local)
    return info_nce(local.reshape(b * n_local, d), global_, targets, temperature)


def joint_distribution(p1: Tensor, p2: Tensor) -> Tensor:
    """Joint (K, K) distribution of the cluster assignments of corresponding patches, symmetrised (IIC).

    p1, p2 (B, K, h, w) (or (N, K)) soft assignments that sum to 1 over K; patch i of p1 corresponds to patch i of
    p2. ``P = mean_i p1_i p2_i^T``, then ``(P + P^T) / 2``.
    """
    if p1.shape != p2.shape:
        raise ValueError(f"joint_distribution: assignments {tuple(p1.shape)} and {tuple(p2.shape)} must match")
    k = p1.shape[1]
    a = p1.float().movedim(1, -1).reshape(-1, k)
    b = p2.float().movedim(1, -1).reshape(-1, k)
    joint = a.t() @ b / a.shape[0]
    return (joint + joint.t()) / 2


def mutual_information(joint: Tensor, balance: float = 1.0) -> Tensor:
    """``balance * (H(row marginal) + H(column marginal)) - H(joint)`` in nats; ``balance = 1`` is the mutual
    information I(z; z'). The marginal entropies are the terms that keep every cluster in use; IIC's lambda > 1
    weighs them more."""
    joint = joint / joint.sum()
    rows, cols = joint.sum(1), joint.sum(0)
    entropy = lambda p: -(p * p.clamp_min(EPS).log()).sum()
    return balance * (entropy(rows) + entropy(cols)) - entropy(joint)


def iic_loss(p1: Tensor, p2: Tensor, balance: float = 1.0) -> Tensor:
    """IIC clustering loss: minus the (balanced) mutual information of two views' assignments (B, K, h, w)."""
    return -mutual_information(joint_distribution(p1, p2), balance)


def cluster_usage(probs: Tensor) -> Tensor:
    """Fraction of patches per cluster (K,) of assignments (B, K, h, w): the marginal the balance terms spread."""
    k = probs.shape[1]
    return probs.detach().float().movedim(1, -1).reshape(-1, k).mean(0)


def correspondence_targets(boxes: Tensor, local_grid: tuple[int, int], global_grid: tuple[int, int]) -> Tensor:
    """Index of the global-view patch under every local-view patch centre, or -1 outside the global view.

    boxes (B, L, 4): each local view as (y0, x0, y1, x1) in the global view's normalised [0, 1] coordinates (x0 > x1
    when the two are mirrored); returns (B, L, hl * wl) int64 indices into the global grid (row-major).
    """
    hl, wl = local_grid
    hg, wg = global_grid
    v = (torch.arange(hl, device=boxes.device, dtype=torch.float32) + 0.5) / hl
    u = (torch.arange(wl, device=boxes.device, dtype=torch.float32) + 0.5) / wl
    y0, x0, y1, x1 = (boxes.float()[..., i, None, None] for i in range(4))
    gy = y0 + v[:, None] * (y1 - y0)  # (B, L, hl, 1)
    gx = x0 + u[None, :] * (x1 - x0)  # (B, L, 1, wl)
    gy, gx = torch.broadcast_tensors(gy, gx)
    inside = (gy >= 0) & (gy < 1) & (gx >= 0) & (gx < 1)
    index = (gy * hg).floor().clamp(0, hg - 1).long() * wg + (gx * wg).floor().clamp(0, wg - 1).long()
    return torch.where(inside, index, torch.full_like(index, -1)).flatten(2)


def dense_contrast_loss(local: Tensor, global_: Tensor, boxes: Tensor, temperature: float) -> Tensor:
    """Fine-grained vision contrast: every local-view patch must pick, among all patches of its image's global view,
    the one at the same place of the scene (InfoNCE; patches outside the global view are skipped).

    local (B, L, D, hl, wl), global_ (B, D, hg, wg), boxes (B, L, 4) as in ``correspondence_targets``. The other
    patches of the same image are the negatives, so features that only describe the whole image cannot solve it.
    """
    b, _, d, hl, wl = local.shape
    hg, wg = global_.shape[-2:]
    targets = correspondence_targets(boxes, (hl, wl), (hg, wg)).reshape(b, -1)  # (B, L*hl*wl)
    q = F.normalize(local.float(), dim=2).permute(0, 1, 3, 4, 2).reshape(b, -1, d)  # (B, L*hl*wl, D)
    k = F.normalize(global_.float(), dim=1).flatten(2)  # (B, D, hg*wg)
    logits = torch.bmm(q, k) / temperature  # (B, L*hl*wl, hg*wg)
    return F.cross_entropy(logits.reshape(-1, hg * wg), targets.reshape(-1), ignore_index=-1)


def corresponding_assignments(p_global: Tensor, p_local: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Pairs of cluster assignments at the same scene point: (N, K) from local views (B, L, K, hl, wl) and the
    global view (B, K, hg, wg) patch under each local patch centre (``correspondence_targets``); outside skipped."""
    b, _, k, hl, wl = p_local.shape
    hg, wg = p_global.shape[-2:]
    targets = correspondence_targets(boxes, (hl, wl), (hg, wg)).reshape(b, -1)  # (B, L*hl*wl)
    local = p_local.permute(0, 1, 3, 4, 2).reshape(b, -1, k)
    glob = p_global.flatten(2).transpose(1, 2)  # (B, hg*wg, K)
    valid = targets >= 0
    picked = torch.gather(glob, 1, targets.clamp_min(0)[..., None].expand(-1, -1, k))
    return local[valid], picked[valid]
