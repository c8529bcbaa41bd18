"""Agreement check run by :class:`normkit.SyncBatchNorm` before its data collective.

The data collectives (an ``all_gather`` of ``1 + 2C`` float64 values forward, an
``all_reduce`` of ``2C`` values in the input's stats dtype backward) need every rank
to hold the same channel count and dtype. When ranks disagree, gloo aborts the
interpreter (``gloo::EnforceNotMet``) and NCCL may hang, so the check exchanges a
fixed-size int64 triple first; its size never depends on the data, so it cannot
itself mismatch. Every rank gets the same table and raises the same error.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["check_ranks_agree"]

# stable codes: the index of the input dtype in this tuple
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _code(dtype: torch.dtype) -> int:
    return _DTYPES.index(dtype) if dtype in _DTYPES else -1


def _describe(row: Sequence[int]) -> str:
    channels, code, rank = row
    dtype = _DTYPES[code] if 0 <= code < len(_DTYPES) else "non-float"
    return f"C={channels}, dtype={dtype}, {rank}-D input"


def check_ranks_agree(input: torch.Tensor, process_group, world_size: int) -> None:
    """Raise ``ValueError`` on every rank if the ranks' channel counts or dtypes differ.

    Args:
        input: this rank's (N, C, *) input.
        process_group: the group of the SyncBatchNorm (None: the world).
        world_size: size of that group (> 1).

    One ``all_gather`` of three int64 values per rank: (C, dtype code, input rank).
    """
    import torch.distributed as dist

    mine = torch.tensor(
        [input.shape[1], _code(input.dtype), input.dim()], dtype=torch.int64, device=input.device
    )
    rows = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(rows, mine, group=process_group)
    table = [tuple(int(v) for v in r.tolist()) for r in rows]
    if all(r[:2] == table[0][:2] for r in table):
        return
    me = dist.get_rank(process_group) if process_group is not None else dist.get_rank()
    lines = "; ".join(f"rank {i}: {_describe(r)}" for i, r in enumerate(table))
    odd = [i for i, r in enumerate(table) if r[:2] != table[me][:2]]
    raise ValueError(
        f"SyncBatchNorm: every rank of the process group must feed the same number of "
        f"channels and the same dtype, got {lines} (this is rank {me}; rank(s) {odd} differ "
        f"from it). Build the same model on every rank (same num_features) and cast inputs "
        f"to one dtype on all ranks before the layer"
    )
