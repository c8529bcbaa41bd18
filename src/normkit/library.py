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

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import dispatch
from .ops import schema

__all__ = ["OPS", *schema.OPS]  # one custom op per schema entry, defined at the bottom

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

    def __init__(self, name: str, fn, op_schema: str):
        self.op = torch.library.custom_op(f"normkit::{name}", fn, mutates_args=(), schema=op_schema)
        self._fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args):
        if _plain_eager(args):
            return self._fn(*args)
        return self.op(*args)

    def register_fake(self, fake):
        return self.op.register_fake(fake)


def _like(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` with the strides ``torch.empty_like(x)`` has (what the fake op promises)."""
    if x.is_contiguous() and out.is_contiguous():  # the common case, decided cheaply
        return out
    if out.stride() == torch.empty_like(x, device="meta").stride():  # no allocation
        return out
    like = torch.empty_like(x)
    like.copy_(out)
    return like


# --- every op of the schema as a custom op ----------------------------------------------
#
# Outputs follow normkit.ops.schema's rules (see docs/ops.md): a custom op cannot return
# None, so a weight gradient for an op called with weight=None comes back as an empty (0,)
# tensor and autograd.py turns it back into None. Every output is a fresh tensor,
# contiguous except y/dx, which have the strides of ``torch.empty_like(x)`` (what the fake
# kernels promise); stats are float32 (float64 for float64 input).


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _grad_dtype(x: torch.Tensor, weight) -> torch.dtype:
    return x.dtype if weight is None else weight.dtype


def _storages(inputs) -> frozenset:
    """The storage addresses of a call's tensor arguments (once per call, not per output)."""
    return frozenset(t.untyped_storage().data_ptr() for t in inputs)


def _fresh(out: torch.Tensor, inputs: frozenset) -> torch.Tensor:
    """``out``, copied if it shares memory with an input (a custom op may not return
    an alias of its arguments); ``inputs`` is :func:`_storages` of the arguments."""
    if out.untyped_storage().data_ptr() in inputs:
        out = out.clone()
    return out


def _as(t: torch.Tensor, dtype: torch.dtype, shape) -> torch.Tensor:
    """``t`` in ``dtype`` and ``shape``, contiguous: each step only when needed (this runs
    on every eager call, a few us per step)."""
    if t.dtype != dtype:
        t = t.to(dtype)
    if t.shape != shape:
        t = t.reshape(shape)
    return t if t.is_contiguous() else t.contiguous()


def _output(rule: schema.Out, t, bound, inputs) -> torch.Tensor:
    """One eager output brought to the schema's rule."""
    ref = bound[rule.like]
    if rule.kind == "like":
        dtype = ref.dtype if rule.dtype is None else rule.dtype(bound)
        if t.dtype != dtype:
            t = t.to(dtype)
        return _fresh(_like(ref, t), inputs)
    if rule.kind == "stats":
        cdt = _stats_dtype(ref) if rule.dtype is None else rule.dtype(bound)
        return _fresh(_as(t, cdt, rule.shape(bound)), inputs)
    weight = bound.get("weight")
    if rule.kind == "weight_grad":
        if weight is None or t is None:
            return ref.new_empty((0,), dtype=_grad_dtype(ref, weight))
        return _fresh(_as(t, weight.dtype, weight.shape), inputs)
    # param_grad
    dtype = _grad_dtype(ref, weight) if rule.dtype is None else rule.dtype(bound)
    return _fresh(_as(t, dtype, rule.shape(bound)), inputs)


def _fake_output(rule: schema.Out, bound) -> torch.Tensor:
    ref = bound[rule.like]
    if rule.kind == "like":
        return torch.empty_like(ref, dtype=None if rule.dtype is None else rule.dtype(bound))
    if rule.kind == "stats":
        dtype = _stats_dtype(ref) if rule.dtype is None else rule.dtype(bound)
        return ref.new_empty(rule.shape(bound), dtype=dtype)
    weight = bound.get("weight")
    if rule.kind == "weight_grad":
        if weight is None:
            return ref.new_empty((0,))
        return torch.empty_like(weight, memory_format=torch.contiguous_format)
    dtype = _grad_dtype(ref, weight) if rule.dtype is None else rule.dtype(bound)
    return ref.new_empty(rule.shape(bound), dtype=dtype)


def _define(spec: schema.OpSchema) -> _Op:
    """The custom op ``normkit::<name>`` of a schema entry, with its fake kernel."""
    name, rules, single = spec.name, spec.outputs, len(spec.outputs) == 1

    def body(*args):
        *raw, backend = args
        outs = dispatch.call(name, backend, *raw)
        bound = spec.bind(raw)
        inputs = _storages([t for t in raw if isinstance(t, torch.Tensor)])
        if single:
            return _output(rules[0], outs, bound, inputs)
        return tuple(_output(r, t, bound, inputs) for r, t in zip(rules, outs))

    def fake(*args):
        bound = spec.bind(args[:-1])
        if single:
            return _fake_output(rules[0], bound)
        return tuple(_fake_output(r, bound) for r in rules)

    body.__name__ = body.__qualname__ = name
    body.__doc__ = f"{spec.doc}: ``{spec.signature()}`` on an already resolved backend."
    op = _Op(name, body, schema.custom_op_schema(spec))
    op.register_fake(fake)
    return op


OPS = {name: _define(spec) for name, spec in schema.OPS.items()}
globals().update(OPS)  # library.<op>(*args, backend), as autograd.py calls them
