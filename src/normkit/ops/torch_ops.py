"""Portable LRN kernels written with plain torch ops (the ``torch`` backend).

Layout: across-channel ops take ``(N, C, *)`` with channels on dim 1;
within-channel ops take ``(N, C, H, W)``. The caller (``functional``) moves
the user's channel dim there. Half-precision inputs are squared, summed and
raised in float32 (x**2 overflows float16 above |x| ~ 256) and the result is
cast back.
"""

from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def window_sum(v: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
    """out[i] = sum_{j=i-before}^{i+after} v[j] along ``dim``, zero padded.

    A direct sum of (before + after + 1) shifted views. A running add/subtract
    or prefix-sum window would cost fewer adds but cancels catastrophically in
    float32 when one entry is 1000x its neighbours (and turns 1e38 into NaN).
    """
    length = v.shape[dim]
    padded_shape = list(v.shape)
    padded_shape[dim] = length + before + after
    padded = v.new_zeros(padded_shape)  # (..., before + L + after, ...)
    padded.narrow(dim, before, length).copy_(v)
    out = padded.narrow(dim, 0, length).clone()
    for offset in range(1, before + after + 1):
        out += padded.narrow(dim, offset, length)
    return out


def _window_dims(x: torch.Tensor, within: bool):
    return (2, 3) if within else (1,)


def _scale(x32: torch.Tensor, back: int, ahead: int, alpha: float, k: float, within: bool):
    """k + alpha * (windowed sum of x^2), in x32's dtype."""
    acc = x32 * x32
    for dim in _window_dims(x32, within):  # the box is separable
        acc = window_sum(acc, back, ahead, dim)
    return acc.mul_(alpha).add_(k)


def lrn_fwd(x: torch.Tensor, back: int, ahead: int, alpha: float, beta: float, k: float,
            within: bool) -> torch.Tensor:
    """y = x * (k + alpha * S)^-beta."""
    x32 = x.to(compute_dtype(x.dtype))  # no copy for float32/float64
    scale = _scale(x32, back, ahead, alpha, k, within)  # like x, compute dtype
    y = x32 * scale.pow_(-beta)
    return y.to(x.dtype)


def lrn_bwd(x: torch.Tensor, dy: torch.Tensor, back: int, ahead: int, alpha: float,
            beta: float, k: float, within: bool) -> torch.Tensor:
    """dx = dy s^-beta - 2 alpha beta x * W^T(dy x s^(-beta-1)); s recomputed from x."""
    cdt = compute_dtype(x.dtype)
    x32 = x.to(cdt)
    dy32 = dy.to(cdt)
    scale = _scale(x32, back, ahead, alpha, k, within)  # like x
    scale_pow = scale.pow(-beta)  # s^-beta
    t = dy32 * x32 * scale_pow / scale  # dy x s^(-beta-1)
    for dim in _window_dims(x32, within):  # adjoint window: mirrored (ahead before, back after)
        t = window_sum(t, ahead, back, dim)
    dx = dy32 * scale_pow - (2.0 * alpha * beta) * x32 * t
    return dx.to(x.dtype)
