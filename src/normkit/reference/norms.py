r"""Batch, layer, group, instance and RMS normalization in float64 NumPy, forward and backward.

Every layer here is the same computation over a different set of axes ``R``
(the *reduction set*; ``n = |R|`` elements per statistic)::

    mean  = (1/n) sum_R x
    var   = (1/n) sum_R (x - mean)^2          (biased; two passes, never E[x^2] - E[x]^2)
    rstd  = 1 / sqrt(var + eps)
    x_hat = (x - mean) * rstd
    y     = weight * x_hat + bias             (weight, bias broadcast along the affine axes)

=========== ============================ ==========================
layer       reduction set R              weight / bias shape
=========== ============================ ==========================
batch norm  N and every spatial axis     (C,)
layer norm  trailing ``normalized_shape`` ``normalized_shape``
group norm  C/G channels x spatial       (C,)
instance    spatial (group norm, G = C)  (C,)
=========== ============================ ==========================

Backward. With ``g = dy * weight`` and ``<.>`` the mean over ``R``, the
derivative of ``x_hat_i = (x_i - mean) rstd`` is
``d x_hat_i / d x_j = rstd ([i == j] - 1/n - x_hat_i x_hat_j / n)``, so::

    dx      = rstd * (g - <g> - x_hat * <g * x_hat>)
    dweight = sum over non-affine axes of dy * x_hat
    dbias   = sum over non-affine axes of dy

RMS norm drops the centring: ``rstd = 1 / sqrt(<x^2> + eps)``, ``x_hat = x * rstd``
and ``d x_hat_i / d x_j = rstd ([i == j] - x_hat_i x_hat_j / n)``, so::

    dx = rstd * (g - x_hat * <g * x_hat>)

BatchNorm in evaluation uses constant running statistics, so ``dx = dy * weight * rstd``.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "moments",
    "normalize_forward",
    "normalize_backward",
    "batch_norm_forward",
    "batch_norm_backward",
    "batch_norm_eval_forward",
    "running_stats_update",
    "layer_norm_forward",
    "layer_norm_backward",
    "group_norm_forward",
    "group_norm_backward",
    "instance_norm_forward",
    "instance_norm_backward",
    "rms_norm_forward",
    "rms_norm_backward",
]


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def moments(x, axes: Tuple[int, ...]) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and biased variance over ``axes`` by two passes (kept dims), variance >= 0."""
    x = _f64(x)
    mean = x.mean(axis=axes, keepdims=True)  # like x, 1 on axes
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)  # like mean
    return mean, np.maximum(var, 0.0)


def normalize_forward(x, axes, eps: float):
    """x_hat, mean, rstd of the normalization over ``axes`` (stats keep dims)."""
    mean, var = moments(x, tuple(axes))
    rstd = 1.0 / np.sqrt(var + eps)  # like mean
    return (_f64(x) - mean) * rstd, mean, rstd


def normalize_backward(x_hat, g, rstd, axes) -> np.ndarray:
    """dx = rstd * (g - <g> - x_hat <g x_hat>), means over ``axes`` (g = dy * weight)."""
    axes = tuple(axes)
    return rstd * (
        g - g.mean(axis=axes, keepdims=True) - x_hat * (g * x_hat).mean(axis=axes, keepdims=True)
    )


def _channel_view(v, ndim: int) -> np.ndarray:
    """(C,) -> (1, C, 1, ..., 1) for an (N, C, *) tensor of rank ``ndim``."""
    return np.asarray(v, dtype=np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def _affine(x_hat, weight, bias, view):
    y = x_hat
    if weight is not None:
        y = y * view(weight)
    if bias is not None:
        y = y + view(bias)
    return y


def _param_grads(dy, x_hat, weight, bias, sum_axes, shape):
    dweight = None if weight is None else (dy * x_hat).sum(axis=sum_axes).reshape(shape)
    dbias = None if bias is None else dy.sum(axis=sum_axes).reshape(shape)
    return dweight, dbias


# --- batch norm ------------------------------------------------------------------------


def _bn_axes(ndim: int) -> Tuple[int, ...]:
    return (0,) + tuple(range(2, ndim))


def batch_norm_forward(x, weight=None, bias=None, eps: float = 1e-5):
    r"""Training-mode batch norm: statistics per channel over N and every spatial axis.

    .. math:: y = \gamma_c \frac{x - \mu_c}{\sqrt{\sigma^2_c + \epsilon}} + \beta_c,
              \quad \mu_c, \sigma^2_c \text{ over } (N, *)

    Args:
        x: (N, C, *) array.
        weight, bias: (C,) or None. Default None.
        eps: added to the variance. Default 1e-5.

    Returns:
        ``(y, mean, var)`` with ``mean``/``var`` (biased) of shape (C,).

    Example::

        >>> y, mean, var = batch_norm_forward(np.arange(6.).reshape(3, 2))
        >>> mean, var
        (array([2., 3.]), array([2.66666667, 2.66666667]))
    """
    x = _f64(x)
    axes = _bn_axes(x.ndim)
    x_hat, mean, rstd = normalize_forward(x, axes, eps)  # like x; (1, C, 1..)
    view = lambda v: _channel_view(v, x.ndim)  # noqa: E731
    _, var = moments(x, axes)  # the exact variance, not recovered from rstd
    return _affine(x_hat, _f64(weight), _f64(bias), view), mean.reshape(-1), var.reshape(-1)


def batch_norm_backward(x, dy, weight=None, bias=None, eps: float = 1e-5):
    """(dx, dweight, dbias) of training-mode batch norm (see module docstring)."""
    x, dy, weight, bias = _f64(x), _f64(dy), _f64(weight), _f64(bias)
    axes = _bn_axes(x.ndim)
    x_hat, _, rstd = normalize_forward(x, axes, eps)
    g = dy if weight is None else dy * _channel_view(weight, x.ndim)
    dx = normalize_backward(x_hat, g, rstd, axes)
    dweight, dbias = _param_grads(dy, x_hat, weight, bias, axes, (-1,))
    return dx, dweight, dbias


def batch_norm_eval_forward(
    x, running_mean, running_var, weight=None, bias=None, eps: float = 1e-5
):
    """Evaluation-mode batch norm: y = weight (x - running_mean) / sqrt(running_var + eps) + bias.

    Its backward is ``dx = dy * weight / sqrt(running_var + eps)``.
    """
    x = _f64(x)
    view = lambda v: _channel_view(v, x.ndim)  # noqa: E731
    x_hat = (x - view(running_mean)) / np.sqrt(view(running_var) + eps)
    return _affine(x_hat, _f64(weight), _f64(bias), view)


def running_stats_update(
    running_mean,
    running_var,
    mean,
    var,
    count: int,
    momentum: Optional[float],
    num_batches_tracked: int,
):
    r"""torch's running-statistics rule, returning the new (running_mean, running_var).

    .. math::
        \hat\mu \leftarrow (1 - m) \hat\mu + m \mu, \quad
        \hat\sigma^2 \leftarrow (1 - m) \hat\sigma^2 + m \sigma^2 \frac{n}{n - 1}

    ``n`` is the number of values per channel (the stored variance is the
    unbiased one); ``m = momentum``, or ``1 / num_batches_tracked`` (counted
    after this batch) when ``momentum`` is None: a cumulative average.
    """
    m = 1.0 / num_batches_tracked if momentum is None else momentum
    unbiased = _f64(var) * count / (count - 1)
    return (
        (1 - m) * _f64(running_mean) + m * _f64(mean),
        (1 - m) * _f64(running_var) + m * unbiased,
    )


# --- layer norm ------------------------------------------------------------------------


def _trailing_axes(ndim: int, normalized_shape: Sequence[int]) -> Tuple[int, ...]:
    k = len(tuple(normalized_shape))
    return tuple(range(ndim - k, ndim))


def layer_norm_forward(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    r"""Layer norm over the trailing ``normalized_shape`` axes.

    .. math:: y = \gamma \odot \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

    Args:
        x: (*, *normalized_shape) array.
        normalized_shape: the trailing shape normalized together.
        weight, bias: arrays of shape ``normalized_shape`` or None. Default None.
        eps: Default 1e-5.

    Returns:
        ``(y, mean, rstd)``; ``mean`` and ``rstd`` have x's leading shape.

    Example::

        >>> y, mean, rstd = layer_norm_forward(np.array([[1., 3.]]), (2,), eps=0.0)
        >>> y
        array([[-1.,  1.]])
    """
    x = _f64(x)
    axes = _trailing_axes(x.ndim, normalized_shape)
    x_hat, mean, rstd = normalize_forward(x, axes, eps)
    lead = x.shape[: x.ndim - len(axes)]
    y = _affine(x_hat, _f64(weight), _f64(bias), lambda v: v)
    return y, mean.reshape(lead), rstd.reshape(lead)


def layer_norm_backward(x, dy, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    """(dx, dweight, dbias) of layer norm (see module docstring)."""
    x, dy, weight, bias = _f64(x), _f64(dy), _f64(weight), _f64(bias)
    axes = _trailing_axes(x.ndim, normalized_shape)
    x_hat, _, rstd = normalize_forward(x, axes, eps)
    g = dy if weight is None else dy * weight
    dx = normalize_backward(x_hat, g, rstd, axes)
    lead_axes = tuple(range(x.ndim - len(axes)))
    dweight, dbias = _param_grads(dy, x_hat, weight, bias, lead_axes, tuple(normalized_shape))
    return dx, dweight, dbias


# --- group norm / instance norm --------------------------------------------------------


def _grouped(x, num_groups: int):
    n, c = x.shape[:2]
    if c % num_groups:
        raise ValueError(
            f"GroupNorm: num_channels ({c}) must be divisible by num_groups ({num_groups})"
        )
    return x.reshape(n, num_groups, -1)  # (N, G, C/G * spatial)


def group_norm_forward(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5):
    r"""Group norm: statistics per sample over C/G channels and every spatial axis.

    .. math:: y_{n,c} = \gamma_c \frac{x_{n,c} - \mu_{n,g(c)}}
              {\sqrt{\sigma^2_{n,g(c)} + \epsilon}} + \beta_c

    Args:
        x: (N, C, *) array.
        num_groups: G, dividing C. G = 1 is layer norm over (C, *) with a
            per-channel affine; G = C is instance norm.
        weight, bias: (C,) or None. Default None.
        eps: Default 1e-5.

    Returns:
        ``(y, mean, rstd)`` with ``mean``/``rstd`` of shape (N, G).

    Example::

        >>> y, mean, rstd = group_norm_forward(np.arange(8.).reshape(1, 4, 2), 2)
        >>> mean
        array([[1.5, 5.5]])
    """
    x = _f64(x)
    xg = _grouped(x, num_groups)  # (N, G, L)
    x_hat, mean, rstd = normalize_forward(xg, (2,), eps)
    view = lambda v: _channel_view(v, x.ndim)  # noqa: E731
    y = _affine(x_hat.reshape(x.shape), _f64(weight), _f64(bias), view)
    return y, mean[..., 0], rstd[..., 0]


def group_norm_backward(x, dy, num_groups: int, weight=None, bias=None, eps: float = 1e-5):
    """(dx, dweight, dbias) of group norm (see module docstring)."""
    x, dy, weight, bias = _f64(x), _f64(dy), _f64(weight), _f64(bias)
    xg = _grouped(x, num_groups)
    x_hat, _, rstd = normalize_forward(xg, (2,), eps)  # (N, G, L)
    g = dy if weight is None else dy * _channel_view(weight, x.ndim)
    dx = normalize_backward(x_hat, _grouped(g, num_groups), rstd, (2,)).reshape(x.shape)
    dweight, dbias = _param_grads(dy, x_hat.reshape(x.shape), weight, bias, _bn_axes(x.ndim), (-1,))
    return dx, dweight, dbias


def instance_norm_forward(x, weight=None, bias=None, eps: float = 1e-5):
    """Instance norm = group norm with one group per channel; returns (y, mean, rstd) (N, C)."""
    x = _f64(x)
    return group_norm_forward(x, x.shape[1], weight, bias, eps)


def instance_norm_backward(x, dy, weight=None, bias=None, eps: float = 1e-5):
    """(dx, dweight, dbias) of instance norm."""
    x = _f64(x)
    return group_norm_backward(x, dy, x.shape[1], weight, bias, eps)


# --- RMS norm --------------------------------------------------------------------------


def rms_norm_forward(x, normalized_shape, weight=None, eps: float = 1e-6):
    r"""RMS norm over the trailing ``normalized_shape`` axes: layer norm without centring.

    .. math:: y = \gamma \odot \frac{x}{\sqrt{\langle x^2 \rangle + \epsilon}}

    Args:
        x: (*, *normalized_shape) array.
        normalized_shape: trailing shape.
        weight: array of shape ``normalized_shape`` or None. Default None.
        eps: Default 1e-6 (torch's default is the machine epsilon of the
            compute dtype; pass it explicitly to compare).

    Returns:
        ``(y, rstd)``; ``rstd`` has x's leading shape.

    Example::

        >>> y, rstd = rms_norm_forward(np.array([[3., 4.]]), (2,), eps=0.0)
        >>> rstd   # 1 / sqrt((9 + 16) / 2)
        array([0.28284271])
    """
    x = _f64(x)
    axes = _trailing_axes(x.ndim, normalized_shape)
    rstd = 1.0 / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
    y = x * rstd
    if weight is not None:
        y = y * _f64(weight)
    lead = x.shape[: x.ndim - len(axes)]
    return y, rstd.reshape(lead)


def rms_norm_backward(x, dy, normalized_shape, weight=None, eps: float = 1e-6):
    """(dx, dweight) of RMS norm: dx = rstd (g - x_hat <g x_hat>), g = dy * weight."""
    x, dy, weight = _f64(x), _f64(dy), _f64(weight)
    axes = _trailing_axes(x.ndim, normalized_shape)
    rstd = 1.0 / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
    x_hat = x * rstd
    g = dy if weight is None else dy * weight
    dx = rstd * (g - x_hat * (g * x_hat).mean(axis=axes, keepdims=True))
    lead_axes = tuple(range(x.ndim - len(axes)))
    dweight = None if weight is None else (dy * x_hat).sum(axis=lead_axes)
    return dx, dweight
