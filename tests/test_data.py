"""Data package: split files (the standard lists in ../shared/splits), readers over tiny fixture folders in every
dataset's layout, augmentation invariants, split generation (incl. exact reproduction of SemiVL's ADE splits)."""

import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semivl_fast.data import (
    SPECS,
    SemiDataset,
    build_datasets,
    check_splits,
    derive_unlabeled,
    generate_split,
    get_spec,
    num_labeled,
    read_split,
    resolve_split,
    scan_pairs,
    split_path,
    write_split,
)
from semivl_fast.data import splits as splits_mod
from semivl_fast.data import transforms as T

from layouts import make_layout, save_array

SHARED_SPLITS = Path(__file__).resolve().parents[2] / "shared" / "splits"
needs_shared = pytest.mark.skipif(not SHARED_SPLITS.is_dir(), reason="../shared/splits not available")

# (dataset, split) -> (labeled, unlabeled or None); val counts below
EXPECTED = {
    ("voc", "92"): (92, 10490), ("voc", "183"): (183, 10399), ("voc", "366"): (366, 10216),
    ("voc", "732"): (732, 9850), ("voc", "1464"): (1464, 9118),
    ("cityscapes", "1_30"): (100, 2875), ("cityscapes", "1_16"): (186, 2789), ("cityscapes", "1_8"): (372, 2603),
    ("cityscapes", "1_4"): (744, 2231), ("cityscapes", "1_2"): (1488, 1487),
    ("ade", "1_128"): (158, 20052), ("ade", "1_64"): (316, 19894), ("ade", "1_32"): (632, 19578),
    ("ade", "1_16"): (1263, 18947), ("ade", "1_8"): (2526, 17684),
    ("coco", "1_512"): (232, None), ("coco", "1_256"): (463, None), ("coco", "1_128"): (925, None),
    ("coco", "1_64"): (1849, None), ("coco", "1_32"): (3697, None),
}
EXPECTED_VAL = {"voc": 1449, "cityscapes": 500, "ade": 2000, "coco": 5000}


# ------------------------------------------------------------------------------------------ standard split files

@needs_shared
@pytest.mark.parametrize("key", list(EXPECTED), ids=lambda k: f"{k[0]}-{k[1]}")
def test_standard_split_counts_and_layout(key):
    dataset, split = key
    spec = get_spec(dataset)
    n_l, n_u = EXPECTED[key]
    parts = {"labeled": n_l} if n_u is None else {"labeled": n_l, "unlabeled": n_u}
    for part, n in parts.items():
        pairs = read_split(split_path(SHARED_SPLITS, dataset, split, part))
        assert len(pairs) == n
        assert len({p[0] for p in pairs}) == n
        for img, mask in pairs:  # every line follows the dataset's layout rule
            assert spec.mask_path_for(img) == mask
    if n_u is not None:
        lab = {p[0] for p in read_split(split_path(SHARED_SPLITS, dataset, split, "labeled"))}
        assert not lab & {p[0] for p in read_split(split_path(SHARED_SPLITS, dataset, split, "unlabeled"))}


@needs_shared
@pytest.mark.parametrize("dataset", sorted(EXPECTED_VAL))
def test_standard_val_lists(dataset):
    pairs = read_split(split_path(SHARED_SPLITS, dataset, None, "val"))
    assert len(pairs) == EXPECTED_VAL[dataset]
    spec = get_spec(dataset)
    assert all(spec.mask_path_for(i) == m for i, m in pairs)
    assert check_splits(SHARED_SPLITS, dataset)["val"] == EXPECTED_VAL[dataset]


@needs_shared
def test_voc_split_folder_alias_and_train_minus_labeled():
    assert split_path(SHARED_SPLITS, "voc", "92", "labeled").parent.parent.name == "pascal"
    train = read_split(SHARED_SPLITS / "pascal" / "train_aug.txt")
    unl = derive_unlabeled(train, SHARED_SPLITS / "pascal" / "92" / "labeled.txt")
    assert sorted(unl) == sorted(read_split(SHARED_SPLITS / "pascal" / "92" / "unlabeled.txt"))


@needs_shared
@pytest.mark.parametrize("k", [128, 64, 32, 16, 8])
def test_generator_reproduces_semivl_ade_splits(k):
    """Sorted full training list, Random(0).shuffle, first round(20210/k) labeled: exact lists and order."""
    lab = read_split(SHARED_SPLITS / "ade" / f"1_{k}" / "labeled.txt")
    unl = read_split(SHARED_SPLITS / "ade" / f"1_{k}" / "unlabeled.txt")
    full = lab + unl
    assert len(full) == 20210
    random.Random(5).shuffle(full)  # the input order must not matter
    gen_l, gen_u = generate_split(full, f"1_{k}", seed=0)
    assert gen_l == lab
    assert gen_u == unl


# ------------------------------------------------------------------------------------------ split file handling

def test_read_split_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_split(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg a.png\n\nb.jpg\n")
    with pytest.raises(ValueError, match=r"bad.txt:3: expected '<image path> <mask path>'"):
        read_split(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="no"):
        read_split(empty)
    ok = tmp_path / "ok.txt"
    ok.write_text("# comment\na.jpg a.png\nb.jpg  b.png")  # no trailing newline, double space
    assert read_split(ok) == [("a.jpg", "a.png"), ("b.jpg", "b.png")]
    with pytest.raises(ValueError, match="unknown dataset"):
        get_spec("kitti")


def test_generate_split_determinism_counts_fractions():
    pairs = [(f"img/{i:03d}.jpg", f"ann/{i:03d}.png") for i in range(100)]
    a = generate_split(pairs, 10, seed=3)
    assert a == generate_split(list(reversed(pairs)), 10, seed=3)
    assert a != generate_split(pairs, 10, seed=4)
    assert len(a[0]) == 10 and len(a[1]) == 90 and sorted(a[0] + a[1]) == pairs
    assert len(generate_split(pairs, 0.25)[0]) == 25
    assert len(generate_split(pairs, "1_8")[0]) == round(100 / 8)
    assert num_labeled(20210, "1_128") == 158 and num_labeled(20210, "1_16") == 1263
    for bad in (0, 101, 1.5, "half"):
        with pytest.raises(ValueError):
            num_labeled(100, bad)
    with pytest.raises(ValueError, match="twice"):
        generate_split(pairs + pairs[:1], 5)


def test_splits_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        splits_mod.main(["--help"])
    assert e.value.code == 0
    assert "generate" in capsys.readouterr().out
    pairs = [(f"images/training/ADE_train_{i:08d}.jpg", f"annotations/training/ADE_train_{i:08d}.png")
             for i in range(1, 51)]
    write_split(tmp_path / "train.txt", pairs)
    out = splits_mod.main(["generate", "--dataset", "ade", "--list", str(tmp_path / "train.txt"),
                           "--out-dir", str(tmp_path / "ade"), "--splits", "1_8", "5", "0.5"])
    assert out == {"1_8": (6, 44), "5": (5, 45), "0.5": (25, 25)}
    assert read_split(tmp_path / "ade" / "5" / "labeled.txt") == generate_split(pairs, 5)[0]
    res = splits_mod.main(["unlabeled", "--train-list", str(tmp_path / "train.txt"),
                           "--labeled", str(tmp_path / "ade" / "5" / "labeled.txt"), "--out", str(tmp_path / "u.txt")])
    assert res == {"unlabeled": 45}


# ------------------------------------------------------------------------------------------ fixture folders

@pytest.mark.parametrize("dataset", ["voc", "coco", "ade", "cityscapes"])
def test_readers_on_layout_fixtures(tmp_path, dataset):
    root, sdir = tmp_path / "data", tmp_path / "splits"
    pairs = make_layout(root, dataset)
    assert scan_pairs(dataset, root) == sorted(pairs)
    d = sdir / get_spec(dataset).split_names[0]
    write_split(d / "s" / "labeled.txt", pairs[:1])
    if dataset == "coco":  # the unlabeled list is derived from train.txt (train minus labeled)
        write_split(d / "train.txt", pairs)
    else:
        write_split(d / "s" / "unlabeled.txt", pairs[1:])
    write_split(d / "val.txt", pairs)
    S = 24
    tl, tu, val = build_datasets(dataset, root, "s", sdir, crop_size=S)
    assert len(tl) == len(tu) == 3  # labeled repeated to the unlabeled length
    img, mask = tl[0]
    assert img.shape == (3, S, S) and img.dtype == torch.float32
    assert mask.shape == (S, S) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= set(range(get_spec(dataset).num_classes)) | {255}
    w, s1, s2, ignore, b1, b2 = tu[0]
    assert w.shape == s1.shape == s2.shape == (3, S, S) and ignore.dtype == torch.uint8 and ignore.shape == (S, S)
    assert b1.shape == b2.shape == (4,) and b1.dtype == torch.int64
    if dataset == "coco":
        assert not (d / "s" / "unlabeled.txt").exists()  # derived in memory
        assert read_split(resolve_split(sdir, dataset, "s", "unlabeled")) == tu.pairs == pairs[1:]
    vimg, vmask, name = val[0]
    assert vmask.shape == (30, 40) and vmask.dtype == torch.int64 and name == pairs[0][0]
    expected_hw = (S, 32) if get_spec(dataset).val_resize else (30, 40)  # VOC/ADE: short side -> crop size
    assert tuple(vimg.shape) == (3, *expected_hw)
    raw = np.array(Image.open(root / pairs[0][1]))
    if dataset == "ade":  # reduce_zero_label: 0 -> 255, k -> k-1
        assert vmask[1, :4].tolist() == [255, 0, 4, 149]
        assert (vmask[0] == 255).all()
        assert torch.equal(vmask[2:], torch.from_numpy(np.where(raw[2:] == 0, 255, raw[2:].astype(np.int64) - 1)))
    else:
        assert torch.equal(vmask, torch.from_numpy(raw.astype(np.int64)))


def test_missing_files_named_on_first_access(tmp_path):
    root = tmp_path / "voc"
    pairs = make_layout(root, "voc", n=2)
    (root / pairs[1][1]).unlink()
    ds = SemiDataset("voc", root, pairs, "train_l", crop_size=16)
    ds[0]
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(pairs[1][1])}.*data root {re.escape(str(root))}"):
        ds[1]
    assert SemiDataset("voc", root, pairs, "train_u", crop_size=16)[1][0].shape == (3, 16, 16)  # mask not read
    with pytest.raises(FileNotFoundError, match="cannot be derived"):
        resolve_split(tmp_path / "splits", "coco", "1_512", "unlabeled")
    with pytest.raises(ValueError, match="unknown mode"):
        SemiDataset("voc", root, pairs, "train")


# ------------------------------------------------------------------------------------------ augmentation invariants

def _solid_dataset(tmp_path, mode, size=(40, 30), value=255, label=7, **kw):
    root = tmp_path / "d"
    save_array(root, "JPEGImages/a.png", np.full((size[1], size[0], 3), value, np.uint8))
    save_array(root, "SegmentationClass/a.png", np.full((size[1], size[0]), label, np.uint8))
    return SemiDataset("synthetic", root, [("JPEGImages/a.png", "SegmentationClass/a.png")], mode, **kw)


def _denorm(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(T.IMAGENET_MEAN)[:, None, None], torch.tensor(T.IMAGENET_STD)[:, None, None]
    return x * std + mean


def test_labeled_padding_255_and_black(tmp_path):
    ds = _solid_dataset(tmp_path, "train_l", crop_size=48, ratio_range=(0.5, 1.0))
    random.seed(0)
    for _ in range(10):
        img, mask = ds[0]
        pad = mask == 255
        assert pad.any() and (mask[~pad] == 7).all()
        pix = _denorm(img)
        assert torch.allclose(pix[:, pad], torch.zeros(()), atol=1e-5)  # padded with 0 before normalisation
        assert torch.allclose(pix[:, ~pad], torch.ones(()), atol=1e-5)
        rows, cols = pad.all(1), pad.all(0)  # padding = whole rows and/or columns (an L-shaped border)
        assert torch.equal(pad, rows[:, None] | cols[None, :])


def test_unlabeled_ignore_exactly_where_padded(tmp_path):
    ds = _solid_dataset(tmp_path, "train_u", crop_size=48, ratio_range=(0.5, 1.0), strong_aug=lambda im: im)
    random.seed(1)
    for _ in range(10):
        w, s1, s2, ignore, _, _ = ds[0]
        black = (_denorm(w).abs() < 1e-5).all(0)
        assert ignore.sum() > 0 and torch.equal(ignore.bool(), black)
        assert torch.equal(w, s1) and torch.equal(w, s2)  # identity strong aug: all views share the geometry


def test_strong_views_get_the_weak_crop(tmp_path):
    root = tmp_path / "d"
    rng = np.random.default_rng(0)
    save_array(root, "JPEGImages/a.png", rng.integers(0, 256, (50, 60, 3), dtype=np.uint8))
    save_array(root, "SegmentationClass/a.png", np.zeros((50, 60), np.uint8))
    seen = []
    ds = SemiDataset("synthetic", root, [("JPEGImages/a.png", "SegmentationClass/a.png")], "train_u", crop_size=32,
                     strong_aug=lambda im: (seen.append(im.copy()), T.strong_augment(im))[1])
    random.seed(2)
    w, s1, s2, *_ = ds[0]
    assert len(seen) == 2
    for im in seen:
        assert torch.allclose(T.normalize(im), w)
    assert not torch.equal(s1, s2)


def test_flip_consistent_between_image_and_mask(tmp_path):
    root = tmp_path / "d"
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, :12] = (255, 0, 0)
    img[:, 12:] = (0, 0, 255)
    mask = np.where(np.arange(32) < 12, 1, 2).astype(np.uint8)[None].repeat(32, 0)
    save_array(root, "JPEGImages/a.png", img)
    save_array(root, "SegmentationClass/a.png", mask)
    ds = SemiDataset("synthetic", root, [("JPEGImages/a.png", "SegmentationClass/a.png")], "train_l", crop_size=32,
                     ratio_range=(1.0, 1.0))
    random.seed(3)
    flips = set()
    for _ in range(12):
        x, m = ds[0]
        red = _denorm(x)[0] > 0.5
        assert torch.equal(red, m == 1)
        flips.add(bool(m[0, 0] == 2))
    assert flips == {True, False}


def test_cutmix_box_ranges():
    random.seed(4)
    S = 96
    boxes = [T.cutmix_box(S, p=0.5) for _ in range(3000)]
    empty = sum(b == T.EMPTY_BOX for b in boxes)
    assert 0.45 < empty / len(boxes) < 0.55
    for y0, x0, y1, x1 in (b for b in boxes if b != T.EMPTY_BOX):
        assert 0 <= y0 < y1 <= S and 0 <= x0 < x1 <= S
        h, w = y1 - y0, x1 - x0
        assert 0.02 * S * S * 0.85 <= h * w <= 0.4 * S * S
        assert 0.3 * 0.85 <= h / w <= (1 / 0.3) / 0.85


def test_seeded_reproducibility_and_dataloader(tmp_path):
    root = tmp_path / "d"
    pairs = make_layout(root, "voc", n=4)
    ds = SemiDataset("voc", root, pairs, "train_u", crop_size=24)
    random.seed(7)
    a = ds[1]
    random.seed(7)
    b = ds[1]
    assert all(torch.equal(x, y) for x, y in zip(a, b))

    def batches():
        dl = torch.utils.data.DataLoader(ds, batch_size=2, shuffle=True, num_workers=1,
                                         generator=torch.Generator().manual_seed(11))
        return next(iter(dl))

    assert all(torch.equal(x, y) for x, y in zip(batches(), batches()))


def test_normalisations_and_nsample(tmp_path):
    assert set(T.NORMALIZATIONS) == {"imagenet", "clip"}
    ds = _solid_dataset(tmp_path, "val", value=255, normalization="clip")
    x, _, _ = ds[0]
    expect = (1 - torch.tensor(T.CLIP_MEAN)) / torch.tensor(T.CLIP_STD)
    assert torch.allclose(x[:, 0, 0], expect)
    with pytest.raises(ValueError, match="normalisation"):
        _solid_dataset(tmp_path, "val", normalization="coco")
    pairs = [(f"i{k}", f"m{k}") for k in range(3)]
    ds = SemiDataset("voc", tmp_path, pairs, "train_l", nsample=7)
    assert ds.pairs == (pairs * 3)[:7]


def test_specs_table():
    assert {k: s.num_classes for k, s in SPECS.items()} == {"voc": 21, "coco": 81, "ade": 150, "cityscapes": 19,
                                                            "synthetic": 9}
    assert get_spec("pascal").name == "voc" and get_spec("ade").reduce_zero_label
    assert get_spec("coco").resize == get_spec("cityscapes").resize == "long_side"
    assert get_spec("voc").resize == get_spec("ade").resize == "mmseg"
    from semivl_fast.text import load_class_set
    for name in ("voc", "coco", "ade", "cityscapes"):
        assert load_class_set(get_spec(name).class_set_source()).num_classes == SPECS[name].num_classes
