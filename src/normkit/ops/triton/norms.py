"""LayerNorm, RMSNorm and GroupNorm (InstanceNorm = GroupNorm with G = C) in Triton.

Statistics are two-pass in the accumulator dtype (float32, float64 for float64
inputs): the mean first, then the mean of squared deviations from it, never
E[x^2] - E[x]^2 (docs/design.md section 2), on data shifted by the row's first value
(see ``_row_stats``). Each pass keeps a vector accumulator of BLOCK lanes across
chunks and reduces it once at the end (a tree, not a serial sum).

Rows that fit one block stay in registers; longer rows are walked in chunks and
the second and third passes re-read them, normally from L2.

Weight/bias gradients are deterministic: every backward program owns one row
of a partial buffer (no atomics, no locks), and ``column_sum`` adds the rows
in order afterwards.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..._validation import check_groups
from ..schema import implements
from ._common import acc_dtype, block_for, column_sum, num_partials, stats_dtype, warps_for

__all__ = [
    "layer_norm_fwd",
    "layer_norm_bwd",
    "rms_norm_fwd",
    "rms_norm_bwd",
    "group_norm_fwd",
    "group_norm_bwd",
]

MAX_BLOCK = 4096


@triton.jit
def _row_stats(x_row, D, RMS: tl.constexpr, ACC_DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    """(shift, mean - shift, mean of squared deviations) of one contiguous row of D values.

    The row's first value is the shift: values near a large common mean become
    small exact differences before anything is summed, so the mean keeps its
    digits at |mean|/std = 1e4. RMS: shift = mean = 0 and the variance is mean(x^2).
    """
    offs = tl.arange(0, BLOCK)
    zero = tl.zeros([BLOCK], dtype=ACC_DTYPE)
    if RMS:
        shift = tl.sum(zero, axis=0)
        mean_s = tl.sum(zero, axis=0)
    else:
        shift = tl.load(x_row).to(ACC_DTYPE)
        acc = tl.zeros([BLOCK], dtype=ACC_DTYPE)
        for start in range(0, D, BLOCK):
            m = start + offs < D
            v = tl.load(x_row + start + offs, mask=m, other=0.0).to(ACC_DTYPE)
            acc += tl.where(m, v - shift, 0.0)
        mean_s = tl.sum(acc, axis=0) / D
    acc2 = tl.zeros([BLOCK], dtype=ACC_DTYPE)
    for start in range(0, D, BLOCK):
        m = start + offs < D
        v = tl.load(x_row + start + offs, mask=m, other=0.0).to(ACC_DTYPE)
        d = tl.where(m, (v - shift) - mean_s, 0.0)
        acc2 += d * d
    var = tl.sum(acc2, axis=0) / D
    return shift, mean_s, var


@triton.jit
def _layer_norm_fwd_kernel(
    x_ptr,  # (M, D) input rows
    w_ptr,  # (D,) weight, or any pointer when not HAS_WEIGHT
    b_ptr,  # (D,) bias, or any pointer when not HAS_BIAS
    y_ptr,  # (M, D) output, x's dtype
    mean_ptr,  # (M,) accumulator dtype; untouched when RMS
    rstd_ptr,  # (M,) accumulator dtype
    D,
    eps: tl.float64,  # float64 so a float64 row is not normalized with a float32 eps
    RMS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
    ONE_CHUNK: tl.constexpr,
):
    """One program per row: y = (x - mean) * rstd * w + b (RMS: mean = 0, no bias).

    ONE_CHUNK (D <= BLOCK): the row is loaded once and kept in registers; longer
    rows are walked three times (mean, variance, output), re-read from cache.
    """
    row = tl.program_id(0)
    x_row = x_ptr + row * D
    offs = tl.arange(0, BLOCK)
    if ONE_CHUNK:
        m = offs < D
        v = tl.load(x_row + offs, mask=m, other=0.0).to(ACC_DTYPE)
        if RMS:
            shift = 0.0
            mean_s = 0.0
            d = v
        else:
            shift = tl.load(x_row).to(ACC_DTYPE)  # see _row_stats: exact small differences
            mean_s = tl.sum(tl.where(m, v - shift, 0.0), axis=0) / D
            d = tl.where(m, (v - shift) - mean_s, 0.0)
        var = tl.sum(d * d, axis=0) / D
    else:
        shift, mean_s, var = _row_stats(x_row, D, RMS, ACC_DTYPE, BLOCK)
    rstd = 1.0 / tl.sqrt(tl.maximum(var, 0.0) + tl.full([], eps, ACC_DTYPE))
    if not RMS:
        tl.store(mean_ptr + row, shift + mean_s)
    tl.store(rstd_ptr + row, rstd)
    for start in range(0, D, BLOCK):
        cols = start + offs
        m = cols < D
        if ONE_CHUNK:
            y = d * rstd
        else:
            v = tl.load(x_row + cols, mask=m, other=0.0).to(ACC_DTYPE)
            y = ((v - shift) - mean_s) * rstd  # the unrounded mean: better than x - mean
        if HAS_WEIGHT:
            y = y * tl.load(w_ptr + cols, mask=m, other=0.0).to(ACC_DTYPE)
        if HAS_BIAS:
            y = y + tl.load(b_ptr + cols, mask=m, other=0.0).to(ACC_DTYPE)
        tl.store(y_ptr + row * D + cols, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _layer_norm_bwd_kernel(
    dy_ptr,  # (M, D) upstream gradient
    x_ptr,  # (M, D) forward input
    mean_ptr,  # (M,) saved mean (unused when RMS)
    rstd_ptr,  # (M,) saved rstd
    w_ptr,  # (D,) weight, or any pointer when not HAS_WEIGHT
    dx_ptr,  # (M, D) output, x's dtype
    dw_part_ptr,  # (P, D) zero-initialised partial sum of dy * x_hat, one row per program
    db_part_ptr,  # (P, D) zero-initialised partial sum of dy (unused when RMS)
    M,
    D,
    rows_per_program,
    RMS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
    ONE_CHUNK: tl.constexpr,
):
    """dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)), g = dy * w (RMS: no mean(g)).

    Program p handles rows [p * rows_per_program, ...) and accumulates its
    weight/bias partials into row p of the partial buffers, which it alone owns.
    """
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    # ONE_CHUNK (D <= BLOCK): the row lives in registers and the program's
    # weight/bias partials too, written once at the end
    dw_acc = tl.zeros([BLOCK], dtype=ACC_DTYPE)
    db_acc = tl.zeros([BLOCK], dtype=ACC_DTYPE)
    for row in range(row_start, row_end):
        rstd = tl.load(rstd_ptr + row).to(ACC_DTYPE)
        if RMS:
            mean = 0.0
        else:
            mean = tl.load(mean_ptr + row).to(ACC_DTYPE)
        if ONE_CHUNK:
            m = offs < D
            x = tl.load(x_ptr + row * D + offs, mask=m, other=0.0).to(ACC_DTYPE)
            dy = tl.load(dy_ptr + row * D + offs, mask=m, other=0.0).to(ACC_DTYPE)
            g = dy
            if HAS_WEIGHT:
                g = g * tl.load(w_ptr + offs, mask=m, other=0.0).to(ACC_DTYPE)
            x_hat = tl.where(m, (x - mean) * rstd, 0.0)
            mean_gx = tl.sum(g * x_hat, axis=0) / D
            if RMS:
                dx = rstd * (g - x_hat * mean_gx)
            else:
                dx = rstd * (g - tl.sum(g, axis=0) / D - x_hat * mean_gx)
            tl.store(dx_ptr + row * D + offs, dx.to(dx_ptr.dtype.element_ty), mask=m)
            dw_acc += dy * x_hat
            db_acc += dy
        else:
            sum_g = tl.zeros([BLOCK], dtype=ACC_DTYPE)
            sum_gx = tl.zeros([BLOCK], dtype=ACC_DTYPE)
            for start in range(0, D, BLOCK):
                cols = start + offs
                m = cols < D
                x = tl.load(x_ptr + row * D + cols, mask=m, other=0.0).to(ACC_DTYPE)
                g = tl.load(dy_ptr + row * D + cols, mask=m, other=0.0).to(ACC_DTYPE)
                if HAS_WEIGHT:
                    g = g * tl.load(w_ptr + cols, mask=m, other=0.0).to(ACC_DTYPE)
                x_hat = tl.where(m, (x - mean) * rstd, 0.0)
                sum_g += g
                sum_gx += g * x_hat
            mean_g = tl.sum(sum_g, axis=0) / D
            mean_gx = tl.sum(sum_gx, axis=0) / D
            for start in range(0, D, BLOCK):
                cols = start + offs
                m = cols < D
                x = tl.load(x_ptr + row * D + cols, mask=m, other=0.0).to(ACC_DTYPE)
                dy = tl.load(dy_ptr + row * D + cols, mask=m, other=0.0).to(ACC_DTYPE)
                g = dy
                if HAS_WEIGHT:
                    g = g * tl.load(w_ptr + cols, mask=m, other=0.0).to(ACC_DTYPE)
                x_hat = (x - mean) * rstd
                if RMS:
                    dx = rstd * (g - x_hat * mean_gx)
                else:
                    dx = rstd * (g - mean_g - x_hat * mean_gx)
                tl.store(dx_ptr + row * D + cols, dx.to(dx_ptr.dtype.element_ty), mask=m)
                # program-owned row of the partial buffer: plain read-modify-write, no race
                part = pid * D + cols
                tl.store(
                    dw_part_ptr + part, tl.load(dw_part_ptr + part, mask=m) + dy * x_hat, mask=m
                )
                if not RMS:
                    tl.store(db_part_ptr + part, tl.load(db_part_ptr + part, mask=m) + dy, mask=m)
    if ONE_CHUNK:
        m = offs < D
        tl.store(dw_part_ptr + pid * D + offs, dw_acc, mask=m)
        if not RMS:
            tl.store(db_part_ptr + pid * D + offs, db_acc, mask=m)


def _check_rows(name: str, x: torch.Tensor, weight, bias=None):
    if x.dim() != 2:
        raise ValueError(
            f"{name}: x must be 2-D (M, D), got shape {tuple(x.shape)}; "
            "flatten the leading dims and the normalized dims first"
        )
    d = x.shape[1]
    for label, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (d,):
            raise ValueError(f"{name}: {label} shape {tuple(p.shape)} must be (D,) = ({d},)")


def _norm_rows_fwd(x, weight, bias, eps, rms: bool):
    x = x.contiguous()
    m_rows, d = x.shape
    y = torch.empty_like(x)
    sdt = stats_dtype(x.dtype)
    mean = torch.zeros(m_rows, dtype=sdt, device=x.device)
    rstd = torch.empty(m_rows, dtype=sdt, device=x.device)
    if m_rows == 0:
        return y, mean, rstd
    if d == 0:
        raise ValueError(f"normalized size D must be > 0, got x shape {tuple(x.shape)}")
    w = weight.contiguous() if weight is not None else x
    b = bias.contiguous() if bias is not None else x
    block = block_for(d, MAX_BLOCK)
    _layer_norm_fwd_kernel[(m_rows,)](
        x,
        w,
        b,
        y,
        mean,
        rstd,
        d,
        float(eps),
        RMS=rms,
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        ACC_DTYPE=acc_dtype(x.dtype),
        BLOCK=block,
        ONE_CHUNK=d <= block,
        num_warps=warps_for(block),
    )
    return y, mean, rstd


def _norm_rows_bwd(dy, x, mean, rstd, weight, rms: bool):
    x = x.contiguous()
    dy = dy.contiguous()
    m_rows, d = x.shape
    dx = torch.empty_like(x)
    sdt = stats_dtype(x.dtype)
    progs = num_partials(m_rows, x.device)
    dw_part = torch.zeros(progs, d, dtype=sdt, device=x.device)
    db_part = torch.zeros(progs, d, dtype=sdt, device=x.device) if not rms else dw_part
    if m_rows > 0:
        w = weight.contiguous() if weight is not None else x
        block = block_for(d, MAX_BLOCK)
        _layer_norm_bwd_kernel[(progs,)](
            dy,
            x,
            mean if mean is not None else rstd,
            rstd,
            w,
            dx,
            dw_part,
            db_part,
            m_rows,
            d,
            triton.cdiv(m_rows, progs),
            RMS=rms,
            HAS_WEIGHT=weight is not None,
            ACC_DTYPE=acc_dtype(x.dtype),
            BLOCK=block,
            ONE_CHUNK=d <= block,
            num_warps=warps_for(block),
        )
    wdt = weight.dtype if weight is not None else x.dtype
    dweight = column_sum(dw_part, wdt) if weight is not None else None
    dbias = None if rms else column_sum(db_part, wdt)
    return dx, dweight, dbias


@implements("layer_norm_fwd", "triton")
def layer_norm_fwd(
    x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float
):
    """LayerNorm over the last dim: y = (x - mean) * rstd * weight + bias.

    rstd = 1 / sqrt(var + eps), var biased, both two-pass in float32 (float64 for float64).

    Args:
        x: (M, D). weight, bias: (D,) or None. eps: added to the variance.

    Shape: y (M, D) in x's dtype; mean, rstd (M,) float32 (float64 for float64 x).

    Example:
        >>> y, mean, rstd = layer_norm_fwd(x, w, b, 1e-5)
    """
    _check_rows("layer_norm", x, weight, bias)
    return _norm_rows_fwd(x, weight, bias, eps, rms=False)


@implements("layer_norm_bwd", "triton")
def layer_norm_bwd(dy, x, mean, rstd, weight):
    """Gradients of LayerNorm: dx = rstd (g - mean(g) - x_hat mean(g x_hat)), g = dy weight.

    dweight = sum_rows dy x_hat (None when weight is None); dbias = sum_rows dy.

    Args:
        dy, x: (M, D). mean, rstd: (M,) from :func:`layer_norm_fwd`. weight: (D,) or None.

    Shape: dx (M, D); dweight, dbias (D,) in the weight's dtype (x's when weight is None).

    Example:
        >>> dx, dw, db = layer_norm_bwd(dy, x, mean, rstd, w)
    """
    _check_rows("layer_norm_bwd", x, weight)
    return _norm_rows_bwd(dy, x, mean, rstd, weight, rms=False)


@implements("rms_norm_fwd", "triton")
def rms_norm_fwd(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float):
    """RMSNorm over the last dim: y = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps).

    Runs the LayerNorm kernel with RMS=True (no centering, no bias).

    Args: x (M, D); weight (D,) or None; eps.
    Shape: y (M, D); rstd (M,) float32 (float64 for float64 x).
    Example:
        >>> y, rstd = rms_norm_fwd(x, w, 1e-6)
    """
    _check_rows("rms_norm", x, weight)
    y, _mean, rstd = _norm_rows_fwd(x, weight, None, eps, rms=True)
    return y, rstd


@implements("rms_norm_bwd", "triton")
def rms_norm_bwd(dy, x, rstd, weight):
    """Gradients of RMSNorm: dx = rstd (g - x_hat mean(g x_hat)), x_hat = x rstd, g = dy weight.

    Args: dy, x (M, D); rstd (M,); weight (D,) or None.
    Shape: dx (M, D); dweight (D,) or None.
    Example:
        >>> dx, dw = rms_norm_bwd(dy, x, rstd, w)
    """
    _check_rows("rms_norm_bwd", x, weight)
    dx, dweight, _ = _norm_rows_bwd(dy, x, None, rstd, weight, rms=True)
    return dx, dweight


# ----------------------------------------------------------------------------- GroupNorm


@triton.jit
def _group_norm_fwd_kernel(
    x_ptr,  # (N, C, L) input
    w_ptr,  # (C,) weight, or any pointer when not HAS_WEIGHT
    b_ptr,  # (C,) bias, or any pointer when not HAS_BIAS
    y_ptr,  # (N, C, L) output, x's dtype
    mean_ptr,  # (N, G) accumulator dtype
    rstd_ptr,  # (N, G) accumulator dtype
    G,
    L,
    group_size,
    channels_per_group,
    eps: tl.float64,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program per (n, g): a group is a contiguous run of C/G * L values."""
    row = tl.program_id(0)  # = n * G + g
    x_row = x_ptr + row * group_size
    shift, mean_s, var = _row_stats(x_row, group_size, False, ACC_DTYPE, BLOCK)
    rstd = 1.0 / tl.sqrt(tl.maximum(var, 0.0) + tl.full([], eps, ACC_DTYPE))
    tl.store(mean_ptr + row, shift + mean_s)
    tl.store(rstd_ptr + row, rstd)
    first_channel = (row % G) * channels_per_group
    offs = tl.arange(0, BLOCK)
    for start in range(0, group_size, BLOCK):
        idx = start + offs
        m = idx < group_size
        ch = first_channel + idx // L
        v = tl.load(x_row + idx, mask=m, other=0.0).to(ACC_DTYPE)
        y = ((v - shift) - mean_s) * rstd
        if HAS_WEIGHT:
            y = y * tl.load(w_ptr + ch, mask=m, other=0.0).to(ACC_DTYPE)
        if HAS_BIAS:
            y = y + tl.load(b_ptr + ch, mask=m, other=0.0).to(ACC_DTYPE)
        tl.store(y_ptr + row * group_size + idx, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _group_norm_bwd_kernel(
    dy_ptr,  # (N, C, L) upstream gradient
    x_ptr,  # (N, C, L) forward input
    mean_ptr,  # (N, G) saved mean
    rstd_ptr,  # (N, G) saved rstd
    w_ptr,  # (C,) weight, or any pointer when not HAS_WEIGHT
    dx_ptr,  # (N, C, L) output (phase 2), x's dtype
    s_dy_ptr,  # (N, C) per-channel sum of dy (written in phase 1, read in phase 2)
    s_dy_xhat_ptr,  # (N, C) per-channel sum of dy * x_hat
    C,
    G,
    L,
    channels_per_group,
    PHASE: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_CPG: tl.constexpr,
):
    """One program per (n, c).

    Phase 1: per-channel sums of dy and dy * x_hat (these also give dweight/dbias).
    Phase 2: dx = rstd (g - mean_group(g) - x_hat mean_group(g x_hat)), g = dy w_c,
    where the group means come from the phase-1 sums weighted by w.
    """
    row = tl.program_id(0)  # = n * C + c
    n = row // C
    c = row % C
    grp = c // channels_per_group
    mean = tl.load(mean_ptr + n * G + grp).to(ACC_DTYPE)
    rstd = tl.load(rstd_ptr + n * G + grp).to(ACC_DTYPE)
    offs = tl.arange(0, BLOCK)
    base = row * L
    if PHASE == 1:
        acc_dy = tl.zeros([BLOCK], dtype=ACC_DTYPE)
        acc_dyx = tl.zeros([BLOCK], dtype=ACC_DTYPE)
        for start in range(0, L, BLOCK):
            idx = start + offs
            m = idx < L
            x = tl.load(x_ptr + base + idx, mask=m, other=0.0).to(ACC_DTYPE)
            dy = tl.load(dy_ptr + base + idx, mask=m, other=0.0).to(ACC_DTYPE)
            acc_dy += dy
            acc_dyx += dy * tl.where(m, (x - mean) * rstd, 0.0)
        tl.store(s_dy_ptr + row, tl.sum(acc_dy, axis=0))
        tl.store(s_dy_xhat_ptr + row, tl.sum(acc_dyx, axis=0))
    else:
        k = tl.arange(0, BLOCK_CPG)
        km = k < channels_per_group
        first = n * C + grp * channels_per_group
        s1 = tl.load(s_dy_ptr + first + k, mask=km, other=0.0)
        s2 = tl.load(s_dy_xhat_ptr + first + k, mask=km, other=0.0)
        if HAS_WEIGHT:
            wg = tl.load(w_ptr + grp * channels_per_group + k, mask=km, other=0.0).to(ACC_DTYPE)
            s1 = s1 * wg
            s2 = s2 * wg
            w_c = tl.load(w_ptr + c).to(ACC_DTYPE)
        else:
            w_c = 1.0
        count = channels_per_group * L
        mean_g = tl.sum(s1, axis=0) / count
        mean_gx = tl.sum(s2, axis=0) / count
        for start in range(0, L, BLOCK):
            idx = start + offs
            m = idx < L
            x = tl.load(x_ptr + base + idx, mask=m, other=0.0).to(ACC_DTYPE)
            dy = tl.load(dy_ptr + base + idx, mask=m, other=0.0).to(ACC_DTYPE)
            x_hat = (x - mean) * rstd
            dx = rstd * (dy * w_c - mean_g - x_hat * mean_gx)
            tl.store(dx_ptr + base + idx, dx.to(dx_ptr.dtype.element_ty), mask=m)


def _check_groups(name, x, weight, bias, num_groups):
    if x.dim() != 3:
        raise ValueError(
            f"{name}: x must be 3-D (N, C, L), got shape {tuple(x.shape)}; "
            "flatten the spatial dims first"
        )
    c = x.shape[1]
    check_groups(c, num_groups, name)
    for label, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (c,):
            raise ValueError(f"{name}: {label} shape {tuple(p.shape)} must be (C,) = ({c},)")


@implements("group_norm_fwd", "triton")
def group_norm_fwd(x: torch.Tensor, weight, bias, num_groups: int, eps: float):
    """GroupNorm: per (n, group) statistics, per-channel affine.

    y[n, c, l] = (x - mean[n, g(c)]) * rstd[n, g(c)] * weight[c] + bias[c]; InstanceNorm is G = C.

    Args:
        x: (N, C, L). weight, bias: (C,) or None. num_groups: G, divides C. eps.

    Shape: y (N, C, L); mean, rstd (N, G) float32 (float64 for float64 x).

    Example:
        >>> y, mean, rstd = group_norm_fwd(x, w, b, 4, 1e-5)
    """
    _check_groups("group_norm", x, weight, bias, num_groups)
    x = x.contiguous()
    n, c, length = x.shape
    y = torch.empty_like(x)
    sdt = stats_dtype(x.dtype)
    mean = torch.empty(n, num_groups, dtype=sdt, device=x.device)
    rstd = torch.empty(n, num_groups, dtype=sdt, device=x.device)
    if x.numel() == 0:
        # an empty group has no mean: NaN, as a mean over zero elements is in torch
        mean.fill_(float("nan"))
        rstd.fill_(float("nan"))
        return y, mean, rstd
    cpg = c // num_groups
    group_size = cpg * length
    w = weight.contiguous() if weight is not None else x
    b = bias.contiguous() if bias is not None else x
    block = block_for(group_size, MAX_BLOCK)
    _group_norm_fwd_kernel[(n * num_groups,)](
        x,
        w,
        b,
        y,
        mean,
        rstd,
        num_groups,
        length,
        group_size,
        cpg,
        float(eps),
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        ACC_DTYPE=acc_dtype(x.dtype),
        BLOCK=block,
        num_warps=warps_for(block),
    )
    return y, mean, rstd


@implements("group_norm_bwd", "triton")
def group_norm_bwd(dy, x, mean, rstd, weight, num_groups: int):
    """Gradients of GroupNorm (two launches plus a deterministic column sum).

    dx = rstd (g - mean_grp(g) - x_hat mean_grp(g x_hat)), g = dy weight[c];
    dweight[c] = sum_{n,l} dy x_hat; dbias[c] = sum_{n,l} dy.

    Args: dy, x (N, C, L); mean, rstd (N, G); weight (C,) or None; num_groups.
    Shape: dx (N, C, L); dweight (C,) or None; dbias (C,).
    Example:
        >>> dx, dw, db = group_norm_bwd(dy, x, mean, rstd, w, 4)
    """
    _check_groups("group_norm_bwd", x, weight, None, num_groups)
    x = x.contiguous()
    dy = dy.contiguous()
    n, c, length = x.shape
    dx = torch.empty_like(x)
    sdt = stats_dtype(x.dtype)
    s_dy = torch.zeros(n, c, dtype=sdt, device=x.device)
    s_dy_xhat = torch.zeros(n, c, dtype=sdt, device=x.device)
    if x.numel() > 0:
        cpg = c // num_groups
        w = weight.contiguous() if weight is not None else x
        block = block_for(length, MAX_BLOCK)
        meta = dict(
            HAS_WEIGHT=weight is not None,
            ACC_DTYPE=acc_dtype(x.dtype),
            BLOCK=block,
            BLOCK_CPG=block_for(cpg, 1 << 20),
            num_warps=warps_for(block),
        )
        for phase in (1, 2):
            _group_norm_bwd_kernel[(n * c,)](
                dy,
                x,
                mean.contiguous(),
                rstd.contiguous(),
                w,
                dx,
                s_dy,
                s_dy_xhat,
                c,
                num_groups,
                length,
                cpg,
                PHASE=phase,
                **meta,
            )
    wdt = weight.dtype if weight is not None else x.dtype
    dweight = column_sum(s_dy_xhat, wdt) if weight is not None else None
    dbias = column_sum(s_dy, wdt)
    return dx, dweight, dbias
