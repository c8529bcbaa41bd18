"""One shared generator of hostile inputs (docs/design.md section 5).

Each generator yields ``(name, tensor)`` pairs; tests pick what applies.
"""

from __future__ import annotations

import torch


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, dtype=torch.float64, seed=0, mean=0.0, std=1.0, device="cpu"):
    # drawn on the CPU (the generator's device) even when a test has set a CUDA default
    # device, then moved to ``device``: the same values on every machine
    x = torch.randn(*shape, generator=_gen(seed), dtype=torch.float64, device="cpu") * std + mean
    return x.to(device=device, dtype=dtype)


def layouts(x: torch.Tensor):
    """The same values in contiguous, channels_last, non-contiguous and transposed layouts."""
    yield "contiguous", x.contiguous()
    if x.dim() == 4:
        yield "channels_last", x.contiguous(memory_format=torch.channels_last)
    big = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
    big[..., ::2] = x
    yield "strided", big[..., ::2]
    yield "transposed", x.transpose(0, -1).contiguous().transpose(0, -1)


def lrn_inputs(dtype=torch.float64):
    """Inputs an LRN must survive: loud channels, huge values, N != C, odd widths."""
    yield "randn N!=C", randn(3, 7, 5, 4, dtype=dtype, seed=1)
    yield "wide spatial", randn(2, 5, 3, 1023, dtype=dtype, seed=2)
    loud = randn(2, 9, 4, 4, dtype=torch.float64, seed=3)
    loud[:, 4] *= 1000.0  # one channel 1000x louder than its neighbours
    yield "one loud channel", loud.to(dtype)
    yield "zeros", torch.zeros(2, 6, 3, 3, dtype=dtype)
    yield "rank 3", randn(4, 6, 17, dtype=dtype, seed=4)
    yield "rank 5", randn(2, 6, 3, 4, 2, dtype=dtype, seed=5)
    yield "single channel", randn(2, 1, 4, 4, dtype=dtype, seed=6)
