"""ViL-Seg losses against values worked out by hand on small inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

from semivl_fast.vilseg.losses import (
    clip_loss,
    correspondence_targets,
    dense_contrast_loss,
    iic_loss,
    info_nce,
    joint_distribution,
    multi_crop_loss,
    multi_positive_nce,
    mutual_information,
    symmetric_ce,
)


def test_clip_loss_symmetric_infonce_by_hand():
    # 2 pairs, orthogonal unit vectors: cos matrix [[1, 0], [0, 1]] (image i vs text j); scale 2
    img = torch.tensor([[1.0, 0.0], [0.0, 3.0]])  # norms do not matter
    txt = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
    # every row and column: logits (2, 0) with the positive at 2 -> -log(e^2 / (e^2 + 1))
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert clip_loss(img, txt, 2.0).item() == pytest.approx(expected, rel=1e-6)


def test_clip_loss_asymmetric_case_averages_both_directions():
    # cos matrix C = [[1, 0.6], [0.8, 1]] is not symmetric: image->text rows use C, text->image rows use C^T
    img = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    c = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    assert torch.allclose(c, torch.tensor([[1.0, 0.6], [0.8, 0.96]]), atol=1e-6)
    ce = lambda row, i: -(row[i] - torch.logsumexp(row, 0)).item()
    i2t = (ce(c[0], 0) + ce(c[1], 1)) / 2
    t2i = (ce(c[:, 0], 0) + ce(c[:, 1], 1)) / 2
    # the same by hand for the first image row: -log(e^1 / (e^1 + e^0.6))
    assert ce(c[0], 0) == pytest.approx(-math.log(math.e / (math.e + math.exp(0.6))), rel=1e-6)
    assert clip_loss(img, txt, 1.0).item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)
    assert clip_loss(img, txt, 1.0).item() == pytest.approx(clip_loss(txt, img, 1.0).item(), rel=1e-6)


def test_info_nce_and_multi_crop():
    glob = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # local views: image 0's two crops point at global 0 (cos 1 / 0), image 1's crops at 45 degrees (cos .7071 both)
    local = torch.tensor([[[1.0, 0.0], [2.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    t = 0.5
    good = -math.log(math.exp(2) / (math.exp(2) + 1))  # logits (1/t, 0)
    tie = math.log(2)  # logits equal
    expected = (2 * good + 2 * tie) / 4
    assert multi_crop_loss(local, glob, t).item() == pytest.approx(expected, rel=1e-6)
    q = local.reshape(4, 2)
    assert info_nce(q, glob, torch.tensor([0, 0, 1, 1]), t).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="global views"):
        multi_crop_loss(local, glob[:1], t)


def test_mutual_information_of_known_joints():
    k = 4
    identical = torch.eye(k) / k  # z = z' uniform: I = H = log K
    assert mutual_information(identical).item() == pytest.approx(math.log(k), rel=1e-6)
    independent = torch.full((k, k), 1 / k**2)  # I = 0
    assert mutual_information(independent).item() == pytest.approx(0.0, abs=1e-6)
    # binary symmetric channel, flip prob e: I = log 2 - H_b(e)
    e = 0.1
    bsc = torch.tensor([[(1 - e) / 2, e / 2], [e / 2, (1 - e) / 2]])
    hb = -(e * math.log(e) + (1 - e) * math.log(1 - e))
    assert mutual_information(bsc).item() == pytest.approx(math.log(2) - hb, rel=1e-6)
    # everything in one cluster: no information, and the balance terms are 0 too
    collapsed = torch.zeros(k, k)
    collapsed[0, 0] = 1
    assert mutual_information(collapsed).item() == pytest.approx(0.0, abs=1e-6)


def test_balance_weight_favours_used_clusters():
    # lambda * (H(rows) + H(cols)) - H(joint): with lambda = 2, the identical uniform joint scores 4 log K - log K
    k = 3
    assert mutual_information(torch.eye(k) / k, balance=2.0).item() == pytest.approx(3 * math.log(k), rel=1e-6)
    # a joint that uses 2 of 3 clusters (identical views): H = log 2 -> I = log 2 < log 3
    two = torch.diag(torch.tensor([0.5, 0.5, 0.0]))
    assert mutual_information(two).item() == pytest.approx(math.log(2), rel=1e-6)
    assert mutual_information(two, balance=2.0).item() == pytest.approx(3 * math.log(2), rel=1e-6)
    # unbalanced marginals with lambda = 1.5: 1.5 * (H(m) + H(m)) - H(joint) with m = (0.9, 0.1), joint diagonal
    m = torch.tensor([0.9, 0.1])
    h = -(m * m.log()).sum().item()
    assert mutual_information(torch.diag(m), balance=1.5).item() == pytest.approx(1.5 * 2 * h - h, rel=1e-6)


def test_joint_distribution_and_iic_loss_from_assignments():
    # 1 image, K = 2, 2x1 patches; view 1 hard [0, 1], view 2 the same -> joint diag(0.5, 0.5), I = log 2
    p = torch.tensor([[[[1.0], [0.0]], [[0.0], [1.0]]]])  # (B=1, K=2, h=2, w=1)
    joint = joint_distribution(p, p)
    assert torch.allclose(joint, torch.tensor([[0.5, 0.0], [0.0, 0.5]]))
    assert iic_loss(p, p).item() == pytest.approx(-math.log(2), rel=1e-6)
    # view 2 swaps the clusters: still perfectly informative (IIC is permutation invariant)
    assert iic_loss(p, p.flip(1)).item() == pytest.approx(-math.log(2), rel=1e-6)
    # soft, asymmetric pairs: P = mean_i p1_i p2_i^T, symmetrised
    p1 = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    p2 = torch.tensor([[0.6, 0.4], [0.1, 0.9]])
    outer = (torch.outer(p1[0], p2[0]) + torch.outer(p1[1], p2[1])) / 2
    assert torch.allclose(joint_distribution(p1, p2), (outer + outer.t()) / 2)
    assert joint_distribution(p1, p2).sum().item() == pytest.approx(1.0)


def test_iic_gradient_spreads_a_collapsed_assignment():
    # all patches nearly in cluster 0 (and alike: plain MI is at a saddle there, gradient ~0): with lambda > 1 the
    # balance terms alone push mass to the other clusters
    logits = torch.zeros(2, 3, 4, 4)
    logits[:, 0] = 3.0
    logits = logits + 0.1 * torch.randn_like(logits)
    logits.requires_grad_(True)
    probs = logits.softmax(1)
    iic_loss(probs, probs, balance=2.0).backward()
    assert logits.grad[:, 0].sum() > 0  # descent lowers the dominant cluster's logits
    step = logits - 100.0 * logits.grad  # the loss is a mean over 32 patches: gradients are small
    usage_before = probs.detach().mean((0, 2, 3))
    usage_after = step.softmax(1).mean((0, 2, 3))
    assert usage_after[0] < usage_before[0] - 1e-3


def test_correspondence_targets():
    same = correspondence_targets(torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]), (2, 3), (2, 3))
    assert same.tolist() == [[[0, 1, 2, 3, 4, 5]]]
    mirrored = correspondence_targets(torch.tensor([[[0.0, 1.0, 1.0, 0.0]]]), (2, 3), (2, 3))
    assert mirrored.tolist() == [[[2, 1, 0, 5, 4, 3]]]
    # the bottom-right quarter seen as a 2x2 local view of a 4x4 global grid: centres 0.625, 0.875 -> cells 2, 3
    quarter = correspondence_targets(torch.tensor([[[0.5, 0.5, 1.0, 1.0]]]), (2, 2), (4, 4))
    assert quarter.tolist() == [[[10, 11, 14, 15]]]
    # half outside the global view (to its left): those patches are skipped (-1)
    outside = correspondence_targets(torch.tensor([[[0.0, -0.5, 1.0, 0.5]]]), (1, 2), (1, 2))
    assert outside.tolist() == [[[-1, 0]]]


def test_dense_contrast_loss_by_hand():
    # global view: 2x2 patches with one-hot features; the local view is its mirror image (box x0 = 1, x1 = 0)
    glob = torch.eye(4).view(4, 2, 2).unsqueeze(0)  # (B=1, D=4, 2, 2): patch k has feature e_k
    local = glob.flip(-1).unsqueeze(1)  # (B=1, L=1, D, 2, 2)
    boxes = torch.tensor([[[0.0, 1.0, 1.0, 0.0]]])
    t = 0.5
    # every local patch: cos 1 with its own global patch, 0 with the 3 others
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 3))
    assert dense_contrast_loss(local, glob, boxes, t).item() == pytest.approx(expected, rel=1e-6)
    # read without the mirror, every match is wrong: positive logit 0, one distractor at 1/t
    wrong = -math.log(1 / (math.exp(1 / t) + 3))
    straight = torch.tensor([[[0.0, 0.0, 1.0, 1.0]]])
    assert dense_contrast_loss(local, glob, straight, t).item() == pytest.approx(wrong, rel=1e-6)


def test_multi_positive_nce_by_hand():
    # 2 images x 3 phrases; image 0 names phrases 0 and 1, image 1 names phrase 2
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.5, -1.0, 3.0]])
    pos = torch.tensor([[True, True, False], [False, False, True]])
    lse = lambda *xs: math.log(sum(math.exp(x) for x in xs))
    # image side: a positive competes only with its row's negatives (the other positive is left out)
    img = [lse(2, 0) - 2, lse(1, 0) - 1, lse(3, 0.5, -1) - 3]
    # phrase side: phrase 0 vs image 1 (0.5), phrase 1 vs image 1 (-1), phrase 2 vs image 0 (0)
    txt = [lse(2, 0.5) - 2, lse(1, -1) - 1, lse(3, 0) - 3]
    expected = 0.5 * (sum(img) / 3 + sum(txt) / 3)
    assert multi_positive_nce(logits, pos).item() == pytest.approx(expected, rel=1e-6)


def test_multi_positive_nce_with_one_positive_each_is_symmetric_infonce():
    logits = torch.randn(5, 5)
    assert torch.allclose(multi_positive_nce(logits, torch.eye(5, dtype=torch.bool)), symmetric_ce(logits))


def test_multi_positive_nce_gradient_and_empty():
    logits = torch.randn(4, 6, requires_grad=True)
    pos = torch.rand(4, 6) < 0.4
    pos[0, 0] = True
    multi_positive_nce(logits, pos).backward()
    assert torch.isfinite(logits.grad).all()
    assert multi_positive_nce(torch.randn(3, 2), torch.zeros(3, 2, dtype=torch.bool)).item() == 0
    with pytest.raises(ValueError, match="must match"):
        multi_positive_nce(torch.randn(3, 2), torch.zeros(2, 3, dtype=torch.bool))
