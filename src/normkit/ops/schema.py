"""The op schema: every raw op normkit's kernels implement, declared once.

Each :class:`OpSchema` names an op, its arguments (with their types), its outputs (with
the rule that fixes each output's shape, dtype and strides), what the autograd layer
saves around it and which backends implement it. From this one table come:

* the ``torch.library`` custom ops and their fake (meta) kernels (:mod:`normkit.library`);
* the check that every backend registers exactly the ops it declares (:func:`implements`
  and :func:`check_backend`, used by :mod:`normkit.dispatch` at import time);
* the op table of ``docs/ops.md`` (:func:`markdown_table`; ``python -m normkit.ops.schema``
  prints it, and a test fails when the document drifts).

Backends attach an implementation to an op with the :func:`implements` decorator next to
the kernel::

    @schema.implements("rms_norm_fwd", "cpu")
    def rms_norm_fwd(x, weight, eps): ...

This module is a leaf: it imports nothing of normkit (torch only for dtype rules).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch

__all__ = [
    "Arg",
    "Out",
    "OpSchema",
    "OPS",
    "BACKENDS",
    "implements",
    "implementations",
    "check_backend",
    "custom_op_schema",
    "markdown_table",
    "ops_of",
    "declare",
]

BACKENDS = ("torch", "cpu", "triton")

# Argument types, in torch.library's schema spelling.
_TYPES = ("Tensor", "Tensor?", "int", "float", "bool")


@dataclass(frozen=True)
class Arg:
    """One argument of an op: its name and torch.library type."""

    name: str
    type: str

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"Arg {self.name!r}: type must be one of {_TYPES}, got {self.type!r}")


@dataclass(frozen=True)
class Out:
    """One output of an op and the rule that fixes its shape, dtype and layout.

    ``kind``:

    * ``"like"``: the shape, dtype and strides of ``torch.empty_like(args[like])``
      (``y`` and ``dx``);
    * ``"stats"``: a contiguous tensor of ``shape(args)`` in the statistics dtype
      (float32, float64 for float64 input);
    * ``"weight_grad"``: the weight's shape and dtype, or an empty ``(0,)`` tensor when the
      weight is ``None`` (a custom op cannot return ``None``);
    * ``"param_grad"``: a contiguous tensor of ``shape(args)`` in the weight's dtype
      (the input's without a weight): the bias gradient, returned even without a bias.
    """

    name: str
    kind: str
    shape: Optional[Callable[[Mapping[str, object]], Tuple[int, ...]]] = None
    shape_doc: str = ""
    # the argument that gives the output its device (and, for "like", shape and strides)
    like: str = "x"
    # dtype rule overriding the kind's default (e.g. h = x + residual in float32)
    dtype: Optional[Callable[[Mapping[str, object]], object]] = None

    def __post_init__(self) -> None:
        kinds = ("like", "stats", "weight_grad", "param_grad")
        if self.kind not in kinds:
            raise ValueError(f"Out {self.name!r}: kind must be one of {kinds}, got {self.kind!r}")
        if self.kind in ("stats", "param_grad") and self.shape is None:
            raise ValueError(f"Out {self.name!r}: kind {self.kind!r} needs a shape rule")


@dataclass(frozen=True)
class OpSchema:
    """One raw op: ``name(*args) -> outputs``, implemented by ``backends``."""

    name: str
    args: Tuple[Arg, ...]
    outputs: Tuple[Out, ...]
    doc: str
    shapes: str
    saved: str = ""
    backends: Tuple[str, ...] = BACKENDS
    # the layer family the op serves (functional resolves a backend for each op of a family)
    family: str = ""
    _arg_index: Dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.family:
            family = self.name.rsplit("_", 1)[0] if self.name.endswith(("_fwd", "_bwd")) else ""
            object.__setattr__(self, "family", family or "batch_norm")
        self._arg_index.update({a.name: i for i, a in enumerate(self.args)})
        for out in self.outputs:
            if out.kind == "like" and out.like not in self._arg_index:
                raise ValueError(
                    f"{self.name}: output {out.name!r} is like unknown arg {out.like!r}"
                )
        unknown = set(self.backends) - set(BACKENDS)
        if unknown:
            raise ValueError(
                f"{self.name}: unknown backends {sorted(unknown)}; choose from {BACKENDS}"
            )

    def bind(self, args: Sequence) -> Dict[str, object]:
        """``{arg name: value}`` for a positional call (without the backend)."""
        return {a.name: v for a, v in zip(self.args, args)}

    def index(self, name: str) -> int:
        return self._arg_index[name]

    def signature(self) -> str:
        outs = ", ".join(o.name for o in self.outputs)
        outs = outs if len(self.outputs) == 1 else f"({outs})"
        return f"({', '.join(a.name for a in self.args)}) -> {outs}"


def _rows(a) -> Tuple[int, ...]:
    return (a["x"].shape[0],)


def _cols(a) -> Tuple[int, ...]:
    return (a["x"].shape[1],)


def _groups(a) -> Tuple[int, ...]:
    return (a["x"].shape[0], a["num_groups"])


def _planes(a) -> Tuple[int, ...]:
    return (a["x"].shape[0], a["x"].shape[1])


def _h_cols(a) -> Tuple[int, ...]:
    return (a["h"].shape[1],)


def _tokens(a) -> Tuple[int, ...]:
    return (a["x"].shape[0], a["x"].shape[1])


def _scale_shape(a) -> Tuple[int, ...]:
    return tuple(a["scale"].shape)


def h_dtype(a) -> torch.dtype:
    """dtype of h = x + residual: float32 with ``residual_in_fp32`` (unless an input is
    float64), else the promotion of x's and the residual's dtypes."""
    x, r = a["x"], a["residual"]
    dt = x.dtype if r is None else torch.promote_types(x.dtype, r.dtype)
    if a["residual_in_fp32"] and dt != torch.float64:
        return torch.float32
    return dt


def _h_stats_dtype(a) -> torch.dtype:
    return torch.float64 if h_dtype(a) == torch.float64 else torch.float32


def _scale_dtype(a) -> torch.dtype:
    return a["scale"].dtype


def _f64(a) -> torch.dtype:
    return torch.float64


_T, _OT = "Tensor", "Tensor?"
_LRN_PARAMS = (
    Arg("back", "int"),
    Arg("ahead", "int"),
    Arg("alpha", "float"),
    Arg("beta", "float"),
    Arg("k", "float"),
    Arg("within", "bool"),
)


def _schemas() -> Tuple[OpSchema, ...]:
    y, dx = Out("y", "like"), Out("dx", "like")
    return (
        OpSchema(
            "lrn_fwd",
            (Arg("x", _T),) + _LRN_PARAMS,
            (y,),
            "LRN forward in canonical form",
            "x: (N, C, *) channels on dim 1; within: (N, C, H, W)",
            saved="x",
        ),
        OpSchema(
            "lrn_bwd",
            (Arg("x", _T), Arg("dy", _T)) + _LRN_PARAMS,
            (dx,),
            "LRN backward",
            "recompute the scale from x",
        ),
        OpSchema(
            "layer_norm_fwd",
            (Arg("x", _T), Arg("weight", _OT), Arg("bias", _OT), Arg("eps", "float")),
            (y, Out("mean", "stats", _rows, "(M,)"), Out("rstd", "stats", _rows, "(M,)")),
            "LayerNorm of rows",
            "x: (M, D); weight, bias: (D,); mean, rstd: (M,) f32 stats",
            saved="x, mean, rstd, weight",
        ),
        OpSchema(
            "layer_norm_bwd",
            (Arg("dy", _T), Arg("x", _T), Arg("mean", _T), Arg("rstd", _T), Arg("weight", _OT)),
            (dx, Out("dweight", "weight_grad"), Out("dbias", "param_grad", _cols, "(D,)")),
            "LayerNorm backward",
            "dweight empty (0,) when weight is None; dbias (column sums of dy) always",
        ),
        OpSchema(
            "rms_norm_fwd",
            (Arg("x", _T), Arg("weight", _OT), Arg("eps", "float")),
            (y, Out("rstd", "stats", _rows, "(M,)")),
            "RMSNorm of rows",
            "x: (M, D); rstd: (M,)",
            saved="x, rstd, weight",
        ),
        OpSchema(
            "rms_norm_bwd",
            (Arg("dy", _T), Arg("x", _T), Arg("rstd", _T), Arg("weight", _OT)),
            (dx, Out("dweight", "weight_grad")),
            "RMSNorm backward",
            "",
        ),
        OpSchema(
            "group_norm_fwd",
            (
                Arg("x", _T),
                Arg("weight", _OT),
                Arg("bias", _OT),
                Arg("num_groups", "int"),
                Arg("eps", "float"),
            ),
            (y, Out("mean", "stats", _groups, "(N, G)"), Out("rstd", "stats", _groups, "(N, G)")),
            "GroupNorm (InstanceNorm: G = C)",
            "x: (N, C, L); weight, bias: (C,); mean, rstd: (N, G)",
            saved="x, mean, rstd, weight",
        ),
        OpSchema(
            "group_norm_bwd",
            (
                Arg("dy", _T),
                Arg("x", _T),
                Arg("mean", _T),
                Arg("rstd", _T),
                Arg("weight", _OT),
                Arg("num_groups", "int"),
            ),
            (dx, Out("dweight", "weight_grad"), Out("dbias", "param_grad", _cols, "(C,)")),
            "GroupNorm backward",
            "as layer_norm_bwd; dweight, dbias (C,)",
        ),
        OpSchema(
            "batch_norm_stats",
            (Arg("x", _T),),
            (
                Out("mean", "stats", _cols, "(C,)", dtype=_f64),
                Out("var", "stats", _cols, "(C,)"),
            ),
            "per-channel batch statistics",
            "x: (N, C, L); mean (C,) f64 (its low digits matter at mean >> std), "
            "var (biased) (C,) f32 stats",
        ),
        OpSchema(
            "batch_norm_apply",
            (Arg("x", _T), Arg("mean", _T), Arg("rstd", _T), Arg("weight", _OT), Arg("bias", _OT)),
            (y,),
            "per-channel affine normalization",
            "also the eval path with running stats",
            saved="x, mean, rstd, weight",
        ),
        OpSchema(
            "batch_norm_bwd_reduce",
            (Arg("dy", _T), Arg("x", _T), Arg("mean", _T), Arg("rstd", _T)),
            (Out("sum_dy", "stats", _cols, "(C,)"), Out("sum_dy_xhat", "stats", _cols, "(C,)")),
            "BatchNorm backward sums",
            "(C,) f32 each; SyncBatchNorm all-reduces these",
        ),
        OpSchema(
            "batch_norm_bwd_apply",
            (
                Arg("dy", _T),
                Arg("x", _T),
                Arg("mean", _T),
                Arg("rstd", _T),
                Arg("weight", _OT),
                Arg("sum_dy", _T),
                Arg("sum_dy_xhat", _T),
                Arg("count", "int"),
            ),
            (dx,),
            "BatchNorm input gradient",
            "dweight = sum_dy_xhat, dbias = sum_dy",
        ),
        OpSchema(
            "frn_fwd",
            (Arg("x", _T), Arg("weight", _T), Arg("bias", _T), Arg("tau", _T), Arg("eps", _T)),
            (y, Out("rstd", "stats", _planes, "(N, C)")),
            "Filter Response Normalization + TLU",
            "x: (N, C, L); weight, bias, tau, eps: (C,) (absent ones filled with 1, 0, "
            "-inf and the float eps); rstd: (N, C) f32 stats",
            saved="x, rstd, weight, bias, tau",
        ),
        OpSchema(
            "frn_bwd",
            (
                Arg("dy", _T),
                Arg("x", _T),
                Arg("rstd", _T),
                Arg("weight", _T),
                Arg("bias", _T),
                Arg("tau", _T),
            ),
            (dx,)
            + tuple(Out(n, "stats", _cols, "(C,)") for n in ("dweight", "dbias", "dtau", "deps")),
            "FRN + TLU backward",
            "dweight, dbias, dtau, deps: (C,) f32 stats",
        ),
        OpSchema(
            "add_rms_norm_fwd",
            (
                Arg("x", _T),
                Arg("residual", _OT),
                Arg("weight", _OT),
                Arg("eps", "float"),
                Arg("residual_in_fp32", "bool"),
            ),
            (
                y,
                Out("h", "like", dtype=h_dtype),
                Out("rstd", "stats", _rows, "(M,)", dtype=_h_stats_dtype),
            ),
            "residual add + RMSNorm",
            "x, residual: (M, D); h = x + residual (float32 with residual_in_fp32); rstd: (M,)",
            saved="h, rstd, weight",
        ),
        OpSchema(
            "add_rms_norm_bwd",
            (Arg("dy", _T), Arg("dh", _OT), Arg("h", _T), Arg("rstd", _T), Arg("weight", _OT)),
            (Out("dsum", "like", like="h"), Out("dweight", "weight_grad", like="h")),
            "residual add + RMSNorm backward",
            "dsum = dx = dresidual (M, D) in h's dtype; dh may be None",
        ),
        OpSchema(
            "add_layer_norm_fwd",
            (
                Arg("x", _T),
                Arg("residual", _OT),
                Arg("weight", _OT),
                Arg("bias", _OT),
                Arg("eps", "float"),
                Arg("residual_in_fp32", "bool"),
            ),
            (
                y,
                Out("h", "like", dtype=h_dtype),
                Out("mean", "stats", _rows, "(M,)", dtype=_h_stats_dtype),
                Out("rstd", "stats", _rows, "(M,)", dtype=_h_stats_dtype),
            ),
            "residual add + LayerNorm",
            "as add_rms_norm_fwd; mean, rstd: (M,)",
            saved="h, mean, rstd, weight",
        ),
        OpSchema(
            "add_layer_norm_bwd",
            (
                Arg("dy", _T),
                Arg("dh", _OT),
                Arg("h", _T),
                Arg("mean", _T),
                Arg("rstd", _T),
                Arg("weight", _OT),
            ),
            (
                Out("dsum", "like", like="h"),
                Out("dweight", "weight_grad", like="h"),
                Out("dbias", "param_grad", _h_cols, "(D,)", like="h"),
            ),
            "residual add + LayerNorm backward",
            "as add_rms_norm_bwd; dbias (D,)",
        ),
        OpSchema(
            "modulated_layer_norm_fwd",
            (Arg("x", _T), Arg("shift", _T), Arg("scale", _T), Arg("eps", "float")),
            (y, Out("mean", "stats", _tokens, "(N, T)"), Out("rstd", "stats", _tokens, "(N, T)")),
            "LN(x) (1 + scale) + shift (DiT adaLN)",
            "x: (N, T, D); shift, scale: (N, D); mean, rstd: (N, T)",
            saved="x, mean, rstd, scale",
        ),
        OpSchema(
            "modulated_layer_norm_bwd",
            (Arg("dy", _T), Arg("x", _T), Arg("mean", _T), Arg("rstd", _T), Arg("scale", _T)),
            (
                dx,
                Out("dshift", "param_grad", _scale_shape, "(N, D)", dtype=_scale_dtype),
                Out("dscale", "param_grad", _scale_shape, "(N, D)", dtype=_scale_dtype),
            ),
            "modulated LayerNorm backward",
            "dshift, dscale: (N, D) in scale's dtype",
        ),
    )


OPS: Dict[str, OpSchema] = {s.name: s for s in _schemas()}

# {backend: {op: fn}}, filled by @implements as backend modules import
_IMPLS: Dict[str, Dict[str, Callable]] = {b: {} for b in BACKENDS}


def ops_of(family: str) -> Tuple[str, ...]:
    """The ops serving one layer family, in declaration order (e.g. ``("frn_fwd", "frn_bwd")``)."""
    names = tuple(name for name, s in OPS.items() if s.family == family)
    if not names:
        raise KeyError(
            f"no op of family {family!r}; known: {sorted({s.family for s in OPS.values()})}"
        )
    return names


def declare(schema: OpSchema) -> OpSchema:
    """Add an op to the schema (for ops defined outside this file, e.g. by an extension)."""
    if schema.name in OPS:
        raise ValueError(f"op {schema.name!r} is already declared")
    OPS[schema.name] = schema
    return schema


# {backend: {op: why_not}}: an op-specific gate replacing the backend's (e.g. a size limit)
_GATES: Dict[str, Dict[str, Callable]] = {b: {} for b in BACKENDS}


def gate(backend: str, op: str) -> Optional[Callable]:
    """The op-specific ``why_not(x)`` gate registered with :func:`implements`, or None."""
    return _GATES[backend].get(op)


def implements(op: str, backend: str, why_not: Optional[Callable] = None):
    """Decorator: register ``fn`` as ``backend``'s implementation of the declared ``op``.

    ``why_not(x)`` (optional) replaces the backend's own gate for this op: it returns None
    when the kernel can run on ``x``, else the reason it cannot.
    """
    if op not in OPS:
        raise KeyError(
            f"op {op!r} is not declared in normkit.ops.schema; declare it first "
            f"(known: {sorted(OPS)})"
        )
    if backend not in OPS[op].backends:
        raise ValueError(
            f"op {op!r} does not list backend {backend!r} "
            f"(declared: {OPS[op].backends}); add it to the schema entry"
        )

    def register(fn: Callable) -> Callable:
        _IMPLS[backend][op] = fn
        if why_not is not None:
            _GATES[backend][op] = why_not
        return fn

    return register


def implementations(backend: str) -> Dict[str, Callable]:
    """``{op: fn}`` registered so far for ``backend``."""
    return dict(_IMPLS[backend])


def check_backend(backend: str) -> Dict[str, Callable]:
    """The backend's implementations, after checking they match the schema exactly."""
    impls = _IMPLS[backend]
    declared = {name for name, s in OPS.items() if backend in s.backends}
    missing, extra = declared - set(impls), set(impls) - declared
    if missing or extra:
        raise RuntimeError(
            f"backend {backend!r} does not match normkit.ops.schema: "
            f"missing {sorted(missing)}, extra {sorted(extra)}"
        )
    return dict(impls)


def custom_op_schema(op: OpSchema) -> str:
    """The ``torch.library`` schema string of ``op`` (with the trailing ``str backend``)."""
    args = ", ".join(f"{a.type} {a.name}" for a in op.args)
    outs = ", ".join("Tensor" for _ in op.outputs)
    outs = outs if len(op.outputs) == 1 else f"({outs})"
    return f"({args}, str backend) -> {outs}"


def markdown_table() -> str:
    """The op table of ``docs/ops.md``, generated from :data:`OPS`."""
    lines = ["| op | signature | shapes | backends |", "|---|---|---|---|"]
    for s in OPS.values():
        lines.append(f"| `{s.name}` | `{s.signature()}` | {s.shapes} | {', '.join(s.backends)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m normkit.ops.schema > table (see docs/ops.md)
    sys.stdout.write(markdown_table())
