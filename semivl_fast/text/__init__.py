"""Text guidance: class sets (names + per-class concepts), prompt templates, and cached CLIP text embeddings."""

from semivl_fast.text.classes import (
    BUILTIN_CLASS_SETS,
    MODES,
    ClassSet,
    class_set_from_dict,
    load_class_set,
    normalize_mode,
)
from semivl_fast.text.embeddings import (
    TextEmbeddings,
    build_text_embeddings,
    cache_key,
    combine_rows,
    default_cache_dir,
    encode_texts,
)
from semivl_fast.text.templates import IMAGENET80, SINGLE, TEMPLATE_SETS, fill_template, get_templates

__all__ = [
    "BUILTIN_CLASS_SETS",
    "IMAGENET80",
    "MODES",
    "SINGLE",
    "TEMPLATE_SETS",
    "ClassSet",
    "TextEmbeddings",
    "build_text_embeddings",
    "cache_key",
    "class_set_from_dict",
    "combine_rows",
    "default_cache_dir",
    "encode_texts",
    "fill_template",
    "get_templates",
    "load_class_set",
    "normalize_mode",
]
