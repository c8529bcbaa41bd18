"""One ``torch.autograd.Function`` per op, with analytic backward passes.

Functions hold no parameters and never see kernels directly: they resolve a
backend once in forward (stored on ``ctx``) and call the op through
:mod:`normkit.dispatch`, forward and backward alike, through the custom ops of
:mod:`normkit.library` (so that ``torch.compile`` keeps each kernel as one graph node).
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from . import library


def _owned(y: torch.Tensor) -> torch.Tensor:
    """``y`` as a tensor that is not an autograd view of anything.

    A Function's output that is a view of a tensor made inside ``forward`` (a reshape of
    the kernel's (M, D) or (N, C, L) result, or of a larger buffer) may not be modified
    in place: autograd raises on ``y.relu_()`` or ``y += identity``, which ordinary
    training code does (torchvision's ResNet). ``detach`` makes a non-differentiable
    alias of the same memory with no ``_base``; the original view dies with ``forward``.
    Each Function therefore takes the user's tensor, reshapes it inside, and returns
    the output in the user's shape through this function.
    """
    return y.detach()


class LocalResponseNormFunction(torch.autograd.Function):
    """LRN in canonical form; saves only the input and recomputes the scale in backward."""

    @staticmethod
    def forward(
        ctx,
        input,
        back: int,
        ahead: int,
        alpha: float,
        beta: float,
        k: float,
        within: bool,
        backends: dict,
        channel_dim: int = 1,
    ):
        ctx.save_for_backward(input)
        ctx.params = (back, ahead, alpha, beta, k, within)
        ctx.backend, ctx.channel_dim = backends["lrn_bwd"], channel_dim
        x = input if channel_dim == 1 else input.movedim(channel_dim, 1)
        # through the custom op so that torch.compile keeps the kernel as one graph node
        y = library.lrn_fwd(x, back, ahead, alpha, beta, k, within, backends["lrn_fwd"])
        return _owned(y if channel_dim == 1 else y.movedim(1, channel_dim))

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        (input,) = ctx.saved_tensors
        cd = ctx.channel_dim
        x = input if cd == 1 else input.movedim(cd, 1)
        # dy as it comes: each backend makes the layout it needs (a channels-last dy made
        # contiguous here would be copied back to channels-last by the cpu kernel)
        dx = library.lrn_bwd(x, dy if cd == 1 else dy.movedim(cd, 1), *ctx.params, ctx.backend)
        return (dx if cd == 1 else dx.movedim(1, cd),) + (None,) * 8


# --- batch / layer / group / RMS norm -------------------------------------------------
#
# Each Function saves the input, the statistics in the compute dtype (float32, or
# float64 for float64 input) and the weight: never x_hat or y, which are as large as
# the input and cheap to recompute from (x, mean, rstd). ``backends`` maps each op
# name the Function calls to the backend ``functional`` resolved for it.


def _grad_like(grad, param):
    return None if param is None or grad is None else grad.to(param.dtype)


class LayerNormFunction(torch.autograd.Function):
    """Layer norm of the user's tensor as rows (M, D); saves x, mean, rstd (M,) and weight."""

    @staticmethod
    def forward(ctx, input, weight, bias, eps: float, backends: dict, d: int):
        x = input.reshape(-1, d)
        y, mean, rstd = library.layer_norm_fwd(x, weight, bias, eps, backends["layer_norm_fwd"])
        ctx.save_for_backward(x, mean, rstd, weight, bias)
        ctx.backend, ctx.shape = backends["layer_norm_bwd"], input.shape
        return _owned(y.reshape(input.shape))

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, mean, rstd, weight, bias = ctx.saved_tensors
        dx, dweight, dbias = library.layer_norm_bwd(
            dy.reshape(x.shape).contiguous(), x, mean, rstd, weight, ctx.backend
        )
        return (
            dx.reshape(ctx.shape),
            _grad_like(dweight, weight),
            _grad_like(dbias, bias),
            None,
            None,
            None,
        )


class RMSNormFunction(torch.autograd.Function):
    """RMS norm of the user's tensor as rows (M, D); saves x, rstd (M,) and weight.

    ``channel_dim=1`` normalizes over dim 1 of an (N, C, *) input (ChannelRMSNorm):
    the rows are then the input with channels moved last.
    """

    @staticmethod
    def forward(ctx, input, weight, eps: float, backends: dict, d: int, channel_dim: int = -1):
        moved = input if channel_dim == -1 else input.movedim(channel_dim, -1)
        x = moved.reshape(-1, d)
        y, rstd = library.rms_norm_fwd(x, weight, eps, backends["rms_norm_fwd"])
        ctx.save_for_backward(x, rstd, weight)
        ctx.backend, ctx.moved, ctx.channel_dim = backends["rms_norm_bwd"], moved.shape, channel_dim
        y = y.reshape(moved.shape)
        return _owned(y if channel_dim == -1 else y.movedim(-1, channel_dim))

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, rstd, weight = ctx.saved_tensors
        cd = ctx.channel_dim
        dy = dy if cd == -1 else dy.movedim(cd, -1)
        dx, dweight = library.rms_norm_bwd(
            dy.reshape(x.shape).contiguous(), x, rstd, weight, ctx.backend
        )
        dx = dx.reshape(ctx.moved)
        return (
            (dx if cd == -1 else dx.movedim(-1, cd)),
            _grad_like(dweight, weight),
            None,
            None,
            None,
            None,
        )


class GroupNormFunction(torch.autograd.Function):
    """Group norm of an (N, C, *) input as (N, C, L) (instance norm: G = C); saves x,
    mean, rstd (N, G) and weight."""

    @staticmethod
    def forward(ctx, input, weight, bias, num_groups: int, eps: float, backends: dict):
        x = _ncl(input)
        y, mean, rstd = library.group_norm_fwd(
            x, weight, bias, num_groups, eps, backends["group_norm_fwd"]
        )
        ctx.save_for_backward(x, mean, rstd, weight, bias)
        ctx.num_groups, ctx.shape = num_groups, input.shape
        ctx.backend = backends["group_norm_bwd"]
        return _owned(y.reshape(input.shape))

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, mean, rstd, weight, bias = ctx.saved_tensors
        dx, dweight, dbias = library.group_norm_bwd(
            dy.reshape(x.shape).contiguous(), x, mean, rstd, weight, ctx.num_groups, ctx.backend
        )
        return (
            dx.reshape(ctx.shape),
            _grad_like(dweight, weight),
            _grad_like(dbias, bias),
            None,
            None,
            None,
        )


def _ncl(t: torch.Tensor) -> torch.Tensor:
    """An (N, C, *) tensor as (N, C, L), a view where the layout allows."""
    if t.dim() == 3:
        return t
    # L spelled out: reshape cannot infer -1 for a tensor with zero elements (an empty rank)
    return t.reshape(t.shape[0], t.shape[1], math.prod(t.shape[2:]))


def _stats_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def update_running_stats(running_mean, running_var, mean, unbiased_var, momentum: float) -> None:
    """running <- (1 - m) running + m batch; the caller passes the unbiased variance
    var * n / (n - 1), which is what torch stores."""
    if running_mean is None:
        return
    with torch.no_grad():
        # each in its statistic's dtype (BatchNorm's mean is float64, its variance float32)
        mdt, vdt = mean.dtype, unbiased_var.dtype
        running_mean.copy_(running_mean.to(mdt) * (1.0 - momentum) + mean * momentum)
        running_var.copy_(running_var.to(vdt) * (1.0 - momentum) + unbiased_var * momentum)


def _batch_norm_backward(
    ctx, dy, x, mean, rstd, weight, sum_dy, sum_dy_xhat, count, local_dy_xhat, local_dy
):
    """(dx, dweight, dbias) given the (possibly all-reduced) sums and the local ones."""
    dx = None
    if ctx.needs_input_grad[0]:
        dx = library.batch_norm_bwd_apply(
            dy,
            x,
            mean,
            rstd,
            weight,
            sum_dy,
            sum_dy_xhat,
            count,
            ctx.backends["batch_norm_bwd_apply"],
        )
    return (
        dx,
        _grad_like(local_dy_xhat, weight),
        (_grad_like(local_dy, weight) if ctx.has_bias else None),
    )


def _user_shaped(grads, shape):
    dx = grads[0]
    return (None if dx is None else dx.reshape(shape),) + tuple(grads[1:])


def batch_norm_batch_stats(x, backends: dict):
    """Batch (mean, biased var) of (N, C, L), detached: the backward pass differentiates
    through them analytically (``batch_norm_bwd_reduce``), not through autograd."""
    with torch.no_grad():
        return library.batch_norm_stats(x.detach(), backends["batch_norm_stats"])


class BatchNormFunction(torch.autograd.Function):
    """Batch norm of (N, C, L) given its statistics (C,) in the compute dtype.

    The caller computes the statistics (:func:`batch_norm_batch_stats` in training,
    the running ones in evaluation) and updates the running stats with plain torch
    ops, outside this Function: ``torch.compile`` then sees the buffer mutation as
    an ordinary in-place op. Saves x, mean, rstd and the weight. ``count`` is the
    number of values per channel in training; 0 in evaluation, where the statistics
    are constants and the input gradient is dy * weight * rstd (the same apply op
    with zero sums).
    """

    @staticmethod
    def forward(ctx, input, weight, bias, mean, rstd, training: bool, count: int, backends: dict):
        x = _ncl(input)
        y = library.batch_norm_apply(x, mean, rstd, weight, bias, backends["batch_norm_apply"])
        ctx.save_for_backward(x, mean, rstd, weight)
        ctx.training, ctx.count, ctx.backends = training, count, backends
        ctx.has_bias, ctx.shape = bias is not None, input.shape
        return _owned(y.reshape(input.shape))

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, mean, rstd, weight = ctx.saved_tensors
        dy = dy.reshape(x.shape).contiguous()
        sum_dy, sum_dy_xhat = library.batch_norm_bwd_reduce(
            dy, x, mean, rstd, ctx.backends["batch_norm_bwd_reduce"]
        )
        if ctx.training:
            grads = _batch_norm_backward(
                ctx, dy, x, mean, rstd, weight, sum_dy, sum_dy_xhat, ctx.count, sum_dy_xhat, sum_dy
            )
        else:
            zeros = torch.zeros_like(sum_dy)
            grads = _batch_norm_backward(
                ctx, dy, x, mean, rstd, weight, zeros, zeros, 1, sum_dy_xhat, sum_dy
            )
        return _user_shaped(grads, ctx.shape) + (None,) * 5


class SyncBatchNormFunction(torch.autograd.Function):
    """Batch norm whose statistics span every process of ``process_group``.

    Forward: one ``all_gather`` of each rank's packed ``(count, mean, M2)``
    (float64), merged with Chan's parallel formula
    ``M2 = sum_r M2_r + sum_r n_r (mean_r - mean)^2``, which never subtracts
    large squares and handles ranks with zero samples (n_r = 0). Backward: one
    ``all_reduce`` of the packed ``(sum_dy, sum_dy_xhat)``. Weight and bias
    gradients are the local sums, as in ``torch.nn.SyncBatchNorm``: data-parallel
    gradient averaging then treats them like any other parameter.
    """

    @staticmethod
    def forward(
        ctx,
        input,
        weight,
        bias,
        running_mean,
        running_var,
        momentum: float,
        eps: float,
        process_group,
        world_size: int,
        backends: dict,
    ):
        import torch.distributed as dist

        x = _ncl(input)
        n, c, length = x.shape
        cdt = _stats_dtype(x)
        local_count = n * length
        if local_count > 0:
            mean, var = library.batch_norm_stats(x, backends["batch_norm_stats"])
        else:
            mean = torch.zeros(c, dtype=torch.float64, device=x.device)
            var = torch.zeros(c, dtype=cdt, device=x.device)
        # float64 packing: counts stay exact past 2**24 and the merge loses nothing
        packed = torch.cat(
            [
                torch.tensor([float(local_count)], dtype=torch.float64, device=x.device),
                mean.to(torch.float64),
                var.to(torch.float64) * local_count,
            ]
        )
        gathered = [torch.empty_like(packed) for _ in range(world_size)]
        dist.all_gather(gathered, packed, group=process_group)
        table = torch.stack(gathered)  # (W, 1 + 2C)
        counts = table[:, :1]  # (W, 1)
        total = float(counts.sum())
        if total <= 1:
            raise ValueError(
                "SyncBatchNorm: expected more than 1 value per channel over all "
                f"processes when training, got {int(total)}; use a larger batch "
                "or evaluation mode"
            )
        means, m2 = table[:, 1 : 1 + c], table[:, 1 + c :]  # (W, C) each
        mean64 = (counts * means).sum(0) / total
        m2_total = m2.sum(0) + (counts * (means - mean64) ** 2).sum(0)
        var64 = (m2_total / total).clamp_min(0.0)
        mean, var = mean64, var64.to(cdt)  # the op contract's mean is float64
        update_running_stats(
            running_mean, running_var, mean, (m2_total / (total - 1)).to(cdt), momentum
        )
        rstd = torch.rsqrt(var + eps)
        y = library.batch_norm_apply(x, mean, rstd, weight, bias, backends["batch_norm_apply"])
        ctx.save_for_backward(x, mean, rstd, weight)
        ctx.count, ctx.backends, ctx.process_group = int(total), backends, process_group
        ctx.has_bias, ctx.shape = bias is not None, input.shape
        return _owned(y.reshape(input.shape))

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        import torch.distributed as dist

        x, mean, rstd, weight = ctx.saved_tensors
        dy = dy.reshape(x.shape).contiguous()
        sum_dy, sum_dy_xhat = library.batch_norm_bwd_reduce(
            dy, x, mean, rstd, ctx.backends["batch_norm_bwd_reduce"]
        )
        c = sum_dy.numel()
        packed = torch.cat([sum_dy, sum_dy_xhat])  # a copy: the local sums stay intact
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=ctx.process_group)
        grads = _batch_norm_backward(
            ctx, dy, x, mean, rstd, weight, packed[:c], packed[c:], ctx.count, sum_dy_xhat, sum_dy
        )
        return _user_shaped(grads, ctx.shape) + (None,) * 7


# --- Filter Response Normalization + TLU -------------------------------------------------


class FilterResponseNormFunction(torch.autograd.Function):
    """FRN + TLU of (N, C, *); saves x, rstd (N, C), weight, bias and tau (never y).

    The op layout is (N, C, L): the Function reshapes inside and returns the output in
    the user's shape through :func:`_owned`, so in-place ops on it work.
    """

    @staticmethod
    def forward(ctx, input, weight, bias, tau, eps, backends: dict):
        x = input.reshape(input.shape[0], input.shape[1], -1)
        y, rstd = library.frn_fwd(x, weight, bias, tau, eps, backends["frn_fwd"])
        ctx.save_for_backward(x, rstd, weight, bias, tau)
        ctx.backend, ctx.shape = backends["frn_bwd"], input.shape
        ctx.dtypes = tuple(t.dtype for t in (weight, bias, tau, eps))
        return _owned(y.reshape(input.shape))

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, rstd, weight, bias, tau = ctx.saved_tensors
        dy = dy.reshape(x.shape)
        dx, *grads = library.frn_bwd(dy, x, rstd, weight, bias, tau, ctx.backend)
        dx = dx.reshape(ctx.shape)
        grads = [
            g.to(dt) if need else None
            for g, dt, need in zip(grads, ctx.dtypes, ctx.needs_input_grad[1:5])
        ]
        return (dx if ctx.needs_input_grad[0] else None, *grads, None)


# --- fused residual add + norm, modulated LayerNorm ------------------------------------------


def _cast(g, like):
    return None if like is None or g is None else g.to(like.dtype)


def _flat(t, d: int):
    return None if t is None else t.reshape(-1, d).contiguous()


def _input_grads(ctx, dsum):
    """dx and dresidual: the same values (h = x + residual), each in its input's dtype."""
    xdt, rdt = ctx.dtypes
    dsum = dsum.reshape(ctx.shape)
    return dsum.to(xdt), None if rdt is None else dsum.to(rdt)


class AddRMSNormFunction(torch.autograd.Function):
    """h = x + residual, y = RMSNorm(h) * weight over the last dim (D = weight's or
    ``d``); saves h, rstd, weight. Takes and returns x's shape (outputs never views)."""

    @staticmethod
    def forward(
        ctx, x, residual, weight, eps: float, residual_in_fp32: bool, backends: dict, d: int
    ):
        y, h, rstd = library.add_rms_norm_fwd(
            x.reshape(-1, d),
            _flat(residual, d),
            weight,
            eps,
            residual_in_fp32,
            backends["add_rms_norm_fwd"],
        )
        ctx.save_for_backward(h, rstd, weight)
        ctx.shape = x.shape
        ctx.backend = backends["add_rms_norm_bwd"]
        ctx.dtypes = (x.dtype, None if residual is None else residual.dtype)
        ctx.set_materialize_grads(False)  # dh is None when h is not used
        return _owned(y.reshape(x.shape).contiguous()), _owned(h.reshape(x.shape).contiguous())

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh):
        h, rstd, weight = ctx.saved_tensors
        dy = torch.zeros_like(h, dtype=ctx.dtypes[0]) if dy is None else _flat(dy, h.shape[1])
        dsum, dweight = library.add_rms_norm_bwd(
            dy, _flat(dh, h.shape[1]), h, rstd, weight, ctx.backend
        )
        return _input_grads(ctx, dsum) + (_cast(dweight, weight), None, None, None, None)


class AddLayerNormFunction(torch.autograd.Function):
    """h = x + residual, y = LayerNorm(h) over the last d features; saves h, mean, rstd,
    weight. Takes and returns x's shape (outputs never views)."""

    @staticmethod
    def forward(
        ctx, x, residual, weight, bias, eps: float, residual_in_fp32: bool, backends: dict, d: int
    ):
        y, h, mean, rstd = library.add_layer_norm_fwd(
            x.reshape(-1, d),
            _flat(residual, d),
            weight,
            bias,
            eps,
            residual_in_fp32,
            backends["add_layer_norm_fwd"],
        )
        ctx.save_for_backward(h, mean, rstd, weight, bias)
        ctx.shape = x.shape
        ctx.backend = backends["add_layer_norm_bwd"]
        ctx.dtypes = (x.dtype, None if residual is None else residual.dtype)
        ctx.set_materialize_grads(False)
        return _owned(y.reshape(x.shape).contiguous()), _owned(h.reshape(x.shape).contiguous())

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh):
        h, mean, rstd, weight, bias = ctx.saved_tensors
        dy = torch.zeros_like(h, dtype=ctx.dtypes[0]) if dy is None else _flat(dy, h.shape[1])
        dsum, dweight, dbias = library.add_layer_norm_bwd(
            dy, _flat(dh, h.shape[1]), h, mean, rstd, weight, ctx.backend
        )
        return _input_grads(ctx, dsum) + (
            _cast(dweight, weight),
            _cast(dbias, bias),
            None,
            None,
            None,
            None,
        )


class ModulatedLayerNormFunction(torch.autograd.Function):
    """y = LN(x) (1 + scale) + shift for x (N, T, D); saves x, mean, rstd, scale."""

    @staticmethod
    def forward(ctx, x, shift, scale, eps: float, backends: dict):
        x3 = x.reshape(x.shape[0], -1, x.shape[-1])
        y, mean, rstd = library.modulated_layer_norm_fwd(
            x3, shift, scale, eps, backends["modulated_layer_norm_fwd"]
        )
        ctx.save_for_backward(x3, mean, rstd, scale)
        ctx.shape = x.shape
        ctx.backend = backends["modulated_layer_norm_bwd"]
        ctx.shift_dtype = shift.dtype
        return _owned(y.reshape(x.shape).contiguous())

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, mean, rstd, scale = ctx.saved_tensors
        dx, dshift, dscale = library.modulated_layer_norm_bwd(
            dy.reshape(x.shape).contiguous(), x, mean, rstd, scale, ctx.backend
        )
        return dx.reshape(ctx.shape), dshift.to(ctx.shift_dtype), dscale, None, None
