"""Augmentations against the reference's definitions (../shared/spec/semivl.md §4.4, §5.3): mmseg and UniMatch
random resizes, the validation resize, the strong view's parameters, CutMix boxes, and CutMix applied identically to
images and targets."""

import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torch.utils.data import default_collate

from semivl_fast.data import SemiDataset
from semivl_fast.data import transforms as T
from semivl_fast.ops import pseudo_label_loss
from semivl_fast.training.semi import UnlabeledBatch, cutmix

from layouts import make_layout


def _pair(w, h, seed=0):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    mask = Image.fromarray(rng.choice(np.array([0, 3, 7, 255], np.uint8), (h, w)), mode="L")
    return img, mask


def _mmcv_rescale_size(w, h, scale):
    """mmcv.rescale_size with keep_ratio: fit (w, h) inside the long/short edge limits of ``scale``."""
    sf = min(max(scale) / max(w, h), min(scale) / min(w, h))
    return int(w * sf + 0.5), int(h * sf + 0.5)


# ------------------------------------------------------------------------------------------------------ resizes

@pytest.mark.parametrize("w,h", [(40, 30), (30, 40), (200, 20)])  # landscape, portrait, beyond the 4:1 long cap
def test_resize_mmseg_is_mmseg_resize_with_ratio_range(w, h):
    img, mask = _pair(w, h)
    base, ratios = 32, []
    for seed in range(60):
        random.seed(seed)
        r = random.uniform(0.5, 2.0)  # mmseg Resize(img_scale=(4*base, base), ratio_range=(0.5, 2.0))
        size = _mmcv_rescale_size(w, h, (int(4 * base * r), int(base * r)))
        random.seed(seed)
        out_img, out_mask = T.resize_mmseg(img, mask, base)
        assert out_img.size == out_mask.size == size
        ratios.append(r)
        if seed < 3:  # bilinear image, nearest mask (PIL), pixel for pixel
            assert np.array_equal(np.asarray(out_img), np.asarray(img.resize(size, Image.BILINEAR)))
            assert np.array_equal(np.asarray(out_mask), np.asarray(mask.resize(size, Image.NEAREST)))
            assert set(np.unique(np.asarray(out_mask))) <= {0, 3, 7, 255}
    assert min(ratios) < 0.6 and max(ratios) > 1.9


def test_resize_mmseg_short_side_follows_the_ratio():
    img, mask = _pair(80, 60)
    for seed in range(20):
        random.seed(seed)
        r = random.uniform(0.5, 2.0)
        random.seed(seed)
        out, _ = T.resize_mmseg(img, mask, 100)
        assert min(out.size) == int(100 * r)  # ordinary aspect: the short-edge limit binds exactly
        assert abs(out.size[0] / out.size[1] - 80 / 60) < 0.02


@pytest.mark.parametrize("w,h", [(50, 30), (30, 50)])
def test_resize_long_side_is_unimatch_resize(w, h):
    img, mask = _pair(w, h)
    longs = []
    for seed in range(80):
        random.seed(seed)
        long_side = random.randint(int(max(w, h) * 0.5), int(max(w, h) * 2.0))
        short = int(min(w, h) * long_side / max(w, h) + 0.5)
        size = (long_side, short) if w >= h else (short, long_side)
        random.seed(seed)
        out_img, out_mask = T.resize_long_side(img, mask)
        assert out_img.size == out_mask.size == size
        longs.append(long_side)
        if seed < 3:
            assert np.array_equal(np.asarray(out_img), np.asarray(img.resize(size, Image.BILINEAR)))
            assert np.array_equal(np.asarray(out_mask), np.asarray(mask.resize(size, Image.NEAREST)))
    assert min(longs) <= 27 and max(longs) >= 95  # randint(25, 100) covers its range


@pytest.mark.parametrize("w,h,expect", [(500, 375, (683, 512)), (375, 500, (512, 683)), (1000, 200, (2560, 512))])
def test_validation_resize_short_side_exactly(w, h, expect):
    """mmseg Resize(img_scale=(2048, 512), min_size=512): the short side becomes 512 even past the long cap."""
    img, _ = _pair(w, h)
    out = T.resize_short_side(img, 512)
    assert out.size == expect
    assert np.array_equal(np.asarray(out), np.asarray(img.resize(expect, Image.BILINEAR)))


# ------------------------------------------------------------------------------------------------ strong views

def test_strong_augment_probabilities_and_parameters(monkeypatch):
    """ColorJitter(0.5, 0.5, 0.5, 0.25) p=0.8, RandomGrayscale p=0.2, GaussianBlur sigma ~ U(0.1, 2) p=0.5."""
    jitter, sigmas = [], []
    monkeypatch.setattr(T, "color_jitter", lambda im, *a: (jitter.append(a), im)[1])

    def blur(radius):
        sigmas.append(radius)
        return ImageFilter.GaussianBlur(radius)

    monkeypatch.setattr(T, "ImageFilter", SimpleNamespace(GaussianBlur=blur))
    img, _ = _pair(6, 5)
    random.seed(0)
    n, gray = 4000, 0
    for _ in range(n):
        out = np.asarray(T.strong_augment(img)).astype(int)
        gray += int((out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all())
    assert all(a == (0.5, 0.5, 0.5, 0.25) for a in jitter)
    sd = lambda p: 4 * math.sqrt(p * (1 - p) / n)
    assert abs(len(jitter) / n - 0.8) < sd(0.8)
    assert abs(gray / n - 0.2) < sd(0.2)
    assert abs(len(sigmas) / n - 0.5) < sd(0.5)
    assert 0.1 <= min(sigmas) < 0.12 and 1.98 < max(sigmas) <= 2.0
    assert abs(np.mean(sigmas) - 1.05) < 0.03  # uniform on [0.1, 2]


def test_color_jitter_factors_and_random_order(monkeypatch):
    calls = []

    def recorder(kind):
        return lambda im, factor: (calls.append((kind, factor)), im)[1]

    fake = SimpleNamespace(**{f"adjust_{k}": recorder(k) for k in ("brightness", "contrast", "saturation", "hue")})
    monkeypatch.setattr(T, "TF", fake)
    img, _ = _pair(4, 4)
    random.seed(1)
    orders = set()
    for _ in range(600):
        calls.clear()
        T.color_jitter(img, 0.5, 0.5, 0.5, 0.25)
        assert sorted(k for k, _ in calls) == ["brightness", "contrast", "hue", "saturation"]
        orders.add(tuple(k for k, _ in calls))
        for k, f in calls:
            lo, hi = (-0.25, 0.25) if k == "hue" else (0.5, 1.5)
            assert lo <= f <= hi
    assert len(orders) == 24  # torchvision ColorJitter applies the four in a random order


def test_dataset_defaults_are_the_reference_strong_view(tmp_path):
    ds = SemiDataset("voc", tmp_path, [("a.jpg", "a.png")], "train_u", crop_size=16)
    assert ds.strong_aug is T.strong_augment and ds.cutmix_p == 0.5 and ds.ratio_range == (0.5, 2.0)


# ------------------------------------------------------------------------------------------------------ CutMix

def test_cutmix_box_area_and_aspect_ranges():
    """UniMatch obtain_cutmix_box: area A ~ U(0.02, 0.4)·S², aspect r = h/w ~ U(0.3, 1/0.3), w = int(sqrt(A/r)),
    h = int(sqrt(A·r))."""
    S = 512
    random.seed(5)
    boxes = [T.cutmix_box(S, p=1.0) for _ in range(3000)]
    areas, aspects = [], []
    for y0, x0, y1, x1 in boxes:
        assert 0 <= y0 < y1 <= S and 0 <= x0 < x1 <= S
        h, w = y1 - y0, x1 - x0
        # some A in [0.02, 0.4]·S² and r in [0.3, 1/0.3] truncate to (w, h): w² <= A/r < (w+1)², h² <= A·r < (h+1)²
        assert w * h <= 0.4 * S * S and (w + 1) * (h + 1) > 0.02 * S * S
        assert h / (w + 1) < 1 / 0.3 and (h + 1) / w > 0.3
        areas.append(h * w / S**2)
        aspects.append(h / w)
    assert min(areas) < 0.03 and max(areas) > 0.38
    assert 0.19 < np.mean(areas) < 0.215  # U(0.02, 0.4) has mean 0.21; truncation shaves a little
    assert min(aspects) < 0.35 and max(aspects) > 3.0
    random.seed(6)
    empty = sum(T.cutmix_box(S) == T.EMPTY_BOX for _ in range(2000))
    assert abs(empty / 2000 - 0.5) < 0.05


def test_cutmix_pastes_the_same_region_into_images_and_targets(tmp_path):
    """Boxes from the dataset, images mixed as the step does (``semi.cutmix``), targets through the loss op with the
    same boxes: the student's gradient reveals which pixels got the partner's pseudo-label."""
    pairs = make_layout(tmp_path, "voc", n=4, hw=(30, 40))
    ds = SemiDataset("voc", tmp_path, pairs, "train_u", crop_size=48, ratio_range=(0.5, 1.0), cutmix_p=1.0)
    random.seed(3)
    u = UnlabeledBatch.from_loader(default_collate([ds[i] for i in range(4)]), torch.device("cpu"))
    partner = UnlabeledBatch.from_loader(default_collate([ds[i] for i in range(4)]), torch.device("cpu"))
    b, S = 4, 48
    hw = (u.box1[:, 2] - u.box1[:, 0], u.box1[:, 3] - u.box1[:, 1])
    assert (hw[0] > 0).all() and (hw[0] != hw[1]).any() and u.ignore.any() and partner.ignore.any()

    mixed = cutmix(u.img_s1, partner.img_s1 + 100, u.box1)
    pasted = (mixed > 50).all(1)
    expect = torch.zeros(b, S, S, dtype=torch.bool)
    for i, (y0, x0, y1, x1) in enumerate(u.box1.tolist()):
        expect[i, y0:y1, x0:x1] = True  # rows y0:y1, columns x0:x1 of the crop
    assert torch.equal(pasted, expect)
    assert torch.equal(mixed[~pasted[:, None].expand_as(mixed)], u.img_s1[~pasted[:, None].expand_as(mixed)])

    teacher = torch.zeros(b, 3, S, S)
    own, other = teacher.clone(), teacher.clone()
    own[:, 0], other[:, 1] = 20.0, 20.0  # the image's pseudo-label is 0, the partner's 1, both confident
    student = torch.randn(b, 3, S, S).mul(0.1).requires_grad_()
    loss, _ = pseudo_label_loss(student, (S, S), teacher=own, teacher_mix=other, boxes=u.box1, ignore=u.ignore,
                                ignore_mix=partner.ignore, threshold=0.95)
    loss.backward()
    g = student.grad
    valid = torch.where(expect, partner.ignore == 0, u.ignore == 0)
    assert torch.equal(g[:, 1] < 0, expect & valid)  # CE gradient softmax - onehot: negative on the label
    assert torch.equal(g[:, 0] < 0, ~expect & valid)
    assert torch.equal((g == 0).all(1), ~valid)  # crop padding of whichever image the pixel came from
