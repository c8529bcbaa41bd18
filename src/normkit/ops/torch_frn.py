r"""Filter Response Normalization + TLU with plain torch ops (the ``torch`` backend).

Op contract (shared by every backend): ``x`` is (N, C, L) (L = H * W), ``weight``,
``bias``, ``tau`` and ``eps`` are (C,) tensors (the caller fills absent ones with 1, 0,
-inf and the float eps), statistics and parameter gradients are in the compute dtype
(float32 for float16/bfloat16/float32, float64 for float64)::

    frn_fwd(x, weight, bias, tau, eps)         -> (y, rstd (N, C))
    frn_bwd(dy, x, rstd, weight, bias, tau)    -> (dx, dweight, dbias, dtau, deps), each (C,)

The math and its derivation are in :mod:`normkit.reference.frn`.
"""

from __future__ import annotations

import torch

from .schema import implements

__all__ = ["frn_fwd", "frn_bwd", "compute_dtype"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _col(t: torch.Tensor, cdt) -> torch.Tensor:
    return t.to(cdt).view(1, -1, 1)


@implements("frn_fwd", "torch")
def frn_fwd(x: torch.Tensor, weight, bias, tau, eps):
    """y = max(weight x rstd + bias, tau), rstd = 1/sqrt(<x^2>_L + eps); returns (y, rstd)."""
    cdt = compute_dtype(x.dtype)
    xc = x.to(cdt)
    rstd = (xc * xc).mean(2, keepdim=True).add_(_col(eps, cdt)).rsqrt_()  # (N, C, 1)
    z = xc * (rstd * _col(weight, cdt)) + _col(bias, cdt)
    y = torch.maximum(z, _col(tau, cdt))
    return y.to(x.dtype), rstd.view(x.shape[0], x.shape[1])


@implements("frn_bwd", "torch")
def frn_bwd(dy: torch.Tensor, x: torch.Tensor, rstd, weight, bias, tau):
    """(dx, dweight, dbias, dtau, deps), the reference's formulas with torch ops."""
    cdt = rstd.dtype
    xc = x.to(cdt)
    r = rstd.view(x.shape[0], x.shape[1], 1)
    x_hat = xc * r
    w = _col(weight, cdt)
    z = xc * (r * w) + _col(bias, cdt)  # the forward's expression: the same TLU mask
    mask = z > _col(tau, cdt)
    dyc = dy.to(cdt)
    dz = torch.where(mask, dyc, 0.0)
    dtau = (dyc - dz).sum((0, 2))
    dbias = dz.sum((0, 2))
    dweight = (dz * x_hat).sum((0, 2))
    g = dz * w
    s = (g * x_hat).sum(2, keepdim=True)  # (N, C, 1)
    length = max(x.shape[2], 1)
    dx = r * (g - x_hat * (s / length))
    deps = (-0.5 * r * r * s).sum((0, 2))
    return dx.to(x.dtype), dweight, dbias, dtau, deps
