"""Fused residual add + RMSNorm/LayerNorm and the modulated LayerNorm (issue 13, items 1-2).

Expected values come from the float64 reference (normkit.reference.fused, itself
checked against finite differences and against torch autograd of the composite),
under the tolerance policy of tolerance.py; ``torch_same_dtype`` is torch's own
composite (``x + r`` then ``F.rms_norm`` / ``F.layer_norm``) in the tested dtype.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import normkit
from normkit import dispatch
from normkit.functional import add_layer_norm, add_rms_norm, modulated_layer_norm
from normkit.reference import (add_layer_norm_backward, add_layer_norm_forward,
                               add_rms_norm_backward, add_rms_norm_forward,
                               modulated_layer_norm_backward, modulated_layer_norm_forward)

import hostile
from tolerance import as_f64, assert_matches_reference, max_err, numeric_grad

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _backends(op):
    return [b for b in ("torch", "cpu", "triton") if b in dispatch.table[op]]


def randn(*shape, seed=0, dtype=torch.float64, **kw):
    return hostile.randn(*shape, seed=seed, dtype=dtype, **kw)


def _np(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# --- the reference: finite differences and torch autograd --------------------------------

def _fd(f, arrays, i):
    """Finite-difference gradient of the scalar f(*arrays) with respect to arrays[i]."""
    return numeric_grad(lambda v: f(*[v if j == i else a for j, a in enumerate(arrays)]),
                        arrays[i].copy())


def test_add_rms_norm_reference_matches_hand_calculation():
    # h = [3, 4], <h^2> = 12.5, y = h / sqrt(12.5) * (1 + w) with w = [1, -0.5]
    y, h = add_rms_norm_forward(np.array([[1.0, 2.0]]), np.array([[2.0, 2.0]]),
                                np.array([1.0, -0.5]), eps=0.0, offset=1.0)
    np.testing.assert_allclose(h, [[3.0, 4.0]])
    np.testing.assert_allclose(y, [[3 / 12.5 ** 0.5 * 2, 4 / 12.5 ** 0.5 * 0.5]], rtol=1e-15)


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_add_rms_norm_reference_backward_matches_finite_differences(offset):
    x, r, w, dy, dh = _np(3, 5, seed=1), _np(3, 5, seed=2), _np(5, seed=3), _np(3, 5, seed=4), \
        _np(3, 5, seed=5)

    def loss(x, r, w):
        y, h = add_rms_norm_forward(x, r, w, 1e-5, offset)
        return float(np.sum(y * dy) + np.sum(h * dh))

    dx, dr, dw = add_rms_norm_backward(x, r, dy, dh, w, 1e-5, offset)
    for i, got in enumerate((dx, dr, dw)):
        np.testing.assert_allclose(got, _fd(loss, [x, r, w], i), rtol=1e-6, atol=1e-8)


def test_add_layer_norm_reference_backward_matches_finite_differences():
    x, r, w, b = _np(3, 6, seed=6), _np(3, 6, seed=7), _np(6, seed=8), _np(6, seed=9)
    dy, dh = _np(3, 6, seed=10), _np(3, 6, seed=11)

    def loss(x, r, w, b):
        y, h = add_layer_norm_forward(x, r, w, b, 1e-5)
        return float(np.sum(y * dy) + np.sum(h * dh))

    grads = add_layer_norm_backward(x, r, dy, dh, w, b, 1e-5)
    for i, got in enumerate(grads):
        np.testing.assert_allclose(got, _fd(loss, [x, r, w, b], i), rtol=1e-6, atol=1e-8)


def test_modulated_layer_norm_reference_backward_matches_finite_differences():
    x, sh, sc, dy = _np(2, 3, 5, seed=12), _np(2, 5, seed=13), _np(2, 5, seed=14), \
        _np(2, 3, 5, seed=15)

    def loss(x, sh, sc):
        return float(np.sum(modulated_layer_norm_forward(x, sh, sc, 1e-6) * dy))

    grads = modulated_layer_norm_backward(x, sh, sc, dy, 1e-6)
    for i, got in enumerate(grads):
        np.testing.assert_allclose(got, _fd(loss, [x, sh, sc], i), rtol=1e-6, atol=1e-8)


def test_references_match_torch_autograd_of_the_composite():
    t = lambda a: torch.tensor(a, requires_grad=True)  # noqa: E731
    x, r, w, b = _np(4, 6, seed=16), _np(4, 6, seed=17), _np(6, seed=18), _np(6, seed=19)
    dy, dh = _np(4, 6, seed=20), _np(4, 6, seed=21)
    # RMSNorm, Gemma offset
    tx, tr, tw = t(x), t(r), t(w)
    th = tx + tr
    ty = TF.rms_norm(th, (6,), 1.0 + tw, 1e-5)
    torch.autograd.backward((ty, th), (torch.tensor(dy), torch.tensor(dh)))
    y, h = add_rms_norm_forward(x, r, w, 1e-5, 1.0)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    for ours, ref in zip(add_rms_norm_backward(x, r, dy, dh, w, 1e-5, 1.0), (tx, tr, tw)):
        np.testing.assert_allclose(ours, ref.grad.numpy(), rtol=1e-12, atol=1e-12)
    # LayerNorm
    tx, tr, tw, tb = t(x), t(r), t(w), t(b)
    th = tx + tr
    ty = TF.layer_norm(th, (6,), tw, tb, 1e-5)
    torch.autograd.backward((ty, th), (torch.tensor(dy), torch.tensor(dh)))
    y, _ = add_layer_norm_forward(x, r, w, b, 1e-5)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    for ours, ref in zip(add_layer_norm_backward(x, r, dy, dh, w, b, 1e-5), (tx, tr, tw, tb)):
        np.testing.assert_allclose(ours, ref.grad.numpy(), rtol=1e-12, atol=1e-12)
    # modulated LayerNorm, as DiT writes it
    x3, sh, sc, dy3 = _np(2, 3, 6, seed=22), _np(2, 6, seed=23), _np(2, 6, seed=24), \
        _np(2, 3, 6, seed=25)
    tx, tsh, tsc = t(x3), t(sh), t(sc)
    ty = TF.layer_norm(tx, (6,), eps=1e-6) * (1 + tsc.unsqueeze(1)) + tsh.unsqueeze(1)
    ty.backward(torch.tensor(dy3))
    np.testing.assert_allclose(modulated_layer_norm_forward(x3, sh, sc, 1e-6),
                               ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    for ours, ref in zip(modulated_layer_norm_backward(x3, sh, sc, dy3, 1e-6), (tx, tsh, tsc)):
        np.testing.assert_allclose(ours, ref.grad.numpy(), rtol=1e-12, atol=1e-12)


# --- every backend and dtype against the reference ---------------------------------------

def _leaves(*ts):
    return [None if t is None else t.detach().clone().requires_grad_(True) for t in ts]


@pytest.mark.parametrize("backend", _backends("add_rms_norm_fwd"))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_add_rms_norm_matches_reference(backend, dtype, offset):
    shape, d = (3, 7, 40), 40
    x, r = randn(*shape, seed=30, dtype=dtype), randn(*shape, seed=31, dtype=dtype, mean=2.0)
    w = randn(d, seed=32, dtype=dtype)
    dy, dh = randn(*shape, seed=33, dtype=dtype), randn(*shape, seed=34, dtype=dtype)
    eps = 1e-6
    lx, lr, lw = _leaves(x, r, w)
    y, h = add_rms_norm(lx, lr, d, lw, eps, offset=offset, backend=backend)
    assert dispatch.last_backend["add_rms_norm_fwd"] == backend
    assert y.dtype == dtype and h.dtype == dtype and y.shape == shape
    torch.autograd.backward((y, h), (dy, dh))
    # torch's composite in the same dtype
    cx, cr, cw = _leaves(x, r, w)
    ch = cx + cr
    cy = TF.rms_norm(ch, (d,), offset + cw, eps)
    torch.autograd.backward((cy, ch), (dy, dh))
    a = [as_f64(t) for t in (x, r, w, dy, dh)]
    ry, rh = add_rms_norm_forward(a[0], a[1], a[2], eps, offset)
    rdx, rdr, rdw = add_rms_norm_backward(a[0], a[1], a[3], a[4], a[2], eps, offset)
    assert_matches_reference(h, rh, dtype, ch, "h")
    assert_matches_reference(y, ry, dtype, cy, "y")
    assert_matches_reference(lx.grad, rdx, dtype, cx.grad, "dx")
    assert_matches_reference(lr.grad, rdr, dtype, cr.grad, "dresidual")
    assert_matches_reference(lw.grad, rdw, dtype, cw.grad, "dweight")


@pytest.mark.parametrize("backend", _backends("add_layer_norm_fwd"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_add_layer_norm_matches_reference(backend, dtype):
    shape, d = (5, 9, 48), 48
    x = randn(*shape, seed=40, dtype=dtype, mean=30.0)  # a large mean: the centring matters
    r = randn(*shape, seed=41, dtype=dtype)
    w, b = randn(d, seed=42, dtype=dtype), randn(d, seed=43, dtype=dtype)
    dy, dh = randn(*shape, seed=44, dtype=dtype), randn(*shape, seed=45, dtype=dtype)
    lx, lr, lw, lb = _leaves(x, r, w, b)
    y, h = add_layer_norm(lx, lr, d, lw, lb, 1e-5, backend=backend)
    assert dispatch.last_backend["add_layer_norm_fwd"] == backend
    torch.autograd.backward((y, h), (dy, dh))
    cx, cr, cw, cb = _leaves(x, r, w, b)
    ch = cx + cr
    cy = TF.layer_norm(ch, (d,), cw, cb, 1e-5)
    torch.autograd.backward((cy, ch), (dy, dh))
    a = [as_f64(t) for t in (x, r, w, b, dy, dh)]
    ry, rh = add_layer_norm_forward(a[0], a[1], a[2], a[3], 1e-5)
    grads = add_layer_norm_backward(a[0], a[1], a[4], a[5], a[2], a[3], 1e-5)
    assert_matches_reference(h, rh, dtype, ch, "h")
    assert_matches_reference(y, ry, dtype, cy, "y")
    for ours, theirs, ref, what in zip((lx, lr, lw, lb), (cx, cr, cw, cb), grads,
                                       ("dx", "dresidual", "dweight", "dbias")):
        assert_matches_reference(ours.grad, ref, dtype, theirs.grad, what)


@pytest.mark.parametrize("backend", _backends("modulated_layer_norm_fwd"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_modulated_layer_norm_matches_reference(backend, dtype):
    shape = (3, 11, 32)
    x = randn(*shape, seed=50, dtype=dtype, mean=5.0)
    sh, sc = randn(3, 32, seed=51, dtype=dtype), randn(3, 32, seed=52, dtype=dtype, std=0.3)
    dy = randn(*shape, seed=53, dtype=dtype)
    lx, lsh, lsc = _leaves(x, sh, sc)
    y = modulated_layer_norm(lx, lsh, lsc, 1e-6, backend=backend)
    assert dispatch.last_backend["modulated_layer_norm_fwd"] == backend
    y.backward(dy)
    cx, csh, csc = _leaves(x, sh, sc)
    cy = TF.layer_norm(cx, (32,), eps=1e-6) * (1 + csc.unsqueeze(1)) + csh.unsqueeze(1)
    cy.backward(dy)
    a = [as_f64(t) for t in (x, sh, sc, dy)]
    assert_matches_reference(y, modulated_layer_norm_forward(a[0], a[1], a[2], 1e-6), dtype, cy,
                             "y")
    grads = modulated_layer_norm_backward(a[0], a[1], a[2], a[3], 1e-6)
    for ours, theirs, ref, what in zip((lx, lsh, lsc), (cx, csh, csc), grads,
                                       ("dx", "dshift", "dscale")):
        assert_matches_reference(ours.grad, ref, dtype, theirs.grad, what)


@pytest.mark.parametrize("backend", _backends("add_rms_norm_fwd"))
def test_gradcheck_float64(backend):
    x, r = randn(3, 8, seed=60), randn(3, 8, seed=61)
    w, b = randn(8, seed=62), randn(8, seed=63)
    args = _leaves(x, r, w)
    assert torch.autograd.gradcheck(
        lambda x, r, w: add_rms_norm(x, r, 8, w, 1e-5, offset=1.0, backend=backend), args)
    args = _leaves(x, r, w, b)
    assert torch.autograd.gradcheck(
        lambda x, r, w, b: add_layer_norm(x, r, 8, w, b, backend=backend), args)
    x3, sh, sc = randn(2, 3, 8, seed=64), randn(2, 8, seed=65), randn(2, 8, seed=66)
    assert torch.autograd.gradcheck(
        lambda x, s, c: modulated_layer_norm(x, s, c, backend=backend), _leaves(x3, sh, sc))


# --- semantics ------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", _backends("add_rms_norm_fwd"))
def test_residual_none_gives_a_fresh_h_equal_to_x(backend):
    x = randn(4, 16, seed=70, dtype=torch.float32).requires_grad_(True)
    y, h = add_rms_norm(x, None, 16, backend=backend)
    assert torch.equal(h, x.detach()) and h.data_ptr() != x.data_ptr()
    ry, _ = add_rms_norm_forward(as_f64(x), None, None, torch.finfo(torch.float32).eps)
    assert_matches_reference(y, ry, torch.float32, TF.rms_norm(x, (16,)), "y")
    (y.sum() + h.sum()).backward()
    rdx, _, _ = add_rms_norm_backward(as_f64(x), None, np.ones((4, 16)), np.ones((4, 16)), None,
                                      torch.finfo(torch.float32).eps)
    assert_matches_reference(x.grad, rdx, torch.float32, None, "dx")


@pytest.mark.parametrize("backend", _backends("add_layer_norm_fwd"))
def test_only_one_output_used(backend):
    """No gradient reaches h (dh is None) or y (dy is None): both backward paths."""
    x, r = randn(4, 16, seed=71), randn(4, 16, seed=72)
    w = randn(16, seed=73)
    a = [as_f64(t) for t in (x, r, w)]
    dy = np.ones((4, 16))
    for use in ("y", "h"):
        lx, lr, lw = _leaves(x, r, w)
        y, h = add_layer_norm(lx, lr, 16, lw, None, backend=backend)
        (y if use == "y" else h).sum().backward()
        if use == "y":
            ref = add_layer_norm_backward(a[0], a[1], dy, None, a[2], None)[0]
        else:
            ref = dy
        np.testing.assert_allclose(as_f64(lx.grad), ref, atol=1e-12)
        np.testing.assert_allclose(as_f64(lr.grad), ref, atol=1e-12)


@pytest.mark.parametrize("fn", ["rms", "ln"])
@pytest.mark.parametrize("backend", _backends("add_rms_norm_fwd"))
def test_in_place_ops_on_outputs_work(fn, backend):
    x, r, w = _leaves(randn(4, 16, seed=74), randn(4, 16, seed=75), randn(16, seed=76))

    def f():
        return (add_rms_norm(x, r, 16, w, 1e-5, backend=backend) if fn == "rms" else
                add_layer_norm(x, r, 16, w, None, backend=backend))

    y, h = f()
    assert not y._is_view() and not h._is_view()
    y.mul_(2.0)  # y is not saved for backward: the gradient stays exact
    h.add_(1.0)  # the new residual stream may be updated in place (it is not an autograd view)
    a = [as_f64(t) for t in (x, r, w)]
    y2, _ = f()
    y2.mul_(2.0)
    y2.sum().backward()
    dy = np.full((4, 16), 2.0)
    ref = (add_rms_norm_backward(a[0], a[1], dy, None, a[2], 1e-5)[0] if fn == "rms" else
           add_layer_norm_backward(a[0], a[1], dy, None, a[2], None)[0])
    np.testing.assert_allclose(as_f64(x.grad), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", _backends("add_rms_norm_fwd"))
def test_backward_after_modifying_saved_h_raises_like_the_composite(backend):
    """h is saved for the backward (as torch's composite saves rms_norm's input): changing
    it in place and back-propagating through the norm is torch's clear in-place error,
    never a wrong gradient."""
    x, r = _leaves(randn(4, 16, seed=77), randn(4, 16, seed=78))
    y, h = add_rms_norm(x, r, 16, backend=backend)
    h.add_(1.0)
    with pytest.raises(RuntimeError, match="inplace"):
        y.sum().backward()
    ch = x + r
    cy = TF.rms_norm(ch, (16,))
    ch.add_(1.0)
    with pytest.raises(RuntimeError, match="inplace"):
        cy.sum().backward()
