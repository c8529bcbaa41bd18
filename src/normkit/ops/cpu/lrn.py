r"""Fused numba LRN kernels (forward and backward, across channels and within a channel).

Canonical form (:mod:`normkit.conventions`)::

    s_c = k + alpha * sum_{j=c-B}^{c+A} x_j^2,      y_c = x_c s_c^(-beta)
    dx_j = dy_j s_j^(-beta) - 2 alpha beta x_j sum_{c=j-A}^{j+B} dy_c x_c s_c^(-beta-1)

Numerics: every window sum is a direct sum of its ``B + A + 1`` terms, taken in
ascending channel order over a zero-padded buffer (the reference's order), never a
running add/subtract or a prefix sum: those cancel when one channel is 1000x its
neighbours and give inf - inf = NaN for 1e38 inputs. Squares, sums and powers run in
float32 (float64 for float64 input); float16/bfloat16 are converted around the kernel.

``s^-beta`` is specialised: beta = 1/2 -> 1/sqrt(s), 3/4 -> 1/(r sqrt(r)) with
r = sqrt(s), 1 -> 1/s; any other beta takes :mod:`.fastpow`'s vectorised power in
float32 (``exp(-beta ln s)`` in float64 from polynomials) and ``pow`` in float64.

Layouts: ``(N, C, L)`` contiguous vectorises over positions ``l`` and streams the
channels of a block of positions: window sums of squares straight from ``x``, the
backward's adjoint window from a ring of ``width`` rows and ``s^-beta`` parked in the
fresh ``dx`` rows, so the work memory is a few rows per thread (peak memory of forward +
backward: ``y`` and ``dx``, 2x the input); channels-last memory
(``x.movedim(1, -1)`` contiguous, e.g. NHWC input moved by ``functional``) is read as
``(N, L, C)`` rows without a copy. Within-channel LRN works per ``(H, W)`` plane with
a separable (rows, then columns) direct box sum.

Backward recomputes ``s`` from ``x``: nothing but ``x`` is saved.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from ..schema import implements
from . import _alloc
from ._pool import parallel_for
from .fastpow import neg_pow_row, scale_pow_t_row, scale_row

__all__ = ["lrn_fwd", "lrn_bwd", "beta_mode"]

# work-buffer budget (elements per buffer): three such buffers stay well inside L2
_BUFFER_ELEMS = 65536


def beta_mode(beta: float, dtype: torch.dtype = torch.float64) -> int:
    """0: general pow; 1: beta = 1/2; 2: beta = 3/4; 3: beta = 1; 4: general beta in
    float32, by :mod:`.fastpow`'s vectorised power (float64 keeps ``pow``)."""
    mode = {0.5: 1, 0.75: 2, 1.0: 3}.get(float(beta), 0)
    return 4 if mode == 0 and dtype == torch.float32 else mode


@njit(nogil=True, cache=True, error_model="numpy")
def _neg_pow_row(s, p, w, mode, neg_beta, one):
    """p[:w] = s[:w] ** -beta; the mode branch sits outside each loop so loops vectorise."""
    if mode == 1:
        for i in range(w):
            p[i] = one / np.sqrt(s[i])
    elif mode == 2:
        for i in range(w):
            r = np.sqrt(s[i])
            p[i] = one / (r * np.sqrt(r))
    elif mode == 3:
        for i in range(w):
            p[i] = one / s[i]
    elif mode == 4:
        neg_pow_row(s, p, w, neg_beta)
    else:
        for i in range(w):
            p[i] = s[i] ** neg_beta


# --- across channels, (N, C, L) layout ----------------------------------------------------
# Loops run over 1-D row slices: numba's 3-D indexing keeps a stride multiply and a
# wraparound test per element that stops LLVM from vectorising (measured 8x slower).


@njit(nogil=True, cache=True, error_model="numpy")
def _window_rows(buf, first, width, s, w):
    """s[:w] = sum_{d < width} buf[first + d, :w], ascending (a direct sum, never running).

    Widths up to 5 (the common LRN sizes) take one loop with all taps: per-loop set-up,
    not arithmetic, dominated the generic form (measured ~25% of the kernel).
    """
    r0 = buf[first]
    if width == 1:
        for i in range(w):
            s[i] = r0[i]
        return
    r1 = buf[first + 1]
    if width == 2:
        for i in range(w):
            s[i] = r0[i] + r1[i]
        return
    r2 = buf[first + 2]
    if width == 3:
        for i in range(w):
            s[i] = r0[i] + r1[i] + r2[i]
        return
    r3 = buf[first + 3]
    if width == 4:
        for i in range(w):
            s[i] = r0[i] + r1[i] + r2[i] + r3[i]
        return
    r4 = buf[first + 4]
    for i in range(w):
        s[i] = r0[i] + r1[i] + r2[i] + r3[i] + r4[i]
    for d in range(5, width):
        rd = buf[first + d]
        for i in range(w):
            s[i] += rd[i]


@njit(nogil=True, cache=True, error_model="numpy")
def _scale_apply(s, xr, yr, w, alpha, k, mode, neg_beta, one):
    """yr[:w] = xr * (k + alpha s)^-beta in one pass (mode branch outside the loops)."""
    if mode == 1:
        for i in range(w):
            yr[i] = xr[i] * (one / np.sqrt(k + alpha * s[i]))
    elif mode == 2:
        for i in range(w):
            r = np.sqrt(k + alpha * s[i])
            yr[i] = xr[i] * (one / (r * np.sqrt(r)))
    elif mode == 3:
        for i in range(w):
            yr[i] = xr[i] * (one / (k + alpha * s[i]))
    elif mode == 4:
        scale_row(s, xr, yr, w, alpha, k, neg_beta)
    else:
        for i in range(w):
            yr[i] = xr[i] * (k + alpha * s[i]) ** neg_beta


@njit(nogil=True, cache=True, error_model="numpy")
def _scale_pow_t(s, xr, dyr, pr, tr, w, alpha, k, mode, neg_beta, one):
    """pr = (k + alpha s)^-beta and tr = dy x pr / (k + alpha s), in one pass."""
    if mode == 1:
        for i in range(w):
            v = k + alpha * s[i]
            q = one / np.sqrt(v)
            pr[i] = q
            tr[i] = dyr[i] * xr[i] * q / v
    elif mode == 2:
        for i in range(w):
            v = k + alpha * s[i]
            r = np.sqrt(v)
            q = one / (r * np.sqrt(r))
            pr[i] = q
            tr[i] = dyr[i] * xr[i] * q / v
    elif mode == 3:
        for i in range(w):
            v = k + alpha * s[i]
            q = one / v
            pr[i] = q
            tr[i] = dyr[i] * xr[i] * q / v
    elif mode == 4:
        scale_pow_t_row(s, xr, dyr, pr, tr, w, alpha, k, neg_beta)
    else:
        for i in range(w):
            v = k + alpha * s[i]
            q = v**neg_beta
            pr[i] = q
            tr[i] = dyr[i] * xr[i] * q / v


@njit(nogil=True, cache=True, error_model="numpy")
def _window_squares(x, n, c, back, ahead, l0, w, s):
    """s[:w] = sum of x[n, j, l0 : l0 + w]^2 over j in [c - back, c + ahead] within [0, C).

    Ascending j, a direct sum: the zero-padded window's sum without its zero terms
    (0 + a == a), so no padded buffer of squares is needed. Five taps take one loop.
    """
    C = x.shape[1]
    j0 = max(0, c - back)
    j1 = min(C, c + ahead + 1)
    if j1 - j0 == 5:
        r0 = x[n, j0, l0 : l0 + w]
        r1 = x[n, j0 + 1, l0 : l0 + w]
        r2 = x[n, j0 + 2, l0 : l0 + w]
        r3 = x[n, j0 + 3, l0 : l0 + w]
        r4 = x[n, j0 + 4, l0 : l0 + w]
        for i in range(w):
            s[i] = r0[i] * r0[i] + r1[i] * r1[i] + r2[i] * r2[i] + r3[i] * r3[i] + r4[i] * r4[i]
        return
    r0 = x[n, j0, l0 : l0 + w]
    for i in range(w):
        s[i] = r0[i] * r0[i]
    for j in range(j0 + 1, j1):
        rj = x[n, j, l0 : l0 + w]
        for i in range(w):
            s[i] += rj[i] * rj[i]


@njit(nogil=True, cache=True, error_model="numpy")
def _ring_sum(t, c0, c1, s, w):
    """s[:w] = sum_{c0 <= c < c1} t[c % rows, :w], ascending c (the adjoint window)."""
    m = t.shape[0]
    if c1 - c0 == 5:
        r0 = t[c0 % m]
        r1 = t[(c0 + 1) % m]
        r2 = t[(c0 + 2) % m]
        r3 = t[(c0 + 3) % m]
        r4 = t[(c0 + 4) % m]
        for i in range(w):
            s[i] = r0[i] + r1[i] + r2[i] + r3[i] + r4[i]
        return
    r0 = t[c0 % m]
    for i in range(w):
        s[i] = r0[i]
    for c in range(c0 + 1, c1):
        rc = t[c % m]
        for i in range(w):
            s[i] += rc[i]


@njit(nogil=True, cache=True, error_model="numpy")
def _lrn_ncl_fwd_kernel(x, y, back, ahead, alpha, k, mode, neg_beta, one, block, start, stop):
    # x, y: (N, C, L) contiguous; work item = (n, block of positions); one (block,) buffer
    N, C, L = x.shape
    nblocks = (L + block - 1) // block
    s = np.empty(block, x.dtype)
    for item in range(start, stop):
        n = item // nblocks
        l0 = (item % nblocks) * block
        w = min(L, l0 + block) - l0
        for c in range(C):
            _window_squares(x, n, c, back, ahead, l0, w, s)
            _scale_apply(
                s, x[n, c, l0 : l0 + w], y[n, c, l0 : l0 + w], w, alpha, k, mode, neg_beta, one
            )


@njit(nogil=True, cache=True, error_model="numpy")
def _lrn_ncl_bwd_kernel(
    x, dy, dx, back, ahead, alpha, k, mode, neg_beta, one, coef, block, start, stop
):
    # x, dy, dx: (N, C, L) contiguous; coef = 2 alpha beta. Channels stream in order:
    # step c computes t_c = dy x s^(-beta-1) into a ring of `width` rows (and s_c^-beta
    # into dx[n, c], this call's fresh output), then finishes dx_j for j = c - back, whose
    # adjoint window [j - ahead, j + back] is then complete. Work memory: (width + 1) rows
    # of one block per thread, whatever C.
    N, C, L = x.shape
    width = back + ahead + 1
    nblocks = (L + block - 1) // block
    t = np.empty((width, block), x.dtype)
    s = np.empty(block, x.dtype)
    for item in range(start, stop):
        n = item // nblocks
        l0 = (item % nblocks) * block
        w = min(L, l0 + block) - l0
        for step in range(C + back):
            c = step
            if c < C:
                _window_squares(x, n, c, back, ahead, l0, w, s)
                _scale_pow_t(
                    s,
                    x[n, c, l0 : l0 + w],
                    dy[n, c, l0 : l0 + w],
                    dx[n, c, l0 : l0 + w],
                    t[c % width],
                    w,
                    alpha,
                    k,
                    mode,
                    neg_beta,
                    one,
                )
            j = step - back
            if j >= 0:
                _ring_sum(t, max(0, j - ahead), min(C, j + back + 1), s, w)
                xr = x[n, j, l0 : l0 + w]
                dyr = dy[n, j, l0 : l0 + w]
                dxr = dx[n, j, l0 : l0 + w]  # holds s_j^-beta
                for i in range(w):
                    dxr[i] = dyr[i] * dxr[i] - coef * xr[i] * s[i]


# --- across channels, (N, L, C) layout (channels-last memory) ----------------------------


@njit(nogil=True, cache=True, error_model="numpy")
def _window_shifts(buf, width, s, n):
    """s[:n] = sum_{d < width} buf[d : d + n] (direct, ascending; one loop up to width 5)."""
    if width == 1:
        for i in range(n):
            s[i] = buf[i]
    elif width == 2:
        for i in range(n):
            s[i] = buf[i] + buf[i + 1]
    elif width == 3:
        for i in range(n):
            s[i] = buf[i] + buf[i + 1] + buf[i + 2]
    elif width == 4:
        for i in range(n):
            s[i] = buf[i] + buf[i + 1] + buf[i + 2] + buf[i + 3]
    else:
        for i in range(n):
            s[i] = buf[i] + buf[i + 1] + buf[i + 2] + buf[i + 3] + buf[i + 4]
        for d in range(5, width):
            for i in range(n):
                s[i] += buf[i + d]


@njit(nogil=True, cache=True, error_model="numpy")
def _lrn_nlc_fwd_kernel(x, y, back, ahead, alpha, k, mode, neg_beta, one, rows, start, stop):
    # x, y: (R, C) contiguous rows (R = N * L); work item = a block of ``rows`` rows.
    # The block's squares sit in one flat buffer, each row padded by width - 1 zeros, so
    # one long shifted sum serves every row (C-long loops would be all overhead).
    R, C = x.shape
    width = back + ahead + 1
    seg = C + width - 1
    sq = np.zeros(rows * seg, x.dtype)  # row r: x^2 at [r*seg + back, r*seg + back + C)
    s = np.empty(rows * seg, x.dtype)
    p = np.empty(rows * seg, x.dtype)
    for item in range(start, stop):
        r0 = item * rows
        nr = min(R, r0 + rows) - r0
        for r in range(nr):
            xr = x[r0 + r]
            o = r * seg + back
            for c in range(C):
                sq[o + c] = xr[c] * xr[c]
        n = nr * seg - (width - 1)  # s[r*seg + c] (c < C) is row r's window sum
        _window_shifts(sq, width, s, n)
        for i in range(n):
            s[i] = k + alpha * s[i]
        _neg_pow_row(s, p, n, mode, neg_beta, one)
        for r in range(nr):
            xr = x[r0 + r]
            yr = y[r0 + r]
            o = r * seg
            for c in range(C):
                yr[c] = xr[c] * p[o + c]


@njit(nogil=True, cache=True, error_model="numpy")
def _lrn_nlc_bwd_kernel(
    x, dy, dx, back, ahead, alpha, k, mode, neg_beta, one, coef, rows, start, stop
):
    # x, dy, dx: (R, C) contiguous rows; flat padded buffers as in the forward
    R, C = x.shape
    width = back + ahead + 1
    seg = C + width - 1
    sq = np.zeros(rows * seg, x.dtype)  # x^2 at [r*seg + back, +C)
    t = np.zeros(rows * seg, x.dtype)  # dy x s^(-beta-1) at [r*seg + ahead, +C)
    s = np.empty(rows * seg, x.dtype)
    p = np.empty(rows * seg, x.dtype)
    for item in range(start, stop):
        r0 = item * rows
        nr = min(R, r0 + rows) - r0
        for r in range(nr):
            xr = x[r0 + r]
            o = r * seg + back
            for c in range(C):
                sq[o + c] = xr[c] * xr[c]
        n = nr * seg - (width - 1)
        _window_shifts(sq, width, s, n)
        for i in range(n):
            s[i] = k + alpha * s[i]
        _neg_pow_row(s, p, n, mode, neg_beta, one)
        for r in range(nr):
            xr = x[r0 + r]
            dyr = dy[r0 + r]
            o = r * seg
            for c in range(C):
                t[o + ahead + c] = dyr[c] * xr[c] * p[o + c] / s[o + c]
        _window_shifts(t, width, s, n)  # adjoint window (t is padded the mirrored way)
        for r in range(nr):
            xr = x[r0 + r]
            dyr = dy[r0 + r]
            dxr = dx[r0 + r]
            o = r * seg
            for c in range(C):
                dxr[c] = dyr[c] * p[o + c] - coef * xr[c] * s[o + c]


# --- within a channel: (N*C, H, W) planes -------------------------------------------------


@njit(nogil=True, cache=True, error_model="numpy")
def _box_sum(v, out, rows, width):
    """out = direct width x width box sum of zero-padded v, along H first, then W.

    v: (H + width - 1, W + width - 1); rows: scratch (H, W + width - 1); out: (H, W).
    """
    H, W = out.shape
    for h in range(H):
        _window_rows(v, h, width, rows[h], W + width - 1)
    for h in range(H):
        _window_shifts(rows[h], width, out[h], W)


@njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _plane_scale(xq, sq, s, rows, back, width, alpha, k):
    # xq: (H, W) plane; s <- k + alpha * (width x width box sum of xq^2), zero padded.
    # sq: (H + width - 1, W + width - 1) with zero borders, interior at [back, back).
    H, W = xq.shape
    for h in range(H):
        xr = xq[h]
        sr = sq[back + h, back : back + W]
        for i in range(W):
            sr[i] = xr[i] * xr[i]
    _box_sum(sq, s, rows, width)
    for h in range(H):
        sh = s[h]
        for i in range(W):
            sh[i] = k + alpha * sh[i]


@njit(nogil=True, cache=True, error_model="numpy")
def _lrn_within_fwd_kernel(x, y, back, ahead, alpha, k, mode, neg_beta, one, start, stop):
    # x, y: (P, H, W) contiguous planes (P = N * C); work item = one plane
    P, H, W = x.shape
    width = back + ahead + 1
    sq = np.zeros((H + width - 1, W + width - 1), x.dtype)  # interior at [back, back)
    rows = np.empty((H, W + width - 1), x.dtype)
    s = np.empty((H, W), x.dtype)
    p = np.empty(W, x.dtype)
    for q in range(start, stop):
        _plane_scale(x[q], sq, s, rows, back, width, alpha, k)
        for h in range(H):
            sh = s[h]
            _neg_pow_row(sh, p, W, mode, neg_beta, one)
            xr = x[q, h]
            yr = y[q, h]
            for i in range(W):
                yr[i] = xr[i] * p[i]


@njit(nogil=True, cache=True, error_model="numpy")
def _lrn_within_bwd_kernel(
    x, dy, dx, back, ahead, alpha, k, mode, neg_beta, one, coef, start, stop
):
    # x, dy, dx: (P, H, W) contiguous planes
    P, H, W = x.shape
    width = back + ahead + 1
    sq = np.zeros((H + width - 1, W + width - 1), x.dtype)  # x^2 at [back, back)
    t = np.zeros((H + width - 1, W + width - 1), x.dtype)  # dy x s^(-b-1) at [ahead, ahead)
    rows = np.empty((H, W + width - 1), x.dtype)
    s = np.empty((H, W), x.dtype)
    p = np.empty((H, W), x.dtype)
    acc = np.empty((H, W), x.dtype)
    for q in range(start, stop):
        _plane_scale(x[q], sq, s, rows, back, width, alpha, k)  # recomputed: nothing saved
        for h in range(H):
            sh = s[h]
            ph = p[h]
            _neg_pow_row(sh, ph, W, mode, neg_beta, one)
            xr = x[q, h]
            dyr = dy[q, h]
            tr = t[ahead + h, ahead : ahead + W]
            for i in range(W):
                tr[i] = dyr[i] * xr[i] * ph[i] / sh[i]
        _box_sum(t, acc, rows, width)  # adjoint box: t is padded the mirrored way
        for h in range(H):
            xr = x[q, h]
            dyr = dy[q, h]
            dxr = dx[q, h]
            ph = p[h]
            ah = acc[h]
            for i in range(W):
                dxr[i] = dyr[i] * ph[i] - coef * xr[i] * ah[i]


# --- launchers ---------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def _scalars(cdt, alpha, beta, k):
    # -beta stays float64: mode 0 runs in float64, mode 4 (float32) takes its power there
    npt = np.float64 if cdt == torch.float64 else np.float32
    return npt(alpha), npt(k), beta_mode(beta, cdt), np.float64(-beta), npt(1.0)


def _across_layout(x: torch.Tensor):
    """('nlc', (N*L, C) view) when channels are innermost in memory, else ('ncl', (N, C, L))."""
    n, c = x.shape[0], x.shape[1]
    moved = x.movedim(1, -1)
    if c > 1 and moved.is_contiguous():
        return "nlc", moved.reshape(-1, c)
    xc = x.contiguous()
    return "ncl", xc.reshape(n, c, -1)


def _ncl_block(c: int, width: int, length: int) -> int:
    # positions per work item: the rows of one block of all C channels stay in L2
    block = max(16, (_BUFFER_ELEMS // (c + width - 1)) // 16 * 16)
    return min(block, length) if length > 0 else 1


def _nlc_rows(c: int, width: int) -> int:
    return max(1, (_BUFFER_ELEMS // 8) // (c + width - 1))


@implements("lrn_fwd", "cpu")
def lrn_fwd(
    x: torch.Tensor, back: int, ahead: int, alpha: float, beta: float, k: float, within: bool
) -> torch.Tensor:
    """LRN forward with fused numba kernels: ``y = x * (k + alpha * S)^-beta``.

    ``S`` is the direct sum of ``x^2`` over channels ``[c - back, c + ahead]`` (or the
    box ``[h - back, h + ahead] x [w - back, w + ahead]`` when ``within``), zero padded.

    Args:
        x: input, channels on dim 1.
        back, ahead: window reach before / after the centre (canonical form).
        alpha: coefficient of the window sum (the framework's alpha / D).
        beta: exponent; 1/2, 3/4 and 1 take exact fast paths.
        k: additive constant.
        within: spatial box instead of a channel window.

    Shape:
        x: (N, C, *) across, (N, C, H, W) within; y like x (channels-last input gives a
        channels-last y). float16/bfloat16 are computed in float32.

    Example::

        >>> y = lrn_fwd(torch.randn(2, 8, 5, 5), 2, 2, 1e-4 / 5, 0.75, 1.0, False)
    """
    cdt = _compute_dtype(x.dtype)
    xc = x.detach().to(cdt)
    if xc.numel() == 0:
        return torch.empty_like(x)
    a, kk, mode, nb, one = _scalars(cdt, alpha, beta, k)
    if within:
        xc = xc.contiguous()
        n, c, h, w = xc.shape
        y = _alloc.empty_like(xc)
        parallel_for(
            _lrn_within_fwd_kernel,
            n * c,
            (
                _np(xc).reshape(n * c, h, w),
                _np(y).reshape(n * c, h, w),
                back,
                ahead,
                a,
                kk,
                mode,
                nb,
                one,
            ),
        )
    else:
        layout, x3 = _across_layout(xc)
        y3 = _alloc.empty_like(x3)
        if layout == "nlc":
            rows = _nlc_rows(x3.shape[1], back + ahead + 1)
            parallel_for(
                _lrn_nlc_fwd_kernel,
                -(-x3.shape[0] // rows),
                (_np(x3), _np(y3), back, ahead, a, kk, mode, nb, one, rows),
            )
            shape = list(xc.movedim(1, -1).shape)
            y = y3.reshape(shape).movedim(-1, 1)
        else:
            n, c, length = x3.shape
            block = _ncl_block(c, back + ahead + 1, length)
            nblocks = -(-length // block)
            parallel_for(
                _lrn_ncl_fwd_kernel,
                n * nblocks,
                (_np(x3), _np(y3), back, ahead, a, kk, mode, nb, one, block),
            )
            y = y3.reshape(xc.shape)
    return y if y.dtype == x.dtype else y.to(x.dtype)


@implements("lrn_bwd", "cpu")
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
    """LRN backward: dx given dy, recomputing the scale from x (nothing else is saved).

    ``dx_j = dy_j s_j^-beta - 2 alpha beta x_j sum_{c = j-ahead}^{j+back} dy_c x_c s_c^(-beta-1)``

    Args:
        x: the forward input; dy: gradient of the output (any layout, like x's shape).
        back, ahead, alpha, beta, k, within: as in :func:`lrn_fwd`.

    Shape:
        dx like x.

    Example::

        >>> x = torch.randn(2, 8, 5, 5)
        >>> dx = lrn_bwd(x, torch.ones_like(x), 2, 2, 1e-4 / 5, 0.75, 1.0, False)
    """
    cdt = _compute_dtype(x.dtype)
    xc = x.detach().to(cdt)
    dyc = dy.detach().to(cdt)
    if xc.numel() == 0:
        return torch.empty_like(x)
    a, kk, mode, nb, one = _scalars(cdt, alpha, beta, k)
    coef = (np.float64 if cdt == torch.float64 else np.float32)(2.0 * alpha * beta)
    if within:
        xc, dyc = xc.contiguous(), dyc.contiguous()
        n, c, h, w = xc.shape
        dx = _alloc.empty_like(xc)
        parallel_for(
            _lrn_within_bwd_kernel,
            n * c,
            (
                _np(xc).reshape(n * c, h, w),
                _np(dyc).reshape(n * c, h, w),
                _np(dx).reshape(n * c, h, w),
                back,
                ahead,
                a,
                kk,
                mode,
                nb,
                one,
                coef,
            ),
        )
    else:
        layout, x3 = _across_layout(xc)
        if layout == "nlc":
            dy3 = dyc.movedim(1, -1).reshape(x3.shape)  # copies only if dy's layout differs
            dy3 = dy3.contiguous()
            dx3 = _alloc.empty_like(x3)
            rows = _nlc_rows(x3.shape[1], back + ahead + 1)
            parallel_for(
                _lrn_nlc_bwd_kernel,
                -(-x3.shape[0] // rows),
                (_np(x3), _np(dy3), _np(dx3), back, ahead, a, kk, mode, nb, one, coef, rows),
            )
            dx = dx3.reshape(list(xc.movedim(1, -1).shape)).movedim(-1, 1)
        else:
            n, c, length = x3.shape
            dy3 = dyc.contiguous().reshape(n, c, length)
            dx3 = _alloc.empty_like(x3)
            block = _ncl_block(c, back + ahead + 1, length)
            nblocks = -(-length // block)
            parallel_for(
                _lrn_ncl_bwd_kernel,
                n * nblocks,
                (_np(x3), _np(dy3), _np(dx3), back, ahead, a, kk, mode, nb, one, coef, block),
            )
            dx = dx3.reshape(xc.shape)
    return dx if dx.dtype == x.dtype else dx.to(x.dtype)
