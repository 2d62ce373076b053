"""The op layer: every op has a PyTorch reference, kernels (C++ CPU, CUDA C++ / Triton GPU) and one dispatcher."""

from semivl_fast.ops.class_attention import class_attention, class_attention_reference
from semivl_fast.ops.cost_volume import concept_max, cost_volume, cost_volume_reference, ensemble_text
from semivl_fast.ops.pl_loss import box_mask, pseudo_label_loss, pseudo_label_loss_reference
from semivl_fast.ops.pseudo_label import (
    pseudo_label_filter,
    pseudo_label_filter_cpp,
    pseudo_label_filter_reference,
)

__all__ = [
    "box_mask",
    "class_attention",
    "class_attention_reference",
    "concept_max",
    "cost_volume",
    "cost_volume_reference",
    "ensemble_text",
    "pseudo_label_filter",
    "pseudo_label_filter_cpp",
    "pseudo_label_filter_reference",
    "pseudo_label_loss",
    "pseudo_label_loss_reference",
]
