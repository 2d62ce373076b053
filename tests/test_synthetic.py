"""The synthetic world: determinism, VOC layout read by the real datasets, captions, cache reuse, atomicity."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semivl_fast.data import build_datasets, get_spec, read_split, synthetic
from semivl_fast.data.synthetic import CLASS_NAMES, generate_world, parse_caption, render_scene, synthetic_class_set
from semivl_fast.text import load_class_set

SMALL = dict(seed=0, num_train=60, num_val=10, size=64, labeled_counts=(4, 8))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != synthetic.MARKER}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = generate_world(tmp_path_factory.mktemp("syn") / "world", **SMALL)
    print(f"\nsynthetic world {SMALL}: generated in {w.seconds:.2f} s")
    return w


def test_generation_time_default_size(capsys):
    t = time.perf_counter()
    for i in range(40):
        render_scene(0, i, 112)
    per = (time.perf_counter() - t) / 40
    with capsys.disabled():
        print(f"\nrender_scene 112x112: {per * 1e3:.2f} ms/scene, default world (2200 scenes) ≈ {2200 * per:.1f} s "
              "of drawing plus PNG writes")
    assert per < 0.05


def test_deterministic_bytes(world, tmp_path):
    again = generate_world(tmp_path / "again", **SMALL)
    assert again.generated
    a, b = _files(world.root), _files(again.root)
    assert a.keys() == b.keys() and a == b
    meta = json.loads((world.root / synthetic.MARKER).read_text())
    assert meta["params"] == json.loads((again.root / synthetic.MARKER).read_text())["params"]
    other = generate_world(tmp_path / "other", **{**SMALL, "seed": 1})
    c = _files(other.root)
    assert c["JPEGImages/train_00000.png"] != a["JPEGImages/train_00000.png"]


def test_layout_read_by_the_real_datasets(world):
    root = world.root
    for k in world.labeled_counts:
        lab = read_split(root / "splits" / "synthetic" / str(k) / "labeled.txt")
        unl = read_split(root / "splits" / "synthetic" / str(k) / "unlabeled.txt")
        assert len(lab) == k and len(unl) == SMALL["num_train"] - k
    tl, tu, val = build_datasets("synthetic", root, "8", crop_size=48)
    assert len(tl) == len(tu) == 52 and len(val) == 10
    img, mask = tl[0]
    assert img.shape == (3, 48, 48) and mask.dtype == torch.int64
    w, s1, s2, ignore, b1, b2 = tu[3]
    assert w.shape == s1.shape == s2.shape == (3, 48, 48) and ignore.shape == (48, 48) and b1.shape == b2.shape == (4,)
    vimg, vmask, name = val[0]
    assert vmask.shape == (64, 64) and vimg.shape == (3, 48, 48) and name == "JPEGImages/val_00000.png"
    spec = get_spec("synthetic")
    cs = load_class_set(spec.class_set_source(root))
    assert cs == synthetic_class_set() and cs.classes == CLASS_NAMES and spec.num_classes == len(CLASS_NAMES)
    assert all(len(c) >= 2 for c in cs.concepts[1:]) and set(cs.concepts[0]) >= {"grass", "sand", "water", "snow"}
    assert Image.open(root / val.pairs[0][0]).mode == "RGB"


def test_every_class_appears_and_captions_match_masks(world):
    root = world.root
    seen: set[int] = set()
    lines = (root / "captions.tsv").read_text().splitlines()
    assert len(lines) == SMALL["num_train"] + SMALL["num_val"]
    for line in lines:
        path, caption = line.split("\t")
        mask = np.array(Image.open(root / path.replace("JPEGImages", "SegmentationClass")))
        present = {int(c) for c in np.unique(mask)} - {0, 255}
        seen |= present
        assert parse_caption(caption) == {CLASS_NAMES[c] for c in present}, caption
        assert any(bg in caption for bg in ("grass", "sand", "water", "snow"))
        for c in present:  # each object is captioned with its colour word
            assert synthetic.OBJECTS[c - 1].colour in caption
    assert seen == set(range(1, len(CLASS_NAMES)))
    meta = json.loads((root / synthetic.MARKER).read_text())
    assert all(meta["class_images"][n] > 0 for n in CLASS_NAMES)


def test_cache_reuse_and_regeneration(tmp_path):
    root = tmp_path / "w"
    first = generate_world(root, **SMALL)
    mtime = (root / "JPEGImages" / "train_00000.png").stat().st_mtime_ns
    second = generate_world(root, **SMALL)
    assert first.generated and not second.generated
    assert (root / "JPEGImages" / "train_00000.png").stat().st_mtime_ns == mtime
    third = generate_world(root, **{**SMALL, "seed": 2})
    assert third.generated
    assert json.loads((root / synthetic.MARKER).read_text())["params"]["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # no temporary or old folders left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a synthetic world"):
        generate_world(tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_atomic_when_generation_fails(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synthetic.render_scene

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_scene", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_world(tmp_path / "w", **SMALL)
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    monkeypatch.setattr(synthetic, "render_scene", real)
    generate_world(tmp_path / "w", **SMALL)
    before = _files(tmp_path / "w")
    calls["n"] = 0
    monkeypatch.setattr(synthetic, "render_scene", flaky)
    with pytest.raises(RuntimeError):
        generate_world(tmp_path / "w", **{**SMALL, "seed": 3})
    assert _files(tmp_path / "w") == before  # the previous world is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        generate_world(tmp_path / "w", size=8)
    with pytest.raises(ValueError, match="labeled counts"):
        generate_world(tmp_path / "w", num_train=10, labeled_counts=(16,))
