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


# --- batch / layer / group / RMS norm -------------------------------------------------
#
# Layouts (the caller, ``functional``, reshapes the user's tensor): layer and RMS
# norm take rows (M, D); group and batch norm take (N, C, L). Statistics are
# returned in the compute dtype (float32, or float64 for float64 input).


def moments(x: torch.Tensor, dims) -> tuple:
    """Mean and biased variance over ``dims`` (kept), two passes in the compute dtype.

    The second pass sums squared deviations from the mean: E[x^2] - E[x]^2 in
    float32 is 3% wrong at |mean|/std = 1e3 and noise at 1e4. Clamped at 0.
    """
    x32 = x.to(compute_dtype(x.dtype))
    mean = x32.mean(dim=dims, keepdim=True)
    centred = x32 - mean
    # corrected two-pass (Chan, Golub & LeVeque): the rounding error of the first mean
    # comes back as the small mean of the deviations; adding it makes the mean nearly
    # correctly rounded, and subtracting its square is harmless (it is tiny)
    delta = centred.mean(dim=dims, keepdim=True)
    var = ((centred * centred).mean(dim=dims, keepdim=True) - delta * delta).clamp_min_(0.0)
    return mean + delta, var


def _to(t, dtype):
    return None if t is None else t.to(dtype)


def _finish_affine(x_hat: torch.Tensor, weight, bias, shape) -> torch.Tensor:
    """x_hat * weight + bias with weight/bias viewed as ``shape``, in x_hat's dtype."""
    if weight is not None:
        x_hat = x_hat * weight.to(x_hat.dtype).view(shape)
    if bias is not None:
        x_hat = x_hat + bias.to(x_hat.dtype).view(shape)
    return x_hat


def layer_norm_fwd(x: torch.Tensor, weight, bias, eps: float):
    """y = (x - mean) rstd * weight + bias per row; returns (y, mean, rstd), stats (M,)."""
    mean, var = moments(x, (1,))  # (M, 1)
    rstd = torch.rsqrt(var + eps)
    x_hat = (x.to(mean.dtype) - mean) * rstd  # (M, D)
    y = _finish_affine(x_hat, weight, bias, (1, -1))
    return y.to(x.dtype), mean.view(-1), rstd.view(-1)


def _row_dx(x_hat, g, rstd, centre: bool):
    """rstd * (g - <g> - x_hat <g x_hat>) over dim 1 (no <g> without centring)."""
    proj = (g * x_hat).mean(dim=1, keepdim=True)
    dx = g - x_hat * proj
    if centre:
        dx = dx - g.mean(dim=1, keepdim=True)
    return dx * rstd


def layer_norm_bwd(dy: torch.Tensor, x: torch.Tensor, mean, rstd, weight):
    """dx = rstd (g - <g> - x_hat <g x_hat>), g = dy * weight; dweight, dbias column sums."""
    cdt = mean.dtype
    x_hat = (x.to(cdt) - mean.view(-1, 1)) * rstd.view(-1, 1)  # (M, D)
    dy32 = dy.to(cdt)
    g = dy32 if weight is None else dy32 * weight.to(cdt).view(1, -1)
    dx = _row_dx(x_hat, g, rstd.view(-1, 1), centre=True)
    pdt = x.dtype if weight is None else weight.dtype
    dweight = None if weight is None else (dy32 * x_hat).sum(0).to(pdt)
    dbias = dy32.sum(0).to(pdt)
    return dx.to(x.dtype), dweight, dbias


def rms_norm_fwd(x: torch.Tensor, weight, eps: float):
    """y = x rstd * weight, rstd = 1/sqrt(<x^2> + eps) per row; returns (y, rstd)."""
    x32 = x.to(compute_dtype(x.dtype))
    rstd = torch.rsqrt((x32 * x32).mean(dim=1, keepdim=True) + eps)  # (M, 1)
    y = _finish_affine(x32 * rstd, weight, None, (1, -1))
    return y.to(x.dtype), rstd.view(-1)


def rms_norm_bwd(dy: torch.Tensor, x: torch.Tensor, rstd, weight):
    """dx = rstd (g - x_hat <g x_hat>), x_hat = x rstd, g = dy * weight."""
    cdt = rstd.dtype
    x_hat = x.to(cdt) * rstd.view(-1, 1)
    dy32 = dy.to(cdt)
    g = dy32 if weight is None else dy32 * weight.to(cdt).view(1, -1)
    dx = _row_dx(x_hat, g, rstd.view(-1, 1), centre=False)
    dweight = None if weight is None else (dy32 * x_hat).sum(0).to(weight.dtype)
    return dx.to(x.dtype), dweight


def group_norm_fwd(x: torch.Tensor, weight, bias, num_groups: int, eps: float):
    """Statistics per (sample, group) over C/G channels x L; returns (y, mean, rstd), (N, G)."""
    n, c, length = x.shape
    xg = x.reshape(n, num_groups, (c // num_groups) * length)
    mean, var = moments(xg, (2,))  # (N, G, 1)
    rstd = torch.rsqrt(var + eps)
    x_hat = ((xg.to(mean.dtype) - mean) * rstd).view(n, c, length)
    y = _finish_affine(x_hat, weight, bias, (1, -1, 1))
    return y.to(x.dtype), mean.view(n, num_groups), rstd.view(n, num_groups)


def group_norm_bwd(dy: torch.Tensor, x: torch.Tensor, mean, rstd, weight, num_groups: int):
    """dx = rstd (g - <g> - x_hat <g x_hat>) per group; dweight, dbias summed over (N, L)."""
    n, c, length = x.shape
    cdt = mean.dtype
    xg = x.reshape(n, num_groups, -1).to(cdt)
    rstd3 = rstd.view(n, num_groups, 1)
    x_hat = ((xg - mean.view(n, num_groups, 1)) * rstd3).view(n, c, length)
    dy32 = dy.to(cdt)
    g = dy32 if weight is None else dy32 * weight.to(cdt).view(1, -1, 1)
    gg = g.reshape(n, num_groups, -1)
    x_hat_g = x_hat.view(n, num_groups, -1)
    dx = (gg - gg.mean(2, keepdim=True)
          - x_hat_g * (gg * x_hat_g).mean(2, keepdim=True)) * rstd3
    pdt = x.dtype if weight is None else weight.dtype
    dweight = None if weight is None else (dy32 * x_hat).sum((0, 2)).to(pdt)
    dbias = dy32.sum((0, 2)).to(pdt)
    return dx.view(n, c, length).to(x.dtype), dweight, dbias


def batch_norm_stats(x: torch.Tensor):
    """Per-channel mean and biased variance of (N, C, L) over (N, L), shape (C,) each."""
    mean, var = moments(x, (0, 2))
    return mean.view(-1), var.view(-1)


def batch_norm_apply(x: torch.Tensor, mean, rstd, weight, bias) -> torch.Tensor:
    """y = (x - mean) rstd * weight + bias per channel of (N, C, L).

    Kept as (x - mean) * scale rather than x * scale + shift: folding the mean
    into the shift cancels catastrophically when |mean| >> std.
    """
    cdt = mean.dtype
    x_hat = (x.to(cdt) - mean.view(1, -1, 1)) * rstd.to(cdt).view(1, -1, 1)
    return _finish_affine(x_hat, weight, bias, (1, -1, 1)).to(x.dtype)


def batch_norm_bwd_reduce(dy: torch.Tensor, x: torch.Tensor, mean, rstd):
    """(sum_dy, sum_dy_xhat) per channel over (N, L)."""
    cdt = mean.dtype
    dy32 = dy.to(cdt)
    x_hat = (x.to(cdt) - mean.view(1, -1, 1)) * rstd.to(cdt).view(1, -1, 1)
    return dy32.sum((0, 2)), (dy32 * x_hat).sum((0, 2))


def batch_norm_bwd_apply(dy: torch.Tensor, x: torch.Tensor, mean, rstd, weight, sum_dy,
                         sum_dy_xhat, count) -> torch.Tensor:
    """dx = weight rstd (dy - sum_dy / count - x_hat sum_dy_xhat / count).

    ``count`` is the number of values per channel over every process; with
    zero sums this is the evaluation-mode gradient dy * weight * rstd.
    """
    cdt = mean.dtype
    rstd3 = rstd.to(cdt).view(1, -1, 1)
    x_hat = (x.to(cdt) - mean.view(1, -1, 1)) * rstd3
    inv = 1.0 / max(float(count), 1.0)
    dx = (dy.to(cdt) - (sum_dy.to(cdt) * inv).view(1, -1, 1)
          - x_hat * (sum_dy_xhat.to(cdt) * inv).view(1, -1, 1))
    scale = rstd3 if weight is None else rstd3 * weight.to(cdt).view(1, -1, 1)
    return (dx * scale).to(x.dtype)
