"""The SemiVL step against a direct full-resolution transcription of the reference loop (semivl.py)."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semivl_fast.ops import box_mask
from semivl_fast.training.config import TrainConfig
from semivl_fast.training.semi import UnlabeledBatch, guidance_weight, semi_step

N, S, LOW = 4, 16, 8


class FakeSegmentor(nn.Module):
    """Logits = per-pixel linear map of the pooled image; FP = the same map of a fixed perturbation."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, N, 1)

    def forward(self, images, need_fp=False, upsample=True, fp_images=None):
        low = self.proj(F.adaptive_avg_pool2d(images, LOW)) * 3
        out = F.interpolate(low, size=images.shape[-2:], mode="bilinear", align_corners=False) if upsample else low
        if need_fp:
            return out, 0.5 * out[fp_images].flip(-1)
        return out


class FakeGuidance(nn.Module):
    def forward(self, images):
        return torch.tanh(F.adaptive_avg_pool2d(images, 4)[:, :N].repeat(1, 2, 1, 1)[:, :N])


def _batch(b):
    imgs = [torch.randn(b, 3, S, S) for _ in range(3)]
    ignore = (torch.rand(b, S, S) < 0.2).to(torch.uint8)
    boxes = [torch.tensor([[2, 3, 10, 12]] * b), torch.tensor([[0, 0, 0, 0]] + [[5, 1, 16, 7]] * (b - 1))]
    return UnlabeledBatch(*imgs, ignore, *boxes)


def _ce_weighted(logits, labels, weight, denom):
    ce = F.cross_entropy(logits, labels, reduction="none")
    return (ce * weight).sum() / denom


@pytest.mark.parametrize("use_fp", [True, False])
def test_semi_step_matches_reference_transcription(use_fp):
    torch.manual_seed(0)
    model, guidance = FakeSegmentor(), FakeGuidance()
    b = 3
    img_x, mask_x = torch.randn(b, 3, S, S), torch.randint(0, N, (b, S, S))
    mask_x[0, :3] = 255
    u, o = _batch(b), _batch(b)
    cfg = TrainConfig(conf_thresh=0.5, use_fp=use_fp)
    total, logs = semi_step(model, model, guidance, img_x, mask_x, u, o, cfg, 0.25, contextlib.nullcontext())

    # --- the reference loop, at full resolution -------------------------------------------------------------
    with torch.no_grad():
        conf_o, mask_o = model(o.img_w).softmax(1).max(1)
        pw = model(u.img_w)
        conf_w, mask_w = pw.softmax(1).max(1)
        clip = F.interpolate(guidance(torch.cat([u.img_w, o.img_w])), size=(S, S), mode="bilinear",
                             align_corners=False)
        cconf, clab = (100 * clip).softmax(1).max(1)
        clab[cconf < cfg.guidance_thresh] = 255
        clab_w, clab_o = clab.chunk(2)
        clab_w = clab_w.masked_fill(u.ignore.bool(), 255)
        clab_o = clab_o.masked_fill(o.ignore.bool(), 255)
    s1 = torch.where(box_mask(u.box1, (S, S))[:, None], o.img_s1, u.img_s1)
    s2 = torch.where(box_mask(u.box2, (S, S))[:, None], o.img_s2, u.img_s2)
    preds, preds_fp = model(torch.cat([img_x, u.img_w]), need_fp=True, fp_images=slice(b, 2 * b))
    pred_x, pred_w_fp = preds[:b], preds_fp
    pred_s1, pred_s2 = model(torch.cat([s1, s2])).chunk(2)
    loss_x = F.cross_entropy(pred_x, mask_x, ignore_index=255)

    def mixed(box):
        inside = box_mask(box, (S, S))
        return (torch.where(inside, mask_o, mask_w), torch.where(inside, conf_o, conf_w),
                torch.where(inside, o.ignore, u.ignore), torch.where(inside, clab_o, clab_w))

    def unsup(pred, lab, conf, ign):
        valid = ign == 0
        return _ce_weighted(pred, lab, ((conf >= cfg.conf_thresh) & valid).float(), valid.sum())

    def guide(pred, lab):
        return F.cross_entropy(pred, lab, ignore_index=255, reduction="sum") / lab.numel()

    m1, m2 = mixed(u.box1), mixed(u.box2)
    ls1, ls2 = unsup(pred_s1, *m1[:3]), unsup(pred_s2, *m2[:3])
    lam = guidance_weight(cfg, 0.25)
    if use_fp:
        lfp = unsup(pred_w_fp, mask_w, conf_w, u.ignore)
        expected = (loss_x + 0.25 * ls1 + 0.25 * ls2 + 0.5 * lfp) / 2
        expected = expected + lam * (0.25 * guide(pred_s1, m1[3]) + 0.25 * guide(pred_s2, m2[3])
                                     + 0.5 * guide(pred_w_fp, clab_w))
    else:
        expected = (loss_x + 0.5 * ls1 + 0.5 * ls2) / 2 + lam * (0.5 * guide(pred_s1, m1[3]) +
                                                                  0.5 * guide(pred_s2, m2[3]))
    torch.testing.assert_close(total, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logs["loss_x"], loss_x.detach(), atol=1e-5, rtol=1e-5)
    assert lam == pytest.approx(0.075)


def test_roll_mode_uses_the_shifted_batch():
    torch.manual_seed(0)
    model = FakeSegmentor()
    u = _batch(2)
    cfg = TrainConfig(mix_partner="roll", guidance=False)
    total, logs = semi_step(model, model, None, torch.randn(2, 3, S, S), torch.randint(0, N, (2, S, S)), u, None,
                            cfg, 0.0, contextlib.nullcontext())
    assert torch.isfinite(total) and "loss_clip" not in logs
