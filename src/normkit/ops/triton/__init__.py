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

from ._common import INTERPRET, why_not_tensor
from .batch_norm import (batch_norm_apply, batch_norm_bwd_apply, batch_norm_bwd_reduce,
                         batch_norm_stats)
from .lrn import lrn_bwd, lrn_fwd
from .norms import (group_norm_bwd, group_norm_fwd, layer_norm_bwd, layer_norm_fwd, rms_norm_bwd,
                    rms_norm_fwd)

# every op of docs/ops.md, in its table's order
OPS = {
    "lrn_fwd": lrn_fwd,
    "lrn_bwd": lrn_bwd,
    "layer_norm_fwd": layer_norm_fwd,
    "layer_norm_bwd": layer_norm_bwd,
    "rms_norm_fwd": rms_norm_fwd,
    "rms_norm_bwd": rms_norm_bwd,
    "group_norm_fwd": group_norm_fwd,
    "group_norm_bwd": group_norm_bwd,
    "batch_norm_stats": batch_norm_stats,
    "batch_norm_apply": batch_norm_apply,
    "batch_norm_bwd_reduce": batch_norm_bwd_reduce,
    "batch_norm_bwd_apply": batch_norm_bwd_apply,
}

__all__ = ["INTERPRET", "OPS", "register", "why_not_tensor", *OPS]


def register(register_fn) -> None:
    """Register backend ``"triton"`` for every op, gated by :func:`why_not_tensor`."""
    for op, fn in OPS.items():
        register_fn(op, "triton", fn, why_not_tensor)
