"""The op layer: every op has a PyTorch reference, kernels (C++ CPU, CUDA C++ / Triton GPU) and one dispatcher."""

from semivl_fast.ops.cost_volume import concept_max, cost_volume, cost_volume_reference, ensemble_text
from semivl_fast.ops.pseudo_label import (
    pseudo_label_filter,
    pseudo_label_filter_cpp,
    pseudo_label_filter_reference,
)

__all__ = [
    "concept_max",
    "cost_volume",
    "cost_volume_reference",
    "ensemble_text",
    "pseudo_label_filter",
    "pseudo_label_filter_cpp",
    "pseudo_label_filter_reference",
]
