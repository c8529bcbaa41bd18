"""Fused residual add + RMSNorm/LayerNorm and the modulated LayerNorm in Triton.

Math: :mod:`normkit.reference.fused`. One program per row of D features holds the
whole row in registers (D <= MAX_D; :func:`why_not` sends longer rows to another
backend): the forward loads x and the residual once, stores h and y once; the
backward loads dy, dh and h once and stores dx once. Statistics are two-pass in the
accumulator dtype (float32, float64 for float64) on values shifted by the row's first
element, as in :mod:`.norms`; y is computed from the unrounded sum, h is stored in
its own dtype. Weight/bias (and shift/scale) gradients go through program-owned
partial rows summed in order afterwards: deterministic, no atomics.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .. import schema as _schema
from ..schema import implements
from ._common import (
    acc_dtype,
    block_for,
    column_sum,
    num_partials,
    stats_dtype,
    warps_for,
    why_not_tensor,
)

__all__ = [
    "why_not",
    "add_rms_norm_fwd",
    "add_rms_norm_bwd",
    "add_layer_norm_fwd",
    "add_layer_norm_bwd",
    "modulated_layer_norm_fwd",
    "modulated_layer_norm_bwd",
]

MAX_D = 16384  # a row in registers: 16K float32 over 16 warps is 32 values per thread


def why_not(x: torch.Tensor) -> Optional[str]:
    """None when the fused Triton kernels can run on x (*, D), else why not."""
    reason = why_not_tensor(x)
    if reason is None and x.dim() >= 1 and x.shape[-1] > MAX_D:
        reason = (
            f"the fused Triton kernels keep a row in registers and need D <= {MAX_D}, "
            f"got D = {x.shape[-1]}"
        )
    return reason


@triton.jit
def _add_norm_fwd_kernel(
    x_ptr,
    r_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    h_ptr,
    mean_ptr,
    rstd_ptr,
    D,
    eps: tl.float64,  # float64 so a float64 row is not normalized with a float32 eps
    RMS: tl.constexpr,
    HAS_R: tl.constexpr,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program per row: h = x + r; y = (h - mean) rstd w + b (RMS: mean = 0)."""
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    m = offs < D
    h = tl.load(x_ptr + row * D + offs, mask=m, other=0.0).to(ACC)
    if HAS_R:
        h += tl.load(r_ptr + row * D + offs, mask=m, other=0.0).to(ACC)
    tl.store(h_ptr + row * D + offs, h.to(h_ptr.dtype.element_ty), mask=m)
    if RMS:
        d = h
        var = tl.sum(d * d, axis=0) / D
    else:
        shift = tl.sum(tl.where(offs == 0, h, 0.0), axis=0)  # exact small differences
        mean_s = tl.sum(tl.where(m, h - shift, 0.0), axis=0) / D
        d = tl.where(m, (h - shift) - mean_s, 0.0)
        var = tl.sum(d * d, axis=0) / D
        tl.store(mean_ptr + row, shift + mean_s)
    rstd = 1.0 / tl.sqrt(tl.maximum(var, 0.0) + tl.full([], eps, ACC))
    tl.store(rstd_ptr + row, rstd)
    y = d * rstd
    if HAS_W:
        y = y * tl.load(w_ptr + offs, mask=m, other=0.0).to(ACC)
    if HAS_B:
        y = y + tl.load(b_ptr + offs, mask=m, other=0.0).to(ACC)
    tl.store(y_ptr + row * D + offs, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _add_norm_bwd_kernel(
    dy_ptr,
    dh_ptr,
    h_ptr,
    mean_ptr,
    rstd_ptr,
    w_ptr,
    dx_ptr,
    dw_part_ptr,
    db_part_ptr,
    M,
    D,
    rows_per_program,
    RMS: tl.constexpr,
    HAS_DH: tl.constexpr,
    HAS_W: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """dx = dh + rstd (g - <g> - h_hat <g h_hat>) (RMS: no <g>); partial dw, db per program."""
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    m = offs < D
    dw_acc = tl.zeros([BLOCK], dtype=ACC)
    db_acc = tl.zeros([BLOCK], dtype=ACC)
    if HAS_W:
        w = tl.load(w_ptr + offs, mask=m, other=0.0).to(ACC)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for row in range(row_start, row_end):
        rstd = tl.load(rstd_ptr + row).to(ACC)
        h = tl.load(h_ptr + row * D + offs, mask=m, other=0.0).to(ACC)
        if RMS:
            h_hat = h * rstd
        else:
            h_hat = tl.where(m, (h - tl.load(mean_ptr + row).to(ACC)) * rstd, 0.0)
        dy = tl.load(dy_ptr + row * D + offs, mask=m, other=0.0).to(ACC)
        g = dy
        if HAS_W:
            g = g * w
        mean_gx = tl.sum(g * h_hat, axis=0) / D
        if RMS:
            dx = rstd * (g - h_hat * mean_gx)
        else:
            dx = rstd * (g - tl.sum(g, axis=0) / D - h_hat * mean_gx)
        if HAS_DH:
            dx += tl.load(dh_ptr + row * D + offs, mask=m, other=0.0).to(ACC)
        tl.store(dx_ptr + row * D + offs, dx.to(dx_ptr.dtype.element_ty), mask=m)
        dw_acc += dy * h_hat
        db_acc += dy
    tl.store(dw_part_ptr + pid * D + offs, dw_acc, mask=m)
    tl.store(db_part_ptr + pid * D + offs, db_acc, mask=m)


@triton.jit
def _mod_ln_fwd_kernel(
    x_ptr,
    shift_ptr,
    scale_ptr,
    y_ptr,
    mean_ptr,
    rstd_ptr,
    T,
    D,
    eps: tl.float64,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program per row (n, t): y = x_hat (1 + scale[n]) + shift[n]."""
    row = tl.program_id(0)
    n = row // T
    offs = tl.arange(0, BLOCK)
    m = offs < D
    x = tl.load(x_ptr + row * D + offs, mask=m, other=0.0).to(ACC)
    shift0 = tl.sum(tl.where(offs == 0, x, 0.0), axis=0)
    mean_s = tl.sum(tl.where(m, x - shift0, 0.0), axis=0) / D
    d = tl.where(m, (x - shift0) - mean_s, 0.0)
    rstd = 1.0 / tl.sqrt(tl.maximum(tl.sum(d * d, axis=0) / D, 0.0) + tl.full([], eps, ACC))
    tl.store(mean_ptr + row, shift0 + mean_s)
    tl.store(rstd_ptr + row, rstd)
    sc = tl.load(scale_ptr + n * D + offs, mask=m, other=0.0).to(ACC)
    sh = tl.load(shift_ptr + n * D + offs, mask=m, other=0.0).to(ACC)
    y = d * rstd * (1.0 + sc) + sh
    tl.store(y_ptr + row * D + offs, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _mod_ln_bwd_kernel(
    dy_ptr,
    x_ptr,
    mean_ptr,
    rstd_ptr,
    scale_ptr,
    dx_ptr,
    dshift_part_ptr,
    dscale_part_ptr,
    T,
    D,
    rows_per_program,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Program (n, c) owns tokens [c * rows_per_program, ...) of sample n and one partial row."""
    n = tl.program_id(0)
    c = tl.program_id(1)
    chunks = tl.num_programs(1)
    offs = tl.arange(0, BLOCK)
    m = offs < D
    s1 = 1.0 + tl.load(scale_ptr + n * D + offs, mask=m, other=0.0).to(ACC)
    dsh = tl.zeros([BLOCK], dtype=ACC)
    dsc = tl.zeros([BLOCK], dtype=ACC)
    t_end = tl.minimum((c + 1) * rows_per_program, T)
    for t in range(c * rows_per_program, t_end):
        row = n * T + t
        rstd = tl.load(rstd_ptr + row).to(ACC)
        x = tl.load(x_ptr + row * D + offs, mask=m, other=0.0).to(ACC)
        x_hat = tl.where(m, (x - tl.load(mean_ptr + row).to(ACC)) * rstd, 0.0)
        dy = tl.load(dy_ptr + row * D + offs, mask=m, other=0.0).to(ACC)
        g = dy * s1
        dx = rstd * (g - tl.sum(g, axis=0) / D - x_hat * (tl.sum(g * x_hat, axis=0) / D))
        tl.store(dx_ptr + row * D + offs, dx.to(dx_ptr.dtype.element_ty), mask=m)
        dsh += dy
        dsc += dy * x_hat
    part = (n * chunks + c) * D + offs
    tl.store(dshift_part_ptr + part, dsh, mask=m)
    tl.store(dscale_part_ptr + part, dsc, mask=m)


def _rows(t: torch.Tensor, d: int) -> torch.Tensor:
    return t.reshape(-1, d).contiguous()


def _check_d(name: str, d: int) -> None:
    if d == 0 or d > MAX_D:
        raise ValueError(
            f"{name}: the Triton kernels need 0 < D <= {MAX_D}, got D = {d}; "
            "use backend='torch' or 'cpu'"
        )


def _add_norm_fwd(x, residual, weight, bias, eps, residual_in_fp32, rms):
    hdt = _schema.h_dtype(dict(x=x, residual=residual, residual_in_fp32=residual_in_fp32))
    d = x.shape[-1]
    x2 = _rows(x, d)
    m_rows = x2.shape[0]
    sdt = stats_dtype(hdt)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    h = torch.empty(x.shape, dtype=hdt, device=x.device)
    mean = torch.zeros(m_rows, dtype=sdt, device=x.device)
    rstd = torch.empty(m_rows, dtype=sdt, device=x.device)
    if m_rows:
        _check_d("add_norm", d)
        r2 = _rows(residual, d) if residual is not None else x2
        block = block_for(d, MAX_D)
        _add_norm_fwd_kernel[(m_rows,)](
            x2,
            r2,
            weight.contiguous() if weight is not None else x2,
            bias.contiguous() if bias is not None else x2,
            y,
            h,
            mean,
            rstd,
            d,
            float(eps),
            RMS=rms,
            HAS_R=residual is not None,
            HAS_W=weight is not None,
            HAS_B=bias is not None,
            ACC=acc_dtype(hdt),
            BLOCK=block,
            num_warps=warps_for(block),
        )
    return (y, h, rstd) if rms else (y, h, mean, rstd)


@implements("add_rms_norm_fwd", "triton", why_not)
def add_rms_norm_fwd(x, residual, weight, eps, residual_in_fp32):
    """``(y, h, rstd)`` of h = x + residual, y = RMSNorm(h) * weight; x: (*, D)."""
    return _add_norm_fwd(x, residual, weight, None, eps, residual_in_fp32, True)


@implements("add_layer_norm_fwd", "triton", why_not)
def add_layer_norm_fwd(x, residual, weight, bias, eps, residual_in_fp32):
    """``(y, h, mean, rstd)`` of h = x + residual, y = LayerNorm(h) * weight + bias."""
    return _add_norm_fwd(x, residual, weight, bias, eps, residual_in_fp32, False)


def _add_norm_bwd(dy, dh, h, mean, rstd, weight, rms):
    d = h.shape[-1]
    h2 = _rows(h, d)
    m_rows = h2.shape[0]
    sdt = stats_dtype(h.dtype)
    dx = torch.empty(h.shape, dtype=h.dtype, device=h.device)
    progs = num_partials(m_rows, h.device)
    dw_part = torch.zeros(progs, d, dtype=sdt, device=h.device)
    db_part = torch.zeros(progs, d, dtype=sdt, device=h.device)
    if m_rows:
        _check_d("add_norm", d)
        block = block_for(d, MAX_D)
        _add_norm_bwd_kernel[(progs,)](
            _rows(dy, d),
            _rows(dh, d) if dh is not None else h2,
            h2,
            mean if mean is not None else rstd,
            rstd,
            weight.contiguous() if weight is not None else h2,
            dx,
            dw_part,
            db_part,
            m_rows,
            d,
            triton.cdiv(m_rows, progs),
            RMS=rms,
            HAS_DH=dh is not None,
            HAS_W=weight is not None,
            ACC=acc_dtype(h.dtype),
            BLOCK=block,
            num_warps=warps_for(block),
        )
    wdt = weight.dtype if weight is not None else h.dtype
    dweight = column_sum(dw_part, wdt) if weight is not None else None
    return dx, dweight, column_sum(db_part, wdt)


@implements("add_rms_norm_bwd", "triton", why_not)
def add_rms_norm_bwd(dy, dh, h, rstd, weight):
    """``(dsum, dweight)``: dsum = dh + RMSNorm input gradient = dx = dresidual."""
    dx, dweight, _ = _add_norm_bwd(dy, dh, h, None, rstd, weight, True)
    return dx, dweight


@implements("add_layer_norm_bwd", "triton", why_not)
def add_layer_norm_bwd(dy, dh, h, mean, rstd, weight):
    """``(dsum, dweight, dbias)`` of the fused residual add + LayerNorm."""
    return _add_norm_bwd(dy, dh, h, mean, rstd, weight, False)


@implements("modulated_layer_norm_fwd", "triton", why_not)
def modulated_layer_norm_fwd(x, shift, scale, eps):
    """``(y, mean, rstd)`` of y = LN(x) (1 + scale) + shift; x (N, T, D), stats (N, T)."""
    n, t, d = x.shape
    sdt = stats_dtype(x.dtype)
    xc = x.contiguous()
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    mean = torch.empty(n, t, dtype=sdt, device=x.device)
    rstd = torch.empty(n, t, dtype=sdt, device=x.device)
    if x.numel():
        _check_d("modulated_layer_norm", d)
        block = block_for(d, MAX_D)
        _mod_ln_fwd_kernel[(n * t,)](
            xc,
            shift.contiguous(),
            scale.contiguous(),
            y,
            mean,
            rstd,
            t,
            d,
            float(eps),
            ACC=acc_dtype(x.dtype),
            BLOCK=block,
            num_warps=warps_for(block),
        )
    return y, mean, rstd


@implements("modulated_layer_norm_bwd", "triton", why_not)
def modulated_layer_norm_bwd(dy, x, mean, rstd, scale):
    """``(dx, dshift, dscale)``; dshift/dscale (N, D) in scale's dtype."""
    n, t, d = x.shape
    sdt = stats_dtype(x.dtype)
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    chunks = max(1, min(t, num_partials(t, x.device) // max(1, n) or 1))
    per = triton.cdiv(max(t, 1), chunks)
    chunks = triton.cdiv(max(t, 1), per)
    dshift_part = torch.zeros(n, chunks, d, dtype=sdt, device=x.device)
    dscale_part = torch.zeros(n, chunks, d, dtype=sdt, device=x.device)
    if x.numel():
        _check_d("modulated_layer_norm", d)
        block = block_for(d, MAX_D)
        _mod_ln_bwd_kernel[(n, chunks)](
            dy.contiguous(),
            x.contiguous(),
            mean.contiguous(),
            rstd.contiguous(),
            scale.contiguous(),
            dx,
            dshift_part,
            dscale_part,
            t,
            d,
            per,
            ACC=acc_dtype(x.dtype),
            BLOCK=block,
            num_warps=warps_for(block),
        )
    # the chunk partials of each sample added in order: deterministic
    return (dx, dshift_part.sum(1).to(scale.dtype), dscale_part.sum(1).to(scale.dtype))
