"""The ``cpu`` backend: fused numba kernels for CPU tensors.

Importing this package raises ``ImportError`` when numba is missing; ``dispatch``
then keeps the torch fallback only. Kernels are serial ``nogil`` functions over
chunks run on a small fork-safe thread pool (see :mod:`._pool` for why not
numba's ``parallel=True``).
"""

from __future__ import annotations

from typing import Optional

import numba  # noqa: F401  (ImportError here disables the backend)
import torch

from . import frn, fused, lrn, norms  # noqa: F401  (importing registers the kernels)

__all__ = ["why_not", "OPS"]

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def why_not(x: torch.Tensor) -> Optional[str]:
    """None when the numba kernels can run on ``x``, else the reason they cannot."""
    if not isinstance(x, torch.Tensor):
        return f"expected a torch.Tensor, got {type(x).__name__}"
    if x.device.type != "cpu":
        return f"the cpu backend needs a CPU tensor, got device {x.device}"
    if x.dtype not in _DTYPES:
        return f"the cpu backend supports float16/bfloat16/float32/float64, got {x.dtype}"
    if x.is_sparse or x.layout != torch.strided:
        return f"the cpu backend needs a dense strided tensor, got layout {x.layout}"
    return None


def __getattr__(name):
    if name == "OPS":  # {op: fn} of this backend, as registered through the op schema
        from ..schema import implementations

        return implementations("cpu")
    raise AttributeError(name)
