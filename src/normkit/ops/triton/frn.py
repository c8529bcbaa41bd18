r"""Triton kernels for Filter Response Normalization + TLU (the ``triton`` backend).

Contract: :mod:`normkit.ops.torch_frn`; math: :mod:`normkit.reference.frn`. One program
per (sample, channel) plane of L = H * W contiguous values, accumulating in float32
(float64 for float64 input):

* forward: one pass for the mean square, one for ``max(x * (r w) + b, tau)``;
* backward: one pass for the plane sums (dy where z > tau, dy * x_hat there, dy where
  clipped), one for dx; the per-plane sums go to (N, C) buffers that
  :func:`._common.column_sum` adds over N in order (deterministic).

Both passes compute z with the same expression, so the TLU mask of the backward is the
forward's.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..schema import implements
from ._common import acc_dtype, block_for, column_sum, stats_dtype, warps_for

__all__ = ["frn_fwd", "frn_bwd"]

MAX_BLOCK = 4096


@triton.jit
def _frn_fwd_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    t_ptr,
    e_ptr,
    y_ptr,
    rstd_ptr,
    C,
    L,
    ACC_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)  # = n * C + c
    c = row % C
    base = row * L
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=ACC_DTYPE)
    for start in range(0, L, BLOCK):
        idx = start + offs
        v = tl.load(x_ptr + base + idx, mask=idx < L, other=0.0).to(ACC_DTYPE)
        acc += v * v
    r = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / L + tl.load(e_ptr + c))
    tl.store(rstd_ptr + row, r)
    scale = r * tl.load(w_ptr + c)
    shift = tl.load(b_ptr + c)
    tau = tl.load(t_ptr + c)
    for start in range(0, L, BLOCK):
        idx = start + offs
        m = idx < L
        v = tl.load(x_ptr + base + idx, mask=m, other=0.0).to(ACC_DTYPE)
        z = v * scale + shift
        y = tl.where(z > tau, z, tau)
        tl.store(y_ptr + base + idx, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _frn_bwd_kernel(
    dy_ptr,
    x_ptr,
    rstd_ptr,
    w_ptr,
    b_ptr,
    t_ptr,
    dx_ptr,
    s_dz_ptr,
    s_dzx_ptr,
    s_dt_ptr,
    s_de_ptr,
    C,
    L,
    ACC_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    c = row % C
    base = row * L
    offs = tl.arange(0, BLOCK)
    r = tl.load(rstd_ptr + row).to(ACC_DTYPE)
    w = tl.load(w_ptr + c)
    scale = r * w
    shift = tl.load(b_ptr + c)
    tau = tl.load(t_ptr + c)
    a_dz = tl.zeros([BLOCK], dtype=ACC_DTYPE)
    a_dzx = tl.zeros([BLOCK], dtype=ACC_DTYPE)
    a_dt = tl.zeros([BLOCK], dtype=ACC_DTYPE)
    for start in range(0, L, BLOCK):
        idx = start + offs
        m = idx < L
        v = tl.load(x_ptr + base + idx, mask=m, other=0.0).to(ACC_DTYPE)
        d = tl.load(dy_ptr + base + idx, mask=m, other=0.0).to(ACC_DTYPE)
        keep = (v * scale + shift) > tau
        dz = tl.where(keep, d, 0.0)
        a_dz += dz
        a_dzx += dz * (v * r)
        a_dt += d - dz
    s_dzx = tl.sum(a_dzx, axis=0)
    s = w * s_dzx  # sum_{H,W} g x_hat
    coef = r * s / L
    tl.store(s_dz_ptr + row, tl.sum(a_dz, axis=0))
    tl.store(s_dzx_ptr + row, s_dzx)
    tl.store(s_dt_ptr + row, tl.sum(a_dt, axis=0))
    tl.store(s_de_ptr + row, -0.5 * r * r * s)
    for start in range(0, L, BLOCK):
        idx = start + offs
        m = idx < L
        v = tl.load(x_ptr + base + idx, mask=m, other=0.0).to(ACC_DTYPE)
        d = tl.load(dy_ptr + base + idx, mask=m, other=0.0).to(ACC_DTYPE)
        keep = (v * scale + shift) > tau
        dx = tl.where(keep, d * scale, 0.0) - (v * r) * coef
        tl.store(dx_ptr + base + idx, dx.to(dx_ptr.dtype.element_ty), mask=m)


def _params(sdt, *ts):
    return [t.detach().to(sdt).contiguous() for t in ts]


@implements("frn_fwd", "triton")
def frn_fwd(x: torch.Tensor, weight, bias, tau, eps):
    """FRN + TLU of (N, C, L): ``(y, rstd (N, C))``, rstd in the accumulator dtype."""
    x = x.contiguous()
    n, c, length = x.shape
    sdt = stats_dtype(x.dtype)
    y = torch.empty_like(x)
    rstd = torch.empty(n, c, dtype=sdt, device=x.device)
    if x.numel():
        w, b, t, e = _params(sdt, weight, bias, tau, eps)
        block = block_for(length, MAX_BLOCK)
        _frn_fwd_kernel[(n * c,)](
            x,
            w,
            b,
            t,
            e,
            y,
            rstd,
            c,
            length,
            ACC_DTYPE=acc_dtype(x.dtype),
            BLOCK=block,
            num_warps=warps_for(block),
        )
    return y, rstd


@implements("frn_bwd", "triton")
def frn_bwd(dy: torch.Tensor, x: torch.Tensor, rstd, weight, bias, tau):
    """``(dx, dweight, dbias, dtau, deps)``, the last four (C,) in the accumulator dtype."""
    x = x.contiguous()
    dy = dy.contiguous()
    n, c, length = x.shape
    sdt = stats_dtype(x.dtype)
    dx = torch.empty_like(x)
    parts = [torch.zeros(n, c, dtype=sdt, device=x.device) for _ in range(4)]
    if x.numel():
        w, b, t = _params(sdt, weight, bias, tau)
        block = block_for(length, MAX_BLOCK)
        _frn_bwd_kernel[(n * c,)](
            dy,
            x,
            rstd.to(sdt).contiguous(),
            w,
            b,
            t,
            dx,
            *parts,
            c,
            length,
            ACC_DTYPE=acc_dtype(x.dtype),
            BLOCK=block,
            num_warps=warps_for(block),
        )
    s_dz, s_dzx, s_dt, s_de = (column_sum(p, sdt) for p in parts)
    return dx, s_dzx, s_dz, s_dt, s_de
