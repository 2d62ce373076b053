"""The op layer: one module per op, each with a PyTorch reference, faces (C++ CPU, CUDA C++ / Triton GPU, library
kernels), one ``select_face`` and one custom op (``semivl_fast::<op>``)."""

import importlib

import torch

from semivl_fast.ops.class_attention import class_attention, class_attention_reference
from semivl_fast.ops.cost_volume import concept_max, cost_volume, cost_volume_reference, ensemble_text
from semivl_fast.ops.pseudo_label_loss import box_mask, pseudo_label_loss, pseudo_label_loss_reference

OPS = ("cost_volume", "class_attention", "pseudo_label_loss")


def active_backends(device: torch.device | str) -> dict[str, str]:
    """The face each op runs on ``device`` now, for float32 inputs within the kernels' shape limits
    (``SEMIVL_FAST_BACKEND*`` and what was built decide)."""
    device = torch.device(device)
    # import_module: the package attribute of each name is the op function, which shadows its module
    return {op: importlib.import_module(f"{__name__}.{op}").select_face(device) for op in OPS}


__all__ = [
    "OPS",
    "active_backends",
    "box_mask",
    "class_attention",
    "class_attention_reference",
    "concept_max",
    "cost_volume",
    "cost_volume_reference",
    "ensemble_text",
    "pseudo_label_loss",
    "pseudo_label_loss_reference",
]
