"""Local Response Normalization in Triton, across channels and within a channel.

Both regions are one kernel: the input is viewed as a batch of 2-D planes
``(R, Q)`` and the window is a box of ``width_r x width_q`` taps starting
``back_r`` / ``back_q`` before the centre:

* across channels: planes are ``(C, L)`` per sample (``L`` = flattened spatial
  dims); the window runs along ``R = C`` only (``width_q = 1``);
* within a channel: planes are ``(H, W)`` per (sample, channel); the box runs
  along both axes.

Window sums are direct sums of every tap (docs/design.md section 2): no running
add/subtract, no prefix sums, so a channel 1000x louder than its neighbours
or a huge value cannot cancel its neighbours away. Taps are re-read from the
cache rather than from DRAM: each tile's halo is shared with adjacent tiles.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..schema import implements
from ._common import acc_dtype, stats_dtype

__all__ = ["lrn_fwd", "lrn_bwd"]

BLOCK_R = 16
BLOCK_Q = 64


def beta_mode(beta: float) -> int:
    """Constexpr code for s**-beta: exact sqrt/reciprocal forms for the common betas."""
    return {0.5: 1, 0.75: 2, 1.0: 3}.get(float(beta), 0)


@triton.jit
def _pow_neg_beta(s, beta, BETA_MODE: tl.constexpr):
    """s ** -beta; betas 0.5, 0.75 and 1 avoid the log/exp pair (faster, ~1 ulp)."""
    if BETA_MODE == 1:
        r = 1.0 / tl.sqrt(s)
    elif BETA_MODE == 2:
        q = 1.0 / tl.sqrt(s)
        r = q * tl.sqrt(q)
    elif BETA_MODE == 3:
        r = 1.0 / s
    else:
        r = tl.exp2(-beta * tl.log2(s))
    return r


@triton.jit
def _box_sum(
    src_ptr,
    base,
    rows,
    cols,
    R,
    Q,
    back_r,
    width_r,
    back_q,
    width_q,
    SQUARE: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):
    """sum over the box [r-back_r, r-back_r+width_r) x [q-back_q, ...) of src (or src^2).

    ``rows`` is (BLOCK_R, 1), ``cols`` is (1, BLOCK_Q); outside the plane counts as zero.
    """
    acc = tl.zeros([rows.shape[0], cols.shape[1]], dtype=ACC_DTYPE)
    for tr in range(0, width_r):
        rr = rows - back_r + tr  # (BLOCK_R, 1)
        row_ok = (rr >= 0) & (rr < R)
        for tq in range(0, width_q):
            qq = cols - back_q + tq  # (1, BLOCK_Q)
            ok = row_ok & (qq >= 0) & (qq < Q)
            v = tl.load(src_ptr + base + rr * Q + qq, mask=ok, other=0.0).to(ACC_DTYPE)
            if SQUARE:
                acc += v * v
            else:
                acc += v
    return acc


@triton.jit
def _lrn_fwd_kernel(
    x_ptr,  # (P, R, Q) input planes
    y_ptr,  # (P, R, Q) output, x's dtype
    R,
    Q,
    blocks_r,
    blocks_q,
    back_r,
    width_r,
    back_q,
    width_q,
    alpha: tl.float64,  # float64: Python floats would reach the kernel as float32
    beta: tl.float64,
    k: tl.float64,
    BETA_MODE: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    """y = x * (k + alpha * box_sum(x^2)) ** -beta for one (BLOCK_R, BLOCK_Q) tile."""
    pid = tl.program_id(0)
    # 1-D grid, q-blocks fastest: grid dims 1 and 2 are capped at 65535 on CUDA
    bq = pid % blocks_q
    br = (pid // blocks_q) % blocks_r
    plane = pid // (blocks_q * blocks_r)
    base = plane * R * Q
    rows = br * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]  # (BLOCK_R, 1)
    cols = bq * BLOCK_Q + tl.arange(0, BLOCK_Q)[None, :]  # (1, BLOCK_Q)
    mask = (rows < R) & (cols < Q)
    alpha = tl.full([], alpha, ACC_DTYPE)
    beta = tl.full([], beta, ACC_DTYPE)
    s = tl.full([], k, ACC_DTYPE) + alpha * _box_sum(
        x_ptr, base, rows, cols, R, Q, back_r, width_r, back_q, width_q, True, ACC_DTYPE
    )
    s = tl.where(mask, s, 1.0)  # lanes past the edge: keep k = 0 from producing 0 ** -beta
    x = tl.load(x_ptr + base + rows * Q + cols, mask=mask, other=0.0).to(ACC_DTYPE)
    y = x * _pow_neg_beta(s, beta, BETA_MODE)
    tl.store(y_ptr + base + rows * Q + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lrn_bwd_kernel(
    x_ptr,  # (P, R, Q) input planes
    dy_ptr,  # (P, R, Q) upstream gradient
    t_ptr,  # (P, R, Q) scratch dy*x*s^(-beta-1), accumulator dtype
    dx_ptr,  # (P, R, Q) output, x's dtype
    R,
    Q,
    blocks_r,
    blocks_q,
    back_r,
    width_r,
    back_q,
    width_q,
    alpha: tl.float64,  # float64: Python floats would reach the kernel as float32
    beta: tl.float64,
    k: tl.float64,
    PHASE: tl.constexpr,
    BETA_MODE: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_Q: tl.constexpr,
):
    """Phase 1: t = dy x s^(-beta-1).  Phase 2: dx = dy s^-beta - 2 alpha beta x W^T(t).

    s is recomputed from x in both phases (nothing but x is saved by forward).
    W^T is the mirrored window: ``width - 1 - back`` taps before the centre.
    """
    pid = tl.program_id(0)
    bq = pid % blocks_q
    br = (pid // blocks_q) % blocks_r
    plane = pid // (blocks_q * blocks_r)
    base = plane * R * Q
    rows = br * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]  # (BLOCK_R, 1)
    cols = bq * BLOCK_Q + tl.arange(0, BLOCK_Q)[None, :]  # (1, BLOCK_Q)
    mask = (rows < R) & (cols < Q)
    offs = base + rows * Q + cols
    alpha = tl.full([], alpha, ACC_DTYPE)
    beta = tl.full([], beta, ACC_DTYPE)
    s = tl.full([], k, ACC_DTYPE) + alpha * _box_sum(
        x_ptr, base, rows, cols, R, Q, back_r, width_r, back_q, width_q, True, ACC_DTYPE
    )
    s = tl.where(mask, s, 1.0)  # lanes past the edge: keep k = 0 from producing 0 ** -beta
    s_pow = _pow_neg_beta(s, beta, BETA_MODE)  # s^-beta
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC_DTYPE)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(ACC_DTYPE)
    if PHASE == 1:
        tl.store(t_ptr + offs, dy * x * (s_pow / s), mask=mask)
    else:
        adj = _box_sum(
            t_ptr,
            base,
            rows,
            cols,
            R,
            Q,
            width_r - 1 - back_r,
            width_r,
            width_q - 1 - back_q,
            width_q,
            False,
            ACC_DTYPE,
        )
        dx = dy * s_pow - (2.0 * alpha * beta) * x * adj
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _planes(x: torch.Tensor, within: bool):
    """(P, R, Q) view of contiguous x and the window extents along R and Q."""
    if within:
        if x.dim() != 4:
            raise ValueError(
                f"within-channel LRN needs a 4-D (N, C, H, W) input, "
                f"got {x.dim()}-D shape {tuple(x.shape)}; reshape to 4-D"
            )
        n, c, h, w = x.shape
        return n * c, h, w
    if x.dim() < 2:
        raise ValueError(
            f"across-channel LRN needs (N, C, *) with channels on dim 1, got shape {tuple(x.shape)}"
        )
    n, c = x.shape[0], x.shape[1]
    return n, c, x[0, 0].numel() if x.numel() else 1


def _check_window(back: int, ahead: int):
    if back < 0 or ahead < 0:
        raise ValueError(f"LRN window extents must be >= 0, got back={back}, ahead={ahead}")


def _launch_args(x: torch.Tensor, back: int, ahead: int, within: bool):
    planes, rows, cols = _planes(x, within)
    blocks_r = triton.cdiv(rows, BLOCK_R)
    blocks_q = triton.cdiv(cols, BLOCK_Q)
    width = back + ahead + 1
    window = (back, width, back, width) if within else (back, width, 0, 1)
    grid = (planes * blocks_r * blocks_q,)
    return grid, (rows, cols, blocks_r, blocks_q) + window


@implements("lrn_fwd", "triton")
def lrn_fwd(
    x: torch.Tensor, back: int, ahead: int, alpha: float, beta: float, k: float, within: bool
) -> torch.Tensor:
    """y = x * (k + alpha * S)^-beta, S the direct window sum of x^2 (see docs/ops.md).

    Args:
        x: (N, C, *) across channels, (N, C, H, W) within a channel; any float dtype
            of ``SUPPORTED_DTYPES``; half inputs are squared, summed and raised in float32.
        back, ahead: window taps before / after the centre (B, A).
        alpha: coefficient of the window sum (framework alpha / D); beta, k: as in the formula.
        within: box over (H, W) instead of a window over channels.

    Shape: y like x.

    Example:
        >>> y = lrn_fwd(x.cuda(), 2, 2, 1e-4 / 5, 0.75, 1.0, False)
    """
    _check_window(back, ahead)
    x = x.contiguous()
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    grid, dims = _launch_args(x, back, ahead, within)
    _lrn_fwd_kernel[grid](
        x,
        y,
        *dims,
        float(alpha),
        float(beta),
        float(k),
        BETA_MODE=beta_mode(beta),
        ACC_DTYPE=acc_dtype(x.dtype),
        BLOCK_R=BLOCK_R,
        BLOCK_Q=BLOCK_Q,
    )
    return y


@implements("lrn_bwd", "triton")
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
    """dx = dy s^-beta - 2 alpha beta x W^T(dy x s^(-beta-1)), s recomputed from x.

    Two launches: the first writes t = dy x s^(-beta-1) to an accumulator-dtype
    scratch buffer, the second sums t over the mirrored window. Fusing them would
    need s at every neighbour of every neighbour (width^2 taps instead of 2 width).

    Args: as :func:`lrn_fwd`, plus ``dy`` shaped like ``x``.
    Shape: dx like x.
    Example:
        >>> dx = lrn_bwd(x, torch.ones_like(x), 2, 2, 2e-5, 0.75, 1.0, False)
    """
    _check_window(back, ahead)
    if dy.shape != x.shape:
        raise ValueError(
            f"LRN backward: dy shape {tuple(dy.shape)} must equal x shape {tuple(x.shape)}"
        )
    x = x.contiguous()
    dy = dy.contiguous()
    dx = torch.empty_like(x)
    if x.numel() == 0:
        return dx
    t = torch.empty(x.shape, dtype=stats_dtype(x.dtype), device=x.device)
    grid, dims = _launch_args(x, back, ahead, within)
    meta = dict(
        BETA_MODE=beta_mode(beta), ACC_DTYPE=acc_dtype(x.dtype), BLOCK_R=BLOCK_R, BLOCK_Q=BLOCK_Q
    )
    for phase in (1, 2):
        _lrn_bwd_kernel[grid](
            x, dy, t, dx, *dims, float(alpha), float(beta), float(k), PHASE=phase, **meta
        )
    return dx
