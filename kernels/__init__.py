"""Triton kernels (installed as ``semivl_fast.kernels``); one module per op, named after it.

Self-contained: nothing here imports the rest of ``semivl_fast``. The op layer (``semivl_fast.ops.<op>``) allocates
every output (poisoned under test) and passes it in with whatever else a launcher needs.

Set ``TRITON_INTERPRET=1`` before importing this package to run the kernels on CPU tensors (tests do).
"""

import os

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Operand dtypes of the tensor-core (tl.dot) kernels, with their names in AOT signatures.
DOT_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def fp32_precision() -> str:
    """``tl.dot`` input precision for float32 operands: "tf32" unless ``SEMIVL_FAST_TF32=0`` ("ieee")."""
    return "ieee" if os.environ.get("SEMIVL_FAST_TF32", "1").strip() == "0" else "tf32"
