"""The module twins: fitted scalers as ``nn.Module`` with their statistics as buffers.

Elementwise over the last dimension; no data-dependent checks, so the modules
trace and export (validate data with the scaler, not the module).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._dtypes import compute_dtype, output_dtype


class _ScalerModule(nn.Module):
    """Elementwise over the last dimension (the features); no data-dependent checks,
    so the module traces and exports (validate data with the scaler, not the module)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}"

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._map(x.to(compute_dtype(x.dtype))).to(output_dtype(x.dtype))


class MinMaxScale(_ScalerModule):
    r"""``y = x * scale + min`` over the last dimension, optionally clipped.

    Args:
        scale: (F,) buffer (``MinMaxScaler.scale_``).
        min: (F,) buffer (``MinMaxScaler.min_``).
        clip: ``(a, b)`` to clamp the output, or ``None`` (default).

    Shape:
        (*, F) -> (*, F)

    Example::

        >>> m = MinMaxScaler().fit(X).to_module(); m(torch.as_tensor(X))
    """

    def __init__(self, scale: torch.Tensor, min: torch.Tensor, clip=None):
        super().__init__(scale.numel())
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("min", min.detach().clone())
        self.clip = clip

    def _map(self, x):
        y = x * self.scale.to(x.dtype) + self.min.to(x.dtype)
        if self.clip is not None:
            y = y.clamp(self.clip[0], self.clip[1])
        return y


class Standardize(_ScalerModule):
    r"""``y = (x - mean) / scale`` over the last dimension.

    Args:
        mean: (F,) buffer; zeros for ``with_mean=False``.
        scale: (F,) buffer; ones for ``with_std=False``.

    Shape:
        (*, F) -> (*, F)

    Example::

        >>> m = StandardScaler().fit(X).to_module(); m(torch.as_tensor(X))
    """

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor):
        super().__init__(mean.numel())
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("scale", scale.detach().clone())

    def _map(self, x):
        return (x - self.mean.to(x.dtype)) / self.scale.to(x.dtype)


class ReciprocalTransform(_ScalerModule):
    """``y = 1 / (1 + x)``. Shape (*, F) -> (*, F). Args: num_features."""

    def _map(self, x):
        return torch.reciprocal(1.0 + x)


class Log10Transform(_ScalerModule):
    """``y = log10(x)``. Shape (*, F) -> (*, F). Args: num_features."""

    def _map(self, x):
        return torch.log10(x)


class ArctanTransform(_ScalerModule):
    """``y = atan(x) * 2 / pi``. Shape (*, F) -> (*, F). Args: num_features."""

    def _map(self, x):
        return torch.atan(x) * (2.0 / math.pi)
