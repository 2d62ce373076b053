"""Reference SemiVL checkpoints (mmseg key names) ↔ this package's state dicts, in both directions.

Reference ``VLM`` sections and where they go:

- ``backbone.*``     → ``backbone.visual.*`` (open_clip ``VisionTransformer`` names)   model
- ``decode_head.*``  → ``decoder.*`` (``LanguageGuidedDecoder`` names)               model
- ``conv_encoder.*`` → ``conv_encoder.*`` (``ResNetStem``, Cityscapes only)           model
- ``clip_encoder.*`` → ``visual.*`` (the frozen guidance CLIP)                        guidance

The key mapping is one table of ``(reference pattern, our pattern, transform)`` rows per section, shared by both
directions. Patterns hold loop placeholders ``{name}`` / ``{name+1}`` (consecutive rows with the same placeholder
form one loop, expanded index-major, which is the reference's ``state_dict`` order) and alternatives
``{weight,bias}`` (expanded in the order written).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

StateDict = dict[str, Tensor]
Rule = tuple[str, str, str]  # (reference pattern, our pattern, transform name)

# How often each loop placeholder repeats in the reference model (ViT-B/16, 2 class-attention layers, ...).
REFERENCE_COUNTS: dict[str, int] = {"layer": 12, "branch": 4, "cls_layer": 2, "skip": 2, "stage": 2, "tail_block": 2}

_WB = "{weight,bias}"
_BN = "{weight,bias,running_mean,running_var,num_batches_tracked}"

_VIT: list[Rule] = [
    ("cls_token", "class_embedding", "cls_token"),
    ("pos_embed", "positional_embedding", "pos_embed"),
    ("patch_embed.projection.weight", "conv1.weight", "same"),
    (f"layers.{{layer}}.ln1.{_WB}", f"transformer.resblocks.{{layer}}.ln_1.{_WB}", "same"),
    ("layers.{layer}.attn.attn.in_proj_{weight,bias}", "transformer.resblocks.{layer}.attn.in_proj_{weight,bias}",
     "same"),
    (f"layers.{{layer}}.attn.attn.out_proj.{_WB}", f"transformer.resblocks.{{layer}}.attn.out_proj.{_WB}", "same"),
    (f"layers.{{layer}}.ln2.{_WB}", f"transformer.resblocks.{{layer}}.ln_2.{_WB}", "same"),
    (f"layers.{{layer}}.ffn.layers.0.0.{_WB}", f"transformer.resblocks.{{layer}}.mlp.c_fc.{_WB}", "same"),
    (f"layers.{{layer}}.ffn.layers.1.{_WB}", f"transformer.resblocks.{{layer}}.mlp.c_proj.{_WB}", "same"),
    (f"ln0.{_WB}", f"ln_pre.{_WB}", "same"),
    (f"ln1.{_WB}", f"ln_post.{_WB}", "same"),
    ("proj.weight", "proj", "proj_conv"),
]

_DECODER: list[Rule] = [
    (f"conv1.{_WB}", f"cost_embed.{_WB}", "same"),
    ("aspp.aspp_convs.{branch}.0.weight", "spatial_aggregation.branches.{branch}.conv.weight", "same"),
    (f"aspp.aspp_convs.{{branch}}.1.{_WB}", f"spatial_aggregation.branches.{{branch}}.norm.{_WB}", "same"),
    ("aspp.aspp_convs.4.gap.1.weight", "spatial_aggregation.image_pool.conv.weight", "same"),
    (f"aspp.aspp_convs.4.gap.2.{_WB}", f"spatial_aggregation.image_pool.norm.{_WB}", "same"),
    ("aspp.project.0.weight", "spatial_aggregation.project.conv.weight", "same"),
    (f"aspp.project.1.{_WB}", f"spatial_aggregation.project.norm.{_WB}", "same"),
    (f"layers.{{cls_layer}}.transformer.ln1.{_WB}", f"class_aggregation.layers.{{cls_layer}}.norm1.{_WB}", "same"),
    ("layers.{cls_layer}.transformer.attn.attn.in_proj_{weight,bias}",
     f"class_aggregation.layers.{{cls_layer}}.attn.qkv.{_WB}", "same"),
    (f"layers.{{cls_layer}}.transformer.attn.attn.out_proj.{_WB}",
     f"class_aggregation.layers.{{cls_layer}}.attn.proj.{_WB}", "same"),
    (f"layers.{{cls_layer}}.transformer.ln2.{_WB}", f"class_aggregation.layers.{{cls_layer}}.norm2.{_WB}", "same"),
    (f"layers.{{cls_layer}}.transformer.ffn.layers.0.0.{_WB}", f"class_aggregation.layers.{{cls_layer}}.mlp.fc1.{_WB}",
     "same"),
    (f"layers.{{cls_layer}}.transformer.ffn.layers.1.{_WB}", f"class_aggregation.layers.{{cls_layer}}.mlp.fc2.{_WB}",
     "same"),
    (f"text_proj.0.{_WB}", f"class_aggregation.text_proj.{_WB}", "same"),
    # {skip} and {stage} are separate loops: all skip_proj entries come before up1, up2
    (f"skip_proj.{{skip}}.0.{_WB}", f"upsampling.skip_proj.{{skip}}.{_WB}", "same"),
    (f"up{{stage+1}}.up.{_WB}", f"upsampling.stages.{{stage}}.up.{_WB}", "same"),
    ("up{stage+1}.conv.0.weight", "upsampling.stages.{stage}.conv1.weight", "same"),
    (f"up{{stage+1}}.conv.1.{_WB}", f"upsampling.stages.{{stage}}.norm1.{_WB}", "same"),
    ("up{stage+1}.conv.3.weight", "upsampling.stages.{stage}.conv2.weight", "same"),
    (f"up{{stage+1}}.conv.4.{_WB}", f"upsampling.stages.{{stage}}.norm2.{_WB}", "same"),
    (f"head.{_WB}", f"head.{_WB}", "same"),
]


def _same_names(*names: str) -> list[Rule]:
    return [(n, n, "same") for n in names]


_BOTTLENECK = ("conv1.weight", f"bn1.{_BN}", "conv2.weight", f"bn2.{_BN}", "conv3.weight", f"bn3.{_BN}")
_RESNET: list[Rule] = _same_names(
    "stem.0.weight", f"stem.1.{_BN}", "stem.3.weight", f"stem.4.{_BN}", "stem.6.weight", f"stem.7.{_BN}",
    *(f"layer1.0.{n}" for n in _BOTTLENECK), "layer1.0.downsample.0.weight", f"layer1.0.downsample.1.{_BN}",
    *(f"layer1.{{tail_block+1}}.{n}" for n in _BOTTLENECK),  # blocks 1, 2: no downsample
)


@dataclass(frozen=True)
class Section:
    """One top-level module of the reference checkpoint and where it lands."""

    ref_prefix: str
    ours_prefix: str
    rules: tuple[Rule, ...]
    target: str  # "model" or "guidance"
    required: bool


SECTIONS: dict[str, Section] = {  # in the reference checkpoint's order
    "backbone": Section("backbone.", "backbone.visual.", tuple(_VIT), "model", True),
    "decode_head": Section("decode_head.", "decoder.", tuple(_DECODER), "model", True),
    "clip_encoder": Section("clip_encoder.", "visual.", tuple(_VIT), "guidance", False),
    "conv_encoder": Section("conv_encoder.", "conv_encoder.", tuple(_RESNET), "model", False),
}


# ---------------------------------------------------------------------------------------------------- transforms

def _expect_dims(key: str, t: Tensor, shape_desc: str, ok: bool) -> None:
    if not ok:
        raise ValueError(f"checkpoint entry {key!r} must have shape {shape_desc}, got {tuple(t.shape)}")


def _cls_to_ours(k: str, t: Tensor) -> Tensor:
    _expect_dims(k, t, "(1, 1, D)", t.dim() == 3 and t.shape[:2] == (1, 1))
    return t.reshape(-1)


def _cls_to_ref(k: str, t: Tensor) -> Tensor:
    _expect_dims(k, t, "(D,)", t.dim() == 1)
    return t.reshape(1, 1, -1)


def _pos_to_ours(k: str, t: Tensor) -> Tensor:
    _expect_dims(k, t, "(1, L, D)", t.dim() == 3 and t.shape[0] == 1)
    return t[0]


def _pos_to_ref(k: str, t: Tensor) -> Tensor:
    _expect_dims(k, t, "(L, D)", t.dim() == 2)
    return t.unsqueeze(0)


def _proj_conv_to_ours(k: str, t: Tensor) -> Tensor:
    _expect_dims(k, t, "(E, D, 1, 1)", t.dim() == 4 and t.shape[2:] == (1, 1))
    return t[:, :, 0, 0].t().contiguous()


def _proj_conv_to_ref(k: str, t: Tensor) -> Tensor:
    _expect_dims(k, t, "(D, E)", t.dim() == 2)
    return t.t().contiguous()[:, :, None, None]


def _proj_linear(k: str, t: Tensor) -> Tensor:
    _expect_dims(k, t, "(E, D)", t.dim() == 2)
    return t.t().contiguous()


_TRANSFORMS: dict[str, tuple[Callable[[str, Tensor], Tensor], Callable[[str, Tensor], Tensor]]] = {
    # name: (reference → ours, ours → reference); each receives the source key for its error message
    "same": (lambda k, t: t, lambda k, t: t),
    "cls_token": (_cls_to_ours, _cls_to_ref),
    "pos_embed": (_pos_to_ours, _pos_to_ref),
    "proj_conv": (_proj_conv_to_ours, _proj_conv_to_ref),  # 1×1 conv (E, D, 1, 1) ↔ open_clip proj (D, E)
    "proj_linear": (_proj_linear, _proj_linear),  # the converted CLIP file's proj.weight (E, D) ↔ proj (D, E)
}


# ---------------------------------------------------------------------------------------------------- expansion

_LOOP = re.compile(r"\{([a-z_]+)(\+\d+)?\}")
_ALTS = re.compile(r"\{([^{}]*,[^{}]*)\}")


def _loop_var(pattern: str) -> str | None:
    m = _LOOP.search(pattern)
    return m.group(1) if m else None


def _alternatives(ref: str, ours: str) -> list[tuple[str, str]]:
    """Expand ``{a,b,...}`` groups, which must appear identically (same items, same order) on both sides."""
    mr, mo = _ALTS.search(ref), _ALTS.search(ours)
    if mr is None and mo is None:
        return [(ref, ours)]
    if mr is None or mo is None or mr.group(1) != mo.group(1):
        raise AssertionError(f"mapping table: alternatives differ between {ref!r} and {ours!r}")
    return [pair for item in mr.group(1).split(",")
            for pair in _alternatives(ref[:mr.start()] + item + ref[mr.end():],
                                      ours[:mo.start()] + item + ours[mo.end():])]


def _substitute(pattern: str, var: str, index: int) -> str:
    return _LOOP.sub(lambda m: str(index + int(m.group(2) or 0)) if m.group(1) == var else m.group(0), pattern)


def expand_rules(rules: tuple[Rule, ...] | list[Rule],
                 counts: Mapping[str, int] = REFERENCE_COUNTS) -> list[tuple[str, str, str]]:
    """Concrete (reference key, our key, transform) triples in the reference's state_dict order."""
    out: list[tuple[str, str, str]] = []
    i = 0
    while i < len(rules):
        var = _loop_var(rules[i][0])
        j = i + 1
        while var is not None and j < len(rules) and _loop_var(rules[j][0]) == var:
            j += 1
        for index in range(counts[var]) if var is not None else [None]:
            for ref, ours, transform in rules[i:j]:
                if index is not None:
                    ref, ours = _substitute(ref, var, index), _substitute(ours, var, index)
                out += [(r, o, transform) for r, o in _alternatives(ref, ours)]
        i = j
    return out


# ---------------------------------------------------------------------------------------------------- conversion

def _key_error(what: str, missing: list[str], unknown: list[str], hint: str) -> ValueError:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[:5]})")
    if unknown:
        parts.append(f"{len(unknown)} unexpected (e.g. {unknown[:5]})")
    return ValueError(f"{what}: {'; '.join(parts)}. {hint}")


def _map_keys(sd: Mapping[str, Tensor], table: list[tuple[str, str, str]], src: int, direction: int,
              src_prefix: str, dst_prefix: str) -> tuple[StateDict, list[str]]:
    """Apply ``table`` (column ``src`` → the other column) to ``sd``; returns (mapped, missing source keys)."""
    out: StateDict = {}
    missing = []
    for row in table:
        key = src_prefix + row[src]
        if key not in sd:
            missing.append(key)
            continue
        out[dst_prefix + row[1 - src]] = _TRANSFORMS[row[2]][direction](key, sd[key])
    return out, missing


def convert_section(sd: Mapping[str, Tensor], name: str, counts: Mapping[str, int] = REFERENCE_COUNTS) -> StateDict:
    """Convert one reference section given with its keys relative to it (``conv1.weight`` for ``decode_head``)
    into our names relative to the target module (``cost_embed.weight`` for the decoder). Strict."""
    table = expand_rules(SECTIONS[name].rules, counts)
    out, missing = _map_keys(sd, table, 0, 0, "", "")
    unknown = sorted(set(sd) - {row[0] for row in table})
    if missing or unknown:
        raise _key_error(f"reference section {name!r}", missing, unknown, "Is this a SemiVL reference checkpoint?")
    return out


@dataclass
class ConvertedCheckpoint:
    """``model``: state dict of our segmentor (``backbone.visual.*``, ``decoder.*``, ``conv_encoder.*``);
    ``guidance``: the guidance CLIP as ``visual.*`` or None when the checkpoint has no ``clip_encoder``."""

    model: StateDict
    guidance: StateDict | None
    epoch: int | None = None


def _unwrap(obj: Mapping) -> tuple[dict, int | None]:
    """Accept ``{'model': sd, 'optimizer': ..., 'epoch': e}``, ``{'state_dict': sd}`` or a bare state dict; drop
    the DDP ``module.`` prefix."""
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a checkpoint dict or a state dict, got {type(obj).__name__}")
    epoch = obj.get("epoch") if isinstance(obj.get("epoch"), int) else None
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad:
        raise TypeError(f"state dict entries must be tensors; these are not: {bad[:5]}")
    return sd, epoch


def _is_clip_file(sd: Mapping[str, Tensor]) -> bool:
    return "proj.weight" in sd and not any(k.startswith("decode_head.") for k in sd)


def convert_reference_state_dict(sd: Mapping, counts: Mapping[str, int] = REFERENCE_COUNTS) -> ConvertedCheckpoint:
    """Reference SemiVL checkpoint (``best.pth`` dict, its ``model`` entry, with or without ``module.``) → ours."""
    sd, epoch = _unwrap(sd)
    if _is_clip_file(sd):
        raise ValueError("this is the converted CLIP backbone file (clip2mmseg_*.pth: 'backbone.*' + 'proj.weight'), "
                         "not a SemiVL checkpoint; use convert_clip_backbone_state_dict")
    model: StateDict = {}
    guidance: StateDict | None = None
    missing: list[str] = []
    seen: set[str] = set()
    for sec in SECTIONS.values():
        present = [k for k in sd if k.startswith(sec.ref_prefix)]
        if not present and not sec.required:
            continue
        table = expand_rules(sec.rules, counts)
        out, miss = _map_keys(sd, table, 0, 0, sec.ref_prefix, sec.ours_prefix)
        missing += miss
        seen.update(sec.ref_prefix + row[0] for row in table)
        if sec.target == "model":
            model.update(out)
        else:
            guidance = out
    unknown = [k for k in sd if k not in seen]
    if missing or unknown:
        raise _key_error("reference checkpoint keys do not match SemiVL's", missing, unknown,
                         "Expected the state dict of the reference VLM (backbone., decode_head., optional "
                         "clip_encoder. and conv_encoder.)")
    return ConvertedCheckpoint(model, guidance, epoch)


def to_reference_state_dict(model_sd: Mapping[str, Tensor], guidance_sd: Mapping[str, Tensor] | None = None,
                            prefix: str = "", strict: bool = True,
                            counts: Mapping[str, int] = REFERENCE_COUNTS) -> StateDict:
    """Our state dicts → the reference's names, shapes and order (``prefix='module.'`` for a DDP-style dict).

    ``conv_encoder`` is written when ``model_sd`` has it; ``clip_encoder`` when ``guidance_sd`` is given.
    ``strict=False`` ignores keys of ours that have no reference counterpart (e.g. a text tower).
    """
    sources = {"model": dict(model_sd), "guidance": dict(guidance_sd) if guidance_sd is not None else None}
    out: StateDict = {}
    missing: list[str] = []
    seen: set[str] = set()
    for sec in SECTIONS.values():
        sd = sources[sec.target]
        if sd is None or (not sec.required and not any(k.startswith(sec.ours_prefix) for k in sd)):
            continue
        table = expand_rules(sec.rules, counts)
        mapped, miss = _map_keys(sd, table, 1, 1, sec.ours_prefix, prefix + sec.ref_prefix)
        out.update(mapped)
        missing += miss
        seen.update(sec.ours_prefix + row[1] for row in table)
    unknown = [k for sd in sources.values() if sd is not None for k in sd if k not in seen] if strict else []
    if missing or unknown:
        raise _key_error("our state dicts do not match the reference layout", missing, unknown,
                         "Expected the segmentor's state dict (backbone.visual., decoder., optional conv_encoder.) "
                         "and the guidance CLIP as visual.*; pass strict=False to ignore extra keys")
    return out


def convert_clip_backbone_state_dict(sd: Mapping, counts: Mapping[str, int] = REFERENCE_COUNTS) -> StateDict:
    """The reference's converted CLIP file (``{'meta': {}, 'state_dict': {'backbone.*', 'proj.weight'}}``) →
    open_clip ``visual.*`` names (``positional_embedding`` keeps its stored grid, 197 rows for ViT-B/16)."""
    sd, _ = _unwrap(sd)
    if not _is_clip_file(sd):
        raise ValueError("not a converted CLIP backbone file: expected 'backbone.*' keys and an unprefixed "
                         "'proj.weight'; for a SemiVL training checkpoint use convert_reference_state_dict")
    rules = [r if r[0] != "proj.weight" else ("proj.weight", "proj", "proj_linear") for r in _VIT]
    table = expand_rules(rules, counts)
    renamed = {("backbone.proj.weight" if k == "proj.weight" else k): v for k, v in sd.items()}
    out, missing = _map_keys(renamed, table, 0, 0, "backbone.", "visual.")
    unknown = sorted(set(renamed) - {"backbone." + row[0] for row in table})
    if missing or unknown:
        raise _key_error("converted CLIP file keys do not match", missing, unknown,
                         "Expected clip2mmseg_ViT16_clip_backbone.pth from MaskCLIP's convert_clip_weights.py")
    return out


def _read(path: str | os.PathLike, weights_only: bool) -> Mapping:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {os.fspath(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as e:
        raise RuntimeError(f"{os.fspath(path)!r} holds objects other than tensors and plain containers, which "
                           f"torch.load(weights_only=True) refuses ({e}). If you trust the file, pass "
                           "weights_only=False") from e


def load_reference_checkpoint(path: str | os.PathLike, weights_only: bool = True) -> ConvertedCheckpoint:
    """Read a reference SemiVL checkpoint (``best.pth``) on the CPU and convert it."""
    return convert_reference_state_dict(_read(path, weights_only))


def load_clip_backbone_file(path: str | os.PathLike, weights_only: bool = True) -> StateDict:
    """Read the reference's converted CLIP file (``clip2mmseg_ViT16_clip_backbone.pth``) as open_clip ``visual.*``."""
    return convert_clip_backbone_state_dict(_read(path, weights_only))
