"""Class sets: the class names in label order plus, per class, the concepts that describe it.

Sources (``load_class_set``): a built-in name (``voc``, ``coco``, ``ade``, ``cityscapes``), a YAML file, a text
file (one class per line; blank lines and lines starting with ``#`` are skipped), a comma-separated string, or a
list of names. YAML schema::

    name: my-dataset                 # optional, default: the file name
    description: free text           # optional
    classes: [background, cat, dog]  # label order: index = label id
    class_definitions:               # optional; a class left out is its own single concept
      cat: [cat, kitten]
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

BUILTIN_DIR = Path(__file__).parent / "classes"
BUILTIN_CLASS_SETS: tuple[str, ...] = ("voc", "coco", "ade", "cityscapes")
_YAML_KEYS = ("name", "description", "classes", "class_definitions")

# Text embedding modes; the reference's file-name variants are accepted as aliases.
MODES: tuple[str, ...] = ("single", "max", "avg")
_MODE_ALIASES = {"concept": "max", "concept-max": "max", "conceptavg": "avg", "concept-avg": "avg"}


def normalize_mode(mode: str) -> str:
    """The canonical mode: ``"single"`` (class names), ``"max"`` (row per concept) or ``"avg"`` (concepts averaged).

    The reference's names ``"concept"`` and ``"conceptavg"`` are accepted for ``"max"`` and ``"avg"``.
    """
    m = str(mode).strip().lower()
    m = _MODE_ALIASES.get(m, m)
    if m not in MODES:
        raise ValueError(f"unknown text embedding mode {mode!r}: use 'single' (class names only), 'max' (one row "
                         "per concept, class score = max over its concepts) or 'avg' (one row per class, concepts "
                         "averaged)")
    return m


@dataclass(frozen=True)
class ClassSet:
    """Classes in label order and, per class, its concepts (at least one; by default the class name itself)."""

    name: str
    classes: tuple[str, ...]
    concepts: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if len(self.concepts) != len(self.classes):
            raise ValueError(f"class set {self.name!r}: {len(self.classes)} classes but concepts for "
                             f"{len(self.concepts)}; give exactly one concept list per class")
        empty = [c for c, cs in zip(self.classes, self.concepts) if len(cs) == 0]
        if empty:
            raise ValueError(f"class set {self.name!r}: empty concept list for {empty}; give at least one concept")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_concepts(self) -> int:
        """Total number of concepts over all classes (the row count of mode ``"max"``)."""
        return sum(len(c) for c in self.concepts)

    @property
    def has_definitions(self) -> bool:
        """Whether any class has concepts other than its own name."""
        return any(cs != (c,) for c, cs in zip(self.classes, self.concepts))

    def rows(self, mode: str) -> tuple[list[str], Tensor]:
        """The texts to encode for ``mode`` and the class index (int64) of each.

        ``"single"``: the class names, groups = arange. ``"max"`` and ``"avg"``: every concept, classes in label
        order and each class's concepts in order (the reference's row order); for ``"avg"`` the rows of one class
        are then averaged into one (see ``build_text_embeddings``).
        """
        if normalize_mode(mode) == "single":
            return list(self.classes), torch.arange(self.num_classes, dtype=torch.int64)
        texts = [c for cs in self.concepts for c in cs]
        groups = torch.repeat_interleave(torch.arange(self.num_classes), torch.tensor([len(c) for c in self.concepts]))
        return texts, groups.to(torch.int64)


def _validate(data: Any, source: str) -> ClassSet:
    """Build a ClassSet from parsed YAML-like data, collecting every problem into one ValueError."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a mapping with a 'classes' list (and optional 'name', "
                         f"'class_definitions'), got {type(data).__name__}")
    problems: list[str] = []
    unknown_keys = [k for k in data if k not in _YAML_KEYS]
    if unknown_keys:
        problems.append(f"unknown key(s) {unknown_keys}; allowed keys are {list(_YAML_KEYS)}")
    classes = data.get("classes")
    if not isinstance(classes, list) or not classes:
        problems.append("'classes' must be a non-empty list of class names")
        classes = []
    bad = [c for c in classes if not isinstance(c, str) or not c.strip()]
    if bad:
        problems.append(f"class names must be non-empty strings, got {bad} (quote names YAML would read as "
                        "numbers, booleans or null)")
    classes = [c for c in classes if isinstance(c, str) and c.strip()]
    seen: dict[str, str] = {}
    dups = []
    for c in classes:
        if c.strip() in seen:
            dups.append(c)
        seen.setdefault(c.strip(), c)
    if dups:
        problems.append(f"duplicate class name(s) {dups}; every class must appear once")

    defs = data.get("class_definitions") or {}
    if not isinstance(defs, Mapping):
        problems.append("'class_definitions' must map class names to lists of concepts")
        defs = {}
    unknown = [k for k in defs if k not in classes]
    if unknown:
        problems.append(f"class_definitions for unknown class(es) {unknown}; keys must be names from 'classes'")
    for k, v in defs.items():
        if not isinstance(v, list) or not v:
            problems.append(f"class_definitions[{k!r}] must be a non-empty list of concepts, got {v!r}")
        elif any(not isinstance(x, str) or not x.strip() for x in v):
            problems.append(f"class_definitions[{k!r}] has empty or non-string concepts: {v!r}")
        elif len({x.strip() for x in v}) != len(v):
            problems.append(f"class_definitions[{k!r}] lists a concept twice: {v!r}")
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str) or not name.strip():
        problems.append(f"'name' must be a non-empty string, got {name!r}")
    if problems:
        raise ValueError(f"invalid class set {source}: " + "; ".join(problems))
    concepts = tuple(tuple(defs.get(c) or (c,)) for c in classes)
    return ClassSet(name=name, classes=tuple(classes), concepts=concepts)


def class_set_from_dict(data: Mapping[str, Any], source: str = "<dict>") -> ClassSet:
    """A ClassSet from a mapping with the YAML schema (``classes``, optional ``name``, ``class_definitions``)."""
    return _validate(data, source)


def _read_yaml(path: Path) -> ClassSet:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"invalid class set {path}: not valid YAML ({e})") from e
    return _validate(data, str(path))


def _read_txt(path: Path) -> ClassSet:
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines()]
    classes = [ln for ln in lines if ln and not ln.startswith("#")]
    return _validate({"name": path.stem, "classes": classes}, str(path))


def load_class_set(spec: str | os.PathLike | Sequence[str] | ClassSet) -> ClassSet:
    """A ClassSet from a built-in name, a ``.yaml``/``.yml`` or text file, ``"a, b, c"``, or a list of names."""
    if isinstance(spec, ClassSet):
        return spec
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        if not isinstance(spec, Sequence):
            raise TypeError(f"class set must be a name, a file path, a comma-separated string or a list of names, "
                            f"got {type(spec).__name__}")
        return _validate({"name": "custom", "classes": list(spec)}, "<class list>")
    key = spec.strip().lower()
    if key in BUILTIN_CLASS_SETS:
        return _read_yaml(BUILTIN_DIR / f"{key}.yaml")
    path = Path(spec).expanduser()
    if path.is_file():
        return _read_yaml(path) if path.suffix.lower() in (".yaml", ".yml") else _read_txt(path)
    if path.suffix.lower() in (".yaml", ".yml", ".txt"):
        raise ValueError(f"class set file {spec!r} not found; give an existing .yaml/.yml/.txt file, a built-in "
                         f"({', '.join(BUILTIN_CLASS_SETS)}) or a comma-separated list of class names")
    if "," in spec:
        return _validate({"name": "custom", "classes": [c.strip() for c in spec.split(",") if c.strip()]},
                         "<comma-separated classes>")
    raise ValueError(f"class set {spec!r} is not a built-in ({', '.join(BUILTIN_CLASS_SETS)}), not an existing file "
                     "(.yaml/.yml, or text with one class per line) and not a comma-separated list "
                     "(e.g. 'background, cat, dog')")
