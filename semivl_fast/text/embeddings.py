"""CLIP text embeddings of a class set: encode once, cache to disk as safetensors, load on later calls.

Modes (see ``ClassSet.rows``):

- ``"single"``: one row per class name.
- ``"max"``: one row per concept; a class's score is the max over its concepts' similarities, taken after the
  similarity (``TextEmbeddings.aggregate`` / ``semivl_fast.ops.concept_max``). Used by the guidance CLIP.
- ``"avg"``: one row per class, the L2-renormalised mean of its concepts' un-normalised embeddings (the
  reference's "conceptavg").

Several templates are ensembled per text: normalise each template's embedding, average, renormalise
(``semivl_fast.ops.ensemble_text``). For ``"avg"`` a concept's un-normalised embedding over T templates is its
template-ensembled unit direction times the mean raw norm of its T embeddings; with one template that is exactly
the raw embedding, so the reference's conceptavg is reproduced, and each concept keeps the weight (its raw norm)
the reference gives it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from semivl_fast import files
from semivl_fast.clip import create_clip, get_tokenizer, pretrained_identity
from semivl_fast.ops.cost_volume import concept_max, ensemble_text
from semivl_fast.text.classes import ClassSet, load_class_set, normalize_mode
from semivl_fast.text.templates import fill_template, get_templates

CACHE_FORMAT = 2  # bump when the cached content or its key changes meaning (2: QuickGELU for OpenAI tags)


@dataclass
class TextEmbeddings:
    """Unit-norm text rows and the class each row scores.

    embeddings (R, C) float32 unit rows (templates already ensembled); groups (R,) int64 class index of each row;
    R = num_classes for modes "single" and "avg", the number of concepts for "max".
    """

    embeddings: Tensor
    groups: Tensor
    num_classes: int
    mode: str
    texts: tuple[str, ...] = ()
    key: str = ""
    classes: tuple[str, ...] = ()  # class names in label order

    @classmethod
    def from_rows(cls, rows: Tensor, class_set: ClassSet | str | Sequence[str], mode: str = "single") -> TextEmbeddings:
        """Wrap precomputed rows (e.g. a reference ``.npy`` as a tensor) for ``class_set`` in ``mode``; renormalised."""
        class_set, mode = load_class_set(class_set), normalize_mode(mode)
        texts, groups = class_set.rows(mode)
        if mode == "avg":
            texts, groups = list(class_set.classes), torch.arange(class_set.num_classes, dtype=torch.int64)
        rows = torch.as_tensor(rows)
        if rows.dim() != 2 or rows.shape[0] != len(texts):
            raise ValueError(f"text embedding rows must be ({len(texts)}, C) for class set {class_set.name!r} in mode "
                             f"{mode!r}, got {tuple(rows.shape)}")
        return cls(F.normalize(rows.float(), dim=-1), groups, class_set.num_classes, mode, tuple(texts),
                   classes=class_set.classes)

    @property
    def num_rows(self) -> int:
        return self.embeddings.shape[0]

    def to(self, device: torch.device | str) -> TextEmbeddings:
        """A copy with the tensors on ``device``."""
        return TextEmbeddings(self.embeddings.to(device), self.groups.to(device), self.num_classes, self.mode,
                              self.texts, self.key, self.classes)

    def aggregate(self, scores: Tensor) -> Tensor:
        """(B, R, H, W) per-row scores -> (B, num_classes, H, W): the concept max in mode "max", else unchanged."""
        if self.mode != "max":
            return scores
        return concept_max(scores, self.groups, self.num_classes)


def default_cache_dir() -> Path:
    """``$SEMIVL_FAST_CACHE/text`` if that variable is set, else ``~/.cache/semivl_fast/text``."""
    return files.cache_dir("text")


@torch.no_grad()
def encode_texts(clip_model: nn.Module, tokenizer: Any, texts: Sequence[str], templates: str | Sequence[str],
                 batch_size: int = 256) -> Tensor:
    """Raw ``encode_text`` output (len(texts), T, C) float32 on CPU for every text in every template.

    The model runs in eval mode on its own device; its previous train/eval mode is restored afterwards.
    """
    templates = get_templates(templates)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prompts = [fill_template(t, text) for text in texts for t in templates]
    param = next(iter(clip_model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = clip_model.training
    clip_model.eval()
    try:
        out = [clip_model.encode_text(tokenizer(prompts[i:i + batch_size]).to(device)).float().cpu()
               for i in range(0, len(prompts), batch_size)]
    finally:
        clip_model.train(was_training)
    if not out:
        raise ValueError("encode_texts: no texts to encode")
    return torch.cat(out).view(len(texts), len(templates), -1)


def combine_rows(raw: Tensor, groups: Tensor, num_classes: int, mode: str) -> Tensor:
    """(N, T, C) raw embeddings of ``ClassSet.rows(mode)`` -> (R, C) unit rows (templates ensembled, see module doc)."""
    mode = normalize_mode(mode)
    if mode != "avg":
        return ensemble_text(raw)
    direction = ensemble_text(raw)                            # (N, C) template-ensembled unit vectors
    norm = raw.norm(dim=-1).mean(dim=1, keepdim=True)         # (N, 1) mean raw norm: = the raw vector when T = 1
    weighted = direction * norm
    summed = weighted.new_zeros(num_classes, raw.shape[-1]).index_add_(0, groups.to(raw.device), weighted)
    counts = torch.bincount(groups.cpu(), minlength=num_classes).clamp_min(1).to(raw)
    return F.normalize(summed / counts[:, None], dim=-1)


def cache_key(class_set: ClassSet, model_name: str, pretrained: str | None, templates: Sequence[str],
              mode: str) -> str:
    """sha256 of everything the embeddings depend on: model + weights identity, classes, concepts, templates, mode."""
    mode = normalize_mode(mode)
    texts, groups = class_set.rows(mode)
    parts = {"format": CACHE_FORMAT, "model": model_name, "weights": pretrained_identity(pretrained), "mode": mode,
             "classes": list(class_set.classes), "texts": texts, "groups": groups.tolist(),
             "templates": list(get_templates(templates))}
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def cache_path(cache_dir: str | os.PathLike, model_name: str, mode: str, key: str) -> Path:
    """Where the embeddings for ``key`` live: ``<cache_dir>/<model>-<mode>-<key[:32]>.safetensors``."""
    safe_model = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name)
    return Path(cache_dir) / f"{safe_model}-{mode}-{key[:32]}.safetensors"


def _load_cached(path: Path, key: str, mode: str, num_classes: int) -> TextEmbeddings | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            emb, groups = f.get_tensor("embeddings"), f.get_tensor("groups")
        if meta.get("key") != key or emb.dim() != 2 or groups.shape != (emb.shape[0],):
            raise ValueError("key or shapes do not match")
        return TextEmbeddings(emb.float(), groups.long(), num_classes, mode, tuple(json.loads(meta["texts"])), key)
    except Exception as e:  # a corrupt or foreign file: rebuild and overwrite it
        warnings.warn(f"ignoring unreadable text embedding cache {path} ({e}); rebuilding it", stacklevel=3)
        return None


def _save_cached(path: Path, te: TextEmbeddings, meta: dict[str, str]) -> None:
    tensors = {"embeddings": te.embeddings.contiguous(), "groups": te.groups.contiguous()}
    files.atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def build_text_embeddings(class_set: ClassSet | str | Sequence[str], *, model_name: str, pretrained: str | None,
                          templates: str | Sequence[str] = "single", mode: str = "single",
                          clip_model: nn.Module | None = None, tokenizer: Any = None,
                          cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                          device: torch.device | str | None = None, batch_size: int = 256) -> TextEmbeddings:
    """Text embeddings of ``class_set``, from the disk cache or computed once and cached.

    ``model_name``/``pretrained`` identify the CLIP weights (``pretrained``: an open_clip tag or a checkpoint file)
    and form the cache key together with the class rows, templates and mode. Pass an already-built ``clip_model``
    (and ``tokenizer``) with those weights to avoid building CLIP twice; otherwise one is built with ``create_clip``
    only on a cache miss (on ``device``, default CPU). ``pretrained=None`` means random weights: nothing is cached.
    ``cache_dir`` defaults to ``default_cache_dir()``.
    """
    class_set = load_class_set(class_set)
    templates = get_templates(templates)
    mode = normalize_mode(mode)
    texts, groups = class_set.rows(mode)
    key = cache_key(class_set, model_name, pretrained, templates, mode)
    use_cache = use_cache and bool(pretrained)
    path = cache_path(cache_dir if cache_dir is not None else default_cache_dir(), model_name, mode, key)
    if use_cache and path.is_file():
        cached = _load_cached(path, key, mode, class_set.num_classes)
        if cached is not None:
            cached.classes = class_set.classes
            return cached

    if clip_model is None:
        clip_model = create_clip(model_name, pretrained)
        if device is not None:
            clip_model = clip_model.to(device)
    if tokenizer is None:
        tokenizer = get_tokenizer(model_name)
    raw = encode_texts(clip_model, tokenizer, texts, templates, batch_size=batch_size)
    rows = combine_rows(raw, groups, class_set.num_classes, mode)
    row_groups = torch.arange(class_set.num_classes, dtype=torch.int64) if mode == "avg" else groups
    row_texts = class_set.classes if mode == "avg" else tuple(texts)
    te = TextEmbeddings(rows.contiguous(), row_groups, class_set.num_classes, mode, tuple(row_texts), key,
                        class_set.classes)
    if use_cache:
        meta = {"key": key, "format": str(CACHE_FORMAT), "model": model_name,
                "weights": pretrained_identity(pretrained), "mode": mode, "class_set": class_set.name,
                "num_classes": str(class_set.num_classes),
                "templates": json.dumps(list(templates), ensure_ascii=False),
                "texts": json.dumps(list(row_texts), ensure_ascii=False)}
        _save_cached(path, te, meta)
    return te
