r"""Fused numba kernels: residual add + RMSNorm/LayerNorm, and the modulated LayerNorm.

Math: :mod:`normkit.reference.fused`. Per row of D features the add-norm forward
reads x and the residual once, writes ``h = x + residual`` and, while the row is in
cache, its statistics and ``y``: one read of each input, one write of each output.
The backward is :mod:`.norms`' LayerNorm/RMSNorm backward with ``dh`` (when a gradient
reaches h) added: it reads ``dy``, ``dh`` and ``h`` and writes ``dx`` (= ``dresidual``)
once, weight/bias gradients through per-chunk partial buffers reduced in a fixed order
(bitwise identical for any thread count). Each kernel streams its outputs to memory in
the same pass as its reads and finishes them in cache. :mod:`.norms`' numerics (one
pass of shifted sums fused with the add, a two-pass fallback for an outlier shift, the
mean kept as a hi + lo pair, arithmetic in float32 for float16/bfloat16/float32;
docs/norms.md) carry over.

float16/bfloat16 inputs are converted to float32 before the kernel and the outputs
converted back (numba has no 16-bit float arithmetic): exact, at the cost of those
conversion passes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from .. import schema as _schema
from ..schema import implements
from . import _alloc
from ._pool import parallel_for
from .norms import (
    _ROWS_PER_CHUNK,
    FM,
    SUM_BLOCK,
    _cdt,
    _in,
    _needs_two_pass,
    _normalize_row,
    _np,
    _out,
    _row_recentre,
    _row_stats,
    _rowwise_bwd,
    _split,
    _vec,
)

__all__ = [
    "add_rms_norm_fwd",
    "add_rms_norm_bwd",
    "add_layer_norm_fwd",
    "add_layer_norm_bwd",
    "modulated_layer_norm_fwd",
    "modulated_layer_norm_bwd",
]


@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM, inline="always")
def _add_sums(xr, rr, hr, yr, s):
    # hr = yr = xr + rr (rr empty: xr) and the float64 shifted sums of hr (sum d, sum d^2,
    # d = hr - s), float32 inside SUM_BLOCK blocks: the add and the statistics in one pass.
    # yr gets a copy of the row so that this pass, not the normalizing one, streams both
    # outputs to memory (the second pass then works on yr in cache): with all four
    # streams in one loop the forward ran 5-8% faster than writing yr only in the second
    D = xr.shape[0]
    s1 = 0.0
    s2 = 0.0
    for j0 in range(0, D, SUM_BLOCK):
        b1 = s - s
        b2 = s - s
        if rr.shape[0] > 0:
            for i in range(j0, min(D, j0 + SUM_BLOCK)):
                v = xr[i] + rr[i]
                hr[i] = v
                yr[i] = v
                d = v - s
                b1 += d
                b2 += d * d
        else:
            for i in range(j0, min(D, j0 + SUM_BLOCK)):
                v = xr[i]
                hr[i] = v
                yr[i] = v
                d = v - s
                b1 += d
                b2 += d * d
        s1 += np.float64(b1)
        s2 += np.float64(b2)
    return s1, s2


@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM)
def _add_norm_fwd_kernel(x, r, w, b, y, h, mean, rstd, eps, rms, start, stop):
    # x, y, h: (M, D); r: (M, D) or (0, D) when absent; w, b: (D,) or (0,); mean, rstd: (M,)
    # One pass writes h (and a copy in y) and its statistics (RMSNorm: shift 0 and only
    # sum h^2; LayerNorm: shifted sums, docs/norms.md), a second, over y's row still in
    # cache, normalizes it in place.
    M, D = x.shape
    has_r = r.shape[0] > 0
    has_w = w.shape[0] > 0
    has_b = b.shape[0] > 0
    cast = np.empty(3, x.dtype)
    for row in range(start, stop):
        xr = x[row]
        hr = h[row]
        yr = y[row]
        rr = r[row] if has_r else xr[:0]  # empty: no residual
        if rms:
            cast[0] = 0.0  # shift 0 (not xr[0] - xr[0]: NaN for an infinite xr[0])
            s = cast[0]
            _, v = _add_sums(xr, rr, hr, yr, s)
            m = 0.0
            m_hi = s
            m_lo = s
        else:
            s = xr[0] + rr[0] if has_r else xr[0]
            s1, s2 = _add_sums(xr, rr, hr, yr, s)
            m = np.float64(s) + s1 / D
            m_hi, m_lo = _split(m, cast)
            if _needs_two_pass(s1, s2, D):
                m, m_hi, m_lo, v = _row_recentre(hr, m, m_hi, m_lo, cast)
            else:
                v = s2 - s1 * s1 / D
        rs = 1.0 / math.sqrt(max(v / D, 0.0) + eps)
        mean[row] = m
        rstd[row] = rs
        cast[2] = rs
        rs_t = cast[2]
        _normalize_row(yr, yr, m_hi, m_lo, rs_t, w, b, has_w, has_b)


@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM)
def _mod_ln_fwd_kernel(x, shift, scale, y, mean, rstd, eps, start, stop):
    # x, y: (N * T, D) rows; shift, scale: (N, D); mean, rstd: (N * T,); T = rows // N
    M, D = x.shape
    T = M // shift.shape[0]
    cast = np.empty(3, x.dtype)
    for row in range(start, stop):
        n = row // T
        xr = x[row]
        yr = y[row]
        sh = shift[n]
        sc = scale[n]
        m, m_hi, m_lo, v = _row_stats(xr, yr, cast)  # y streams out with the sums
        rs = 1.0 / math.sqrt(max(v / D, 0.0) + eps)
        mean[row] = m
        rstd[row] = rs
        cast[2] = rs
        rs_t = cast[2]
        for i in range(D):
            yr[i] = ((yr[i] - m_hi) - m_lo) * (rs_t * (sc[i] + 1)) + sh[i]


@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM)
def _mod_ln_bwd_kernel(
    dy,
    x,
    mean,
    rstd,
    scale,
    dx,
    dshift_part,
    dscale_part,
    chunks_per_n,
    rows_per_chunk,
    start,
    stop,
):
    # dy, x, dx: (N * T, D); scale: (N, D); work item = (sample n, chunk of its T rows);
    # dshift_part, dscale_part: (N * chunks_per_n, D)
    M, D = x.shape
    N = scale.shape[0]
    T = M // N
    cast = np.empty(5, x.dtype)
    for item in range(start, stop):
        n = item // chunks_per_n
        c = item % chunks_per_n
        sc = scale[n]
        dsp = dshift_part[item]
        dcp = dscale_part[item]
        for i in range(D):
            dsp[i] = 0.0
            dcp[i] = 0.0
        for t in range(c * rows_per_chunk, min(T, (c + 1) * rows_per_chunk)):
            row = n * T + t
            xr = x[row]
            dyr = dy[row]
            dxr = dx[row]
            m = np.float64(mean[row])
            cast[0] = m
            cast[1] = m - np.float64(cast[0])
            cast[2] = rstd[row]
            m_hi = cast[0]
            m_lo = cast[1]
            rs = cast[2]
            sum_g = rs - rs
            sum_gx = rs - rs
            for i in range(D):
                g = dyr[i]
                xh = ((xr[i] - m_hi) - m_lo) * rs
                dsp[i] += g
                dcp[i] += g * xh
                gw = g * (sc[i] + 1)
                sum_g += gw
                sum_gx += gw * xh
            cast[3] = np.float64(sum_g) / D
            cast[4] = np.float64(sum_gx) / D
            c_g = cast[3]
            c_gx = cast[4]
            for i in range(D):
                xh = ((xr[i] - m_hi) - m_lo) * rs
                dxr[i] = rs * (dyr[i] * (sc[i] + 1) - c_g - xh * c_gx)


# --- launchers ---------------------------------------------------------------------------


def _rows(t: torch.Tensor, cdt, d: int) -> torch.Tensor:
    return _in(t, cdt).reshape(-1, d)


def _add_norm_fwd(x, residual, weight, bias, eps, residual_in_fp32, rms):
    hdt = _schema.h_dtype(dict(x=x, residual=residual, residual_in_fp32=residual_in_fp32))
    cdt = _cdt(hdt)
    d = x.shape[-1]
    x2 = _rows(x, cdt, d)
    m = x2.shape[0]
    r2 = _rows(residual, cdt, d) if residual is not None else x2[:0]
    h = _alloc.empty(tuple(x.shape), cdt)
    y = _alloc.empty(tuple(x.shape), cdt)
    mean = torch.empty(m, dtype=cdt)
    rstd = torch.empty(m, dtype=cdt)
    if x2.numel():
        parallel_for(
            _add_norm_fwd_kernel,
            m,
            (
                _np(x2),
                _np(r2),
                _vec(weight, d, "weight", cdt),
                _vec(bias, d, "bias", cdt),
                _np(y.view(-1, d)),
                _np(h.view(-1, d)),
                _np(mean),
                _np(rstd),
                float(eps),
                rms,
            ),
            min_items=8,
        )
    lead = x.shape[:-1]
    out = (_out(y, x.dtype), _out(h, hdt))
    return out + ((rstd.view(lead),) if rms else (mean.view(lead), rstd.view(lead)))


@implements("add_rms_norm_fwd", "cpu")
def add_rms_norm_fwd(x, residual, weight, eps, residual_in_fp32):
    """``(y, h, rstd)`` of h = x + residual, y = RMSNorm(h) * weight; x: (*, D)."""
    return _add_norm_fwd(x, residual, weight, None, eps, residual_in_fp32, True)


@implements("add_layer_norm_fwd", "cpu")
def add_layer_norm_fwd(x, residual, weight, bias, eps, residual_in_fp32):
    """``(y, h, mean, rstd)`` of h = x + residual, y = LayerNorm(h) * weight + bias."""
    return _add_norm_fwd(x, residual, weight, bias, eps, residual_in_fp32, False)


@implements("add_rms_norm_bwd", "cpu")
def add_rms_norm_bwd(dy, dh, h, rstd, weight):
    """``(dsum, dweight)``: dsum = dh + RMSNorm input gradient = dx = dresidual."""
    dsum, dweight, _ = _rowwise_bwd(dy, h, None, rstd, weight, True, dh=dh)
    return dsum, dweight


@implements("add_layer_norm_bwd", "cpu")
def add_layer_norm_bwd(dy, dh, h, mean, rstd, weight):
    """``(dsum, dweight, dbias)`` of the fused residual add + LayerNorm."""
    return _rowwise_bwd(dy, h, mean, rstd, weight, False, dh=dh)


@implements("modulated_layer_norm_fwd", "cpu")
def modulated_layer_norm_fwd(x, shift, scale, eps):
    """``(y, mean, rstd)`` of y = LN(x) (1 + scale) + shift; x (N, T, D), stats (N, T)."""
    cdt = _cdt(x.dtype)
    n, t, d = x.shape
    x2 = _rows(x, cdt, d)
    y = _alloc.empty(tuple(x.shape), cdt)
    mean = torch.empty(n, t, dtype=cdt)
    rstd = torch.empty(n, t, dtype=cdt)
    if x2.numel():
        parallel_for(
            _mod_ln_fwd_kernel,
            n * t,
            (
                _np(x2),
                _np(_in(shift, cdt)),
                _np(_in(scale, cdt)),
                _np(y.view(-1, d)),
                _np(mean).reshape(-1),
                _np(rstd).reshape(-1),
                float(eps),
            ),
            min_items=8,
        )
    return _out(y, x.dtype), mean, rstd


@implements("modulated_layer_norm_bwd", "cpu")
def modulated_layer_norm_bwd(dy, x, mean, rstd, scale):
    """``(dx, dshift, dscale)``; dshift/dscale (N, D) in scale's dtype."""
    cdt = _cdt(x.dtype)
    n, t, d = x.shape
    x2 = _rows(x, cdt, d)
    dy2 = _rows(dy, cdt, d)
    dx = _alloc.empty(tuple(x.shape), cdt)
    cpn = max(1, -(-t // _ROWS_PER_CHUNK))
    npdt = np.float64 if cdt == torch.float64 else np.float32
    dshift_part = np.zeros((n * cpn, d), npdt)
    dscale_part = np.zeros((n * cpn, d), npdt)
    if x2.numel():
        parallel_for(
            _mod_ln_bwd_kernel,
            n * cpn,
            (
                _np(dy2),
                _np(x2),
                _np(_in(mean, cdt)).reshape(-1),
                _np(_in(rstd, cdt)).reshape(-1),
                _np(_in(scale, cdt)),
                _np(dx.view(-1, d)),
                dshift_part,
                dscale_part,
                cpn,
                _ROWS_PER_CHUNK,
            ),
        )
    dshift = torch.from_numpy(dshift_part.astype(np.float64).reshape(n, cpn, d).sum(axis=1))
    dscale = torch.from_numpy(dscale_part.astype(np.float64).reshape(n, cpn, d).sum(axis=1))
    return _out(dx, x.dtype), dshift.to(scale.dtype), dscale.to(scale.dtype)
