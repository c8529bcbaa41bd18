"""One ``torch.autograd.Function`` per op, with analytic backward passes.

Functions hold no parameters and never see kernels directly: they resolve a
backend once in forward (stored on ``ctx``) and call the op through
:mod:`normkit.dispatch`, forward and backward alike.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import dispatch


class LocalResponseNormFunction(torch.autograd.Function):
    """LRN in canonical form; saves only the input and recomputes the scale in backward."""

    @staticmethod
    def forward(ctx, x, back: int, ahead: int, alpha: float, beta: float, k: float,
                within: bool, backend: str):
        ctx.save_for_backward(x)
        ctx.params = (back, ahead, alpha, beta, k, within)
        ctx.backend = backend
        return dispatch.call("lrn_fwd", backend, x, back, ahead, alpha, beta, k, within)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        dx = dispatch.call("lrn_bwd", ctx.backend, x, dy.contiguous(), *ctx.params)
        return dx, None, None, None, None, None, None, None
