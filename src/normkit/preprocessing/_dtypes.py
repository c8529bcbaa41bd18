"""The one dtype policy of the scalers, for NumPy arrays, torch tensors and files.

A floating input keeps its dtype; anything else (int, uint, bool) becomes the
library's default float: float64 for NumPy (as scikit-learn) and
``torch.get_default_dtype()`` for torch. Arithmetic inside the module twins
runs in float32, or float64 for float64 input, so fp16/bf16 do not lose the
statistics' precision on the way.
"""

from __future__ import annotations

import numpy as np


def output_dtype(dtype):
    """The dtype a scaler returns for input of ``dtype`` (NumPy or torch dtype).

    Args:
        dtype: a ``np.dtype`` (or anything ``np.dtype`` accepts) or a ``torch.dtype``.

    Returns:
        ``dtype`` itself when it is floating, else float64 (NumPy) or torch's default dtype.

    Example::

        >>> output_dtype(np.dtype(np.int32))
        dtype('float64')
    """
    if type(dtype).__module__ == "torch":
        import torch

        return dtype if dtype.is_floating_point else torch.get_default_dtype()
    dtype = np.dtype(dtype)
    return dtype if dtype.kind == "f" else np.dtype(np.float64)


def compute_dtype(dtype):
    """The torch dtype the module twins compute in: float64 stays, the rest use float32."""
    import torch

    return torch.float64 if dtype == torch.float64 else torch.float32
