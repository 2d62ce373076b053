"""Image-caption data for ViL-Seg pretraining, and the multi-view augmentation.

Sources (``data.source``):

- ``synthetic``: the built-in world's ``captions.tsv``, training images only (generated or reused from the cache).
- a ``.tsv`` / ``.csv`` table of (image path, caption); paths relative to the table's folder. A header row naming
  the columns (``image``/``filepath``/``path``/``url`` and ``caption``/``text``/``title``) is recognised; without
  one the first two columns are taken.
- a folder: its ``captions.tsv`` / ``captions.csv`` if present, else every image with a same-stem ``.txt`` caption.
- WebDataset tar shards: a ``.tar`` file, a glob (``shards/*.tar``), a brace range (``cc-{000000..000099}.tar``) or a
  folder of ``.tar`` files. Samples are grouped by key (the file name up to the first dot); the image is the
  ``jpg``/``jpeg``/``png``/``webp`` member, the caption the ``txt`` (or ``caption``, or ``json`` with a "caption"
  field) member. Shards are indexed once (member offsets), then read by random access, so the same seeded loader
  and exact resume work as for the other sources. Shards must be uncompressed tars (WebDataset's format).
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import random
import re
import tarfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from semivl_fast.data import generate_world, read_split
from semivl_fast.data import transforms as T

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_IMAGE_COLS = ("image", "filepath", "file", "path", "img", "url", "image_path")
_TEXT_COLS = ("caption", "text", "title", "captions", "sentence")


@dataclass
class CaptionDataConfig:
    source: str = "synthetic"  # synthetic | captions .tsv/.csv | image folder | WebDataset .tar shards (glob/{a..b})
    root: str = ""  # synthetic: where the world lives ("" = the cache dir); otherwise unused
    seed: int = 0  # synthetic world parameters (the same world as SemiVL's default run)
    world_train: int = 2000
    world_val: int = 200
    world_size: int = 112
    norm: str = "imagenet"  # input normalisation; keep SemiVL's (data.norm) for a prior it will use
    global_size: int = 64  # global views (two per image, same geometry, different photometry)
    global_scale: tuple[float, float] = (0.6, 1.0)  # area range of the global crop
    local_crops: int = 2  # local views per image (0: no vision-based contrast)
    local_size: int = 32
    local_scale: tuple[float, float] = (0.4, 0.6)
    jitter: float = 0.3  # brightness / contrast / saturation jitter strength (no hue: captions name colours)
    phrase_sampling: float = 0.0  # text augmentation: with this probability the caption is replaced by a random
    #                               non-empty subset of its phrases (split at commas and and/with/on)
    word_dropout: float = 0.0  # text augmentation: drop each caption word with this probability (EDA random deletion)
    phrase_min_count: int = 5  # grounding vocabulary: caption phrases (split at commas, and/with/on, ...) seen at
    phrase_vocab: int = 1024  #   least this often, the most frequent this many (see vilseg.data.build_phrase_vocab)
    flip_second_view: bool = True  # the 2nd global view is mirrored with p=0.5 (the clustering loss undoes it)
    batch_size: int = 32
    num_workers: int = 1


@dataclass(frozen=True)
class TarMember:
    shard: str
    offset: int
    size: int


@dataclass(frozen=True)
class CaptionItem:
    image: str | TarMember  # a file path or a member of a tar shard
    caption: str


# ------------------------------------------------------------------------------------------------ readers

def read_caption_table(path: str | os.PathLike) -> list[CaptionItem]:
    """(image, caption) rows of a ``.tsv`` or ``.csv`` file; image paths relative to the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caption table {path} does not exist")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f, delimiter=delimiter) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"caption table {path} has no rows")
    img_col, txt_col = 0, 1
    head = [c.strip().lower() for c in rows[0]]
    if any(h in _IMAGE_COLS for h in head) and any(h in _TEXT_COLS for h in head):
        img_col = next(i for i, h in enumerate(head) if h in _IMAGE_COLS)
        txt_col = next(i for i, h in enumerate(head) if h in _TEXT_COLS)
        rows = rows[1:]
    items = []
    for n, row in enumerate(rows, 1):
        if len(row) <= max(img_col, txt_col):
            raise ValueError(f"{path}, data row {n}: expected an image path and a caption, got {row!r}")
        image = Path(row[img_col].strip())
        items.append(CaptionItem(str(image if image.is_absolute() else path.parent / image), row[txt_col].strip()))
    return items


def read_caption_folder(folder: str | os.PathLike) -> list[CaptionItem]:
    """A folder's ``captions.tsv``/``.csv``, or its images paired with same-stem ``.txt`` captions."""
    folder = Path(folder)
    for name in ("captions.tsv", "captions.csv"):
        if (folder / name).is_file():
            return read_caption_table(folder / name)
    items = []
    for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS):
        txt = image.with_suffix(".txt")
        if txt.is_file():
            items.append(CaptionItem(str(image), txt.read_text(encoding="utf-8").strip()))
    if not items:
        raise FileNotFoundError(f"{folder}: no captions.tsv / captions.csv and no image with a same-stem .txt caption")
    return items


def expand_shards(spec: str) -> list[str]:
    """Shard paths of a ``.tar`` file, folder, glob or brace range like ``shard-{000..009}.tar``."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", spec)
    if m:
        lo, hi, width = int(m.group(1)), int(m.group(2)), len(m.group(1))
        paths = [spec[:m.start()] + str(i).zfill(width) + spec[m.end():] for i in range(lo, hi + 1)]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"{len(missing)} shard(s) of {spec} do not exist, e.g. {missing[0]}")
        return paths
    if os.path.isdir(spec):
        paths = sorted(str(p) for p in Path(spec).glob("*.tar"))
    elif any(c in spec for c in "*?["):
        paths = sorted(glob.glob(spec))
    else:
        paths = [spec] if os.path.isfile(spec) else []
    if not paths:
        raise FileNotFoundError(f"no tar shards found for {spec!r}")
    return paths


def _open_tar(shard: str) -> tarfile.TarFile:
    try:
        return tarfile.open(shard, mode="r:")  # uncompressed only: members must be readable by offset
    except tarfile.ReadError as e:
        raise ValueError(f"{shard}: not an uncompressed tar ({e}); WebDataset shards are plain .tar files") from e


def index_shards(paths: list[str]) -> list[CaptionItem]:
    """(image member, caption) of every complete sample in the WebDataset shards ``paths``."""
    items = []
    for shard in paths:
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        with _open_tar(shard) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                if "." not in base:
                    continue
                key, ext = base.split(".", 1)
                samples.setdefault(os.path.join(os.path.dirname(member.name), key), {})[ext.lower()] = member
            for members in samples.values():
                image = next((members[e] for e in ("jpg", "jpeg", "png", "webp") if e in members), None)
                text_member = next((members[e] for e in ("txt", "caption", "json") if e in members), None)
                if image is None or text_member is None:
                    continue
                raw = tar.extractfile(text_member).read().decode("utf-8")
                caption = raw.strip()
                if text_member.name.endswith(".json"):
                    meta = json.loads(raw)
                    caption = str(meta.get("caption") or meta.get("text") or "").strip()
                    if not caption:
                        continue
                items.append(CaptionItem(TarMember(shard, image.offset_data, image.size), caption))
    if not items:
        raise ValueError(f"no (image, caption) samples in {len(paths)} shard(s); expected <key>.jpg + <key>.txt")
    return items


def synthetic_items(cfg: CaptionDataConfig) -> list[CaptionItem]:
    """The synthetic world's training captions (the validation images are never seen in pretraining)."""
    world = generate_world(cfg.root or None, seed=cfg.seed, num_train=cfg.world_train, num_val=cfg.world_val,
                           size=cfg.world_size)
    train = {image for image, _ in read_split(world.root / "splits" / "synthetic" / "train.txt")}
    return [CaptionItem(str(world.root / item_path), caption)
            for item_path, caption in (line.split("\t", 1) for line in
                                       (world.root / "captions.tsv").read_text(encoding="utf-8").splitlines() if line)
            if item_path in train]


def load_caption_items(cfg: CaptionDataConfig) -> list[CaptionItem]:
    """The (image, caption) list of ``cfg.source`` (see the module docstring)."""
    source = cfg.source
    if source == "synthetic":
        return synthetic_items(cfg)
    if source.lower().endswith((".tsv", ".csv")):
        return read_caption_table(source)
    if source.lower().endswith(".tar") or "{" in source or any(c in source for c in "*?["):
        return index_shards(expand_shards(source))
    if os.path.isdir(source):
        if any(Path(source).glob("*.tar")):
            return index_shards(expand_shards(source))
        return read_caption_folder(source)
    raise FileNotFoundError(f"data.source={source!r} is not 'synthetic', a .tsv/.csv table, a folder or tar shards")


def load_image(image: str | TarMember) -> Image.Image:
    if isinstance(image, TarMember):
        with open(image.shard, "rb") as f:
            f.seek(image.offset)
            data = f.read(image.size)
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    with Image.open(image) as im:
        return im.convert("RGB")


# ------------------------------------------------------------------------------------------------ augmentation

def random_resized_box(w: int, h: int, scale: tuple[float, float],
                       ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.get_params`` with Python's ``random``: (top, left, height, width)."""
    area = w * h
    for _ in range(10):
        target = area * random.uniform(*scale)
        aspect = random.uniform(*ratio)
        cw, ch = round((target * aspect) ** 0.5), round((target / aspect) ** 0.5)
        if 0 < cw <= w and 0 < ch <= h:
            return random.randint(0, h - ch), random.randint(0, w - cw), ch, cw
    side = min(w, h)
    return (h - side) // 2, (w - side) // 2, side, side


def random_view(img: Image.Image, scale: tuple[float, float],
                size: int) -> tuple[Image.Image, tuple[int, int, int, int], bool]:
    """A random resized crop (area fraction in ``scale``) to ``size``², mirrored with p=0.5: (view, (top, left,
    height, width) of the crop in ``img``, mirrored)."""
    box = random_resized_box(*img.size, scale)
    view = TF.resized_crop(img, *box, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    flip = random.random() < 0.5
    return (TF.hflip(view) if flip else view), box, flip


def jitter(img: Image.Image, strength: float) -> Image.Image:
    """Brightness, contrast and saturation factors U(1 - s, 1 + s) in random order; no hue (captions name colours)."""
    if strength <= 0:
        return img
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation]
    random.shuffle(ops)
    for op in ops:
        img = op(img, random.uniform(max(0.0, 1 - strength), 1 + strength))
    return img


_PHRASE_SPLIT = re.compile(r"\s*,\s*|\s+(?:and|with|on|in|at|near|next to)\s+")


def split_phrases(caption: str) -> list[str]:
    """A caption's phrases: split at commas and a few conjunctions/prepositions (``and``, ``with``, ``on``, ...)."""
    return [p.strip() for p in _PHRASE_SPLIT.split(caption) if p and p.strip()]


# words that frame or pose a phrase rather than name what is seen; dropped from a phrase's key
_FRAME_WORDS = frozenset({"a", "an", "the", "this", "that", "these", "those", "some", "there", "is", "are", "was",
                          "were", "it", "its", "of", "photo", "picture", "image", "pic", "shot", "view", "close", "up",
                          "lying", "resting", "sitting", "standing", "placed"})


def phrase_key(phrase: str) -> tuple[str, ...]:
    """A phrase's identity for grounding: its content words, lowercased and sorted, so "a striped green leaf lying"
    and "there is a green striped leaf" are the same phrase; () when nothing is left."""
    words = re.findall(r"[a-z0-9][a-z0-9'-]*", phrase.lower())
    return tuple(sorted({w for w in words if w not in _FRAME_WORDS}))


@dataclass(frozen=True)
class PhraseVocab:
    """The phrases grounded during pretraining: ``keys[v]`` (``phrase_key``) and ``texts[v]`` (its most frequent
    surface form with the frame words removed, e.g. "gold coin")."""

    keys: tuple[tuple[str, ...], ...]
    texts: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.keys)

    @cached_property
    def index(self) -> dict[tuple[str, ...], int]:
        return {k: i for i, k in enumerate(self.keys)}

    def multi_hot(self, caption: str) -> Tensor:
        """(V,) bool: which vocabulary phrases the caption mentions."""
        index = self.index
        out = torch.zeros(len(self.keys), dtype=torch.bool)
        for phrase in split_phrases(caption):
            i = index.get(phrase_key(phrase))
            if i is not None:
                out[i] = True
        return out


def build_phrase_vocab(captions: list[str], min_count: int = 5, max_size: int = 1024) -> PhraseVocab:
    """The ``max_size`` most frequent caption phrases (by ``phrase_key``) seen at least ``min_count`` times."""
    counts: dict[tuple[str, ...], int] = {}
    forms: dict[tuple[str, ...], dict[str, int]] = {}
    for caption in captions:
        for phrase in split_phrases(caption):
            key = phrase_key(phrase)
            if not key:
                continue
            counts[key] = counts.get(key, 0) + 1
            form = " ".join(w for w in phrase.lower().split() if w not in _FRAME_WORDS)
            seen = forms.setdefault(key, {})
            seen[form] = seen.get(form, 0) + 1
    kept = sorted((k for k, n in counts.items() if n >= min_count), key=lambda k: (-counts[k], k))[:max_size]
    return PhraseVocab(tuple(kept), tuple(max(forms[k].items(), key=lambda f: (f[1], f[0]))[0] for k in kept))


def sample_phrases(caption: str, p: float) -> str:
    """With probability ``p``: a random non-empty subset of the caption's phrases, joined with " and " (a partial
    but true description, so short single-concept texts such as class prompts are in the training distribution)."""
    if p <= 0 or random.random() >= p:
        return caption
    phrases = split_phrases(caption)
    if len(phrases) < 2:
        return caption
    kept = [x for x in phrases if random.random() < 0.5] or [random.choice(phrases)]
    return " and ".join(kept)


def drop_words(caption: str, p: float) -> str:
    """Random deletion (EDA / DeCLIP text augmentation): each word is dropped with probability ``p``; at least one
    word is kept."""
    if p <= 0:
        return caption
    words = caption.split()
    kept = [w for w in words if random.random() >= p]
    return " ".join(kept) if kept else random.choice(words) if words else caption


class CaptionViews(Dataset):
    """(global view 1, global view 2, flipped (bool), local views (L, 3, s, s), local boxes (L, 4), caption tokens
    (ctx,), phrase mentions (V,) bool) per item. A local box is the local view's (y0, x0, y1, x1) in view 1's
    normalised coordinates (x0 > x1 when mirrored relative to view 1), for the dense vision contrast; the mentions
    say which phrases of the grounding vocabulary the caption names.

    The two global views share one crop (so patch i of one is patch i of the other, after undoing the optional
    mirror of view 2) and differ in photometry: they feed the cross-modal contrast and the IIC clustering loss.
    The local views are independent smaller crops for the vision-based contrast.
    """

    def __init__(self, items: list[CaptionItem], cfg: CaptionDataConfig, tokenizer: Any,
                 phrases: PhraseVocab | None = None) -> None:
        if not items:
            raise ValueError("no image-caption pairs")
        self.items, self.cfg, self.tokenizer = items, cfg, tokenizer
        self.phrases = phrases or PhraseVocab((), ())
        self.mean, self.std = T.get_normalization(cfg.norm)

    def __len__(self) -> int:
        return len(self.items)

    def _norm(self, img: Image.Image) -> Tensor:
        return T.normalize(img, self.mean, self.std)

    def __getitem__(self, i: int):
        c = self.cfg
        item = self.items[i]
        img = load_image(item.image)
        crop, (gt, gl, gh, gw), gflip = random_view(img, c.global_scale, c.global_size)
        view1 = jitter(crop, c.jitter)
        view2 = jitter(crop, c.jitter)
        flipped = c.flip_second_view and random.random() < 0.5
        if flipped:
            view2 = TF.hflip(view2)
        locals_, boxes = [], []
        for _ in range(c.local_crops):
            local, (top, left, ch, cw), lflip = random_view(img, c.local_scale, c.local_size)
            locals_.append(self._norm(jitter(local, c.jitter)))
            # the local view's edges in view 1's normalised coordinates; x0 > x1 encodes a mirror between them
            xa, xb = (left + cw - gl) / gw, (left - gl) / gw
            if not lflip:
                xa, xb = xb, xa
            if gflip:
                xa, xb = 1 - xa, 1 - xb
            boxes.append(((top - gt) / gh, xa, (top + ch - gt) / gh, xb))
        local_t = torch.stack(locals_) if locals_ else torch.zeros(0, 3, c.local_size, c.local_size)
        box_t = torch.tensor(boxes, dtype=torch.float32).view(-1, 4)
        caption = drop_words(sample_phrases(item.caption, c.phrase_sampling), c.word_dropout)
        tokens = self.tokenizer([caption])[0]
        mentions = self.phrases.multi_hot(item.caption)  # of the full caption: what the image shows
        return self._norm(view1), self._norm(view2), torch.tensor(flipped), local_t, box_t, tokens.long(), mentions
