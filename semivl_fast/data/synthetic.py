"""The built-in synthetic world: a seeded, VOC-layout segmentation dataset with captions, made in seconds.

Scenes are a textured background (grass, sand, water or snow; sometimes two of them, split by a wavy border; all
label 0 "background") with 1–4 objects of 8 classes that differ by shape, colour and texture. Some pairs are
deliberately confusable: ball/coin (round, plain, orange vs gold), coin/star (gold vs yellow, plain), cookie/dice
(dotted, brown vs white), leaf on grass, dice on snow. Objects have random position, size and rotation, occlude each
other (the mask holds the visible class; slivers under 15 % of an object are set to 255 = ignore), and the image
gets lighting changes, noise and sometimes blur.

On disk (the layout of Pascal VOC, read by the same ``SemiDataset``)::

    <root>/JPEGImages/{train,val}_NNNNN.png          RGB, lossless
    <root>/SegmentationClass/{train,val}_NNNNN.png   palette PNG of class indices (255 = ignore)
    <root>/splits/synthetic/<k>/{labeled,unlabeled}.txt, train.txt, val.txt
    <root>/captions.tsv                              "<image path>\\t<caption>" per image
    <root>/classes.yaml                              class set (name, classes, class_definitions)
    <root>/world.json                                parameters + statistics (the cache marker, written last)

``generate_world`` reuses a folder made with the same parameters and otherwise builds the world in a temporary
sibling folder that is renamed into place, so a world is never half written. Same seed → byte-identical files.
Command line: ``python -m semivl_fast.data.synthetic --root DIR [--seed 0] [--num-train 2000] ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageFilter

from semivl_fast.data.splits import generate_split, write_split
from semivl_fast.files import cache_dir
from semivl_fast.text.classes import ClassSet, class_set_from_dict

WORLD_VERSION = 1  # bump whenever rendering changes: cached worlds of an older version are regenerated
MARKER = "world.json"
DEFAULT_LABELED = (8, 16, 32, 64)
MIN_VISIBLE = 0.15  # an object showing less of itself than this is ignore (255) and not captioned


@dataclass(frozen=True)
class ObjectClass:
    name: str
    shape: str  # circle | star | square | brick | flag | leaf
    colour: str  # caption word
    rgb: tuple[int, int, int]
    texture: str  # solid | striped | dotted | checkered
    concepts: tuple[str, ...]


OBJECTS: tuple[ObjectClass, ...] = (
    ObjectClass("ball", "circle", "orange", (222, 112, 34), "solid", ("ball", "orange ball", "basketball")),
    ObjectClass("coin", "coin", "gold", (212, 168, 48), "solid", ("coin", "gold coin", "round golden disc")),
    ObjectClass("star", "star", "yellow", (238, 212, 46), "solid", ("star", "yellow star", "five-pointed star")),
    ObjectClass("cookie", "cookie", "brown", (172, 120, 70), "dotted", ("cookie", "biscuit", "chocolate chip cookie")),
    ObjectClass("dice", "square", "white", (236, 234, 226), "dotted", ("dice", "die", "white cube with black dots")),
    ObjectClass("brick", "brick", "red", (170, 52, 40), "striped", ("brick", "red brick", "clay brick")),
    ObjectClass("flag", "flag", "blue", (36, 76, 196), "checkered", ("flag", "checkered flag", "banner")),
    ObjectClass("leaf", "leaf", "green", (74, 150, 52), "striped", ("leaf", "green leaf", "tree leaf")),
)
BACKGROUNDS: tuple[str, ...] = ("grass", "sand", "water", "snow")
CLASS_NAMES: tuple[str, ...] = ("background", *(o.name for o in OBJECTS))
_TEMPLATES = ("{objs} on {bg}", "a photo of {objs} on {bg}", "{objs} lying on {bg}", "there is {objs} on {bg}",
              "a picture of {bg} with {objs}", "{objs} resting on {bg}")
_PALETTE = [0, 0, 0] * 256
for _i, _c in enumerate([(0, 0, 0), *(o.rgb for o in OBJECTS)]):
    _PALETTE[3 * _i:3 * _i + 3] = _c
_PALETTE[3 * 255:] = [255, 255, 255]


def class_definitions() -> dict[str, list[str]]:
    """Per class, its concepts (synonyms / descriptions); the background lists its kinds."""
    return {"background": ["background", *BACKGROUNDS], **{o.name: list(o.concepts) for o in OBJECTS}}


def class_set_dict() -> dict:
    """The world's class file content (``classes.yaml`` schema)."""
    return {"name": "synthetic",
            "description": "semivl_fast synthetic world: background + 8 objects (shape, colour, texture)",
            "classes": list(CLASS_NAMES), "class_definitions": class_definitions()}


def synthetic_class_set() -> ClassSet:
    """The world's ``ClassSet`` (9 classes, definitions included) without generating anything."""
    return class_set_from_dict(class_set_dict(), "<synthetic world>")


# ---------------------------------------------------------------------------------------------------- drawing

def _smooth_noise(rng: np.random.Generator, size: int, cells: int, cells_y: int | None = None) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise (size, size): a coarse random grid upsampled bicubically."""
    grid = rng.standard_normal((cells_y or cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.BICUBIC), dtype=np.float32)


def _background(kind: str, rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """(size, size, 3) float32 RGB of one background kind."""
    s = _smooth_noise(rng, size, 6)
    fine = rng.standard_normal((size, size), dtype=np.float32)
    if kind == "grass":
        blades = _smooth_noise(rng, size, size // 2, max(2, size // 24))  # streaks elongated along y
        base, var = np.array([62, 128, 42]), 22 * blades + 12 * s + 6 * fine
        img = base + var[..., None] * np.array([0.6, 1.0, 0.5])
    elif kind == "sand":
        a = rng.uniform(0, np.pi)
        ripple = np.sin(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / rng.uniform(7, 14) + 2.5 * s)
        img = np.array([214, 190, 140]) + (7 * ripple + 8 * s + 9 * fine)[..., None]
    elif kind == "water":
        a = rng.uniform(0, np.pi)
        wave = np.sin(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / rng.uniform(10, 20) + 3 * s)
        img = np.array([44, 100, 168]) + (14 * wave + 10 * s + 3 * fine)[..., None] * np.array([0.7, 0.9, 1.0])
    else:  # snow
        img = np.array([232, 236, 242]) + (5 * s + 3 * fine)[..., None] + (4 * s)[..., None] * np.array([-1, 0, 1])
    return img.astype(np.float32)


_DICE_PIPS = {1: [(0, 0)], 2: [(-1, -1), (1, 1)], 3: [(-1, -1), (0, 0), (1, 1)],
              4: [(-1, -1), (-1, 1), (1, -1), (1, 1)], 5: [(-1, -1), (-1, 1), (0, 0), (1, -1), (1, 1)],
              6: [(-1, -1), (-1, 0), (-1, 1), (1, -1), (1, 0), (1, 1)]}


_SCALE = {"coin": 0.75, "star": 1.15, "leaf": 1.35}


def _draw_object(obj: ObjectClass, rng: np.random.Generator, size: int
                 ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """(window, shape mask (h, w) bool, colour (h, w, 3) float32) of one object at a random pose.

    Everything is computed inside the object's bounding window only.
    """
    radius = size * rng.uniform(0.1, 0.24) * _SCALE.get(obj.shape, 1.0)
    cx, cy = rng.uniform(0.1, 0.9, size=2) * size
    th = rng.uniform(0, 2 * np.pi)
    ext = 1.2 * radius  # every shape lies within rho <= 1.16
    y0, y1 = max(0, int(cy - ext)), min(size, int(cy + ext) + 2)
    x0, x1 = max(0, int(cx - ext)), min(size, int(cx + ext) + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = (xx - cx) / radius, (yy - cy) / radius
    u, v = dx * np.cos(th) + dy * np.sin(th), -dx * np.sin(th) + dy * np.cos(th)
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    shape = obj.shape
    if shape in ("circle", "coin"):
        inside = rho <= 1.0
    elif shape == "cookie":
        inside = rho <= 1.0 + 0.07 * np.sin(7 * phi + rng.uniform(0, 6.3))
    elif shape == "star":
        inside = rho <= 0.42 + 0.62 * ((1 + np.cos(5 * phi)) / 2) ** 2
    elif shape == "square":
        inside = np.abs(u) ** 6 + np.abs(v) ** 6 <= 0.8 ** 6
    elif shape == "brick":
        inside = (np.abs(u) <= 1.0) & (np.abs(v) <= 0.5)
    elif shape == "flag":
        inside = (np.abs(u) <= 0.95) & (np.abs(v) <= 0.65)
    elif shape == "leaf":
        inside = u ** 2 + (np.abs(v) + 0.55) ** 2 <= 1.0
    else:
        raise ValueError(f"unknown shape {shape!r}")

    base = np.asarray(obj.rgb, dtype=np.float32) * rng.uniform(0.88, 1.08) + rng.normal(0, 5, 3)
    col = np.broadcast_to(base, (*u.shape, 3)).astype(np.float32)
    if obj.texture == "striped":
        if shape == "leaf":  # herringbone veins plus the midrib
            alt = (np.sin(2 * np.pi * (u * 0.7 + np.abs(v) * 0.7) / 0.32) > 0.75) | (np.abs(v) < 0.05)
        else:  # mortar courses along the long axis
            alt = np.abs(((v + 0.5) * 3.0) % 1.0 - 0.5) > 0.38
        col = np.where(alt[..., None], col * 0.55 + 60 * (shape == "brick"), col)
    elif obj.texture == "dotted":
        if shape == "square":
            dots = np.zeros_like(inside)
            for py, px in _DICE_PIPS[int(rng.integers(1, 7))]:
                dots |= (u - 0.42 * px) ** 2 + (v - 0.42 * py) ** 2 <= 0.13 ** 2
            col = np.where(dots[..., None], np.float32(25), col)
        else:  # chocolate chips on a jittered grid
            period = 0.45
            ju, jv = rng.uniform(0, period, 2)
            fu, fv = ((u + ju) / period) % 1.0 - 0.5, ((v + jv) / period) % 1.0 - 0.5
            dots = fu ** 2 + fv ** 2 <= 0.2 ** 2
            col = np.where(dots[..., None], np.asarray([70, 40, 22], dtype=np.float32), col)
    elif obj.texture == "checkered":
        alt = ((np.floor(u / 0.38) + np.floor(v / 0.38)) % 2).astype(bool)
        col = np.where(alt[..., None], np.asarray([238, 238, 238], dtype=np.float32), col)
    # shading: spherical for the ball, a rim for the coin, a soft directional gradient for everything
    if shape == "circle":
        col = col * np.clip(1.15 - 0.45 * np.hypot(u + 0.35, v + 0.35) ** 2, 0.55, 1.2)[..., None]
    elif shape == "coin":
        col = col * np.where(rho > 0.82, 0.72, 1.0)[..., None]
    g = rng.uniform(-0.08, 0.08)
    col = col * (1.0 + g * u)[..., None]
    return (slice(y0, y1), slice(x0, x1)), inside, col


def _caption(objs: list[ObjectClass], bgs: list[str], rng: np.random.Generator) -> str:
    parts = []
    for o in objs:
        words = ([] if o.texture == "solid" else [o.texture]) + [o.colour, o.name]
        if o.texture != "solid" and rng.random() < 0.5:
            words[0], words[1] = words[1], words[0]
        art = "an" if words[0][0] in "aeiou" else "a"
        parts.append(f"{art} {' '.join(words)}")
    objs_text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    bg_text = " and ".join(bgs)
    return _TEMPLATES[int(rng.integers(len(_TEMPLATES)))].format(objs=objs_text, bg=bg_text)


def render_scene(seed: int, index: int, size: int, part: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """One scene: (image (size, size, 3) uint8, mask (size, size) uint8, caption); a pure function of its arguments."""
    rng = np.random.default_rng([seed, part, index])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    kinds = list(rng.choice(len(BACKGROUNDS), size=2, replace=False))
    img = _background(BACKGROUNDS[kinds[0]], rng, size, yy, xx)
    bgs = [BACKGROUNDS[kinds[0]]]
    if rng.random() < 0.3:  # a second background region behind a wavy border
        a, off = rng.uniform(0, 2 * np.pi), rng.uniform(-0.25, 0.25) * size
        d = (xx - size / 2) * np.cos(a) + (yy - size / 2) * np.sin(a) - off
        d = d + 4 * np.sin(2 * np.pi * ((yy * np.cos(a) - xx * np.sin(a)) / rng.uniform(20, 40)))
        other = _background(BACKGROUNDS[kinds[1]], rng, size, yy, xx)
        img = np.where((d > 0)[..., None], other, img)
        bgs.append(BACKGROUNDS[kinds[1]])
    mask = np.zeros((size, size), dtype=np.uint8)
    n_obj = int(rng.integers(1, 5))
    classes = rng.choice(len(OBJECTS), size=n_obj, replace=False)
    areas = []
    for c in classes:
        win, inside, col = _draw_object(OBJECTS[c], rng, size)
        img[win][inside] = col[inside]
        mask[win][inside] = c + 1
        areas.append(int(inside.sum()))
    shown = []
    for c, area in zip(classes, areas):
        vis = mask == c + 1
        if area == 0 or vis.sum() < max(12, MIN_VISIBLE * area):
            mask[vis] = 255
        else:
            shown.append(OBJECTS[c])
    # lighting, sensor noise, sometimes blur
    noise = rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(2, 6))
    img = img * np.float32(rng.uniform(0.85, 1.12)) + rng.normal(0, 6, 3).astype(np.float32) + noise
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9))))
    caption = _caption(shown, bgs, rng) if shown else _caption_bg_only(bgs, rng)
    return out, mask, caption


def _caption_bg_only(bgs: list[str], rng: np.random.Generator) -> str:
    return ("a photo of " if rng.random() < 0.5 else "") + " and ".join(bgs)


def parse_caption(caption: str) -> set[str]:
    """The object class names a caption mentions (whole words)."""
    words = set(caption.replace(",", " ").split())
    return {o.name for o in OBJECTS if o.name in words}


# ------------------------------------------------------------------------------------------------ the world

@dataclass(frozen=True)
class SyntheticWorld:
    """A generated world: where it is and how it was made."""

    root: Path
    seed: int
    size: int
    num_train: int
    num_val: int
    labeled_counts: tuple[int, ...]
    generated: bool  # False when an existing folder was reused
    seconds: float  # generation time (0 when reused)

    @property
    def split_dir(self) -> Path:
        return self.root / "splits"

    @property
    def class_set(self) -> ClassSet:
        return synthetic_class_set()

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(str(k) for k in self.labeled_counts)


def default_world_dir() -> Path:
    """``$SEMIVL_FAST_CACHE/synthetic`` (default ``~/.cache/semivl_fast/synthetic``)."""
    return cache_dir("synthetic")


def _params(seed: int, num_train: int, num_val: int, size: int, labeled_counts: Sequence[int]) -> dict:
    return {"version": WORLD_VERSION, "seed": int(seed), "num_train": int(num_train), "num_val": int(num_val),
            "size": int(size), "labeled_counts": [int(k) for k in labeled_counts]}


def _read_marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_world(out: Path, p: dict) -> dict:
    """Write every file of the world into ``out`` (an empty folder); returns statistics."""
    (out / "JPEGImages").mkdir(parents=True)
    (out / "SegmentationClass").mkdir()
    pixels = np.zeros(256, dtype=np.int64)
    images = np.zeros(256, dtype=np.int64)
    lists: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    captions = []
    for part_id, (part, n) in enumerate((("train", p["num_train"]), ("val", p["num_val"]))):
        for i in range(n):
            img, mask, caption = render_scene(p["seed"], i, p["size"], part_id)
            name = f"{part}_{i:05d}.png"
            Image.fromarray(img, mode="RGB").save(out / "JPEGImages" / name, compress_level=1)
            m = Image.fromarray(mask, mode="P")
            m.putpalette(_PALETTE)
            m.save(out / "SegmentationClass" / name, compress_level=1)
            counts = np.bincount(mask.ravel(), minlength=256)
            pixels += counts
            images += counts > 0
            lists[part].append((f"JPEGImages/{name}", f"SegmentationClass/{name}"))
            captions.append(f"JPEGImages/{name}\t{caption}\n")
    sdir = out / "splits" / "synthetic"
    write_split(sdir / "train.txt", lists["train"])
    write_split(sdir / "val.txt", lists["val"])
    for k in p["labeled_counts"]:
        lab, unl = generate_split(lists["train"], int(k), p["seed"])
        write_split(sdir / str(k) / "labeled.txt", lab)
        write_split(sdir / str(k) / "unlabeled.txt", unl)
    (out / "captions.tsv").write_text("".join(captions), encoding="utf-8")
    (out / "classes.yaml").write_text(yaml.safe_dump(class_set_dict(), sort_keys=False), encoding="utf-8")
    names = [*CLASS_NAMES]
    return {"class_pixels": {n: int(pixels[i]) for i, n in enumerate(names)} | {"ignore": int(pixels[255])},
            "class_images": {n: int(images[i]) for i, n in enumerate(names)}}


def generate_world(root: str | os.PathLike | None = None, seed: int = 0, num_train: int = 2000, num_val: int = 200,
                   size: int = 112, labeled_counts: Sequence[int] = DEFAULT_LABELED, force: bool = False
                   ) -> SyntheticWorld:
    """Generate (or reuse) the synthetic world in ``root`` (default ``default_world_dir()/seed<seed>-...``).

    An existing folder whose ``world.json`` has the same parameters is reused unless ``force``; a world with other
    parameters is replaced; a non-empty folder that is not a world is an error (nothing of yours is deleted).
    """
    if size < 32:
        raise ValueError(f"synthetic world size {size} too small; use at least 32 pixels")
    if num_train < 1 or num_val < 1:
        raise ValueError(f"need at least one training and one validation image, got {num_train}, {num_val}")
    bad = [k for k in labeled_counts if not 1 <= int(k) <= num_train]
    if bad:
        raise ValueError(f"labeled counts {bad} must lie in 1..num_train ({num_train})")
    p = _params(seed, num_train, num_val, size, labeled_counts)
    if root is None:
        root = default_world_dir() / f"seed{seed}-n{num_train}-v{num_val}-s{size}"
    root = Path(root).expanduser().resolve()
    world = dict(root=root, seed=seed, size=size, num_train=num_train, num_val=num_val,
                 labeled_counts=tuple(int(k) for k in labeled_counts))
    old = _read_marker(root) if root.exists() else None
    if old is not None and old.get("params") == p and not force:
        return SyntheticWorld(**world, generated=False, seconds=0.0)
    if root.exists() and old is None and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} exists and is not a synthetic world (no {MARKER}); choose an empty or new "
                              "folder for the world")

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    try:
        stats = _write_world(tmp, p)
        seconds = time.perf_counter() - t0
        meta = {"params": p, "seconds": round(seconds, 3), "classes": list(CLASS_NAMES), **stats}
        (tmp / MARKER).write_text(json.dumps(meta, indent=1) + "\n")
        if (_read_marker(root) or {}).get("params") == p and not force:  # another process made it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
            return SyntheticWorld(**world, generated=False, seconds=0.0)
        trash = None
        if root.exists():  # replace: move the old world aside, put the new one in place, then drop the old one
            trash = root.parent / f".{root.name}.old-{os.getpid()}-{time.monotonic_ns()}"
            os.rename(root, trash)
        try:
            os.rename(tmp, root)
        except OSError:
            if (_read_marker(root) or {}).get("params") == p:  # another process finished the same world first
                shutil.rmtree(tmp, ignore_errors=True)
                if trash is not None:
                    shutil.rmtree(trash, ignore_errors=True)
                return SyntheticWorld(**world, generated=False, seconds=0.0)
            if trash is not None and not root.exists():
                os.rename(trash, root)  # put the old world back
            raise
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SyntheticWorld(**world, generated=True, seconds=seconds)


def main(argv: list[str] | None = None) -> dict:
    """Command line: generate (or reuse) a world and print where it is."""
    ap = argparse.ArgumentParser(prog="python -m semivl_fast.data.synthetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=None, help="output folder (default: the cache dir)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-train", type=int, default=2000)
    ap.add_argument("--num-val", type=int, default=200)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--labeled", type=int, nargs="+", default=list(DEFAULT_LABELED),
                    help="labeled counts of the splits")
    ap.add_argument("--force", action="store_true", help="regenerate even if the folder holds this world")
    a = ap.parse_args(argv)
    w = generate_world(a.root, a.seed, a.num_train, a.num_val, a.size, a.labeled, a.force)
    verb = f"generated in {w.seconds:.1f} s" if w.generated else "reused"
    print(f"synthetic world {verb}: {w.root} (splits {', '.join(w.splits)} under {w.split_dir})")
    return {"root": str(w.root), "generated": w.generated, "seconds": w.seconds}


if __name__ == "__main__":
    main()
