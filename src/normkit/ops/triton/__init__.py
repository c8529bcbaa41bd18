"""Triton kernels for every op of docs/ops.md (the ``triton`` backend).

Importing this package raises ImportError when triton is not installed;
:mod:`normkit.dispatch` then keeps the torch fallback only. The kernels run on
CUDA tensors, or on CPU tensors in Triton's interpreter when the environment
had ``TRITON_INTERPRET=1`` at import time (how CI without a GPU exercises them).
Grid, blocking, what is saved and the bytes model of each kernel:
docs/kernels-triton.md.
"""

from __future__ import annotations

import triton  # noqa: F401  -- ImportError here means: no triton backend

from ..schema import implementations as _implementations
from . import batch_norm, frn, fused, lrn, norms  # noqa: F401  (importing registers the kernels)
from ._common import INTERPRET, why_not_tensor

why_not = why_not_tensor  # the gate dispatch applies to every op of this backend
# {op: fn} of this backend, as registered through the op schema (docs/ops.md's table)
OPS = _implementations("triton")
globals().update(OPS)

__all__ = ["INTERPRET", "OPS", "why_not", "why_not_tensor", *OPS]
