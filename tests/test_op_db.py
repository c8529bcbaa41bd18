"""The op database: every op family of the schema x every backend x dtype, against float64.

One :class:`OpInfo` per op family of ``normkit.ops.schema``: how to build a small input, how
to call the family's functional entry point (which runs its forward op, and its backward
op under ``backward()``) and the float64 reference of every output and gradient.
``test_every_schema_family_has_an_entry`` fails when an op family has no entry, so a new op
is checked here on every backend it registers. Per-family files (tests/test_norms.py,
test_frn.py, test_fused_norms.py, test_triton_kernels.py, ...) go deeper; this is the
uniform floor. Low-precision results follow tests/tolerance.py's policy with torch's own
same-dtype computation (the float32 torch backend where torch has no such op) as yardstick.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence

import numpy as np
import pytest
import torch

from normkit import dispatch
from normkit import functional as F
from normkit import reference as R
from normkit.conventions import canonicalize
from normkit.ops import schema

from tolerance import ATOL, as_f64


@dataclass(frozen=True)
class OpInfo:
    family: str
    shapes: Sequence[tuple]  # input tensors' shapes (all get gradients)
    call: Callable  # (tensors, backend) -> output tensor or tuple of outputs
    reference: Callable  # (float64 arrays, float64 output cotangents) -> [outputs..., grads...]


LRN_SPEC = canonicalize(5, 1e-2, 0.75, 1.5, convention="torch")


def _lrn_ref(xs, dys):
    (x,), (dy,) = xs, dys
    return [R.lrn_forward(x, LRN_SPEC), R.lrn_backward(x, dy, LRN_SPEC)]


def _ln_ref(xs, dys):
    (x, w, b), (dy,) = xs, dys
    return [
        R.layer_norm_forward(x, (x.shape[-1],), w, b)[0],
        *R.layer_norm_backward(x, dy, (x.shape[-1],), w, b),
    ]


def _rms_ref(xs, dys):
    (x, w), (dy,) = xs, dys
    return [
        R.rms_norm_forward(x, (x.shape[-1],), w, 1e-6)[0],
        *R.rms_norm_backward(x, dy, (x.shape[-1],), w, 1e-6),
    ]


def _gn_ref(xs, dys):
    (x, w, b), (dy,) = xs, dys
    return [R.group_norm_forward(x, 2, w, b)[0], *R.group_norm_backward(x, dy, 2, w, b)]


def _bn_ref(xs, dys):
    (x, w, b), (dy,) = xs, dys
    return [R.batch_norm_forward(x, w, b)[0], *R.batch_norm_backward(x, dy, w, b)]


def _frn_ref(xs, dys):
    (x, w, b, t), (dy,) = xs, dys
    return [R.frn_forward(x, w, b, t, 1e-6)[0], *R.frn_backward(x, dy, w, b, t, 1e-6)[:4]]


def _add_rms_ref(xs, dys):
    (x, r, w), (dy, dh) = xs, dys
    y, h = R.add_rms_norm_forward(x, r, w, 1e-6)
    return [y, h, *R.add_rms_norm_backward(x, r, dy, dh, w, 1e-6)]


def _add_ln_ref(xs, dys):
    (x, r, w, b), (dy, dh) = xs, dys
    y, h = R.add_layer_norm_forward(x, r, w, b)[:2]
    return [y, h, *R.add_layer_norm_backward(x, r, dy, dh, w, b)]


def _mod_ln_ref(xs, dys):
    (x, shift, scale), (dy,) = xs, dys
    return [
        R.modulated_layer_norm_forward(x, shift, scale),
        *R.modulated_layer_norm_backward(x, shift, scale, dy),
    ]


OP_DB: List[OpInfo] = [
    OpInfo(
        "lrn", [(2, 7, 3, 4)], lambda t, be: F.lrn_canonical(t[0], LRN_SPEC, backend=be), _lrn_ref
    ),
    OpInfo(
        "layer_norm",
        [(5, 37), (37,), (37,)],
        lambda t, be: F.layer_norm(t[0], (37,), t[1], t[2], backend=be),
        _ln_ref,
    ),
    OpInfo(
        "rms_norm",
        [(5, 37), (37,)],
        lambda t, be: F.rms_norm(t[0], (37,), t[1], 1e-6, backend=be),
        _rms_ref,
    ),
    OpInfo(
        "group_norm",
        [(3, 4, 9), (4,), (4,)],
        lambda t, be: F.group_norm(t[0], 2, t[1], t[2], backend=be),
        _gn_ref,
    ),
    OpInfo(
        "batch_norm",
        [(5, 3, 7), (3,), (3,)],
        lambda t, be: F.batch_norm(t[0], None, None, t[1], t[2], True, backend=be),
        _bn_ref,
    ),
    OpInfo(
        "frn",
        [(2, 3, 4, 5), (3,), (3,), (3,)],
        lambda t, be: F.filter_response_norm(t[0], t[1], t[2], t[3], 1e-6, backend=be),
        _frn_ref,
    ),
    OpInfo(
        "add_rms_norm",
        [(5, 37), (5, 37), (37,)],
        lambda t, be: F.add_rms_norm(t[0], t[1], (37,), t[2], 1e-6, backend=be),
        _add_rms_ref,
    ),
    OpInfo(
        "add_layer_norm",
        [(5, 37), (5, 37), (37,), (37,)],
        lambda t, be: F.add_layer_norm(t[0], t[1], (37,), t[2], t[3], backend=be),
        _add_ln_ref,
    ),
    OpInfo(
        "modulated_layer_norm",
        [(2, 3, 37), (2, 37), (2, 37)],
        lambda t, be: F.modulated_layer_norm(t[0], t[1], t[2], backend=be),
        _mod_ln_ref,
    ),
]
_BY_FAMILY = {info.family: info for info in OP_DB}


def test_every_schema_family_has_an_entry():
    families = {s.family for s in schema.OPS.values()}
    assert families == set(_BY_FAMILY), (
        f"op families without an op-database entry: {sorted(families - set(_BY_FAMILY))}; "
        f"entries without ops: {sorted(set(_BY_FAMILY) - families)}"
    )


def _cases():
    for info in OP_DB:
        ops = schema.ops_of(info.family)
        backends = sorted(set.intersection(*(set(dispatch.table[op]) for op in ops)))
        for backend in backends:
            for dtype in (torch.float64, torch.float32, torch.bfloat16):
                yield pytest.param(
                    info, backend, dtype, id=f"{info.family}-{backend}-{str(dtype)[6:]}"
                )


def _run(info, backend, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(*s, generator=g, dtype=torch.float64) for s in info.shapes]
    leaves = [t.to(dtype).requires_grad_(True) for t in base]
    outs = info.call(leaves, backend)
    outs = list(outs) if isinstance(outs, tuple) else [outs]
    dys = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in outs]
    torch.autograd.backward(outs, [d.to(o.dtype) for d, o in zip(dys, outs)])
    got = [o.detach() for o in outs] + [t.grad for t in leaves]
    return got, [t.detach() for t in leaves], dys


@pytest.mark.parametrize("info,backend,dtype", list(_cases()))
def test_every_op_on_every_backend_matches_the_float64_reference(info, backend, dtype):
    got, inputs, dys = _run(info, backend, dtype)
    # the reference sees exactly the values the low-precision run saw
    ref = info.reference([as_f64(t) for t in inputs], [as_f64(d.to(dtype)) for d in dys])
    assert dispatch.last_backend[schema.ops_of(info.family)[0]] == backend
    peer = None
    if dtype != torch.float64:  # yardstick: torch's fallback in the same dtype
        peer, _, _ = _run(info, "torch", dtype)
    for i, (ours, r) in enumerate(zip(got, ref)):
        if r is None:
            continue
        r64 = np.asarray(r, dtype=np.float64)
        scale = max(1.0, float(np.abs(r64).max()))
        err = float(np.abs(as_f64(ours) - r64).max())
        torch_err = 0.0 if peer is None else float(np.abs(as_f64(peer[i]) - r64).max())
        bound = 2 * torch_err + ATOL[dtype] * scale
        assert err <= bound, f"{info.family}[{i}] on {backend}/{dtype}: {err:.3g} > {bound:.3g}"
