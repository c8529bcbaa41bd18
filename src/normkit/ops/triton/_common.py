"""Shared pieces of the Triton backend: interpreter detection, dtypes, limits, helpers.

Kernels are decorated with ``@triton.jit`` when this package is imported, and
Triton decides at decoration time whether they compile for a GPU or run in its
NumPy interpreter (``TRITON_INTERPRET=1``). :data:`INTERPRET` records which of
the two this import produced, so that ``why_not`` accepts CPU tensors exactly
when the kernels can actually run on them.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

# captured once: the kernels below were decorated under this setting
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# offsets are int32 inside the kernels (program ids and aranges are int32):
# tensors with 2**31 elements or more would wrap around
MAX_NUMEL = 2**31 - 1


def acc_dtype(dtype: torch.dtype):
    """Triton dtype of statistics/accumulators: float64 for float64, else float32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """torch dtype in which mean/rstd/var and partial sums are stored."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def why_not_tensor(x: torch.Tensor) -> Optional[str]:
    """None if the Triton kernels can run on ``x``, else the reason they cannot."""
    if not isinstance(x, torch.Tensor):
        return f"expected a torch.Tensor, got {type(x).__name__}"
    if x.device.type != "cuda" and not (INTERPRET and x.device.type == "cpu"):
        return (
            f"Triton kernels need a CUDA tensor, got device {x.device.type!r} "
            "(set TRITON_INTERPRET=1 before importing normkit to run them on CPU tensors "
            "in Triton's interpreter)"
        )
    if x.dtype not in SUPPORTED_DTYPES:
        return (
            f"dtype {x.dtype} is not supported by the Triton kernels "
            f"(supported: {', '.join(str(d) for d in SUPPORTED_DTYPES)})"
        )
    if x.numel() > MAX_NUMEL:
        return (
            f"tensor has {x.numel()} elements; the Triton kernels index with int32 "
            f"and accept at most {MAX_NUMEL}"
        )
    return None


def num_partials(rows: int, device: torch.device) -> int:
    """How many programs produce partial sums for a deterministic reduction.

    A few programs per SM keeps the GPU busy; the count depends only on the
    device, so results are bitwise reproducible on a given GPU. The
    interpreter runs programs one after another, so a handful is fastest.
    """
    if device.type == "cuda":
        per_device = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        per_device = 4
    return max(1, min(rows, per_device))


def block_for(n: int, cap: int) -> int:
    """Power of two >= n (at least 16, the smallest tl.arange Triton likes), capped."""
    return max(16, min(cap, triton.next_power_of_2(max(1, n))))


def warps_for(block: int) -> int:
    """num_warps for a 1-D block: ~8-16 values per thread keeps registers from spilling."""
    return 4 if block <= 1024 else 8 if block <= 2048 else 16


@triton.jit
def _column_sum_kernel(
    src_ptr,  # (R, K) partial sums, accumulator dtype
    dst_ptr,  # (K,) output dtype
    R,
    K,
    ACC_DTYPE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """dst[k] = sum_r src[r, k]: the deterministic second stage of a partial reduction.

    Each program owns BLOCK_K columns and walks the rows BLOCK_R at a time, one
    (BLOCK_R, BLOCK_K) tile per step, so a few hundred partial rows take a handful of
    wide loads instead of one dependent load per row; the tile is summed over its rows
    at the end. The order of additions depends only on R, K and the block sizes.
    """
    pid = tl.program_id(0)
    cols = pid * BLOCK_K + tl.arange(0, BLOCK_K)
    col_ok = cols < K
    rows = tl.arange(0, BLOCK_R)
    acc = tl.zeros([BLOCK_R, BLOCK_K], dtype=ACC_DTYPE)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + rows
        ok = (r[:, None] < R) & col_ok[None, :]
        acc += tl.load(src_ptr + r[:, None] * K + cols[None, :], mask=ok, other=0.0).to(ACC_DTYPE)
    tl.store(dst_ptr + cols, tl.sum(acc, axis=0).to(dst_ptr.dtype.element_ty), mask=col_ok)


# (BLOCK_R, BLOCK_K) of _column_sum_kernel: 2048 accumulators per program (16 per thread
# with 4 warps), 32 columns (128 bytes of float32) per row segment
COLUMN_SUM_BLOCK_R = 64
COLUMN_SUM_BLOCK_K = 32


def column_sum(src: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """Sum a (R, K) buffer of partials over R into a new (K,) tensor of ``out_dtype``."""
    rows, cols = src.shape
    dst = torch.empty(cols, dtype=out_dtype, device=src.device)
    if cols == 0:
        return dst
    if rows == 0:
        return dst.zero_()
    _column_sum_kernel[(triton.cdiv(cols, COLUMN_SUM_BLOCK_K),)](
        src,
        dst,
        rows,
        cols,
        ACC_DTYPE=acc_dtype(src.dtype),
        BLOCK_R=COLUMN_SUM_BLOCK_R,
        BLOCK_K=COLUMN_SUM_BLOCK_K,
    )
    return dst
