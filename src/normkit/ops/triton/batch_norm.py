"""BatchNorm in Triton, split as docs/ops.md asks: stats / apply / bwd_reduce / bwd_apply.

Statistics per channel over (N, L) are computed by P programs per channel,
each merging exact per-chunk (count, mean, M2) with Chan's formula, and then
one combine program per channel merges the P partials in a fixed order:
deterministic, single pass over DRAM, and stable at |mean|/std = 1e4.
The backward sums use the same partial-buffer scheme (no atomics).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..schema import implements
from ._common import acc_dtype, block_for, column_sum, num_partials, stats_dtype

__all__ = ["batch_norm_stats", "batch_norm_apply", "batch_norm_bwd_reduce", "batch_norm_bwd_apply"]

BLOCK = 1024


@triton.jit
def _batch_norm_stats_kernel(
    x_ptr,  # (N, C, L) input
    count_part_ptr,  # (C, P) elements seen by each program
    mean_part_ptr,  # (C, P) partial means, accumulator dtype
    m2_part_ptr,  # (C, P) partial sums of squared deviations
    C,
    L,
    NL,
    chunks_per_program,
    ACC_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Program (c, p) walks chunks [p*cpp, (p+1)*cpp) of channel c's N*L values."""
    c = tl.program_id(0)
    p = tl.program_id(1)
    num_p = tl.num_programs(1)
    offs = tl.arange(0, BLOCK)
    count = tl.zeros([1], dtype=ACC_DTYPE).sum(axis=0)
    mean = tl.zeros([1], dtype=ACC_DTYPE).sum(axis=0)
    m2 = tl.zeros([1], dtype=ACC_DTYPE).sum(axis=0)
    # shift by the channel's first value: near a large common mean the sums
    # below then see small exact differences (keeps the mean's digits at 1e4)
    shift = tl.load(x_ptr + c * L).to(ACC_DTYPE)
    first = p * chunks_per_program
    for chunk in range(first, first + chunks_per_program):
        e = chunk * BLOCK + offs  # flat index into channel c's (N, L) values
        m = e < NL
        addr = (e // L) * C * L + c * L + e % L
        v = tl.where(m, tl.load(x_ptr + addr, mask=m, other=0.0).to(ACC_DTYPE) - shift, 0.0)
        n_b = tl.sum(m.to(ACC_DTYPE), axis=0)
        mean_b = tl.sum(v, axis=0) / tl.maximum(n_b, 1.0)
        d = tl.where(m, v - mean_b, 0.0)
        m2_b = tl.sum(d * d, axis=0)
        # Chan et al.: merge (count, mean, m2) with the chunk's exact (n_b, mean_b, m2_b)
        total = count + n_b
        delta = mean_b - mean
        frac = n_b / tl.maximum(total, 1.0)
        mean = mean + delta * frac
        m2 = m2 + m2_b + delta * delta * count * frac
        count = total
    tl.store(count_part_ptr + c * num_p + p, count)
    tl.store(mean_part_ptr + c * num_p + p, mean)  # relative to shift
    tl.store(m2_part_ptr + c * num_p + p, m2)


@triton.jit
def _batch_norm_stats_combine_kernel(
    x_ptr,  # (N, C, L) input: only x[0, c, 0], the shift, is read
    count_part_ptr,  # (C, P)
    mean_part_ptr,  # (C, P)
    m2_part_ptr,  # (C, P)
    mean_ptr,  # (C,) output mean, float64 (shift + mean summed there: no digit lost at 1e4)
    var_ptr,  # (C,) output biased variance
    L,
    P,
    ACC_DTYPE: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """mean = sum n_p mean_p / n; M2 = sum M2_p + n_p (mean_p - mean)^2 (exact merge)."""
    c = tl.program_id(0)
    k = tl.arange(0, BLOCK_P)
    km = k < P
    n_p = tl.load(count_part_ptr + c * P + k, mask=km, other=0.0)
    mean_p = tl.load(mean_part_ptr + c * P + k, mask=km, other=0.0)
    m2_p = tl.load(m2_part_ptr + c * P + k, mask=km, other=0.0)
    shift = tl.load(x_ptr + c * L).to(ACC_DTYPE)  # the partial means are relative to it
    n = tl.sum(n_p, axis=0)
    mean = tl.sum(n_p * mean_p, axis=0) / n
    d = mean_p - mean
    m2 = tl.sum(m2_p + n_p * d * d, axis=0)
    tl.store(mean_ptr + c, shift.to(tl.float64) + mean.to(tl.float64))
    tl.store(var_ptr + c, tl.maximum(m2 / n, 0.0))


@triton.jit
def _centred(x, mean64, ACC_DTYPE: tl.constexpr):
    """x - mean with the float64 mean split into hi + lo in ACC_DTYPE: (x - hi) - lo."""
    hi = mean64.to(ACC_DTYPE)
    lo = (mean64 - hi.to(tl.float64)).to(ACC_DTYPE)
    return (x - hi) - lo


@triton.jit
def _batch_norm_apply_kernel(
    x_ptr,  # (N, C, L) input
    mean_ptr,  # (C,) mean
    rstd_ptr,  # (C,) 1 / sqrt(var + eps)
    w_ptr,  # (C,) weight, or any pointer when not HAS_WEIGHT
    b_ptr,  # (C,) bias, or any pointer when not HAS_BIAS
    y_ptr,  # (N, C, L) output, x's dtype
    C,
    L,
    numel,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Flat elementwise y = (x - mean_c) * rstd_c * w_c + b_c; per-channel values hit cache."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < numel
    c = (offs // L) % C
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(ACC_DTYPE)
    mean = tl.load(mean_ptr + c, mask=m, other=0.0).to(tl.float64)
    rstd = tl.load(rstd_ptr + c, mask=m, other=0.0).to(ACC_DTYPE)
    y = _centred(x, mean, ACC_DTYPE) * rstd
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + c, mask=m, other=0.0).to(ACC_DTYPE)
    if HAS_BIAS:
        y = y + tl.load(b_ptr + c, mask=m, other=0.0).to(ACC_DTYPE)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _batch_norm_bwd_reduce_kernel(
    dy_ptr,  # (N, C, L) upstream gradient
    x_ptr,  # (N, C, L) forward input
    mean_ptr,  # (C,) mean
    rstd_ptr,  # (C,) rstd
    sum_dy_part_ptr,  # (P, C) partial sums of dy, one row per program index p
    sum_dyx_part_ptr,  # (P, C) partial sums of dy * x_hat
    C,
    L,
    NL,
    chunks_per_program,
    ACC_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Program (c, p) sums dy and dy * x_hat over its chunks of channel c."""
    c = tl.program_id(0)
    p = tl.program_id(1)
    offs = tl.arange(0, BLOCK)
    mean = tl.load(mean_ptr + c).to(tl.float64)
    rstd = tl.load(rstd_ptr + c).to(ACC_DTYPE)
    acc_dy = tl.zeros([BLOCK], dtype=ACC_DTYPE)
    acc_dyx = tl.zeros([BLOCK], dtype=ACC_DTYPE)
    first = p * chunks_per_program
    for chunk in range(first, first + chunks_per_program):
        e = chunk * BLOCK + offs
        m = e < NL
        addr = (e // L) * C * L + c * L + e % L
        x = tl.load(x_ptr + addr, mask=m, other=0.0).to(ACC_DTYPE)
        dy = tl.load(dy_ptr + addr, mask=m, other=0.0).to(ACC_DTYPE)
        acc_dy += dy
        acc_dyx += dy * tl.where(m, _centred(x, mean, ACC_DTYPE) * rstd, 0.0)
    tl.store(sum_dy_part_ptr + p * C + c, tl.sum(acc_dy, axis=0))
    tl.store(sum_dyx_part_ptr + p * C + c, tl.sum(acc_dyx, axis=0))


@triton.jit
def _batch_norm_bwd_apply_kernel(
    dy_ptr,  # (N, C, L) upstream gradient
    x_ptr,  # (N, C, L) forward input
    mean_ptr,  # (C,) mean
    rstd_ptr,  # (C,) rstd
    w_ptr,  # (C,) weight, or any pointer when not HAS_WEIGHT
    sum_dy_ptr,  # (C,) sum of dy over (N, L) (all processes for SyncBatchNorm)
    sum_dyx_ptr,  # (C,) sum of dy * x_hat
    dx_ptr,  # (N, C, L) output, x's dtype
    C,
    L,
    numel,
    inv_count: tl.float64,  # a Python float would reach the kernel as float32
    HAS_WEIGHT: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """dx = w rstd (dy - sum_dy / count - x_hat sum_dy_xhat / count), flat elementwise."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < numel
    c = (offs // L) % C
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(ACC_DTYPE)
    dy = tl.load(dy_ptr + offs, mask=m, other=0.0).to(ACC_DTYPE)
    mean = tl.load(mean_ptr + c, mask=m, other=0.0).to(tl.float64)
    rstd = tl.load(rstd_ptr + c, mask=m, other=0.0).to(ACC_DTYPE)
    s_dy = tl.load(sum_dy_ptr + c, mask=m, other=0.0).to(ACC_DTYPE)
    s_dyx = tl.load(sum_dyx_ptr + c, mask=m, other=0.0).to(ACC_DTYPE)
    x_hat = _centred(x, mean, ACC_DTYPE) * rstd
    scale = rstd
    if HAS_WEIGHT:
        scale = scale * tl.load(w_ptr + c, mask=m, other=0.0).to(ACC_DTYPE)
    inv_n = tl.full([], inv_count, ACC_DTYPE)
    dx = scale * (dy - s_dy * inv_n - x_hat * (s_dyx * inv_n))
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=m)


def _check_x(name: str, x: torch.Tensor):
    if x.dim() != 3:
        raise ValueError(
            f"{name}: x must be 3-D (N, C, L), got shape {tuple(x.shape)}; "
            "flatten the spatial dims first (L = 1 for BatchNorm1d on (N, C))"
        )


def _check_channel_vec(name: str, label: str, t: Optional[torch.Tensor], c: int):
    if t is not None and tuple(t.shape) != (c,):
        raise ValueError(f"{name}: {label} shape {tuple(t.shape)} must be (C,) = ({c},)")


def _partition(x: torch.Tensor):
    """(programs per channel, chunks per program) for channel-wise partial reductions."""
    n, c, length = x.shape
    chunks = triton.cdiv(n * length, BLOCK)
    # enough programs overall to fill the device, few enough that partials stay tiny
    per_channel = max(1, min(chunks, triton.cdiv(num_partials(1 << 30, x.device), max(c, 1))))
    return per_channel, triton.cdiv(chunks, per_channel)


@implements("batch_norm_stats", "triton")
def batch_norm_stats(x: torch.Tensor):
    """Per-channel mean and biased variance over (N, L), Chan-merged in float32.

    var = mean over (n, l) of (x - mean)^2, clamped at 0; never E[x^2] - E[x]^2.

    Args: x: (N, C, L).
    Shape: mean (C,) float64, var (C,) float32 (float64 for float64 x).
    Example:
        >>> mean, var = batch_norm_stats(x)
    """
    _check_x("batch_norm_stats", x)
    x = x.contiguous()
    n, c, length = x.shape
    sdt = stats_dtype(x.dtype)
    mean = torch.empty(c, dtype=torch.float64, device=x.device)
    var = torch.empty(c, dtype=sdt, device=x.device)
    if c == 0:
        return mean, var
    if n * length == 0:
        raise ValueError(
            f"batch_norm_stats: need at least one value per channel, got x shape "
            f"{tuple(x.shape)}; a batch norm over an empty batch has no statistics"
        )
    progs, cpp = _partition(x)
    parts = [torch.empty(c, progs, dtype=sdt, device=x.device) for _ in range(3)]
    acc = acc_dtype(x.dtype)
    _batch_norm_stats_kernel[(c, progs)](
        x, *parts, c, length, n * length, cpp, ACC_DTYPE=acc, BLOCK=BLOCK
    )
    _batch_norm_stats_combine_kernel[(c,)](
        x, *parts, mean, var, length, progs, ACC_DTYPE=acc, BLOCK_P=block_for(progs, 1 << 16)
    )
    return mean, var


@implements("batch_norm_apply", "triton")
def batch_norm_apply(
    x: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
) -> torch.Tensor:
    """y = (x - mean_c) * rstd_c * weight_c + bias_c (training or eval statistics).

    Args: x (N, C, L); mean, rstd (C,); weight, bias (C,) or None.
    Shape: y (N, C, L) in x's dtype.
    Example:
        >>> y = batch_norm_apply(x, mean, (var + 1e-5).rsqrt(), w, b)
    """
    _check_x("batch_norm_apply", x)
    c = x.shape[1]
    for label, t in (("mean", mean), ("rstd", rstd), ("weight", weight), ("bias", bias)):
        _check_channel_vec("batch_norm_apply", label, t, c)
    x = x.contiguous()
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    _batch_norm_apply_kernel[(triton.cdiv(x.numel(), BLOCK),)](
        x,
        mean.contiguous(),
        rstd.contiguous(),
        weight.contiguous() if weight is not None else x,
        bias.contiguous() if bias is not None else x,
        y,
        c,
        x.shape[2],
        x.numel(),
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        ACC_DTYPE=acc_dtype(x.dtype),
        BLOCK=BLOCK,
    )
    return y


@implements("batch_norm_bwd_reduce", "triton")
def batch_norm_bwd_reduce(
    dy: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor
):
    """sum_dy[c] = sum dy; sum_dy_xhat[c] = sum dy (x - mean) rstd, over (N, L).

    Deterministic: partials per program, then an in-order column sum.

    Args: dy, x (N, C, L); mean, rstd (C,).
    Shape: sum_dy, sum_dy_xhat (C,) float32 (float64 for float64 x).
    Example:
        >>> sum_dy, sum_dy_xhat = batch_norm_bwd_reduce(dy, x, mean, rstd)
    """
    _check_x("batch_norm_bwd_reduce", x)
    x = x.contiguous()
    dy = dy.contiguous()
    n, c, length = x.shape
    sdt = stats_dtype(x.dtype)
    if x.numel() == 0:
        return torch.zeros(c, dtype=sdt, device=x.device), torch.zeros(
            c, dtype=sdt, device=x.device
        )
    progs, cpp = _partition(x)
    part_dy = torch.empty(progs, c, dtype=sdt, device=x.device)
    part_dyx = torch.empty(progs, c, dtype=sdt, device=x.device)
    _batch_norm_bwd_reduce_kernel[(c, progs)](
        dy,
        x,
        mean.contiguous(),
        rstd.contiguous(),
        part_dy,
        part_dyx,
        c,
        length,
        n * length,
        cpp,
        ACC_DTYPE=acc_dtype(x.dtype),
        BLOCK=BLOCK,
    )
    return column_sum(part_dy, sdt), column_sum(part_dyx, sdt)


@implements("batch_norm_bwd_apply", "triton")
def batch_norm_bwd_apply(dy, x, mean, rstd, weight, sum_dy, sum_dy_xhat, count) -> torch.Tensor:
    """dx = weight rstd (dy - sum_dy / count - x_hat sum_dy_xhat / count).

    ``count`` is the number of values per channel that the sums ran over (N*L, or
    the total across processes for SyncBatchNorm). dweight = sum_dy_xhat, dbias = sum_dy.

    Args: dy, x (N, C, L); mean, rstd, sum_dy, sum_dy_xhat (C,); weight (C,) or None; count.
    Shape: dx (N, C, L) in x's dtype.
    Example:
        >>> dx = batch_norm_bwd_apply(dy, x, mean, rstd, w, s1, s2, x.shape[0] * x.shape[2])
    """
    _check_x("batch_norm_bwd_apply", x)
    count = float(count)
    if count <= 0:
        raise ValueError(
            f"batch_norm_bwd_apply: count must be > 0, got {count}; pass the "
            "number of values per channel the sums ran over"
        )
    x = x.contiguous()
    dy = dy.contiguous()
    dx = torch.empty_like(x)
    if x.numel() == 0:
        return dx
    _batch_norm_bwd_apply_kernel[(triton.cdiv(x.numel(), BLOCK),)](
        dy,
        x,
        mean.contiguous(),
        rstd.contiguous(),
        weight.contiguous() if weight is not None else x,
        sum_dy.contiguous(),
        sum_dy_xhat.contiguous(),
        dx,
        x.shape[1],
        x.shape[2],
        x.numel(),
        1.0 / count,
        HAS_WEIGHT=weight is not None,
        ACC_DTYPE=acc_dtype(x.dtype),
        BLOCK=BLOCK,
    )
    return dx
