r"""Fused residual-add norms and the modulated (adaLN) LayerNorm in float64 NumPy.

Residual add + norm (pre-norm transformer blocks; Xiong et al. 2020, "On Layer
Normalization in the Transformer Architecture")::

    h = x + residual                          (h = x when residual is None)
    y = norm(h) * weight (+ bias)             norm = RMSNorm or LayerNorm over the last dim

Both ``y`` and ``h`` are outputs. With ``dy`` and ``dh`` the gradients of both, the
chain rule through ``h`` gives one gradient shared by ``x`` and ``residual``::

    dx = dresidual = dh + dnorm(h; dy)

where ``dnorm`` is the normalization's input gradient (see :mod:`.norms`), with
``g = dy * weight`` and ``h_hat`` the normalized ``h``::

    RMSNorm    dnorm = rstd * (g - h_hat <g h_hat>)
    LayerNorm  dnorm = rstd * (g - <g> - h_hat <g h_hat>)
    dweight = sum over rows of dy * h_hat,  dbias = sum over rows of dy

Modulated LayerNorm (DiT's adaLN; Peebles & Xie 2023, "Scalable Diffusion Models
with Transformers"), x of shape (N, T, D), shift and scale (N, D)::

    y = LN(x) * (1 + scale[:, None]) + shift[:, None]       (LN without affine)
    dshift = sum_T dy,  dscale = sum_T dy * x_hat
    dx = rstd * (g - <g> - x_hat <g x_hat>),  g = dy * (1 + scale[:, None])
"""

from __future__ import annotations

import numpy as np

from .norms import normalize_backward, normalize_forward

__all__ = [
    "add_rms_norm_forward",
    "add_rms_norm_backward",
    "add_layer_norm_forward",
    "add_layer_norm_backward",
    "modulated_layer_norm_forward",
    "modulated_layer_norm_backward",
]


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def _add(x, residual):
    x = _f64(x)
    return x.copy() if residual is None else x + _f64(residual)


def _rms_parts(h, eps):
    rstd = 1.0 / np.sqrt((h * h).mean(axis=-1, keepdims=True) + eps)
    return h * rstd, rstd


def add_rms_norm_forward(x, residual, weight=None, eps: float = 1e-6, offset: float = 0.0):
    r"""Residual add then RMSNorm over the last dim: returns ``(y, h)``.

    .. math:: h = x + r, \quad y = \frac{h}{\sqrt{\langle h^2 \rangle + \epsilon}}
              \odot (\text{offset} + w)

    Args:
        x: (*, D) array. residual: like x, or None (h = x).
        weight: (D,) or None (no scale). Default None.
        eps: Default 1e-6. offset: added to weight (Gemma's ``1 + w``). Default 0.0.

    Example::

        >>> y, h = add_rms_norm_forward(np.array([[1., 2.]]), np.array([[2., 2.]]), eps=0.0)
        >>> h, y
        (array([[3., 4.]]), array([[0.84852814, 1.13137085]]))
    """
    h = _add(x, residual)
    h_hat, _ = _rms_parts(h, eps)
    y = h_hat if weight is None else h_hat * (offset + _f64(weight))
    return y, h


def add_rms_norm_backward(x, residual, dy, dh, weight=None, eps: float = 1e-6, offset: float = 0.0):
    """``(dx, dresidual, dweight)``; ``dh`` may be None (no gradient reaches h)."""
    h = _add(x, residual)
    dy = _f64(dy)
    h_hat, rstd = _rms_parts(h, eps)
    g = dy if weight is None else dy * (offset + _f64(weight))
    dsum = rstd * (g - h_hat * (g * h_hat).mean(axis=-1, keepdims=True))
    if dh is not None:
        dsum = dsum + _f64(dh)
    lead = tuple(range(h.ndim - 1))
    dweight = None if weight is None else (dy * h_hat).sum(axis=lead)
    return dsum, (None if residual is None else dsum.copy()), dweight


def add_layer_norm_forward(x, residual, weight=None, bias=None, eps: float = 1e-5):
    r"""Residual add then LayerNorm over the last dim: returns ``(y, h)``.

    .. math:: h = x + r, \quad y = w \odot \frac{h - \mu}{\sqrt{\sigma^2 + \epsilon}} + b

    Example::

        >>> y, h = add_layer_norm_forward(np.array([[1., 2.]]), np.array([[0., 1.]]), eps=0.0)
        >>> y
        array([[-1.,  1.]])
    """
    h = _add(x, residual)
    h_hat, _, _ = normalize_forward(h, (-1,), eps)
    y = h_hat
    if weight is not None:
        y = y * _f64(weight)
    if bias is not None:
        y = y + _f64(bias)
    return y, h


def add_layer_norm_backward(x, residual, dy, dh, weight=None, bias=None, eps: float = 1e-5):
    """``(dx, dresidual, dweight, dbias)``; ``dh`` may be None."""
    h = _add(x, residual)
    dy = _f64(dy)
    h_hat, _, rstd = normalize_forward(h, (-1,), eps)
    g = dy if weight is None else dy * _f64(weight)
    dsum = normalize_backward(h_hat, g, rstd, (-1,))
    if dh is not None:
        dsum = dsum + _f64(dh)
    lead = tuple(range(h.ndim - 1))
    dweight = None if weight is None else (dy * h_hat).sum(axis=lead)
    dbias = None if bias is None else dy.sum(axis=lead)
    return dsum, (None if residual is None else dsum.copy()), dweight, dbias


def modulated_layer_norm_forward(x, shift, scale, eps: float = 1e-6):
    r"""adaLN: LayerNorm (no affine) of x (N, T, D), modulated per sample.

    .. math:: y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} (1 + s_n) + b_n

    Args:
        x: (N, T, D). shift, scale: (N, D). eps: Default 1e-6.

    Example::

        >>> modulated_layer_norm_forward(np.array([[[1., 3.]]]), np.array([[1., 1.]]),
        ...                              np.array([[1., 0.]]), eps=0.0)
        array([[[-1.,  2.]]])
    """
    x_hat, _, _ = normalize_forward(_f64(x), (-1,), eps)
    return x_hat * (1.0 + _f64(scale)[:, None]) + _f64(shift)[:, None]


def modulated_layer_norm_backward(x, shift, scale, dy, eps: float = 1e-6):
    """``(dx, dshift, dscale)`` of :func:`modulated_layer_norm_forward`."""
    dy = _f64(dy)
    x_hat, _, rstd = normalize_forward(_f64(x), (-1,), eps)
    g = dy * (1.0 + _f64(scale)[:, None])
    dx = normalize_backward(x_hat, g, rstd, (-1,))
    return dx, dy.sum(axis=1), (dy * x_hat).sum(axis=1)
