"""Run configuration: nested dataclasses, YAML files (with ``base:`` inheritance) and dotted ``key=value`` overrides.

Precedence: dataclass defaults < YAML file (its ``base`` chain first) < command-line overrides. Unknown keys and
values of the wrong type are errors that name the key; a config class's ``validate()`` checks what types cannot.
The resolved config is saved with every run. ``Config`` is SemiVL's run config (its model section is the library's
``SemiVLConfig``); ViL-Seg's is ``semivl_fast.training.vilseg.config.PretrainConfig``, read by the same machinery.

The recipes (YAML) ship in ``semivl_fast/training/configs/``: ``--config voc/92`` names one, any other path is a file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from semivl_fast.files import atomic_write
from semivl_fast.models.decoder import DecoderConfig
from semivl_fast.models.semivl import SemiVLConfig
from semivl_fast.training.precision import check_amp

RECIPES = Path(__file__).parent / "configs"
MIX_PARTNERS = ("same", "loader", "roll")
T = TypeVar("T")


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # synthetic | voc | coco | ade | cityscapes
    root: str = ""  # data root; for synthetic, where the world is generated ("" = the cache dir)
    split_dir: str = ""  # holds <dataset>/<split>/{labeled,unlabeled}.txt and <dataset>/val.txt ("" = <root>/splits)
    split: str = "16"  # e.g. 92 (VOC), 1_16 (Cityscapes/COCO/ADE), 16 (synthetic: labeled images)
    crop_size: int = 96
    batch_size: int = 4  # per process: labeled images, and as many unlabeled
    num_workers: int = 2
    norm: str = "imagenet"  # imagenet | clip (input normalisation)
    seed: int = 0  # synthetic world: seed, number of training / validation images, image size
    world_train: int = 2000
    world_val: int = 200
    world_size: int = 112


@dataclass
class EvalConfig:
    mode: str = "sliding"  # sliding (zegclip-style windows) | grid (UniMatch's windows) | whole (one pass)
    stride: int = 0  # sliding stride (0 = 5/6 of the window, the reference's 426 for 512)
    merge: str = "logits"  # logits (average raw logits: VOC/COCO/ADE) | probs (sum softmax: Cityscapes)
    every: int = 0  # evaluate every N iterations during training (0 = every ``every_epochs`` epochs)
    every_epochs: int = 1  # with every=0: evaluate every N epochs (Cityscapes: 10); the last iteration always
    max_images: int = 0  # evaluate on at most this many validation images (0 = all)


@dataclass
class TrainConfig:
    semi: bool = True  # False: supervised only (labeled loss), the baseline
    epochs: int = 80
    iters: int = 0  # > 0: train for exactly this many iterations instead of epochs
    lr: float = 1e-4
    backbone_lr_mult: float = 0.01
    head_lr_mult: float = 10.0
    conv_encoder_lr_mult: float = 0.1
    weight_decay: float = 0.01
    poly_power: float = 0.9
    conf_thresh: float = 0.95  # pseudo-label confidence threshold tau
    conf_mode: str = "threshold"  # threshold | confidence (Cityscapes "pixelavg")
    use_fp: bool = True  # UniMatch feature-perturbation branch
    # CutMix partner: same (the reference: the same images in the same order, augmented independently) |
    # loader (a second, independently shuffled pass: other images) | roll (the batch shifted by one, no extra pass)
    mix_partner: str = "same"
    guidance: bool = True  # dense CLIP guidance from a frozen CLIP
    guidance_lambda: tuple[float, float] = (0.1, 0.0)  # weight at the start and end (linear)
    guidance_thresh: float = 0.9
    guidance_scale: float = 100.0  # CLIP logit scale in softmax(scale * cos)
    guidance_text: str = "max"  # class definitions for the guidance: max (concept max) | avg | single
    amp: str = "none"  # none | bf16 (CPU and GPU) | fp16 (GPU, with a grad scaler) | auto (bf16 where native)
    compile: bool = False  # torch.compile the model
    seed: int = 0
    log_every: int = 10
    save_every: int = 0  # write the resumable checkpoint every N iterations (0 = at each evaluation)
    out_dir: str = "runs/default"
    resume: str = ""  # a checkpoint (last.pt) or a run directory to continue
    tensorboard: bool = True
    progress: bool = True  # progress bar on a terminal, log lines otherwise


@dataclass
class Config:
    model: SemiVLConfig = field(default_factory=SemiVLConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        """Value checks the types cannot express; one clear error naming the key."""
        if self.train.mix_partner not in MIX_PARTNERS:
            raise ValueError(f"train.mix_partner={self.train.mix_partner!r}; choose one of {MIX_PARTNERS}")
        check_amp(self.train.amp)


def window_options(cfg: EvalConfig) -> dict[str, Any]:
    """The keyword arguments of ``semivl_fast.metrics.evaluate`` that ``cfg`` sets."""
    return {"mode": cfg.mode, "stride": cfg.stride, "merge": cfg.merge, "max_images": cfg.max_images}


# ------------------------------------------------------------------------------------------------ conversion

def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` (from YAML or a command-line string) as type ``tp``; a clear error naming ``key`` otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        is_null = value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~"))
        if is_null and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"config key {key!r}: cannot read {value!r} as {tp}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"config key {key!r} is a section: give a mapping, got {value!r}")
        return merge(tp(), value, key)
    if origin is tuple:
        if isinstance(value, str):
            value = yaml.safe_load(value if value.strip().startswith("[") else f"[{value}]")
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key!r}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if item is None and len(args) != len(value):
            raise ValueError(f"config key {key!r}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, item or args[i], f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ValueError(f"config key {key!r}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"config key {key!r}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"config key {key!r}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"config key {key!r}: expected a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"config key {key!r}: expected a number, got {value!r}") from None
    if tp is str:
        if value is None or isinstance(value, (dict, list)):
            raise ValueError(f"config key {key!r}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"config key {key!r}: unsupported field type {tp}")


def merge(base: Any, data: dict, prefix: str) -> Any:
    """``base`` (a dataclass instance) with the keys of ``data`` replaced (recursively for sections)."""
    hints = typing.get_type_hints(type(base))
    names = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} in section {prefix!r}; known: {sorted(names)}")
    changes = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        current = getattr(base, k)
        changes[k] = merge(current, v, key) if dataclasses.is_dataclass(current) and isinstance(v, dict) \
            else _coerce(v, hints[k], key)
    return dataclasses.replace(base, **changes)


def to_dict(cfg: Any) -> dict:
    """Plain dict (lists for tuples) of a config dataclass: YAML- and checkpoint-safe."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(cfg)


def build(cls: type[T], data: dict) -> T:
    """A ``cls`` config from a (possibly partial) nested dict, validated (``cls.validate()`` where it has one)."""
    cfg = merge(cls(), data, "")
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def from_dict(data: dict) -> Config:
    """SemiVL's run config from a (possibly partial) nested dict, e.g. one stored in a checkpoint."""
    return build(Config, data)


# ------------------------------------------------------------------------------------------------ files, CLI

def recipe_path(name: str | Path) -> Path:
    """A config file: ``name`` itself if it exists, else the recipe of that name (``voc/92``, ``synthetic``; also
    ``configs/voc/92.yaml``, the recipes' folder in the repository)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    rel = str(name).removeprefix("configs/")
    recipe = RECIPES / (rel if rel.endswith((".yaml", ".yml")) else f"{rel}.yaml")
    if recipe.is_file():
        return recipe
    known = sorted(str(p.relative_to(RECIPES).with_suffix("")) for p in RECIPES.rglob("*.yaml"))
    raise FileNotFoundError(f"config {name}: no such file and no recipe of that name; recipes: {', '.join(known)}")


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A YAML config with its ``base:`` chain merged under it (base first)."""
    path = path.resolve()
    if path in seen:
        raise ValueError(f"config {path}: 'base' chain loops back to itself")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path}: expected a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    return deep_update(read_yaml((path.parent / base), (*seen, path)), data)


def deep_update(base: dict, new: dict) -> dict:
    """``base`` with ``new`` merged in (recursively for sub-dicts)."""
    out = dict(base)
    for k, v in new.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(items: list[str]) -> dict:
    """``["train.lr=1e-3", "model.decoder.channels=64"]`` -> nested dict (values parsed by type later)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r} conflicts with an earlier override of {p!r}")
        node[parts[-1]] = value.strip()
    return out


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Defaults, then the YAML file or recipe ``path`` (if any), then the dotted ``overrides``."""
    data = read_yaml(recipe_path(path)) if path else {}
    return build(cls, deep_update(data, parse_overrides(overrides or [])))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """SemiVL's run config: defaults, then the YAML file or recipe ``path``, then the dotted ``overrides``."""
    return load(Config, path, overrides)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    atomic_write(path, lambda tmp: tmp.write_text(text))


__all__ = ["Config", "DataConfig", "DecoderConfig", "EvalConfig", "SemiVLConfig", "TrainConfig", "build", "from_dict",
           "load", "load_config", "parse_overrides", "recipe_path", "save_config", "to_dict", "window_options"]
