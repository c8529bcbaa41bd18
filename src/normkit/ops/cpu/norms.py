r"""Fused numba kernels for LayerNorm, RMSNorm, GroupNorm (InstanceNorm) and BatchNorm.

The op contract is ``docs/ops.md``; the math, with ``x_hat = (x - mean) * rstd`` and
``g = dy * weight``::

    LayerNorm/GroupNorm  y = x_hat * w + b,   dx = rstd * (g - mean(g) - x_hat * mean(g x_hat))
    RMSNorm              y = x * rstd * w,    dx = rstd * (g - x_hat * mean(g x_hat)),
                         rstd = 1 / sqrt(mean(x^2) + eps)
    BatchNorm            per channel over (N, L); dx = w rstd (dy - sum_dy/M - x_hat sum_dy_xhat/M)

Numerics: never E[x^2] - E[x]^2; variance clamped at 0. LayerNorm, RMSNorm and
GroupNorm and BatchNorm compute elementwise work and row sums in the input's dtype
(float32 for float16/bfloat16/float32 input). LayerNorm and GroupNorm take mean and
variance from one pass of sums of ``x - s``, s the row's (group's) first value, in
blocks whose sums are added in float64 (``_row_stats``; error bound in docs/norms.md,
"Shifted sums"); a row whose shift is an outlier is redone by the corrected two-pass
algorithm while in cache. The mean is kept as a hi + lo pair so that ``x - mean`` stays
exact. BatchNorm: per-row two passes combined across rows by Chan's formula in float64.
Saved statistics are float32 (float64 for float64 input), as the contract asks, except
BatchNorm's mean: float64, split into hi + lo by the apply and backward kernels.

Determinism: weight/bias gradients are reduced from per-work-item partial buffers
whose partition depends on the shape only (never on the thread count), summed in a
fixed order by one serial pass: bitwise identical results for any number of threads.
``fastmath={"reassoc", "contract"}`` lets LLVM vectorise the reductions (it never
assumes away inf or NaN).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from ..._validation import check_groups
from ..schema import implements
from . import _alloc
from ._pool import parallel_for

__all__ = [
    "layer_norm_fwd",
    "layer_norm_bwd",
    "rms_norm_fwd",
    "rms_norm_bwd",
    "group_norm_fwd",
    "group_norm_bwd",
    "batch_norm_stats",
    "batch_norm_apply",
    "batch_norm_bwd_reduce",
    "batch_norm_bwd_apply",
]

FM = {"reassoc", "contract"}
_ROWS_PER_CHUNK = 32  # rows per partial buffer in LayerNorm/RMSNorm backward


# --- LayerNorm / RMSNorm: rows of (M, D) ------------------------------------------------
# Loops run over 1-D row slices (xr = x[r]): numba's 2-D/3-D element indexing keeps a
# stride multiply and a wraparound test per element that blocks vectorisation.


# inline="always": inlined in numba IR, so the callers' loops vectorize as if written there
@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM, inline="always")
def _row_moments(xr, cast):
    # xr: (D,). Returns (mean as float64, mean_hi, mean_lo, sum of (xr - mean)^2), the
    # last three in xr's dtype. The mean is taken of xr - xr[0] (values of the size of the
    # spread, not of the mean: no loss at mean 1e4) and kept as a hi + lo pair, so
    # (xr - hi) - lo is exact; the squared deviations are a second pass over the row.
    D = xr.shape[0]
    x0 = xr[0]
    sh = x0 - x0  # zero of xr's dtype
    for i in range(D):
        sh += xr[i] - x0
    m = np.float64(x0) + np.float64(sh) / D
    cast[0] = m
    cast[1] = m - np.float64(cast[0])
    m_hi = cast[0]
    m_lo = cast[1]
    m2 = m_hi - m_hi
    for i in range(D):
        d = (xr[i] - m_hi) - m_lo
        m2 += d * d
    return m, m_hi, m_lo, m2


# One-pass statistics by shifted sums (docs/norms.md, "Shifted sums"). With d = x - s for a
# shift s taken from the same row, S1 = sum d and S2 = sum d^2 are accumulated in x's dtype
# in blocks of at most SUM_BLOCK terms (any order inside a block: LLVM vectorises it), the
# block sums added in float64; then mean = s + S1/n and n var = S2 - S1^2/n. The relative
# error of var is at most 3 gamma / (1 - q) with q = S1^2 / (n S2) = (mean - s)^2 /
# (var + (mean - s)^2) and gamma = (SUM_BLOCK + 1) u; a row with q > SHIFT_Q_MAX (the shift
# is an outlier of its row) is redone by the corrected two-pass algorithm while in cache.
SUM_BLOCK = 256
SHIFT_Q_MAX = 0.75


@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM, inline="always")
def _shifted_sums(xr, s, yr):
    # float64 (sum d, sum d^2) of d = xr - s, float32 (xr's dtype) inside SUM_BLOCK blocks;
    # when yr is not empty the same pass copies xr into it (the LayerNorm forward streams
    # y out while x streams in, then normalizes y in cache; see _layer_norm_fwd_kernel)
    D = xr.shape[0]
    copy = yr.shape[0] > 0
    s1 = 0.0
    s2 = 0.0
    for j0 in range(0, D, SUM_BLOCK):
        b1 = s - s  # zero of xr's dtype (NaN for a non-finite shift: the row is NaN anyway)
        b2 = s - s
        if copy:
            for i in range(j0, min(D, j0 + SUM_BLOCK)):
                v = xr[i]
                yr[i] = v
                d = v - s
                b1 += d
                b2 += d * d
        else:
            for i in range(j0, min(D, j0 + SUM_BLOCK)):
                d = xr[i] - s
                b1 += d
                b2 += d * d
        s1 += np.float64(b1)
        s2 += np.float64(b2)
    return s1, s2


@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM, inline="always")
def _needs_two_pass(s1, s2, n):
    # False when the shifted sums are accurate enough (q <= SHIFT_Q_MAX, including the
    # constant row s1 = s2 = 0); True for an outlier shift and for NaN sums
    return not (s1 * s1 <= SHIFT_Q_MAX * n * s2)


@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM, inline="always")
def _split(m, cast):
    # float64 m -> (hi, lo) in cast's dtype with hi + lo = m to twice that dtype's precision
    cast[0] = m
    cast[1] = m - np.float64(cast[0])
    return cast[0], cast[1]


@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM, inline="always")
def _row_stats(xr, yr, cast):
    # (mean float64, mean_hi, mean_lo, n var float64) of the row xr in one pass over it
    # (shifted sums, copying xr into yr unless yr is empty) or, when the shift xr[0] is
    # an outlier of the row, in two
    D = xr.shape[0]
    s = xr[0]
    s1, s2 = _shifted_sums(xr, s, yr)
    m = np.float64(s) + s1 / D
    m_hi, m_lo = _split(m, cast)
    if not _needs_two_pass(s1, s2, D):
        return m, m_hi, m_lo, s2 - s1 * s1 / D
    return _row_recentre(xr, m, m_hi, m_lo, cast)


@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM, inline="always")
def _centred_sums(xr, m_hi, m_lo):
    # float64 (sum d, sum d^2) of d = (xr - m_hi) - m_lo, blocked as _shifted_sums
    D = xr.shape[0]
    t1 = 0.0
    t2 = 0.0
    for j0 in range(0, D, SUM_BLOCK):
        b1 = m_hi - m_hi
        b2 = m_hi - m_hi
        for i in range(j0, min(D, j0 + SUM_BLOCK)):
            d = (xr[i] - m_hi) - m_lo
            b1 += d
            b2 += d * d
        t1 += np.float64(b1)
        t2 += np.float64(b2)
    return t1, t2


@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM, inline="always")
def _row_recentre(xr, m, m_hi, m_lo, cast):
    # corrected two-pass (Chan, Golub & LeVeque): sums of d = (xr - m) around the first
    # mean estimate m = m_hi + m_lo, whose error the correction sum(d)/n removes
    D = xr.shape[0]
    t1, t2 = _centred_sums(xr, m_hi, m_lo)
    m = m + t1 / D
    m_hi, m_lo = _split(m, cast)
    return m, m_hi, m_lo, t2 - t1 * t1 / D


@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM, inline="always")
def _normalize_row(xr, yr, m_hi, m_lo, rs_t, w, b, has_w, has_b):
    # yr = ((xr - m_hi) - m_lo) * rs_t * w + b, one branch-free loop per affine case (a
    # test inside the loop would block vectorisation); LayerNorm and the fused add-norms
    D = xr.shape[0]
    if has_w and has_b:
        for i in range(D):
            yr[i] = ((xr[i] - m_hi) - m_lo) * (rs_t * w[i]) + b[i]
    elif has_w:
        for i in range(D):
            yr[i] = ((xr[i] - m_hi) - m_lo) * (rs_t * w[i])
    elif has_b:
        for i in range(D):
            yr[i] = ((xr[i] - m_hi) - m_lo) * rs_t + b[i]
    else:
        for i in range(D):
            yr[i] = ((xr[i] - m_hi) - m_lo) * rs_t


@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM)
def _layer_norm_fwd_kernel(x, w, b, y, mean, rstd, eps, rms, start, stop):
    # x, y: (M, D); w, b: (D,) in x's dtype, or (0,) when absent; mean, rstd: (M,).
    # Arithmetic in x's dtype (float32 or float64); the row statistics by _row_stats, whose
    # pass also copies the row into y, so that y streams out while x streams in; the
    # normalizing pass then rewrites y in cache (see fused._add_sums)
    M, D = x.shape
    has_w = w.shape[0] > 0
    has_b = b.shape[0] > 0
    cast = np.empty(3, x.dtype)  # float64 -> x's dtype
    for r in range(start, stop):
        xr = x[r]
        yr = y[r]
        if rms:
            m = 0.0
            cast[0] = 0.0
            m_hi = cast[0]
            m_lo = cast[0]
            v = m_hi - m_hi
            for i in range(D):
                v += xr[i] * xr[i]
                yr[i] = xr[i]
        else:
            m, m_hi, m_lo, v = _row_stats(xr, yr, cast)
        rs = 1.0 / math.sqrt(max(np.float64(v) / D, 0.0) + eps)
        mean[r] = m
        rstd[r] = rs
        cast[2] = rs
        rs_t = cast[2]
        _normalize_row(yr, yr, m_hi, m_lo, rs_t, w, b, has_w, has_b)


@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM)
def _layer_norm_bwd_kernel(
    dy, dh, h, mean, rstd, w, dsum, dw_part, db_part, rms, rows_per_chunk, start, stop
):
    # LayerNorm / RMSNorm (rms: mean 0, a = 0) backward of the rows of h, plus the gradient
    # dh that reaches h directly when it is the fused add-norm's h (fused.py); without it
    # dh is (0, D). dy, h, dsum: (M, D); mean, rstd: (M,) (mean (0,) for RMSNorm);
    # w: (D,) or (0,); dw_part, db_part: (chunks, D) in h's dtype, each a sum of at most
    # rows_per_chunk rows, reduced across chunks in float64 by the launcher.
    # dx = (rs w) dy + dh + a + c (h - mean) with a = -rs <g>, c = -rs^2 <g x_hat>; the
    # per-row constants in float64.
    # Two passes per row. The first reads dy, h (and dh) from memory, takes the sums and
    # writes the part of dx it can, (rs w) dy + dh; the second, over rows still in cache,
    # adds a + c (h - mean). Streaming dx out in the first pass, with the reads, ran the
    # backward ~13% faster than writing all of dx in the second.
    M, D = h.shape
    has_w = w.shape[0] > 0
    has_dh = dh.shape[0] > 0
    cast = np.empty(5, h.dtype)
    for chunk in range(start, stop):
        dwp = dw_part[chunk]
        dbp = db_part[chunk]
        for i in range(D):
            dwp[i] = 0.0
            dbp[i] = 0.0
        for row in range(chunk * rows_per_chunk, min(M, (chunk + 1) * rows_per_chunk)):
            hr = h[row]
            dyr = dy[row]
            dxr = dsum[row]
            dhr = dh[row] if has_dh else dyr[:0]
            m = 0.0 if rms else np.float64(mean[row])
            m_hi, m_lo = _split(m, cast)
            rs64 = np.float64(rstd[row])
            cast[2] = rs64
            rs = cast[2]
            sum_g = rs - rs
            sum_gx = rs - rs
            if has_w and has_dh:
                for i in range(D):
                    g = dyr[i]
                    xh = ((hr[i] - m_hi) - m_lo) * rs
                    dwp[i] += g * xh
                    dbp[i] += g
                    gw = g * w[i]
                    sum_g += gw
                    sum_gx += gw * xh
                    dxr[i] = (rs * w[i]) * g + dhr[i]
            elif has_w:
                for i in range(D):
                    g = dyr[i]
                    xh = ((hr[i] - m_hi) - m_lo) * rs
                    dwp[i] += g * xh
                    dbp[i] += g
                    gw = g * w[i]
                    sum_g += gw
                    sum_gx += gw * xh
                    dxr[i] = (rs * w[i]) * g
            elif has_dh:
                for i in range(D):
                    g = dyr[i]
                    xh = ((hr[i] - m_hi) - m_lo) * rs
                    dbp[i] += g
                    sum_g += g
                    sum_gx += g * xh
                    dxr[i] = rs * g + dhr[i]
            else:
                for i in range(D):
                    g = dyr[i]
                    xh = ((hr[i] - m_hi) - m_lo) * rs
                    dbp[i] += g
                    sum_g += g
                    sum_gx += g * xh
                    dxr[i] = rs * g
            cast[3] = 0.0 if rms else -rs64 * np.float64(sum_g) / D
            cast[4] = -rs64 * rs64 * np.float64(sum_gx) / D
            a = cast[3]
            c = cast[4]
            for i in range(D):
                dxr[i] += a + c * ((hr[i] - m_hi) - m_lo)


# --- GroupNorm: (N, C, L), groups of C // G channels ------------------------------------


@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM)
def _group_norm_fwd_kernel(x, w, b, y, mean, rstd, groups, eps, start, stop):
    # x, y: (N, C, L); w, b: (C,) f64 or (0,); mean, rstd: (N * G,); work item = (n, g).
    # Arithmetic in x's dtype with the statistics and hi + lo split of the LayerNorm kernel.
    N, C, L = x.shape
    cg = C // groups
    count = cg * L
    has_w = w.shape[0] > 0
    has_b = b.shape[0] > 0
    cast = np.empty(4, x.dtype)
    for item in range(start, stop):
        n = item // groups
        c0 = (item % groups) * cg
        # one pass of shifted sums over the group's channels (shift: its first value),
        # a corrected second pass only when that shift is an outlier (docs/norms.md)
        sv = x[n, c0, 0]
        s1 = 0.0
        s2 = 0.0
        for c in range(c0, c0 + cg):
            a1, a2 = _shifted_sums(x[n, c], sv, x[n, c, :0])
            s1 += a1
            s2 += a2
        m = np.float64(sv) + s1 / count
        m_hi, m_lo = _split(m, cast)
        if _needs_two_pass(s1, s2, count):  # as _row_recentre, over the group's channels
            t1 = 0.0
            t2 = 0.0
            for c in range(c0, c0 + cg):
                a1, a2 = _centred_sums(x[n, c], m_hi, m_lo)
                t1 += a1
                t2 += a2
            m = m + t1 / count
            m_hi, m_lo = _split(m, cast)
            v = t2 - t1 * t1 / count
        else:
            v = s2 - s1 * s1 / count
        rs = 1.0 / math.sqrt(max(np.float64(v) / count, 0.0) + eps)
        mean[item] = m
        rstd[item] = rs
        for c in range(c0, c0 + cg):
            cast[2] = rs * w[c] if has_w else rs
            cast[3] = b[c] if has_b else 0.0
            a = cast[2]
            bc = cast[3]
            xr = x[n, c]
            yr = y[n, c]
            for i in range(L):
                yr[i] = ((xr[i] - m_hi) - m_lo) * a + bc


@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM)
def _group_norm_bwd_kernel(dy, x, mean, rstd, w, dx, dw_part, db_part, groups, start, stop):
    # dy, x, dx: (N, C, L); mean, rstd: (N * G,); dw_part, db_part: (N, C) f64.
    # Elementwise work and per-row sums in x's dtype; per-channel scalars in float64.
    N, C, L = x.shape
    cg = C // groups
    count = cg * L
    has_w = w.shape[0] > 0
    cast = np.empty(5, x.dtype)
    for item in range(start, stop):
        n = item // groups
        c0 = (item % groups) * cg
        m = np.float64(mean[item])
        rs = np.float64(rstd[item])
        cast[0] = m
        cast[1] = m - np.float64(cast[0])
        m_hi = cast[0]
        m_lo = cast[1]
        sum_g = 0.0
        sum_gx = 0.0
        for c in range(c0, c0 + cg):
            xr = x[n, c]
            dyr = dy[n, c]
            s_dy = m_hi - m_hi
            s_dyx = m_hi - m_hi
            for i in range(L):
                g = dyr[i]
                s_dy += g
                s_dyx += g * ((xr[i] - m_hi) - m_lo)
            s_dy64 = np.float64(s_dy)
            s_dyx64 = np.float64(s_dyx)
            dw_part[n, c] = s_dyx64 * rs
            db_part[n, c] = s_dy64
            wc = w[c] if has_w else 1.0
            sum_g += wc * s_dy64
            sum_gx += wc * s_dyx64 * rs
        c_g = sum_g / count
        c_gx = sum_gx / count
        for c in range(c0, c0 + cg):
            wc = w[c] if has_w else 1.0
            cast[2] = rs * wc  # dx = a dy + rs (-c_g - x_hat c_gx)
            cast[3] = -rs * c_g
            cast[4] = -rs * rs * c_gx
            a = cast[2]
            bb = cast[3]
            cc = cast[4]
            xr = x[n, c]
            dyr = dy[n, c]
            dxr = dx[n, c]
            for i in range(L):
                dxr[i] = a * dyr[i] + bb + cc * ((xr[i] - m_hi) - m_lo)


# --- BatchNorm: per channel over (N, L) -------------------------------------------------
# Rows (n, c) are reduced in x's dtype (shifted, so a mean of 1e4 costs nothing) and the
# row results combined in float64.


@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM)
def _batch_norm_stats_kernel(x, mean, var, start, stop):
    # x: (N, C, L); mean, var: (C,); work item = one channel; rows combined by Chan
    N, C, L = x.shape
    cast = np.empty(2, x.dtype)
    for c in range(start, stop):
        count = 0.0
        m = 0.0
        m2 = 0.0
        for n in range(N):
            rm, _, _, rv = _row_moments(x[n, c], cast)
            total = count + L
            delta = rm - m
            m += delta * (L / total)
            m2 += np.float64(rv) + delta * delta * (count * L / total)
            count = total
        mean[c] = m
        var[c] = max(m2 / count, 0.0)


@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM)
def _batch_norm_apply_kernel(x, mean, rstd, w, b, y, start, stop):
    # x, y: (N, C, L); mean, rstd: (C,); w, b: (C,) f64 or (0,); work item = row (n, c)
    N, C, L = x.shape
    has_w = w.shape[0] > 0
    has_b = b.shape[0] > 0
    cast = np.empty(4, x.dtype)
    for item in range(start, stop):
        n = item // C
        c = item % C
        m = np.float64(mean[c])
        cast[0] = m
        cast[1] = m - np.float64(cast[0])
        cast[2] = np.float64(rstd[c]) * (w[c] if has_w else 1.0)
        cast[3] = b[c] if has_b else 0.0
        m_hi = cast[0]
        m_lo = cast[1]
        a = cast[2]
        sh = cast[3]
        xr = x[n, c]
        yr = y[n, c]
        for i in range(L):
            yr[i] = ((xr[i] - m_hi) - m_lo) * a + sh


@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM)
def _batch_norm_bwd_reduce_kernel(dy, x, mean, rstd, sum_dy, sum_dy_xhat, start, stop):
    # dy, x: (N, C, L); mean, rstd, sum_dy, sum_dy_xhat: (C,); work item = one channel
    N, C, L = x.shape
    cast = np.empty(2, x.dtype)
    for c in range(start, stop):
        m = np.float64(mean[c])
        cast[0] = m
        cast[1] = m - np.float64(cast[0])
        m_hi = cast[0]
        m_lo = cast[1]
        s_dy = 0.0
        s_dyx = 0.0
        for n in range(N):
            xr = x[n, c]
            dyr = dy[n, c]
            r_dy = m_hi - m_hi  # per-row partials in x's dtype, rows summed in float64
            r_dyx = m_hi - m_hi
            for i in range(L):
                g = dyr[i]
                r_dy += g
                r_dyx += g * ((xr[i] - m_hi) - m_lo)
            s_dy += np.float64(r_dy)
            s_dyx += np.float64(r_dyx)
        sum_dy[c] = s_dy
        sum_dy_xhat[c] = s_dyx * np.float64(rstd[c])


@njit(nogil=True, cache=True, error_model="numpy", fastmath=FM)
def _batch_norm_bwd_apply_kernel(dy, x, mean, rstd, w, sum_dy, sum_dy_xhat, count, dx, start, stop):
    # dy, x, dx: (N, C, L); per-channel vectors (C,); work item = row (n, c)
    N, C, L = x.shape
    has_w = w.shape[0] > 0
    cast = np.empty(5, x.dtype)
    for item in range(start, stop):
        n = item // C
        c = item % C
        m = np.float64(mean[c])
        rs = np.float64(rstd[c])
        a = rs * (w[c] if has_w else 1.0)
        cast[0] = m
        cast[1] = m - np.float64(cast[0])
        cast[2] = a
        cast[3] = -a * np.float64(sum_dy[c]) / count
        cast[4] = -a * rs * np.float64(sum_dy_xhat[c]) / count
        m_hi = cast[0]
        m_lo = cast[1]
        a_t = cast[2]
        bb = cast[3]
        cc = cast[4]
        xr = x[n, c]
        dyr = dy[n, c]
        dxr = dx[n, c]
        for i in range(L):
            dxr[i] = a_t * dyr[i] + bb + cc * ((xr[i] - m_hi) - m_lo)


# --- launchers ---------------------------------------------------------------------------


def _cdt(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy() if t.requires_grad else t.numpy()


def _in(t: torch.Tensor, cdt: torch.dtype) -> torch.Tensor:
    """A contiguous compute-dtype copy only when needed."""
    if t.dtype == cdt and t.is_contiguous():  # the common case, with no torch call
        return t.detach()
    return t.detach().to(cdt).contiguous()


def _vec(t, n: int, name: str, dtype: torch.dtype = torch.float64) -> np.ndarray:
    """Per-feature parameter as a ``dtype`` array, or an empty one when absent."""
    if t is None:
        return np.empty(0, np.float64 if dtype == torch.float64 else np.float32)
    if t.numel() != n:
        raise ValueError(
            f"{name} must have {n} elements (one per feature), got shape "
            f"{tuple(t.shape)}; pass a ({n},) tensor or None"
        )
    if t.dtype == dtype and t.dim() == 1 and t.is_contiguous() and t.device.type == "cpu":
        return _np(t)  # the common case: a parameter of the input's dtype
    return t.detach().to("cpu", dtype).contiguous().reshape(n).numpy()


def _out(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def _as_mcl(x: torch.Tensor) -> torch.Tensor:
    """(N, C, *) -> (N, C, L) view of a contiguous tensor."""
    # L spelled out: reshape cannot infer -1 for a tensor with zero elements (an empty rank)
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


@implements("layer_norm_fwd", "cpu")
def layer_norm_fwd(x, weight, bias, eps):
    """LayerNorm over the last dim: ``(y, mean, rstd)``; x: (M, D) (any leading dims)."""
    cdt = _cdt(x.dtype)
    xc = _in(x, cdt)
    d = x.shape[-1]
    x2 = xc.reshape(-1, d)
    y = _alloc.empty_like(x2)
    mean = torch.empty(x2.shape[0], dtype=cdt)
    rstd = torch.empty(x2.shape[0], dtype=cdt)
    if x2.numel():
        parallel_for(
            _layer_norm_fwd_kernel,
            x2.shape[0],
            (
                _np(x2),
                _vec(weight, d, "weight", cdt),
                _vec(bias, d, "bias", cdt),
                _np(y),
                _np(mean),
                _np(rstd),
                float(eps),
                False,
            ),
            min_items=8,
        )
    lead = x.shape[:-1]
    return _out(y.reshape(x.shape), x.dtype), mean.reshape(lead), rstd.reshape(lead)


def _rowwise_bwd(dy, x, mean, rstd, weight, rms, dh=None):
    """``(dx, dweight, dbias)`` of LayerNorm/RMSNorm over the last dim of ``x``; ``dh``: a
    gradient that reaches ``x`` directly as well (the fused add-norm's h), added to dx."""
    cdt = _cdt(x.dtype)
    d = x.shape[-1]
    x2 = _in(x, cdt).reshape(-1, d)
    dy2 = _in(dy, cdt).reshape(-1, d)
    dh2 = _in(dh, cdt).reshape(-1, d) if dh is not None else x2[:0]
    m = x2.shape[0]
    rstd_np = _np(_in(rstd, cdt).reshape(-1))
    mean_np = _np(_in(mean, cdt).reshape(-1)) if mean is not None else rstd_np[:0]
    dx = _alloc.empty_like(x2)
    chunks = max(1, -(-m // _ROWS_PER_CHUNK))
    npdt = np.float64 if cdt == torch.float64 else np.float32
    dw_part = np.zeros((chunks, d), npdt)
    db_part = np.zeros((chunks, d), npdt)
    if x2.numel():
        parallel_for(
            _layer_norm_bwd_kernel,
            chunks,
            (
                _np(dy2),
                _np(dh2),
                _np(x2),
                mean_np,
                rstd_np,
                _vec(weight, d, "weight", cdt),
                _np(dx),
                dw_part,
                db_part,
                rms,
                _ROWS_PER_CHUNK,
            ),
        )
    wdt = weight.dtype if weight is not None else x.dtype
    # one fixed-order reduction of the per-chunk partials, in float64
    dweight = (
        torch.from_numpy(dw_part.astype(np.float64).sum(axis=0)).to(wdt)
        if weight is not None
        else None
    )
    dbias = torch.from_numpy(db_part.astype(np.float64).sum(axis=0)).to(wdt)
    return _out(dx.reshape(x.shape), x.dtype), dweight, dbias


@implements("layer_norm_bwd", "cpu")
def layer_norm_bwd(dy, x, mean, rstd, weight):
    """``(dx, dweight, dbias)``; dweight is None without weight, dbias = column sums of dy."""
    return _rowwise_bwd(dy, x, mean, rstd, weight, False)


@implements("rms_norm_fwd", "cpu")
def rms_norm_fwd(x, weight, eps):
    """RMSNorm over the last dim: ``(y, rstd)`` with rstd = 1/sqrt(mean(x^2) + eps)."""
    cdt = _cdt(x.dtype)
    xc = _in(x, cdt)
    d = x.shape[-1]
    x2 = xc.reshape(-1, d)
    y = _alloc.empty_like(x2)
    mean = torch.empty(x2.shape[0], dtype=cdt)  # stays 0: RMSNorm does not centre
    rstd = torch.empty(x2.shape[0], dtype=cdt)
    if x2.numel():
        parallel_for(
            _layer_norm_fwd_kernel,
            x2.shape[0],
            (
                _np(x2),
                _vec(weight, d, "weight", cdt),
                _vec(None, d, "bias", cdt),
                _np(y),
                _np(mean),
                _np(rstd),
                float(eps),
                True,
            ),
            min_items=8,
        )
    return _out(y.reshape(x.shape), x.dtype), rstd.reshape(x.shape[:-1])


@implements("rms_norm_bwd", "cpu")
def rms_norm_bwd(dy, x, rstd, weight):
    """``(dx, dweight)``; dweight is None without weight."""
    dx, dweight, _ = _rowwise_bwd(dy, x, None, rstd, weight, True)
    return dx, dweight


@implements("group_norm_fwd", "cpu")
def group_norm_fwd(x, weight, bias, num_groups, eps):
    """GroupNorm: ``(y, mean, rstd)``; x: (N, C, *); mean, rstd: (N, G)."""
    cdt = _cdt(x.dtype)
    n, c = x.shape[0], x.shape[1]
    check_groups(c, num_groups)
    x3 = _as_mcl(_in(x, cdt))
    y = _alloc.empty_like(x3)
    mean = torch.empty(n, num_groups, dtype=cdt)
    rstd = torch.empty(n, num_groups, dtype=cdt)
    if x3.numel():
        parallel_for(
            _group_norm_fwd_kernel,
            n * num_groups,
            (
                _np(x3),
                _vec(weight, c, "weight"),
                _vec(bias, c, "bias"),
                _np(y),
                _np(mean).reshape(-1),
                _np(rstd).reshape(-1),
                num_groups,
                float(eps),
            ),
        )
    return _out(y.reshape(x.shape), x.dtype), mean, rstd


@implements("group_norm_bwd", "cpu")
def group_norm_bwd(dy, x, mean, rstd, weight, num_groups):
    """``(dx, dweight, dbias)`` of GroupNorm (InstanceNorm: num_groups = C)."""
    cdt = _cdt(x.dtype)
    n, c = x.shape[0], x.shape[1]
    check_groups(c, num_groups)
    x3 = _as_mcl(_in(x, cdt))
    dy3 = _as_mcl(_in(dy, cdt))
    dx = _alloc.empty_like(x3)
    dw_part = np.zeros((n, c), np.float64)
    db_part = np.zeros((n, c), np.float64)
    if x3.numel():
        parallel_for(
            _group_norm_bwd_kernel,
            n * num_groups,
            (
                _np(dy3),
                _np(x3),
                _np(_in(mean, cdt)).reshape(-1),
                _np(_in(rstd, cdt)).reshape(-1),
                _vec(weight, c, "weight"),
                _np(dx),
                dw_part,
                db_part,
                num_groups,
            ),
        )
    wdt = weight.dtype if weight is not None else x.dtype
    dweight = torch.from_numpy(dw_part.sum(axis=0)).to(wdt) if weight is not None else None
    dbias = torch.from_numpy(db_part.sum(axis=0)).to(wdt)
    return _out(dx.reshape(x.shape), x.dtype), dweight, dbias


@implements("batch_norm_stats", "cpu")
def batch_norm_stats(x):
    """Per-channel ``(mean, var)`` (biased) over all dims but 1; x: (N, C, *)."""
    cdt = _cdt(x.dtype)
    x3 = _as_mcl(_in(x, cdt))
    c = x3.shape[1]
    mean = torch.empty(c, dtype=torch.float64)  # the op contract: the mean's low digits kept
    var = torch.empty(c, dtype=cdt)
    if x3.shape[0] * x3.shape[2] == 0:
        raise ValueError(
            f"BatchNorm: needs at least one value per channel, got input shape "
            f"{tuple(x.shape)}; use a non-empty batch"
        )
    parallel_for(_batch_norm_stats_kernel, c, (_np(x3), _np(mean), _np(var)))
    return mean, var


@implements("batch_norm_apply", "cpu")
def batch_norm_apply(x, mean, rstd, weight, bias):
    """y = (x - mean) * rstd * weight + bias per channel (training and eval)."""
    cdt = _cdt(x.dtype)
    x3 = _as_mcl(_in(x, cdt))
    n, c, _ = x3.shape
    y = _alloc.empty_like(x3)
    if x3.numel():
        parallel_for(
            _batch_norm_apply_kernel,
            n * c,
            (
                _np(x3),
                _np(_in(mean, torch.float64)),
                _np(_in(rstd, cdt)),
                _vec(weight, c, "weight"),
                _vec(bias, c, "bias"),
                _np(y),
            ),
            min_items=4,
        )
    return _out(y.reshape(x.shape), x.dtype)


@implements("batch_norm_bwd_reduce", "cpu")
def batch_norm_bwd_reduce(dy, x, mean, rstd):
    """Per-channel ``(sum_dy, sum_dy_xhat)`` (what SyncBatchNorm all-reduces)."""
    cdt = _cdt(x.dtype)
    x3 = _as_mcl(_in(x, cdt))
    dy3 = _as_mcl(_in(dy, cdt))
    c = x3.shape[1]
    sum_dy = torch.empty(c, dtype=cdt)
    sum_dy_xhat = torch.empty(c, dtype=cdt)
    parallel_for(
        _batch_norm_bwd_reduce_kernel,
        c,
        (
            _np(dy3),
            _np(x3),
            _np(_in(mean, torch.float64)),
            _np(_in(rstd, cdt)),
            _np(sum_dy),
            _np(sum_dy_xhat),
        ),
    )
    return sum_dy, sum_dy_xhat


@implements("batch_norm_bwd_apply", "cpu")
def batch_norm_bwd_apply(dy, x, mean, rstd, weight, sum_dy, sum_dy_xhat, count):
    """dx = w rstd (dy - sum_dy/count - x_hat sum_dy_xhat/count)."""
    cdt = _cdt(x.dtype)
    x3 = _as_mcl(_in(x, cdt))
    dy3 = _as_mcl(_in(dy, cdt))
    n, c, _ = x3.shape
    dx = _alloc.empty_like(x3)
    count = float(count.item() if isinstance(count, torch.Tensor) else count)
    if x3.numel():
        parallel_for(
            _batch_norm_bwd_apply_kernel,
            n * c,
            (
                _np(dy3),
                _np(x3),
                _np(_in(mean, torch.float64)),
                _np(_in(rstd, cdt)),
                _vec(weight, c, "weight"),
                _np(_in(sum_dy, cdt)),
                _np(_in(sum_dy_xhat, cdt)),
                count,
                _np(dx),
            ),
            min_items=4,
        )
    return _out(dx.reshape(x.shape), x.dtype)
