"""Zero-shot segmentation: clustering and pooling shapes, a constructed case with a known answer, the MaskCLIP
baseline, the background threshold, and the model's dense features against SemiVL's backbone."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semivl_fast.models.backbone import ClipBackbone
from semivl_fast.text import TextEmbeddings
from semivl_fast.vilseg.model import ClusterHead, ViLSeg, ViLSegModelConfig
from semivl_fast.vilseg.zeroshot import (
    MaskClipZeroShot,
    ViLSegZeroShot,
    apply_background,
    classify_rows,
    maskclip_from_clip,
    pool_clusters,
    upsample_scores,
)


def test_cluster_head_and_pooling_shapes():
    head = ClusterHead(dim=16, num_clusters=5, temperature=0.1)
    dense = torch.randn(2, 16, 3, 4)
    probs = head(dense)
    assert probs.shape == (2, 5, 3, 4)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 3, 4))
    labels = probs.argmax(1)
    emb, counts = pool_clusters(dense, labels, 5)
    assert emb.shape == (2, 5, 16) and counts.shape == (2, 5)
    assert counts.sum(1).tolist() == [12.0, 12.0]
    used = counts > 0
    torch.testing.assert_close(emb[used].norm(dim=-1), torch.ones(int(used.sum())))
    assert (emb[~used] == 0).all()  # empty clusters pool to zero
    # one cluster's embedding is the renormalised mean of its unit patch embeddings
    b, k = torch.nonzero(used)[0].tolist()
    members = F.normalize(dense, dim=1)[b].permute(1, 2, 0)[labels[b] == k]
    torch.testing.assert_close(emb[b, k], F.normalize(members.mean(0), dim=0))
    with pytest.raises(ValueError, match="labels"):
        pool_clusters(dense, labels[:, :2], 5)


class _HandModel(nn.Module):
    """A stand-in ViLSeg whose patch embeddings and prototypes are set by hand."""

    def __init__(self, dense: torch.Tensor, prototypes: torch.Tensor, patch_size: int = 4) -> None:
        super().__init__()
        self.dense, self.patch_size = dense, patch_size
        self.head = ClusterHead(prototypes.shape[1], prototypes.shape[0])
        self.head.prototypes.data.copy_(prototypes)

    def encode_image(self, images, need_global=True, need_dense=True):
        from semivl_fast.vilseg.model import ImageFeatures

        return ImageFeatures(None, self.dense)


def _constructed_case():
    """4x4 patches, D = 4 (dims: 0 "cat-ness", 1 "grass-ness", 2 and 3 a texture each region has).

    Left half: cat patches e0 + e2; right half: grass patches e1 + e3. Prototypes e2, e3 (and an unused third), so
    the clusters are exactly the halves. Text rows: background -(e0 + e1), cat e0, grass e1. One misleading patch per
    half (0.3 e0 + 0.6 e1 + e2 on the left, the mirror on the right) is nearer the wrong class text, so a per-patch
    classifier errs there; pooled over its cluster it is classified right. Expected: left half cat, right half grass.
    """
    e = torch.eye(4)
    dense = torch.zeros(1, 4, 4, 4)
    dense[0, :, :, :2] = (e[0] + e[2])[:, None, None]
    dense[0, :, :, 2:] = (e[1] + e[3])[:, None, None]
    dense[0, :, 0, 0] = 0.3 * e[0] + 0.6 * e[1] + e[2]
    dense[0, :, 3, 3] = 0.6 * e[0] + 0.3 * e[1] + e[3]
    prototypes = torch.stack([e[2], e[3], -(e[2] + e[3])])
    rows = F.normalize(torch.stack([-(e[0] + e[1]), e[0], e[1]]), dim=-1)
    text = TextEmbeddings(rows, torch.arange(3), 3, "single", ("background", "cat", "grass"),
                          classes=("background", "cat", "grass"))
    return dense, prototypes, text


def test_zero_shot_known_answer_constructed_by_hand():
    dense, prototypes, text = _constructed_case()
    seg = ViLSegZeroShot(_HandModel(dense, prototypes), text)
    images = torch.zeros(1, 3, 16, 16)
    scores = seg(images)
    assert scores.shape == (1, 3, 16, 16)
    labels = scores.argmax(1)[0]
    expected = torch.full((16, 16), 1)
    expected[:, 8:] = 2
    assert torch.equal(labels, expected)
    _, cluster = seg.clusters(images)
    assert torch.equal(cluster[0], (torch.arange(4) >= 2).long().expand(4, 4))
    # per patch (no clustering) the two misleading patches are wrong: the pooling is what fixes them
    per_patch = (F.normalize(dense, dim=1)[0].permute(1, 2, 0) @ text.embeddings.t()).argmax(-1)
    assert per_patch[0, 0] == 2 and per_patch[3, 3] == 1


def test_background_threshold_and_concept_max():
    dense, prototypes, text = _constructed_case()
    # each cluster's cosine with its class text is ~0.7: a threshold above that sends both clusters to background
    seg = ViLSegZeroShot(_HandModel(dense, prototypes), text, bg_thresh=0.8)
    assert (seg(torch.zeros(1, 3, 16, 16)).argmax(1) == 0).all()
    seg = ViLSegZeroShot(_HandModel(dense, prototypes), text, bg_thresh=0.5)
    assert set(seg(torch.zeros(1, 3, 16, 16)).argmax(1).unique().tolist()) == {1, 2}
    with pytest.raises(ValueError, match="background"):
        ViLSegZeroShot(_HandModel(dense, prototypes), text, bg_thresh=0.5, background="sky")
    scores = torch.tensor([[[0.2, 0.9], [0.1, 0.3], [0.15, 0.1]]])  # (B=1, N=3, K=2)
    out = apply_background(scores, 0.25, 0)
    assert out[0, :, 0].tolist() == [1.0, -1.0, -1.0] and torch.equal(out[0, :, 1], scores[0, :, 1])
    # concept max: class 1 has two rows; a cluster on its second concept still gets class 1
    rows = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    te = TextEmbeddings(rows, torch.tensor([0, 1, 1]), 2, "max", ("bg", "a", "b"), classes=("bg", "obj"))
    emb = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])  # (B=1, K=2, D=3)
    assert classify_rows(emb, te).argmax(1).tolist() == [[1, 0]]


def test_upsample_scores_crops_the_padding():
    scores = torch.arange(6.0).view(1, 1, 2, 3)
    up = upsample_scores(scores, 4, (7, 10))  # grid of a 7x10 image padded to 8x12
    assert up.shape == (1, 1, 7, 10)
    # pixel (6, 9) samples the padded grid at (1.125 -> clamped 1, 1.875): row 1 = (3, 4, 5) -> 4 + 0.875
    assert up[0, 0, 0, 0] == 0 and up[0, 0, 6, 9] == pytest.approx(4.875)


def _tiny_vilseg(tiny_clip_file, dense="value", global_embed="avg"):
    from semivl_fast.clip import create_clip

    name, path = tiny_clip_file
    clip = create_clip(name, path)
    return ViLSeg(clip, ViLSegModelConfig(dense=dense, global_embed=global_embed, num_clusters=6))


def test_value_dense_equals_semivl_backbone_and_cls_equals_encode_image(tiny_clip_file):
    import copy

    model = _tiny_vilseg(tiny_clip_file, global_embed="cls").eval()
    images = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        feats = model.encode_image(images)
        backbone = ClipBackbone(copy.deepcopy(model.clip.visual), 96, (), "frozen").eval()
        ref = backbone(images).dense
        torch.testing.assert_close(F.normalize(feats.dense, dim=1), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(feats.global_embed, model.clip.encode_image(images), atol=1e-5, rtol=1e-5)
        # other input sizes: the position embedding is resized on the fly, the stored one is untouched
        small = model.encode_image(torch.randn(3, 3, 40, 48))
    assert small.dense.shape == (3, 64, 5, 6) and small.global_embed.shape == (3, 64)
    assert model.clip.visual.positional_embedding.shape[0] == 145
    token = _tiny_vilseg(tiny_clip_file, dense="token").eval()
    with torch.no_grad():
        f = token.encode_image(images)
    torch.testing.assert_close(f.global_embed, f.dense.mean((2, 3)))


def test_segmenters_on_a_real_tiny_model(tiny_clip_file):
    from semivl_fast.vilseg.zeroshot import build_segmenter

    model = _tiny_vilseg(tiny_clip_file).eval()
    rows = F.normalize(torch.randn(5, 64), dim=-1)
    text = TextEmbeddings(rows, torch.tensor([0, 0, 1, 2, 2]), 3, "max", tuple("abcde"), classes=("x", "y", "z"))
    images = torch.randn(2, 3, 52, 60)
    for method in ("vilseg", "maskclip"):
        seg = build_segmenter(method, model, text)
        out = seg(images)
        assert out.shape == (2, 3, 52, 60) and torch.isfinite(out).all()
    # MaskCLIP works on a copy: the model's own parameters stay trainable
    assert all(p.requires_grad for p in model.clip.visual.parameters())
    with pytest.raises(ValueError, match="clustering head"):
        build_segmenter("vilseg", model.clip, text)
    with pytest.raises(ValueError, match="zero-shot method"):
        build_segmenter("groupvit", model, text)
    # MaskCLIP scores are exactly the cost volume of the value-path features
    seg = maskclip_from_clip(model.clip, text)
    with torch.no_grad():
        dense = F.normalize(model.encode_image(images[:, :, :48, :56], need_global=False).dense, dim=1)
        direct = torch.einsum("bdhw,nd->bnhw", dense, rows)
        per_class = torch.stack([direct[:, :2].amax(1), direct[:, 2], direct[:, 3:].amax(1)], 1)
        torch.testing.assert_close(seg(images[:, :, :48, :56])[:, :, ::8, ::8].shape, per_class.shape)
        low = seg.scorer.backbone(images[:, :, :48, :56]).dense
    torch.testing.assert_close(low, dense, atol=1e-5, rtol=1e-5)


def test_maskclip_scores_are_patch_text_cosines(tiny_clip_file, monkeypatch):
    """MaskCLIP's scores on the patch grid are the concept-max cosines of the value-path patch embeddings (here from
    ViLSeg's own implementation of that path) with the text rows; the image-size output is their bilinear upsampling
    to the padded grid, cropped; below the threshold a patch becomes one-hot background."""
    from semivl_fast.vilseg import zeroshot

    model = _tiny_vilseg(tiny_clip_file).eval()
    rows = F.normalize(torch.randn(5, 64), dim=-1)
    text = TextEmbeddings(rows, torch.tensor([0, 0, 1, 2, 2]), 3, "max", tuple("abcde"), classes=("x", "y", "z"))
    images = torch.randn(2, 3, 52, 60)  # padded to 56 x 64: a 7 x 8 patch grid
    with torch.no_grad():
        dense = model.encode_image(images, need_global=False).dense
        unit = dense / dense.norm(dim=1, keepdim=True)
        cos = torch.einsum("bdhw,rd->brhw", unit, rows)
    expected = torch.stack([cos[:, :2].amax(1), cos[:, 2], cos[:, 3:].amax(1)], dim=1)  # (2, 3, 7, 8)
    assert expected.shape == (2, 3, 7, 8)
    seg = maskclip_from_clip(model.clip, text)
    full = seg(images)
    upsampled = F.interpolate(expected, size=(56, 64), mode="bilinear", align_corners=False)[..., :52, :60]
    torch.testing.assert_close(full, upsampled, atol=1e-5, rtol=1e-5)
    # the grid itself, with the upsampling replaced by the identity
    monkeypatch.setattr(zeroshot, "upsample_scores", lambda scores, patch, size: scores)
    torch.testing.assert_close(seg(images), expected, atol=1e-5, rtol=1e-5)
    thresh = float(expected.amax(1).median())
    low = expected.amax(1) < thresh  # (2, 7, 8)
    assert 0 < int(low.sum()) < low.numel()
    bg = maskclip_from_clip(model.clip, text, bg_thresh=thresh, background="y")(images)
    torch.testing.assert_close(bg[:, 1][low], torch.ones(int(low.sum())))
    assert (bg[:, 0][low] == -1).all() and (bg[:, 2][low] == -1).all()
    torch.testing.assert_close(bg.permute(0, 2, 3, 1)[~low], expected.permute(0, 2, 3, 1)[~low], atol=1e-5,
                               rtol=1e-5)


class _HandBackbone(nn.Module):
    """A stand-in ClipBackbone returning hand-set unit patch embeddings at patch size 1 (so the upsampling to a
    same-size image is the identity)."""

    def __init__(self, dense: torch.Tensor) -> None:
        super().__init__()
        self.dense, self.patch_size = F.normalize(dense, dim=1), 1

    def set_finetune(self, mode):
        pass

    def forward(self, images):
        from semivl_fast.models.backbone import BackboneOutput

        return BackboneOutput(dense=self.dense, guidance=[])


def test_maskclip_known_answer_constructed_by_hand():
    """The constructed case of the ViL-Seg test, per patch: MaskCLIP labels every patch by its own nearest class
    text, so the two misleading patches take the wrong class (ViL-Seg's clustering fixes them), and with a threshold
    between their best cosine (0.6 / |(0.3, 0.6, 1)| = 0.50) and the others' (1 / sqrt 2 = 0.71) only they go to
    background. A class with a second concept (grass: e1 or e3) claims a patch through that concept alone."""
    dense, _, text = _constructed_case()
    images = torch.zeros(1, 3, 4, 4)
    labels = MaskClipZeroShot(_HandBackbone(dense), text)(images).argmax(1)[0]
    expected = torch.tensor([[2, 1, 2, 2], [1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 2, 1]])
    assert torch.equal(labels, expected)
    labels = MaskClipZeroShot(_HandBackbone(dense), text, bg_thresh=0.6)(images).argmax(1)[0]
    expected[0, 0] = expected[3, 3] = 0
    assert torch.equal(labels, expected)
    assert (MaskClipZeroShot(_HandBackbone(dense), text, bg_thresh=0.75)(images).argmax(1) == 0).all()
    # concept max: patch (1, 2) = e3 + 0.5 e0 is "cat" (0.5 / 1.12) for the single grass row e1 and "grass"
    # (1 / 1.12) once grass also has the row e3
    e = torch.eye(4)
    dense[0, :, 1, 2] = e[3] + 0.5 * e[0]
    single = MaskClipZeroShot(_HandBackbone(dense), text)(images).argmax(1)[0]
    assert single[1, 2] == 1
    rows = torch.cat([text.embeddings, e[3:]])
    two = TextEmbeddings(rows, torch.tensor([0, 1, 2, 2]), 3, "max", ("background", "cat", "grass", "grass 2"),
                         classes=("background", "cat", "grass"))
    scores = MaskClipZeroShot(_HandBackbone(dense), two)(images)
    assert scores.argmax(1)[0, 1, 2] == 2
    assert scores[0, 2, 1, 2].item() == pytest.approx(1 / 1.25 ** 0.5, abs=1e-6)
