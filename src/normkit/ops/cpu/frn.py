r"""Fused numba kernels for Filter Response Normalization + TLU (the ``cpu`` backend).

Contract and math: :mod:`normkit.ops.torch_frn` and :mod:`normkit.reference.frn`. One
work item is one (sample, channel) plane of L = H * W values, held as a row of a
contiguous (N * C, L) array in the compute dtype (float32, float64 for float64 input).

Forward reads the plane twice (sum of squares, then the affine + TLU). Backward reads
x and dy twice (the two plane sums, then dx) and writes, per plane, its contributions
to dweight, dbias, dtau and deps; the launcher sums those over N in float64 in a fixed
order, so results never depend on the thread count (same scheme as :mod:`.norms`, on
the thread pool of :mod:`._pool`). The plane sums accumulate in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from ..schema import implements
from . import _alloc
from ._pool import parallel_for

__all__ = ["frn_fwd", "frn_bwd"]

FM = {"reassoc", "contract"}


@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM)
def _frn_fwd_kernel(x, w, b, t, e, y, rstd, channels, start, stop):
    # x, y: (P, L), P = N * C; w, b, t, e: (C,) float64; rstd: (P,)
    L = x.shape[1]
    cast = np.empty(4, x.dtype)
    for p in range(start, stop):
        c = p % channels
        xr = x[p]
        yr = y[p]
        ss = 0.0
        for i in range(L):
            v = np.float64(xr[i])
            ss += v * v
        rs = 1.0 / math.sqrt(ss / max(L, 1) + e[c])
        rstd[p] = rs
        # the scale from the stored (rounded) rstd: the backward recomputes the same z
        cast[0] = np.float64(rstd[p]) * w[c]
        cast[1] = b[c]
        cast[2] = t[c]
        scale = cast[0]
        shift = cast[1]
        tau = cast[2]
        for i in range(L):
            z = xr[i] * scale + shift
            yr[i] = z if z > tau else tau


@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM)
def _frn_bwd_kernel(dy, x, rstd, w, b, t, dx, dw_p, db_p, dt_p, de_p, channels, start, stop):
    # dy, x, dx: (P, L); rstd: (P,); w, b, t: (C,) float64; *_p: (P,) float64 partials
    L = x.shape[1]
    cast = np.empty(4, x.dtype)
    for p in range(start, stop):
        c = p % channels
        xr = x[p]
        dyr = dy[p]
        dxr = dx[p]
        rs = np.float64(rstd[p])
        cast[0] = rs
        cast[2] = b[c]
        cast[3] = t[c]
        r_t = cast[0]
        b_t = cast[2]
        tau = cast[3]
        cast[1] = rs * w[c]
        rw = cast[1]  # the forward's scale: the same z, so the same TLU mask
        s_dz = 0.0
        s_dzx = 0.0
        s_dt = 0.0
        for i in range(L):
            xh = xr[i] * r_t
            d = np.float64(dyr[i])
            if xr[i] * rw + b_t > tau:
                s_dz += d
                s_dzx += d * np.float64(xh)
            else:
                s_dt += d
        # s = sum g x_hat = w * sum dz x_hat
        s = w[c] * s_dzx
        cast[0] = rs * s / max(L, 1)
        coef = cast[0]  # r <g x_hat>, so dx = r g - x_hat * coef
        for i in range(L):
            xh = xr[i] * r_t
            if xr[i] * rw + b_t > tau:
                dxr[i] = dyr[i] * rw - xh * coef
            else:
                dxr[i] = -xh * coef
        dw_p[p] = s_dzx
        db_p[p] = s_dz
        dt_p[p] = s_dt
        de_p[p] = -0.5 * rs * rs * s


def _cdt(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _vec64(t, c: int) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).contiguous().reshape(c).numpy()


@implements("frn_fwd", "cpu")
def frn_fwd(x, weight, bias, tau, eps):
    """FRN + TLU of (N, C, L): ``(y, rstd (N, C))``."""
    n, c, length = x.shape
    cdt = _cdt(x.dtype)
    x3 = x.detach().to(cdt).contiguous()
    # y is allocated (N, C, L) and only viewed as (P, L) for the kernel: a returned view
    # would make the autograd output a view (no in-place ops on it)
    y = _alloc.empty_like(x3)
    rstd = torch.empty(n * c, dtype=cdt)
    if x3.numel():
        parallel_for(
            _frn_fwd_kernel,
            n * c,
            (
                x3.view(n * c, length).numpy(),
                _vec64(weight, c),
                _vec64(bias, c),
                _vec64(tau, c),
                _vec64(eps, c),
                y.view(n * c, length).numpy(),
                rstd.numpy(),
                c,
            ),
            min_items=4,
        )
    return (y if y.dtype == x.dtype else y.to(x.dtype)), rstd.reshape(n, c)


@implements("frn_bwd", "cpu")
def frn_bwd(dy, x, rstd, weight, bias, tau):
    """``(dx, dweight, dbias, dtau, deps)``; the last four (C,) in the compute dtype."""
    n, c, length = x.shape
    cdt = _cdt(x.dtype)
    x2 = x.detach().to(cdt).contiguous().reshape(n * c, length)
    dy2 = dy.detach().to(cdt).contiguous().reshape(n * c, length)
    r = rstd.detach().to(cdt).contiguous().reshape(n * c)
    dx = _alloc.empty((n, c, length), cdt)  # (N, C, L), not a view: see frn_fwd
    parts = torch.zeros(4, n * c, dtype=torch.float64)
    if x2.numel():
        pn = parts.numpy()
        parallel_for(
            _frn_bwd_kernel,
            n * c,
            (
                dy2.numpy(),
                x2.numpy(),
                r.numpy(),
                _vec64(weight, c),
                _vec64(bias, c),
                _vec64(tau, c),
                dx.view(n * c, length).numpy(),
                pn[0],
                pn[1],
                pn[2],
                pn[3],
                c,
            ),
            min_items=4,
        )
    sums = parts.view(4, n, c).sum(1)
    # four separate tensors: a custom op's outputs may not alias one another
    dweight, dbias, dtau, deps = (sums[i].to(cdt, copy=True) for i in range(4))
    return (dx if dx.dtype == x.dtype else dx.to(x.dtype)), dweight, dbias, dtau, deps
