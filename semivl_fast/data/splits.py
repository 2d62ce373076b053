"""Split files: read, write, locate, and generate them (seeded), UniMatch format.

A split file has one ``<image> <mask>`` pair per line, relative to the dataset's data root. The standard layout of a
split directory is ``<split_dir>/<dataset>/<split>/{labeled,unlabeled}.txt`` plus ``<split_dir>/<dataset>/val.txt``.

Generation (``generate_split``) is SemiVL's ADE recipe for any dataset: sort the full training list, shuffle it with
``random.Random(seed)``, the first ``round(n / k)`` (or ``count``, or ``round(n · fraction)``) pairs are labeled and
the rest unlabeled, both in shuffled order. With seed 0 it reproduces SemiVL's ADE20K splits exactly.

COCO's unlabeled lists are not distributed with the labeled ones (too big); they are "train2017 minus labeled":
``derive_unlabeled(train_list, labeled_list)`` builds one; ``unlabeled_pairs`` (used by ``build_datasets``) derives it
in memory and ``resolve_split`` writes it next to the labeled list, when the split directory holds
``coco/train.txt`` or a ``train_list`` is given. From the command line::

    python -m semivl_fast.data.splits generate --dataset ade --data-root ADEChallengeData2016 --out-dir splits/ade \
        --splits 1_128 1_64 --seed 0
    python -m semivl_fast.data.splits unlabeled --train-list coco_train.txt --labeled splits/coco/1_512/labeled.txt \
        --out splits/coco/1_512/unlabeled.txt
    python -m semivl_fast.data.splits scan --dataset coco --data-root coco --out coco_train.txt
    python -m semivl_fast.data.splits check --split-dir splits --dataset voc [--data-root voc]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from semivl_fast.data.specs import DatasetSpec, get_spec
from semivl_fast.files import atomic_write

Pair = tuple[str, str]
PARTS = ("labeled", "unlabeled", "val")


def read_split(path: str | os.PathLike) -> list[Pair]:
    """The ``(image, mask)`` pairs of a split file, in file order. Blank lines and ``#`` comments are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} not found; split files live in "
                                "<split_dir>/<dataset>/<split>/{labeled,unlabeled}.txt and "
                                "<split_dir>/<dataset>/val.txt "
                                "(generate them with `python -m semivl_fast.data.splits generate`)")
    pairs: list[Pair] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) != 2:
                raise ValueError(f"{path}:{lineno}: expected '<image path> <mask path>' (two fields separated by a "
                                 f"space, paths without spaces), got {len(fields)} field(s): {line!r}")
            pairs.append((fields[0], fields[1]))
    if not pairs:
        raise ValueError(f"split file {path} lists no '<image> <mask>' pairs")
    return pairs


def write_split(path: str | os.PathLike, pairs: Iterable[Pair]) -> Path:
    """Write pairs as a split file (one ``image mask`` per line), creating parent folders; returns the path."""
    path = Path(path)
    lines = []
    for img, mask in pairs:
        if any(c.isspace() for c in img + mask) or not img or not mask:
            raise ValueError(f"cannot write pair ({img!r}, {mask!r}) to {path}: paths must be non-empty and "
                             "contain no whitespace")
        lines.append(f"{img} {mask}\n")
    return atomic_write(path, lambda tmp: tmp.write_text("".join(lines), encoding="utf-8"))


def split_dataset_dir(split_dir: str | os.PathLike, dataset: str | DatasetSpec) -> Path:
    """``<split_dir>/<dataset>`` (the first existing of the spec's folder names, e.g. ``voc`` or ``pascal``)."""
    spec = get_spec(dataset)
    base = Path(split_dir).expanduser()
    for name in spec.split_names:
        if (base / name).is_dir():
            return base / name
    return base / spec.split_names[0]


def split_path(split_dir: str | os.PathLike, dataset: str | DatasetSpec, split: str | None, part: str) -> Path:
    """Path of one split file: ``labeled``/``unlabeled`` → ``<dir>/<split>/<part>.txt``; ``val`` → ``<dir>/val.txt``."""
    if part not in PARTS:
        raise ValueError(f"unknown split part {part!r}; choose one of {PARTS}")
    d = split_dataset_dir(split_dir, dataset)
    if part == "val":
        return d / "val.txt"
    if not split:
        raise ValueError(f"part {part!r} needs a split name (e.g. {get_spec(dataset).standard_splits})")
    return d / str(split) / f"{part}.txt"


def derive_unlabeled(train: Sequence[Pair] | str | os.PathLike, labeled: Sequence[Pair] | str | os.PathLike,
                     out: str | os.PathLike | None = None) -> list[Pair]:
    """The training pairs not in ``labeled`` (train order kept), optionally written to ``out``.

    How COCO's unlabeled lists are made: the full train2017 list minus the labeled list. Both arguments may be pair
    lists or split files.
    """
    train_pairs = read_split(train) if isinstance(train, (str, os.PathLike)) else list(train)
    labeled_pairs = read_split(labeled) if isinstance(labeled, (str, os.PathLike)) else list(labeled)
    train_images = {p[0] for p in train_pairs}
    missing = [p[0] for p in labeled_pairs if p[0] not in train_images]
    if missing:
        raise ValueError(f"{len(missing)} labeled image(s) are not in the training list (first: {missing[0]!r}); "
                         "the training list must be the full set the labeled list was drawn from")
    taken = {p[0] for p in labeled_pairs}
    unlabeled = [p for p in train_pairs if p[0] not in taken]
    if out is not None:
        write_split(out, unlabeled)
    return unlabeled


def unlabeled_pairs(split_dir: str | os.PathLike, dataset: str | DatasetSpec, split: str,
                    train_list: str | os.PathLike | None = None) -> list[Pair]:
    """The unlabeled pairs of a split: its ``unlabeled.txt``, or else "train minus labeled" derived in memory.

    The train list is ``train_list`` or ``<split_dir>/<dataset>/train.txt`` (COCO: the full train2017 list).
    """
    path = split_path(split_dir, dataset, split, "unlabeled")
    if path.is_file():
        return read_split(path)
    full = Path(train_list) if train_list is not None else split_dataset_dir(split_dir, dataset) / "train.txt"
    labeled = path.with_name("labeled.txt")
    if full.is_file() and labeled.is_file():
        return derive_unlabeled(full, labeled)
    raise FileNotFoundError(f"unlabeled split file {path} not found and cannot be derived: give a full training list "
                            f"(train_list=..., or put it at {full}) so the unlabeled list is 'train minus labeled', "
                            "e.g. `python -m semivl_fast.data.splits scan --dataset coco --data-root <root> --out "
                            f"{full}`")


def resolve_split(split_dir: str | os.PathLike, dataset: str | DatasetSpec, split: str | None, part: str,
                  train_list: str | os.PathLike | None = None) -> Path:
    """The split file for (dataset, split, part); a missing unlabeled list is derived (see ``unlabeled_pairs``) and
    written next to the labeled one, so this happens once."""
    path = split_path(split_dir, dataset, split, part)
    if path.is_file() or part != "unlabeled":
        return path
    write_split(path, unlabeled_pairs(split_dir, dataset, str(split), train_list))
    return path


def scan_pairs(dataset: str | DatasetSpec, data_root: str | os.PathLike, pattern: str | None = None) -> list[Pair]:
    """Sorted ``(image, mask)`` pairs found under ``data_root`` by the dataset's layout (training images by default).

    Every image must have its mask; a missing one is an error naming it.
    """
    spec = get_spec(dataset)
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} is not a folder")
    pattern = pattern or spec.scan_glob
    images = sorted(p.relative_to(root).as_posix() for p in root.glob(pattern))
    if not images:
        raise FileNotFoundError(f"no images match {pattern!r} under {root}; is this the {spec.name} data root?")
    pairs = [(img, spec.mask_path_for(img)) for img in images]
    missing = [m for _, m in pairs if not (root / m).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} mask(s) missing under {root} (first: {missing[0]}); every image "
                                f"matching {pattern!r} needs its mask")
    return pairs


def num_labeled(total: int, labeled: int | float | str) -> int:
    """Labeled count: an int count, a fraction in (0, 1], or ``"1_k"`` (= ``round(total / k)``, SemiVL's rule)."""
    if isinstance(labeled, str):
        m = re.fullmatch(r"\s*1_(\d+)\s*", labeled)
        if m:
            n = round(total / int(m.group(1)))
        elif labeled.strip().isdigit():
            n = int(labeled)
        else:
            raise ValueError(f"labeled amount {labeled!r}: use a count ('92'), a ratio '1_k' ('1_128') or a fraction")
    elif isinstance(labeled, bool):
        raise TypeError("labeled amount must be an int, a float fraction or a '1_k' string, not a bool")
    elif isinstance(labeled, int):
        n = labeled
    elif isinstance(labeled, float):
        if not 0.0 < labeled <= 1.0:
            raise ValueError(f"labeled fraction {labeled} must lie in (0, 1]")
        n = round(total * labeled)
    else:
        raise TypeError(f"labeled amount must be an int, a float fraction or a '1_k' string, got {type(labeled)}")
    if not 1 <= n <= total:
        raise ValueError(f"labeled amount {labeled!r} gives {n} labeled of {total}; it must be between 1 and {total}")
    return n


def generate_split(pairs: Sequence[Pair], labeled: int | float | str, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """(labeled, unlabeled): sort ``pairs``, shuffle with ``random.Random(seed)``, first ``num_labeled`` labeled."""
    if not pairs:
        raise ValueError("cannot split an empty list of pairs")
    images = [p[0] for p in pairs]
    if len(set(images)) != len(images):
        raise ValueError("the pair list names an image twice; give each training image once")
    order = sorted(tuple(p) for p in pairs)
    random.Random(seed).shuffle(order)
    n = num_labeled(len(order), labeled)
    return list(order[:n]), list(order[n:])


def write_splits(out_dir: str | os.PathLike, pairs: Sequence[Pair], splits: Sequence[int | float | str],
                 seed: int = 0) -> dict[str, tuple[int, int]]:
    """Generate and write ``<out_dir>/<split>/{labeled,unlabeled}.txt`` for each split; returns name → counts."""
    out: dict[str, tuple[int, int]] = {}
    for s in splits:
        lab, unl = generate_split(pairs, s, seed)
        name = str(s)
        write_split(Path(out_dir) / name / "labeled.txt", lab)
        write_split(Path(out_dir) / name / "unlabeled.txt", unl)
        out[name] = (len(lab), len(unl))
    return out


def check_splits(split_dir: str | os.PathLike, dataset: str | DatasetSpec,
                 data_root: str | os.PathLike | None = None) -> dict[str, int]:
    """Parse every split file of a dataset (and check that its files exist under ``data_root`` if given).

    Returns ``{"<split>/labeled": count, ..., "val": count}``; raises on the first problem.
    """
    spec = get_spec(dataset)
    d = split_dataset_dir(split_dir, spec)
    if not d.is_dir():
        raise FileNotFoundError(f"no split folder for {spec.name} under {split_dir} (tried {spec.split_names})")
    files = sorted(d.glob("*/labeled.txt")) + sorted(d.glob("*/unlabeled.txt")) + sorted(d.glob("val.txt"))
    counts: dict[str, int] = {}
    for f in files:
        pairs = read_split(f)
        counts[f.relative_to(d).with_suffix("").as_posix()] = len(pairs)
        if data_root is not None:
            for img, mask in pairs:
                for rel in (img, mask):
                    if not (Path(data_root) / rel).is_file():
                        raise FileNotFoundError(f"{f}: {rel} not found under data root {data_root}")
    return counts


def main(argv: list[str] | None = None) -> dict:
    """Command line: ``generate``, ``unlabeled``, ``scan``, ``check`` (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m semivl_fast.data.splits", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="seeded labeled/unlabeled splits (sorted list, Random(seed).shuffle)")
    g.add_argument("--dataset", required=True, help="layout used to scan --data-root (voc, coco, ade, cityscapes, ...)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--data-root", help="scan this root for training images and their masks")
    src.add_argument("--list", help="or split from this full training list (one 'image mask' per line)")
    g.add_argument("--out-dir", required=True, help="writes <out-dir>/<split>/{labeled,unlabeled}.txt")
    g.add_argument("--splits", nargs="+", required=True, help="counts (92), ratios (1_128) or fractions (0.125)")
    g.add_argument("--seed", type=int, default=0)
    u = sub.add_parser("unlabeled", help="unlabeled list = full training list minus a labeled list (COCO)")
    u.add_argument("--train-list", required=True)
    u.add_argument("--labeled", required=True)
    u.add_argument("--out", required=True)
    s = sub.add_parser("scan", help="write the sorted list of training (image, mask) pairs found under a data root")
    s.add_argument("--dataset", required=True)
    s.add_argument("--data-root", required=True)
    s.add_argument("--pattern", default=None, help="glob relative to the root (default: the dataset's training images)")
    s.add_argument("--out", required=True)
    c = sub.add_parser("check", help="parse every split file of a dataset; with --data-root also check the files exist")
    c.add_argument("--split-dir", required=True)
    c.add_argument("--dataset", required=True)
    c.add_argument("--data-root", default=None)
    args = ap.parse_args(argv)

    if args.cmd == "generate":
        pairs = read_split(args.list) if args.list else scan_pairs(args.dataset, args.data_root)
        splits = [float(x) if "." in x else x for x in args.splits]
        result: dict = write_splits(args.out_dir, pairs, splits, args.seed)
        for name, (n_l, n_u) in result.items():
            print(f"{args.out_dir}/{name}: {n_l} labeled, {n_u} unlabeled")
    elif args.cmd == "unlabeled":
        unl = derive_unlabeled(args.train_list, args.labeled, out=args.out)
        result = {"unlabeled": len(unl)}
        print(f"{args.out}: {len(unl)} unlabeled")
    elif args.cmd == "scan":
        pairs = scan_pairs(args.dataset, args.data_root, args.pattern)
        write_split(args.out, pairs)
        result = {"pairs": len(pairs)}
        print(f"{args.out}: {len(pairs)} pairs")
    else:
        result = check_splits(args.split_dir, args.dataset, args.data_root)
        for k, v in result.items():
            print(f"{k}: {v}")
    return result


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
