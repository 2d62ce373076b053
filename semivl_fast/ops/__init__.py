"""The op layer: every op has a PyTorch reference, kernels (C++ CPU, CUDA C++ / Triton GPU) and one dispatcher."""

import torch

from semivl_fast.ops import _common
from semivl_fast.ops import class_attention as _ca
from semivl_fast.ops import cost_volume as _cv
from semivl_fast.ops import pl_loss as _pl
from semivl_fast.ops import pseudo_label as _pf
from semivl_fast.ops.class_attention import class_attention, class_attention_reference
from semivl_fast.ops.cost_volume import concept_max, cost_volume, cost_volume_reference, ensemble_text
from semivl_fast.ops.pl_loss import box_mask, pseudo_label_loss, pseudo_label_loss_reference
from semivl_fast.ops.pseudo_label import (
    pseudo_label_filter,
    pseudo_label_filter_cpp,
    pseudo_label_filter_reference,
)


def active_backends(device: torch.device | str) -> dict[str, str]:
    """The face each op runs on ``device`` now (``SEMIVL_FAST_BACKEND*`` and what was built decide)."""
    faces = {_cv.OP: _cv._FACES, _ca.OP: _ca._FACES, _pl.OP: _pl.FACES, _pf.OP: ("cpp", "cuda")}
    return {op: _common.backend(op, torch.device(device), f) for op, f in faces.items()}


__all__ = [
    "active_backends",
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
