"""Portable LRN kernels written with plain torch ops (the ``torch`` backend).

Layout: across-channel ops take ``(N, C, *)`` with channels on dim 1;
within-channel ops take ``(N, C, H, W)``. The caller (``functional``) moves
the user's channel dim there. Half-precision inputs are squared, summed and
raised in float32 (x**2 overflows float16 above |x| ~ 256) and the result is
cast back.
"""

from __future__ import annotations

import torch

from .schema import implements


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


@implements("lrn_fwd", "torch")
def lrn_fwd(
    x: torch.Tensor, back: int, ahead: int, alpha: float, beta: float, k: float, within: bool
) -> torch.Tensor:
    """y = x * (k + alpha * S)^-beta."""
    x32 = x.to(compute_dtype(x.dtype))  # no copy for float32/float64
    scale = _scale(x32, back, ahead, alpha, k, within)  # like x, compute dtype
    y = x32 * scale.pow_(-beta)
    return y.to(x.dtype)


@implements("lrn_bwd", "torch")
def lrn_bwd(
    x: torch.Tensor,
    dy: torch.Tensor,
    back: int,
    ahead: int,
    alpha: float,
    beta: float,
    k: float,
    within: bool,
) -> torch.Tensor:
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


# --- batch / layer / group / RMS norm -------------------------------------------------
#
# Layouts (the caller, ``functional``, reshapes the user's tensor): layer and RMS
# norm take rows (M, D); group and batch norm take (N, C, L). Statistics are
# returned in the compute dtype (float32, or float64 for float64 input). Temporaries
# are updated in place where they are fresh: this fallback is memory-bound.


def _centred_moments(x: torch.Tensor, dims, wide_mean: bool = False) -> tuple:
    """(centred, mean, var) over ``dims`` (kept): the one statistics core.

    Two passes in the compute dtype, never E[x^2] - E[x]^2 (3% wrong in float32
    at |mean|/std = 1e3, noise at 1e4). The first mean's rounding error comes
    back as the small mean of the deviations, delta; subtracting it (Chan, Golub
    & LeVeque's correction) makes the mean nearly correctly rounded. ``centred``
    is a fresh tensor x - mean that callers may overwrite. ``wide_mean``: the mean
    comes back in float64 as mean + delta summed there (BatchNorm's contract).
    """
    x32 = x.to(compute_dtype(x.dtype))
    mean = x32.mean(dim=dims, keepdim=True)
    centred = x32 - mean
    delta = centred.mean(dim=dims, keepdim=True)
    centred.sub_(delta)
    n = max(x32.numel() // max(mean.numel(), 1), 1)
    # sum of squares without a squared temporary; clamp_min guards the empty case only
    var = torch.linalg.vector_norm(centred, 2, dim=dims, keepdim=True).square_().div_(n)
    if wide_mean:
        return centred, mean.double().add_(delta), var.clamp_min_(0.0)
    return centred, mean.add_(delta), var.clamp_min_(0.0)


def moments(x: torch.Tensor, dims) -> tuple:
    """Mean and biased variance over ``dims`` (kept), from :func:`_centred_moments`."""
    _, mean, var = _centred_moments(x, dims)
    return mean, var


def _affine_(t: torch.Tensor, weight, bias, shape) -> torch.Tensor:
    """t * weight + bias in place (t is a fresh compute-dtype tensor)."""
    if weight is not None and bias is not None:  # one pass instead of two
        return torch.addcmul(bias.to(t.dtype).view(shape), t, weight.to(t.dtype).view(shape), out=t)
    if weight is not None:
        t.mul_(weight.to(t.dtype).view(shape))
    if bias is not None:
        t.add_(bias.to(t.dtype).view(shape))
    return t


@implements("layer_norm_fwd", "torch")
def layer_norm_fwd(x: torch.Tensor, weight, bias, eps: float):
    """y = (x - mean) rstd * weight + bias per row; returns (y, mean, rstd), stats (M,)."""
    centred, mean, var = _centred_moments(x, (1,))  # (M, D), (M, 1), (M, 1)
    rstd = var.add_(eps).rsqrt_()
    y = _affine_(centred.mul_(rstd), weight, bias, (1, -1))
    return y.to(x.dtype), mean.view(-1), rstd.view(-1)


def _rows_dx(x_hat: torch.Tensor, g: torch.Tensor, rstd, centre: bool) -> torch.Tensor:
    """rstd * (g - <g> - x_hat <g x_hat>) over dim 1 (no <g> without centring); reuses x_hat."""
    proj = (g * x_hat).mean(dim=1, keepdim=True)
    dx = x_hat.mul_(-proj).add_(g)
    if centre:
        dx.sub_(g.mean(dim=1, keepdim=True))
    return dx.mul_(rstd)


def _grad_dtype(x, weight):
    return x.dtype if weight is None else weight.dtype


@implements("layer_norm_bwd", "torch")
def layer_norm_bwd(dy: torch.Tensor, x: torch.Tensor, mean, rstd, weight):
    """dx = rstd (g - <g> - x_hat <g x_hat>), g = dy * weight; dweight, dbias column sums."""
    cdt = mean.dtype
    rstd2 = rstd.view(-1, 1)
    x_hat = (x.to(cdt) - mean.view(-1, 1)).mul_(rstd2)  # (M, D)
    dy32 = dy.to(cdt)
    dweight = None if weight is None else (dy32 * x_hat).sum(0).to(weight.dtype)
    dbias = dy32.sum(0).to(_grad_dtype(x, weight))
    g = dy32 if weight is None else dy32 * weight.to(cdt).view(1, -1)
    dx = _rows_dx(x_hat, g, rstd2, centre=True)
    return dx.to(x.dtype), dweight, dbias


@implements("rms_norm_fwd", "torch")
def rms_norm_fwd(x: torch.Tensor, weight, eps: float):
    """y = x rstd * weight, rstd = 1/sqrt(<x^2> + eps) per row; returns (y, rstd)."""
    x32 = x.to(compute_dtype(x.dtype))
    d = max(x32.shape[1], 1)
    ms = torch.linalg.vector_norm(x32, 2, dim=1, keepdim=True).square_().div_(d)
    rstd = ms.add_(eps).rsqrt_()  # (M, 1)
    y = _affine_(x32 * rstd, weight, None, (1, -1))
    return y.to(x.dtype), rstd.view(-1)


@implements("rms_norm_bwd", "torch")
def rms_norm_bwd(dy: torch.Tensor, x: torch.Tensor, rstd, weight):
    """dx = rstd (g - x_hat <g x_hat>), x_hat = x rstd, g = dy * weight."""
    cdt = rstd.dtype
    rstd2 = rstd.view(-1, 1)
    x_hat = x.to(cdt) * rstd2
    dy32 = dy.to(cdt)
    dweight = None if weight is None else (dy32 * x_hat).sum(0).to(weight.dtype)
    g = dy32 if weight is None else dy32 * weight.to(cdt).view(1, -1)
    dx = _rows_dx(x_hat, g, rstd2, centre=False)
    return dx.to(x.dtype), dweight


@implements("group_norm_fwd", "torch")
def group_norm_fwd(x: torch.Tensor, weight, bias, num_groups: int, eps: float):
    """Statistics per (sample, group) over C/G channels x L; returns (y, mean, rstd), (N, G)."""
    n, c, length = x.shape
    xg = x.reshape(n, num_groups, (c // num_groups) * length)
    centred, mean, var = _centred_moments(xg, (2,))  # (N, G, C/G * L), (N, G, 1) x2
    rstd = var.add_(eps).rsqrt_()
    x_hat = centred.mul_(rstd).view(n, c, length)
    y = _affine_(x_hat, weight, bias, (1, -1, 1))
    return y.to(x.dtype), mean.view(n, num_groups), rstd.view(n, num_groups)


@implements("group_norm_bwd", "torch")
def group_norm_bwd(dy: torch.Tensor, x: torch.Tensor, mean, rstd, weight, num_groups: int):
    """dx = rstd (g - <g> - x_hat <g x_hat>) per group; dweight, dbias summed over (N, L)."""
    n, c, length = x.shape
    cdt = mean.dtype
    rstd3 = rstd.view(n, num_groups, 1)
    xg = x.reshape(n, num_groups, -1).to(cdt)
    x_hat = (xg - mean.view(n, num_groups, 1)).mul_(rstd3)  # (N, G, C/G * L), fresh
    dy32 = dy.to(cdt)
    dweight = (
        None if weight is None else (dy32 * x_hat.view(n, c, length)).sum((0, 2)).to(weight.dtype)
    )
    dbias = dy32.sum((0, 2)).to(_grad_dtype(x, weight))
    g = dy32 if weight is None else dy32 * weight.to(cdt).view(1, -1, 1)
    gg = g.reshape(n, num_groups, -1)
    proj = (gg * x_hat).mean(2, keepdim=True)
    dx = x_hat.mul_(-proj).add_(gg).sub_(gg.mean(2, keepdim=True)).mul_(rstd3)
    return dx.view(n, c, length).to(x.dtype), dweight, dbias


@implements("batch_norm_stats", "torch")
def batch_norm_stats(x: torch.Tensor):
    """Per-channel mean (float64) and biased variance of (N, C, L) over (N, L), (C,) each."""
    _, mean, var = _centred_moments(x, (0, 2), wide_mean=True)
    return mean.view(-1), var.view(-1)


def _centred_by(x: torch.Tensor, mean) -> torch.Tensor:
    """Fresh x - mean per channel of (N, C, L) in the compute dtype.

    ``mean`` is float64 (the contract): it is split into hi + lo in the compute dtype and
    subtracted as (x - hi) - lo, so a mean of 1e4 loses nothing of x - mean.
    """
    cdt = compute_dtype(x.dtype)
    hi = mean.to(cdt)
    lo = (mean - hi.to(mean.dtype)).to(cdt)
    return (x.to(cdt) - hi.view(1, -1, 1)).sub_(lo.view(1, -1, 1))


@implements("batch_norm_apply", "torch")
def batch_norm_apply(x: torch.Tensor, mean, rstd, weight, bias) -> torch.Tensor:
    """y = (x - mean) (rstd * weight) + bias per channel of (N, C, L).

    Kept as (x - mean) * scale rather than x * scale + shift: folding the mean
    into the shift cancels catastrophically when |mean| >> std.
    """
    cdt = compute_dtype(x.dtype)
    scale = rstd.to(cdt)
    if weight is not None:
        scale = scale * weight.to(cdt)
    y = _centred_by(x, mean).mul_(scale.view(1, -1, 1))
    return _affine_(y, None, bias, (1, -1, 1)).to(x.dtype)


@implements("batch_norm_bwd_reduce", "torch")
def batch_norm_bwd_reduce(dy: torch.Tensor, x: torch.Tensor, mean, rstd):
    """(sum_dy, sum_dy_xhat) per channel over (N, L)."""
    cdt = compute_dtype(x.dtype)
    dy32 = dy.to(cdt)
    # sum dy (x - mean) * rstd: rstd applied to the (C,) sum, not to every element
    sum_dy_xhat = _centred_by(x, mean).mul_(dy32).sum((0, 2)).mul_(rstd.to(cdt))
    return dy32.sum((0, 2)), sum_dy_xhat


@implements("batch_norm_bwd_apply", "torch")
def batch_norm_bwd_apply(
    dy: torch.Tensor, x: torch.Tensor, mean, rstd, weight, sum_dy, sum_dy_xhat, count
) -> torch.Tensor:
    """dx = weight rstd (dy - sum_dy / count - x_hat sum_dy_xhat / count).

    ``count`` is the number of values per channel over every process; with
    zero sums this is the evaluation-mode gradient dy * weight * rstd.
    """
    cdt = compute_dtype(x.dtype)
    rstd = rstd.to(cdt)
    inv = 1.0 / max(float(count), 1.0)
    scale = rstd if weight is None else rstd * weight.to(cdt)  # (C,)
    # dx = scale * (dy - sum_dy/n) - (x - mean) * scale * rstd * sum_dy_xhat / n
    coef = (scale * rstd * sum_dy_xhat.to(cdt) * inv).view(1, -1, 1)
    dx = _centred_by(x, mean).mul_(-coef)
    dx.add_(dy.to(cdt) * scale.view(1, -1, 1))
    dx.sub_((scale * sum_dy.to(cdt) * inv).view(1, -1, 1))
    return dx.to(x.dtype)
