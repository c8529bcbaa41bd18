"""normkit's ops as ``torch.library`` custom ops, so that ``torch.compile`` sees them.

``torch.compile(model, fullgraph=True)`` cannot trace into a numba or Triton kernel;
as a custom op with a fake (meta) implementation the kernel is one opaque node of
the graph, with known output shape, dtype and strides. Plain eager calls run the
op's Python body directly (see :class:`_Op`): behaviour (dispatch, ``last_backend``,
output strides) is identical either way.

The backend is resolved before the op is called and passed in as a string, so the
op itself is a pure function of its arguments.
"""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import dispatch

__all__ = ["lrn_fwd", "lrn_bwd", "layer_norm_fwd", "layer_norm_bwd", "rms_norm_fwd",
           "rms_norm_bwd", "group_norm_fwd", "group_norm_bwd", "batch_norm_stats",
           "batch_norm_apply", "batch_norm_bwd_reduce", "batch_norm_bwd_apply"]

_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _plain_eager(args) -> bool:
    """True when nothing traces this call: no dynamo, no dispatch mode (make_fx, fake
    tensors, functionalization) and only ordinary tensors."""
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return False
    return all(type(a) in _PLAIN for a in args if isinstance(a, torch.Tensor))


class _Op:
    """A ``normkit::<name>`` custom op that plain eager calls bypass.

    Going through the custom-op dispatcher costs about 25 us per call on CPU, as much
    as a small kernel; an eager call with nothing tracing it runs the same Python body
    directly (same outputs, same strides, same ``dispatch.last_backend``). Tracers
    (dynamo, make_fx, fake tensors) always see the custom op.
    """

    def __init__(self, name: str, fn):
        self.op = torch.library.custom_op(f"normkit::{name}", mutates_args=())(fn)
        self._fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args):
        if _plain_eager(args):
            return self._fn(*args)
        return self.op(*args)

    def register_fake(self, fake):
        return self.op.register_fake(fake)


def _op(name: str):
    return lambda fn: _Op(name, fn)


def _like(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` with the strides ``torch.empty_like(x)`` has (what the fake op promises)."""
    if x.is_contiguous() and out.is_contiguous():  # the common case, decided cheaply
        return out
    if out.stride() == torch.empty_like(x, device="meta").stride():  # no allocation
        return out
    like = torch.empty_like(x)
    like.copy_(out)
    return like


@_op("lrn_fwd")
def lrn_fwd(x: torch.Tensor, back: int, ahead: int, alpha: float, beta: float, k: float,
            within: bool, backend: str) -> torch.Tensor:
    """LRN forward in canonical form on the already resolved ``backend``."""
    return _like(x, dispatch.call("lrn_fwd", backend, x, back, ahead, alpha, beta, k, within))


@lrn_fwd.register_fake
def _lrn_fwd_fake(x, back, ahead, alpha, beta, k, within, backend):
    return torch.empty_like(x)


@_op("lrn_bwd")
def lrn_bwd(x: torch.Tensor, dy: torch.Tensor, back: int, ahead: int, alpha: float,
            beta: float, k: float, within: bool, backend: str) -> torch.Tensor:
    """LRN backward (dx from x and dy; the scale is recomputed)."""
    return _like(x, dispatch.call("lrn_bwd", backend, x, dy, back, ahead, alpha, beta, k,
                                  within))


@lrn_bwd.register_fake
def _lrn_bwd_fake(x, dy, back, ahead, alpha, beta, k, within, backend):
    return torch.empty_like(x)


# --- batch / layer / group / RMS norm -------------------------------------------------
#
# Schemas follow docs/ops.md with one change: a custom op cannot return None, so a
# weight gradient for an op called with weight=None comes back as an empty (0,) tensor
# and autograd.py turns it back into None. Every output is a fresh tensor, contiguous
# except y/dx, which have the strides of ``torch.empty_like(x)`` (what the fake kernels
# promise); stats are float32 (float64 for float64 input).


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _grad_dtype(x: torch.Tensor, weight) -> torch.dtype:
    return x.dtype if weight is None else weight.dtype


def _fresh(out: torch.Tensor, *inputs) -> torch.Tensor:
    """``out``, copied if it shares memory with an input (a custom op may not return
    an alias of its arguments)."""
    ptr = out.untyped_storage().data_ptr()
    if any(t is not None and t.untyped_storage().data_ptr() == ptr for t in inputs):
        out = out.clone()
    return out


def _stats(t: torch.Tensor, shape, x: torch.Tensor, *inputs) -> torch.Tensor:
    # each step only when needed: this runs on every eager call (a few us each)
    cdt = _stats_dtype(x)
    if t.dtype != cdt:
        t = t.to(cdt)
    if t.shape != shape:
        t = t.reshape(shape)
    if not t.is_contiguous():
        t = t.contiguous()
    return _fresh(t, x, *inputs)


def _weight_grad(g, weight, x: torch.Tensor, *inputs) -> torch.Tensor:
    if weight is None or g is None:
        return x.new_empty((0,), dtype=_grad_dtype(x, weight))
    return _fresh(g.to(weight.dtype).reshape(weight.shape).contiguous(), x, weight, *inputs)


def _fake_weight_grad(weight, x):
    if weight is None:
        return x.new_empty((0,))
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def _fake_stats(x, *shape):
    return x.new_empty(shape, dtype=_stats_dtype(x))


@_op("layer_norm_fwd")
def layer_norm_fwd(x: torch.Tensor, weight: Optional[torch.Tensor],
                   bias: Optional[torch.Tensor], eps: float,
                   backend: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Layer norm of rows (M, D) -> (y, mean (M,), rstd (M,))."""
    y, mean, rstd = dispatch.call("layer_norm_fwd", backend, x, weight, bias, eps)
    m = x.shape[0]
    return (_fresh(_like(x, y), x, weight, bias), _stats(mean, (m,), x, weight, bias),
            _stats(rstd, (m,), x, weight, bias))


@layer_norm_fwd.register_fake
def _layer_norm_fwd_fake(x, weight, bias, eps, backend):
    m = x.shape[0]
    return torch.empty_like(x), _fake_stats(x, m), _fake_stats(x, m)


@_op("layer_norm_bwd")
def layer_norm_bwd(dy: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                   weight: Optional[torch.Tensor],
                   backend: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias); dweight is empty (0,) when weight is None, dbias is
    (D,) in the weight's dtype (x's without weight)."""
    dx, dweight, dbias = dispatch.call("layer_norm_bwd", backend, dy, x, mean, rstd, weight)
    d = x.shape[1]
    dbias = _fresh(dbias.to(_grad_dtype(x, weight)).reshape(d).contiguous(), dy, x, weight)
    return (_fresh(_like(x, dx), dy, x, weight), _weight_grad(dweight, weight, x, dy), dbias)


@layer_norm_bwd.register_fake
def _layer_norm_bwd_fake(dy, x, mean, rstd, weight, backend):
    dbias = x.new_empty((x.shape[1],), dtype=_grad_dtype(x, weight))
    return torch.empty_like(x), _fake_weight_grad(weight, x), dbias


@_op("rms_norm_fwd")
def rms_norm_fwd(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float,
                 backend: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """RMS norm of rows (M, D) -> (y, rstd (M,))."""
    y, rstd = dispatch.call("rms_norm_fwd", backend, x, weight, eps)
    return _fresh(_like(x, y), x, weight), _stats(rstd, (x.shape[0],), x, weight)


@rms_norm_fwd.register_fake
def _rms_norm_fwd_fake(x, weight, eps, backend):
    return torch.empty_like(x), _fake_stats(x, x.shape[0])


@_op("rms_norm_bwd")
def rms_norm_bwd(dy: torch.Tensor, x: torch.Tensor, rstd: torch.Tensor,
                 weight: Optional[torch.Tensor],
                 backend: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(dx, dweight); dweight is empty (0,) when weight is None."""
    dx, dweight = dispatch.call("rms_norm_bwd", backend, dy, x, rstd, weight)
    return _fresh(_like(x, dx), dy, x, weight), _weight_grad(dweight, weight, x, dy)


@rms_norm_bwd.register_fake
def _rms_norm_bwd_fake(dy, x, rstd, weight, backend):
    return torch.empty_like(x), _fake_weight_grad(weight, x)


@_op("group_norm_fwd")
def group_norm_fwd(x: torch.Tensor, weight: Optional[torch.Tensor],
                   bias: Optional[torch.Tensor], num_groups: int, eps: float,
                   backend: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group norm of (N, C, L) -> (y, mean (N, G), rstd (N, G))."""
    y, mean, rstd = dispatch.call("group_norm_fwd", backend, x, weight, bias, num_groups, eps)
    shape = (x.shape[0], num_groups)
    return (_fresh(_like(x, y), x, weight, bias), _stats(mean, shape, x, weight, bias),
            _stats(rstd, shape, x, weight, bias))


@group_norm_fwd.register_fake
def _group_norm_fwd_fake(x, weight, bias, num_groups, eps, backend):
    n = x.shape[0]
    return (torch.empty_like(x), _fake_stats(x, n, num_groups),
            _fake_stats(x, n, num_groups))


@_op("group_norm_bwd")
def group_norm_bwd(dy: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                   weight: Optional[torch.Tensor], num_groups: int,
                   backend: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias) as :func:`layer_norm_bwd`, dweight/dbias (C,)."""
    dx, dweight, dbias = dispatch.call("group_norm_bwd", backend, dy, x, mean, rstd, weight,
                                       num_groups)
    c = x.shape[1]
    dbias = _fresh(dbias.to(_grad_dtype(x, weight)).reshape(c).contiguous(), dy, x, weight)
    return (_fresh(_like(x, dx), dy, x, weight), _weight_grad(dweight, weight, x, dy), dbias)


@group_norm_bwd.register_fake
def _group_norm_bwd_fake(dy, x, mean, rstd, weight, num_groups, backend):
    dbias = x.new_empty((x.shape[1],), dtype=_grad_dtype(x, weight))
    return torch.empty_like(x), _fake_weight_grad(weight, x), dbias


@_op("batch_norm_stats")
def batch_norm_stats(x: torch.Tensor, backend: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, biased var) of (N, C, L), each (C,)."""
    mean, var = dispatch.call("batch_norm_stats", backend, x)
    c = x.shape[1]
    return _stats(mean, (c,), x), _stats(var, (c,), x)


@batch_norm_stats.register_fake
def _batch_norm_stats_fake(x, backend):
    c = x.shape[1]
    return _fake_stats(x, c), _fake_stats(x, c)


@_op("batch_norm_apply")
def batch_norm_apply(x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                     weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                     backend: str) -> torch.Tensor:
    """y = (x - mean) rstd weight + bias per channel of (N, C, L)."""
    y = dispatch.call("batch_norm_apply", backend, x, mean, rstd, weight, bias)
    return _fresh(_like(x, y), x, mean, rstd, weight, bias)


@batch_norm_apply.register_fake
def _batch_norm_apply_fake(x, mean, rstd, weight, bias, backend):
    return torch.empty_like(x)


@_op("batch_norm_bwd_reduce")
def batch_norm_bwd_reduce(dy: torch.Tensor, x: torch.Tensor, mean: torch.Tensor,
                          rstd: torch.Tensor, backend: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(sum_dy, sum_dy_xhat), each (C,) in the stats dtype."""
    sum_dy, sum_dy_xhat = dispatch.call("batch_norm_bwd_reduce", backend, dy, x, mean, rstd)
    c = x.shape[1]
    return _stats(sum_dy, (c,), x, dy, mean, rstd), _stats(sum_dy_xhat, (c,), x, dy, mean, rstd)


@batch_norm_bwd_reduce.register_fake
def _batch_norm_bwd_reduce_fake(dy, x, mean, rstd, backend):
    c = x.shape[1]
    return _fake_stats(x, c), _fake_stats(x, c)


@_op("batch_norm_bwd_apply")
def batch_norm_bwd_apply(dy: torch.Tensor, x: torch.Tensor, mean: torch.Tensor,
                         rstd: torch.Tensor, weight: Optional[torch.Tensor],
                         sum_dy: torch.Tensor, sum_dy_xhat: torch.Tensor, count: int,
                         backend: str) -> torch.Tensor:
    """dx of batch norm given the (possibly all-reduced) sums and the element count."""
    dx = dispatch.call("batch_norm_bwd_apply", backend, dy, x, mean, rstd, weight, sum_dy,
                       sum_dy_xhat, count)
    return _fresh(_like(x, dx), dy, x, mean, rstd, weight, sum_dy, sum_dy_xhat)


@batch_norm_bwd_apply.register_fake
def _batch_norm_bwd_apply_fake(dy, x, mean, rstd, weight, sum_dy, sum_dy_xhat, count, backend):
    return torch.empty_like(x)
