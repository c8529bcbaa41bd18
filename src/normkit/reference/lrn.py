r"""Local Response Normalization in float64 NumPy, forward and backward.

Canonical form (see :mod:`normkit.conventions`)::

    s_c = k + alpha * S_c,     S_c = sum_{j = c-B}^{c+A} x_j^2      (zeros outside [0, C-1])
    y_c = x_c * s_c^(-beta)

``alpha`` is the coefficient of the sum (the framework's alpha already divided
by its divisor D). Within a channel the window is the spatial box
``[h-B, h+A] x [w-B, w+A]`` instead.

Backward, by the chain rule (``j`` is the input channel, ``c`` the output)::

    dy_c/dx_j = [j == c] s_c^(-beta) - 2 alpha beta x_c x_j s_c^(-beta-1) [j in W(c)]

    dx_j = dy_j s_j^(-beta) - 2 alpha beta x_j * sum_{c : j in W(c)} dy_c x_c s_c^(-beta-1)

and ``j in W(c) = [c-B, c+A]``  <=>  ``c in [j-A, j+B]``: the adjoint sum uses
the mirrored window (A before, B after). The same holds per spatial axis for
the within-channel box.
"""

from __future__ import annotations

import numpy as np

from ..conventions import CanonicalLRN

__all__ = ["window_sum", "lrn_forward", "lrn_backward"]


def window_sum(v: np.ndarray, before: int, after: int, axis: int) -> np.ndarray:
    """out[i] = sum_{j=i-before}^{i+after} v[j] along ``axis``, zero padded.

    A direct sum of (before + after + 1) shifted copies: no running sum, so no
    cancellation when one entry is much larger than its neighbours.
    """
    v = np.asarray(v, dtype=np.float64)
    axis = axis % v.ndim
    length = v.shape[axis]
    pad = [(0, 0)] * v.ndim
    pad[axis] = (before, after)
    padded = np.pad(v, pad)  # (..., before + L + after, ...)
    out = np.zeros_like(v)
    for offset in range(before + after + 1):
        index = [slice(None)] * v.ndim
        index[axis] = slice(offset, offset + length)
        out += padded[tuple(index)]
    return out


def _window_axes(spec: CanonicalLRN, ndim: int, channel_axis: int):
    if spec.region == "across":
        return [channel_axis % ndim]
    # within: the two trailing spatial axes of (N, C, H, W) after the channel axis moved
    spatial = [a for a in range(ndim) if a not in (0, channel_axis % ndim)]
    if len(spatial) != 2:
        raise ValueError(f"within-channel LRN needs a 4-D input, got {ndim}-D")
    return spatial


def _box_sum(v, spec, axes, mirrored):
    before, after = (spec.ahead, spec.back) if mirrored else (spec.back, spec.ahead)
    for axis in axes:  # the box is separable: sum along each axis in turn
        v = window_sum(v, before, after, axis)
    return v


def lrn_forward(x, spec: CanonicalLRN, channel_axis: int = 1) -> np.ndarray:
    """y = x * (k + alpha * S)^-beta in float64 (S = windowed sum of x^2)."""
    x = np.asarray(x, dtype=np.float64)
    axes = _window_axes(spec, x.ndim, channel_axis)
    scale = spec.k + spec.alpha * _box_sum(x * x, spec, axes, mirrored=False)  # like x
    return x * scale ** (-spec.beta)


def lrn_backward(x, dy, spec: CanonicalLRN, channel_axis: int = 1) -> np.ndarray:
    """dL/dx given dL/dy, recomputing the scale from x (see module docstring)."""
    x = np.asarray(x, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    axes = _window_axes(spec, x.ndim, channel_axis)
    scale = spec.k + spec.alpha * _box_sum(x * x, spec, axes, mirrored=False)  # like x
    t = dy * x * scale ** (-spec.beta - 1.0)  # like x
    adjoint = _box_sum(t, spec, axes, mirrored=True)  # like x
    return dy * scale ** (-spec.beta) - 2.0 * spec.alpha * spec.beta * x * adjoint
