"""Triton kernels (installed as ``semivl_fast.kernels``).

Set ``TRITON_INTERPRET=1`` before importing this package to run the kernels on CPU tensors (tests do).
"""

import os

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
