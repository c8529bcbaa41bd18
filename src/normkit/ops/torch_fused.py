"""Portable torch fallback of the fused residual-add norms and the modulated LayerNorm.

Layouts: the add-norms take (*, D) tensors (rows over the last dim); the modulated
LayerNorm takes x (N, T, D) with shift/scale (N, D). Arithmetic in the compute dtype
(float32, or float64 for float64 input); ``h`` is returned in its own dtype
(``normkit.ops.schema.h_dtype``), ``y`` in x's. Statistics are returned flat, (M,) or (N, T).
Formulas: :mod:`normkit.reference.fused`.
"""

from __future__ import annotations

import torch

from . import schema as _schema
from .schema import implements
from .torch_ops import _centred_moments, compute_dtype

__all__ = [
    "add_rms_norm_fwd",
    "add_rms_norm_bwd",
    "add_layer_norm_fwd",
    "add_layer_norm_bwd",
    "modulated_layer_norm_fwd",
    "modulated_layer_norm_bwd",
]


def _sum(x, residual, cdt):
    h = x.to(cdt, copy=True)
    if residual is not None:
        h.add_(residual.to(cdt))
    return h


def _add_norm_fwd(x, residual, weight, bias, eps, residual_in_fp32, rms):
    hdt = _schema.h_dtype(dict(x=x, residual=residual, residual_in_fp32=residual_in_fp32))
    cdt = compute_dtype(hdt)
    h = _sum(x, residual, cdt)  # (*, D), compute dtype
    d = max(h.shape[-1], 1)
    if rms:
        ms = torch.linalg.vector_norm(h, 2, dim=-1, keepdim=True).square_().div_(d)
        rstd = ms.add_(eps).rsqrt_()
        y = h * rstd
        mean = None
    else:
        centred, mean, var = _centred_moments(h, (-1,))
        rstd = var.add_(eps).rsqrt_()
        y = centred.mul_(rstd)
    if weight is not None:
        y.mul_(weight.to(cdt))
    if bias is not None:
        y.add_(bias.to(cdt))
    lead = h.shape[:-1]
    stats = (rstd.reshape(lead),) if rms else (mean.reshape(lead), rstd.reshape(lead))
    return (y.to(x.dtype), h.to(hdt)) + stats


@implements("add_rms_norm_fwd", "torch")
def add_rms_norm_fwd(x, residual, weight, eps: float, residual_in_fp32: bool):
    """(y, h, rstd): h = x + residual, y = h rstd weight, rstd = 1/sqrt(<h^2> + eps)."""
    return _add_norm_fwd(x, residual, weight, None, eps, residual_in_fp32, True)


@implements("add_layer_norm_fwd", "torch")
def add_layer_norm_fwd(x, residual, weight, bias, eps: float, residual_in_fp32: bool):
    """(y, h, mean, rstd): h = x + residual, y = (h - mean) rstd weight + bias."""
    return _add_norm_fwd(x, residual, weight, bias, eps, residual_in_fp32, False)


def _add_norm_bwd(dy, dh, h, mean, rstd, weight, rms):
    cdt = rstd.dtype
    d = max(h.shape[-1], 1)
    rs = rstd.unsqueeze(-1)
    h_hat = h.to(cdt, copy=True)
    if not rms:
        h_hat.sub_(mean.unsqueeze(-1))
    h_hat.mul_(rs)
    dy32 = dy.to(cdt)
    lead = tuple(range(h.dim() - 1))
    dweight = None if weight is None else (dy32 * h_hat).sum(lead).to(weight.dtype)
    dbias = dy32.sum(lead)
    g = dy32 if weight is None else dy32 * weight.to(cdt)
    proj = (g * h_hat).sum(-1, keepdim=True).div_(d)
    dsum = h_hat.mul_(-proj).add_(g)
    if not rms:
        dsum.sub_(g.sum(-1, keepdim=True).div_(d))
    dsum.mul_(rs)
    if dh is not None:
        dsum.add_(dh.to(cdt))
    return dsum.to(h.dtype), dweight, dbias


@implements("add_rms_norm_bwd", "torch")
def add_rms_norm_bwd(dy, dh, h, rstd, weight):
    """(dsum, dweight): dsum = dh + rstd (g - h_hat <g h_hat>) is dx = dresidual."""
    dsum, dweight, _ = _add_norm_bwd(dy, dh, h, None, rstd, weight, True)
    return dsum, dweight


@implements("add_layer_norm_bwd", "torch")
def add_layer_norm_bwd(dy, dh, h, mean, rstd, weight):
    """(dsum, dweight, dbias): dsum = dh + rstd (g - <g> - h_hat <g h_hat>)."""
    dsum, dweight, dbias = _add_norm_bwd(dy, dh, h, mean, rstd, weight, False)
    return dsum, dweight, dbias.to(h.dtype if weight is None else weight.dtype)


@implements("modulated_layer_norm_fwd", "torch")
def modulated_layer_norm_fwd(x, shift, scale, eps: float):
    """(y, mean, rstd): y = LN(x) (1 + scale) + shift per sample; x (N, T, D), stats (N, T)."""
    cdt = compute_dtype(x.dtype)
    centred, mean, var = _centred_moments(x.to(cdt), (-1,))
    rstd = var.add_(eps).rsqrt_()
    y = torch.addcmul(
        shift.to(cdt).unsqueeze(1), centred.mul_(rstd), scale.to(cdt).unsqueeze(1) + 1.0
    )
    return y.to(x.dtype), mean.squeeze(-1), rstd.squeeze(-1)


@implements("modulated_layer_norm_bwd", "torch")
def modulated_layer_norm_bwd(dy, x, mean, rstd, scale):
    """(dx, dshift, dscale): dshift = sum_T dy, dscale = sum_T dy x_hat,
    dx = rstd (g - <g> - x_hat <g x_hat>), g = dy (1 + scale)."""
    cdt = rstd.dtype
    d = max(x.shape[-1], 1)
    rs = rstd.unsqueeze(-1)
    x_hat = (x.to(cdt) - mean.unsqueeze(-1)).mul_(rs)
    dy32 = dy.to(cdt)
    dshift = dy32.sum(1)
    dscale = (dy32 * x_hat).sum(1)
    g = dy32 * (scale.to(cdt).unsqueeze(1) + 1.0)
    proj = (g * x_hat).sum(-1, keepdim=True).div_(d)
    dx = x_hat.mul_(-proj).add_(g).sub_(g.sum(-1, keepdim=True).div_(d)).mul_(rs)
    # shift and scale come from one projection: both gradients in scale's dtype
    return dx.to(x.dtype), dshift.to(scale.dtype), dscale.to(scale.dtype)
