"""normkit's ops as ``torch.library`` custom ops, so that ``torch.compile`` sees them.

``torch.compile(model, fullgraph=True)`` cannot trace into a numba or Triton kernel;
as a custom op with a fake (meta) implementation the kernel is one opaque node of
the graph, with known output shape, dtype and strides. Eager calls go through the
same op: behaviour (dispatch, ``last_backend``) is identical.

The backend is resolved before the op is called and passed in as a string, so the
op itself is a pure function of its arguments.
"""

from __future__ import annotations

import torch

from . import dispatch

__all__ = ["lrn_fwd", "lrn_bwd"]


def _like(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` with the strides ``torch.empty_like(x)`` has (what the fake op promises)."""
    if out.stride() == torch.empty_like(x, device="meta").stride():  # no allocation
        return out
    like = torch.empty_like(x)
    like.copy_(out)
    return like


@torch.library.custom_op("normkit::lrn_fwd", mutates_args=())
def lrn_fwd(x: torch.Tensor, back: int, ahead: int, alpha: float, beta: float, k: float,
            within: bool, backend: str) -> torch.Tensor:
    """LRN forward in canonical form on the already resolved ``backend``."""
    return _like(x, dispatch.call("lrn_fwd", backend, x, back, ahead, alpha, beta, k, within))


@lrn_fwd.register_fake
def _lrn_fwd_fake(x, back, ahead, alpha, beta, k, within, backend):
    return torch.empty_like(x)


@torch.library.custom_op("normkit::lrn_bwd", mutates_args=())
def lrn_bwd(x: torch.Tensor, dy: torch.Tensor, back: int, ahead: int, alpha: float,
            beta: float, k: float, within: bool, backend: str) -> torch.Tensor:
    """LRN backward (dx from x and dy; the scale is recomputed)."""
    return _like(x, dispatch.call("lrn_bwd", backend, x, dy, back, ahead, alpha, beta, k,
                                  within))


@lrn_bwd.register_fake
def _lrn_bwd_fake(x, dy, back, ahead, alpha, beta, k, within, backend):
    return torch.empty_like(x)
