r"""Filter Response Normalization with a Thresholded Linear Unit, and Weight Standardization,
in float64 NumPy, forward and hand-derived backward.

FRN + TLU (Singh & Krishnan, "Filter Response Normalization Layer: Eliminating Batch
Dependence in the Training of Deep Neural Networks", CVPR 2020, eqs. 1-3), per sample n
and channel c over the spatial positions (H, W), ``n = H * W``::

    nu2   = (1/n) sum_{H,W} x^2                  (no centring)
    r     = 1 / sqrt(nu2 + eps)                  (eps > 0 per channel; learned: eps0 + |eps_l|)
    x_hat = x * r
    z     = weight * x_hat + bias
    y     = max(z, tau)                          (TLU)

Backward, with ``m = [z > tau]`` (a tie z == tau sends the gradient to tau; ties have
measure zero) and ``<.>`` the mean over (H, W)::

    dz     = dy * m
    dtau   = sum_{N,H,W} dy * (1 - m)
    dbias  = sum_{N,H,W} dz
    dweight= sum_{N,H,W} dz * x_hat
    g      = dz * weight
    dx     = r * (g - x_hat * <g * x_hat>)       (RMS norm's derivative over (H, W))
    deps   = sum_{N} -0.5 * r^2 * sum_{H,W} g * x_hat

the last from ``d r / d eps = -r^3 / 2`` and ``dL/dr = sum_{H,W} g x``.

Weight Standardization (Qiao et al., "Micro-Batch Training with Batch-Channel
Normalization and Weight Standardization", 2019), in the form of BiT (Kolesnikov et al.,
"Big Transfer (BiT)", ECCV 2020, whose ``StdConv2d`` computes ``(w - m) / sqrt(v + eps)``
with the biased variance ``v``), per output filter o over (in, kh, kw)::

    w_hat[o] = (w[o] - mean(w[o])) / sqrt(var(w[o]) + eps)
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["frn_forward", "frn_backward", "weight_standardize"]


def _per_channel(v, c: int, name: str) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 0:
        v = np.full(c, float(v))
    if v.shape != (c,):
        raise ValueError(
            f"frn reference: {name} must be a scalar or have shape ({c},), got {v.shape}"
        )
    return v


def _prepare(x, weight, bias, tau, eps):
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"frn reference: x must be (N, C, H, W), got shape {x.shape}")
    c = x.shape[1]
    view = (1, c, 1, 1)
    w = _per_channel(1.0 if weight is None else weight, c, "weight").reshape(view)
    b = _per_channel(0.0 if bias is None else bias, c, "bias").reshape(view)
    t = _per_channel(-np.inf if tau is None else tau, c, "tau").reshape(view)
    e = _per_channel(eps, c, "eps").reshape(view)
    return x, w, b, t, e


def frn_forward(x, weight=None, bias=None, tau=None, eps=1e-6) -> Tuple[np.ndarray, np.ndarray]:
    """``(y, r)``: FRN + TLU of (N, C, H, W) and ``r = 1/sqrt(nu2 + eps)`` (N, C).

    ``weight``/``bias``/``tau``/``eps`` are scalars or (C,); None means 1 / 0 / no TLU.
    """
    x, w, b, t, e = _prepare(x, weight, bias, tau, eps)
    nu2 = np.mean(x * x, axis=(2, 3), keepdims=True)
    r = 1.0 / np.sqrt(nu2 + e)
    z = w * (x * r) + b
    return np.maximum(z, t), r[:, :, 0, 0]


def frn_backward(x, dy, weight=None, bias=None, tau=None, eps=1e-6):
    """``(dx, dweight, dbias, dtau, deps)``, the last four (C,) (module docstring)."""
    x, w, b, t, e = _prepare(x, weight, bias, tau, eps)
    dy = np.asarray(dy, dtype=np.float64)
    nu2 = np.mean(x * x, axis=(2, 3), keepdims=True)
    r = 1.0 / np.sqrt(nu2 + e)
    x_hat = x * r
    z = w * x_hat + b
    m = (z > t).astype(np.float64)
    dz = dy * m
    g = dz * w
    gx = np.mean(g * x_hat, axis=(2, 3), keepdims=True)
    dx = r * (g - x_hat * gx)
    axes = (0, 2, 3)
    dweight = np.sum(dz * x_hat, axis=axes)
    dbias = np.sum(dz, axis=axes)
    dtau = np.sum(dy * (1.0 - m), axis=axes)
    deps = np.sum(-0.5 * r * r * np.sum(g * x_hat, axis=(2, 3), keepdims=True), axis=axes)
    return dx, dweight, dbias, dtau, deps


def weight_standardize(w, eps: float = 1e-6) -> np.ndarray:
    """Each ``w[o]`` standardized over all its other axes, biased variance, eps in the sqrt."""
    w = np.asarray(w, dtype=np.float64)
    axes = tuple(range(1, w.ndim))
    mean = np.mean(w, axis=axes, keepdims=True)
    var = np.mean((w - mean) ** 2, axis=axes, keepdims=True)
    return (w - mean) / np.sqrt(var + eps)
