"""One ``torch.autograd.Function`` per op, with analytic backward passes.

Functions hold no parameters and never see kernels directly: they resolve a
backend once in forward (stored on ``ctx``) and call the op through
:mod:`normkit.dispatch`, forward and backward alike.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from . import dispatch, library


class LocalResponseNormFunction(torch.autograd.Function):
    """LRN in canonical form; saves only the input and recomputes the scale in backward."""

    @staticmethod
    def forward(ctx, x, back: int, ahead: int, alpha: float, beta: float, k: float,
                within: bool, backend: str):
        ctx.save_for_backward(x)
        ctx.params = (back, ahead, alpha, beta, k, within)
        ctx.backend = backend
        # through the custom op so that torch.compile keeps the kernel as one graph node
        return library.lrn_fwd(x, back, ahead, alpha, beta, k, within, backend)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        # dy as it comes: each backend makes the layout it needs (a channels-last dy made
        # contiguous here would be copied back to channels-last by the cpu kernel)
        dx = library.lrn_bwd(x, dy, *ctx.params, ctx.backend)
        return dx, None, None, None, None, None, None, None
