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
from normkit.reference import (
    add_layer_norm_backward,
    add_layer_norm_forward,
    add_rms_norm_backward,
    add_rms_norm_forward,
    modulated_layer_norm_backward,
    modulated_layer_norm_forward,
)

import hostile
from tolerance import as_f64, assert_matches_reference, max_err, numeric_grad

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _backends(op):
    """Backends that run ``op`` on the CPU tensors of these tests (triton: in its
    interpreter, which tests/conftest.py turns on when there is no GPU)."""
    probe = torch.zeros(2, 8)
    return [
        b
        for b in ("torch", "cpu", "triton")
        if b in dispatch.table[op] and dispatch.table[op][b].why_not(probe) is None
    ]


def randn(*shape, seed=0, dtype=torch.float64, **kw):
    return hostile.randn(*shape, seed=seed, dtype=dtype, **kw)


def _np(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# --- the reference: finite differences and torch autograd --------------------------------


def _fd(f, arrays, i):
    """Finite-difference gradient of the scalar f(*arrays) with respect to arrays[i]."""
    return numeric_grad(
        lambda v: f(*[v if j == i else a for j, a in enumerate(arrays)]), arrays[i].copy()
    )


def test_add_rms_norm_reference_matches_hand_calculation():
    # h = [3, 4], <h^2> = 12.5, y = h / sqrt(12.5) * (1 + w) with w = [1, -0.5]
    y, h = add_rms_norm_forward(
        np.array([[1.0, 2.0]]), np.array([[2.0, 2.0]]), np.array([1.0, -0.5]), eps=0.0, offset=1.0
    )
    np.testing.assert_allclose(h, [[3.0, 4.0]])
    np.testing.assert_allclose(y, [[3 / 12.5**0.5 * 2, 4 / 12.5**0.5 * 0.5]], rtol=1e-15)


@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_add_rms_norm_reference_backward_matches_finite_differences(offset):
    x, r, w, dy, dh = (
        _np(3, 5, seed=1),
        _np(3, 5, seed=2),
        _np(5, seed=3),
        _np(3, 5, seed=4),
        _np(3, 5, seed=5),
    )

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
    x, sh, sc, dy = (
        _np(2, 3, 5, seed=12),
        _np(2, 5, seed=13),
        _np(2, 5, seed=14),
        _np(2, 3, 5, seed=15),
    )

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
    x3, sh, sc, dy3 = (
        _np(2, 3, 6, seed=22),
        _np(2, 6, seed=23),
        _np(2, 6, seed=24),
        _np(2, 3, 6, seed=25),
    )
    tx, tsh, tsc = t(x3), t(sh), t(sc)
    ty = TF.layer_norm(tx, (6,), eps=1e-6) * (1 + tsc.unsqueeze(1)) + tsh.unsqueeze(1)
    ty.backward(torch.tensor(dy3))
    np.testing.assert_allclose(
        modulated_layer_norm_forward(x3, sh, sc, 1e-6), ty.detach().numpy(), rtol=1e-12, atol=1e-12
    )
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
    for ours, theirs, ref, what in zip(
        (lx, lr, lw, lb), (cx, cr, cw, cb), grads, ("dx", "dresidual", "dweight", "dbias")
    ):
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
    assert_matches_reference(
        y, modulated_layer_norm_forward(a[0], a[1], a[2], 1e-6), dtype, cy, "y"
    )
    grads = modulated_layer_norm_backward(a[0], a[1], a[2], a[3], 1e-6)
    for ours, theirs, ref, what in zip(
        (lx, lsh, lsc), (cx, csh, csc), grads, ("dx", "dshift", "dscale")
    ):
        assert_matches_reference(ours.grad, ref, dtype, theirs.grad, what)


@pytest.mark.parametrize("backend", _backends("add_rms_norm_fwd"))
def test_gradcheck_float64(backend):
    x, r = randn(3, 8, seed=60), randn(3, 8, seed=61)
    w, b = randn(8, seed=62), randn(8, seed=63)
    args = _leaves(x, r, w)
    assert torch.autograd.gradcheck(
        lambda x, r, w: add_rms_norm(x, r, 8, w, 1e-5, offset=1.0, backend=backend), args
    )
    args = _leaves(x, r, w, b)
    assert torch.autograd.gradcheck(
        lambda x, r, w, b: add_layer_norm(x, r, 8, w, b, backend=backend), args
    )
    x3, sh, sc = randn(2, 3, 8, seed=64), randn(2, 8, seed=65), randn(2, 8, seed=66)
    assert torch.autograd.gradcheck(
        lambda x, s, c: modulated_layer_norm(x, s, c, backend=backend), _leaves(x3, sh, sc)
    )


# --- semantics ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", _backends("add_rms_norm_fwd"))
def test_residual_none_gives_a_fresh_h_equal_to_x(backend):
    x = randn(4, 16, seed=70, dtype=torch.float32).requires_grad_(True)
    y, h = add_rms_norm(x, None, 16, backend=backend)
    assert torch.equal(h, x.detach()) and h.data_ptr() != x.data_ptr()
    ry, _ = add_rms_norm_forward(as_f64(x), None, None, torch.finfo(torch.float32).eps)
    assert_matches_reference(y, ry, torch.float32, TF.rms_norm(x, (16,)), "y")
    (y.sum() + h.sum()).backward()
    rdx, _, _ = add_rms_norm_backward(
        as_f64(x), None, np.ones((4, 16)), np.ones((4, 16)), None, torch.finfo(torch.float32).eps
    )
    assert_matches_reference(x.grad, rdx, torch.float32, None, "dx")


@pytest.mark.parametrize("backend", _backends("add_layer_norm_fwd"))
def test_non_contiguous_inputs(backend):
    x = randn(16, 6, seed=110).t()  # (6, 16), transposed strides
    r = randn(6, 32, seed=111)[:, ::2]  # (6, 16), every other column
    w = randn(16, seed=112)
    y, h = add_layer_norm(x, r, 16, w, None, backend=backend)
    ry, rh = add_layer_norm_forward(as_f64(x), as_f64(r), as_f64(w), None)
    np.testing.assert_allclose(as_f64(y), ry, atol=1e-12)
    np.testing.assert_allclose(as_f64(h), rh, atol=0)
    x3 = randn(8, 3, 2, seed=113).permute(2, 1, 0)  # (2, 3, 8)
    s = randn(2, 8, seed=114)
    np.testing.assert_allclose(
        as_f64(modulated_layer_norm(x3, s, s, backend=backend)),
        modulated_layer_norm_forward(as_f64(x3), as_f64(s), as_f64(s)),
        atol=1e-12,
    )


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
        return (
            add_rms_norm(x, r, 16, w, 1e-5, backend=backend)
            if fn == "rms"
            else add_layer_norm(x, r, 16, w, None, backend=backend)
        )

    y, h = f()
    assert not y._is_view() and not h._is_view()
    y.mul_(2.0)  # y is not saved for backward: the gradient stays exact
    h.add_(1.0)  # the new residual stream may be updated in place (it is not an autograd view)
    a = [as_f64(t) for t in (x, r, w)]
    y2, _ = f()
    y2.mul_(2.0)
    y2.sum().backward()
    dy = np.full((4, 16), 2.0)
    ref = (
        add_rms_norm_backward(a[0], a[1], dy, None, a[2], 1e-5)[0]
        if fn == "rms"
        else add_layer_norm_backward(a[0], a[1], dy, None, a[2], None)[0]
    )
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


# --- modules --------------------------------------------------------------------------------


def test_add_rms_norm_module_starts_as_plain_rms_norm_for_any_offset():
    x, r = (
        randn(2, 3, 8, seed=80, dtype=torch.float32),
        randn(2, 3, 8, seed=81, dtype=torch.float32),
    )
    for offset in (0.0, 1.0):
        m = normkit.AddRMSNorm(8, eps=1e-6, offset=offset)
        y, h = m(x, r)
        ry, rh = add_rms_norm_forward(as_f64(x), as_f64(r), None, 1e-6)
        assert_matches_reference(y, ry, torch.float32, None, f"y offset={offset}")
        assert_matches_reference(h, rh, torch.float32, None, "h")
    assert "offset=1.0" in repr(m)


def test_add_layer_norm_module_matches_reference_and_trains():
    m = normkit.AddLayerNorm(8, eps=1e-5).double()
    with torch.no_grad():
        m.weight.copy_(randn(8, seed=82))
        m.bias.copy_(randn(8, seed=83))
    x, r = randn(4, 8, seed=84), randn(4, 8, seed=85)
    y, h = m(x, r)
    ry, _ = add_layer_norm_forward(as_f64(x), as_f64(r), as_f64(m.weight), as_f64(m.bias), 1e-5)
    np.testing.assert_allclose(as_f64(y), ry, atol=1e-12)
    y.sum().backward()
    _, _, dw, db = add_layer_norm_backward(
        as_f64(x), as_f64(r), np.ones((4, 8)), None, as_f64(m.weight), as_f64(m.bias), 1e-5
    )
    np.testing.assert_allclose(as_f64(m.weight.grad), dw, atol=1e-12)
    np.testing.assert_allclose(as_f64(m.bias.grad), db, atol=1e-12)


def test_ada_layer_norm_zero_init_is_plain_layer_norm_with_zero_gate():
    ada = normkit.AdaLayerNorm(8, 4)
    x, c = randn(2, 5, 8, seed=86, dtype=torch.float32), randn(2, 4, seed=87, dtype=torch.float32)
    y, gate = ada(x, c)
    assert torch.equal(gate, torch.zeros(2, 8))
    ref = modulated_layer_norm_forward(as_f64(x), np.zeros((2, 8)), np.zeros((2, 8)), 1e-6)
    assert_matches_reference(y, ref, torch.float32, TF.layer_norm(x, (8,), eps=1e-6), "y")


def test_ada_layer_norm_matches_dit_modulation():
    """shift, scale, gate = Linear(SiLU(c)).chunk(3), as DiT's adaLN_modulation."""
    ada = normkit.AdaLayerNorm(8, 4, zero_init=False).double()
    x, c = randn(2, 5, 8, seed=88), randn(2, 4, seed=89)
    y, gate = ada(x, c)
    mod = TF.linear(TF.silu(c), ada.linear.weight, ada.linear.bias)  # torch as the peer
    shift, scale, g = mod[:, :8], mod[:, 8:16], mod[:, 16:]
    np.testing.assert_allclose(as_f64(gate), as_f64(g), atol=1e-14)
    ref = modulated_layer_norm_forward(as_f64(x), as_f64(shift), as_f64(scale), 1e-6)
    np.testing.assert_allclose(as_f64(y), ref, atol=1e-12)
    y.sum().backward()
    assert ada.linear.weight.grad is not None and ada.linear.weight.grad.abs().sum() > 0


# --- bad input ------------------------------------------------------------------------------


def test_errors_name_the_invariant():
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match=r"residual must have x's shape \(2, 8\)"):
        add_rms_norm(x, torch.randn(2, 4), 8)
    with pytest.raises(ValueError, match="normalized_shape=\\[4\\] must equal the trailing"):
        add_layer_norm(x, None, 4)
    with pytest.raises(ValueError, match=r"weight must have shape \(8,\)"):
        add_rms_norm(x, None, 8, torch.ones(7))
    with pytest.raises(ValueError, match=r"offset \(1.0\) .* needs a weight"):
        add_rms_norm(x, None, 8, offset=1.0)
    with pytest.raises(ValueError, match="eps must be a non-negative"):
        add_layer_norm(x, None, 8, eps=-1.0)
    with pytest.raises(TypeError, match="residual dtype must be floating point"):
        add_rms_norm(x, torch.ones(2, 8, dtype=torch.long), 8)
    with pytest.raises(ValueError, match=r"shift must have shape \(N, D\) = \(2, 8\)"):
        modulated_layer_norm(torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.randn(2, 8))
    with pytest.raises(ValueError, match="dim must be a positive int"):
        normkit.AddRMSNorm(0)
    with pytest.raises(ValueError, match=r"c must be \(N, cond_dim=4\)"):
        normkit.AdaLayerNorm(8, 4)(torch.randn(2, 3, 8), torch.randn(2, 5))


def test_empty_input_and_residual_in_fp32():
    y, h = add_rms_norm(torch.randn(0, 8), torch.randn(0, 8), 8)
    assert y.shape == h.shape == (0, 8)
    x = randn(3, 8, seed=90, dtype=torch.bfloat16)
    r = randn(3, 8, seed=91, dtype=torch.bfloat16)
    for backend in _backends("add_rms_norm_fwd"):
        y, h = add_rms_norm(x, r, 8, residual_in_fp32=True, backend=backend)
        assert y.dtype == torch.bfloat16 and h.dtype == torch.float32
        # bf16 + bf16 is exact in float32 (8-bit mantissas, exponents close)
        np.testing.assert_allclose(as_f64(h), as_f64(x) + as_f64(r), rtol=0, atol=0)
        y, h = add_layer_norm(x, h, 8, residual_in_fp32=False, backend=backend)
        assert h.dtype == torch.float32  # a float32 residual stream stays float32


def test_same_tensor_as_x_and_residual_gets_both_gradients():
    a = randn(3, 8, seed=92).requires_grad_(True)
    y, h = add_rms_norm(a, a, 8, None, 1e-5)
    y.sum().backward()
    dx, dr, _ = add_rms_norm_backward(as_f64(a), as_f64(a), np.ones((3, 8)), None, None, 1e-5)
    np.testing.assert_allclose(as_f64(a.grad), dx + dr, atol=1e-12)


# --- torch.compile and export ---------------------------------------------------------------


def _block(x, r, w, b, shift, scale):
    y, h = add_rms_norm(x, r, 16, w, 1e-5, offset=1.0)
    y2, h2 = add_layer_norm(y, h, 16, w, b)
    z = modulated_layer_norm(y2.reshape(2, 4, 16), shift, scale)
    return z, h2


def test_compile_fullgraph_forward_and_backward_match_eager(monkeypatch):
    # the kernels both ways (auto's small-size native path is eager-only), so the compiled
    # graph must give their bits
    monkeypatch.setenv("NORMKIT_BACKEND", "cpu")
    torch._dynamo.reset()
    args = [
        randn(8, 16, seed=93, dtype=torch.float32),
        randn(8, 16, seed=94, dtype=torch.float32),
        randn(16, seed=95, dtype=torch.float32),
        randn(16, seed=96, dtype=torch.float32),
        randn(2, 16, seed=97, dtype=torch.float32),
        randn(2, 16, seed=98, dtype=torch.float32),
    ]
    eager_args, comp_args = _leaves(*args), _leaves(*args)
    z, h = _block(*eager_args)
    (z.sum() + (h * h).sum()).backward()
    zc, hc = torch.compile(_block, backend="aot_eager", fullgraph=True)(*comp_args)
    (zc.sum() + (hc * hc).sum()).backward()
    assert max_err(zc, z) == 0 and max_err(hc, h) == 0
    for a, b in zip(comp_args, eager_args):
        assert max_err(a.grad, b.grad) < 1e-6


def test_custom_ops_pass_opcheck():
    from normkit import library

    x, r = randn(4, 16, seed=99, dtype=torch.float32), randn(4, 16, seed=100, dtype=torch.float32)
    w = randn(16, seed=101, dtype=torch.float32)
    _, h, rstd = library.add_rms_norm_fwd(x, r, w, 1e-5, False, "torch")
    _, _, mean, rstd2 = library.add_layer_norm_fwd(x, r, w, None, 1e-5, True, "torch")
    x3, s = (
        randn(2, 3, 16, seed=102, dtype=torch.float32),
        randn(2, 16, seed=103, dtype=torch.float32),
    )
    _, m3, r3 = library.modulated_layer_norm_fwd(x3, s, s, 1e-6, "torch")
    ops = torch.ops.normkit
    cases = [
        (ops.add_rms_norm_fwd, (x, r, w, 1e-5, False, "cpu")),
        (ops.add_rms_norm_fwd, (x, None, None, 1e-5, True, "torch")),
        (ops.add_rms_norm_bwd, (x, h, h, rstd, w, "cpu")),
        (ops.add_rms_norm_bwd, (x, None, h, rstd, None, "torch")),
        (ops.add_layer_norm_fwd, (x, r, w, w, 1e-5, False, "cpu")),
        (ops.add_layer_norm_bwd, (x, x, h, mean, rstd2, w, "torch")),
        (ops.modulated_layer_norm_fwd, (x3, s, s, 1e-6, "cpu")),
        (ops.modulated_layer_norm_bwd, (x3, x3, m3, r3, s, "torch")),
    ]
    for op, args in cases:
        if "cpu" in args and "cpu" not in _backends("add_rms_norm_fwd"):
            continue
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


class _Exportable(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = normkit.AddRMSNorm(16, eps=1e-6, offset=1.0)
        self.b = normkit.AddLayerNorm(16)
        self.c = normkit.AdaLayerNorm(16, 8, zero_init=False)
        with torch.no_grad():
            self.a.weight.copy_(randn(16, seed=104, dtype=torch.float32))
            self.b.weight.copy_(randn(16, seed=105, dtype=torch.float32))
            self.b.bias.copy_(randn(16, seed=106, dtype=torch.float32))

    def forward(self, x, r, cond):
        y, h = self.a(x, r)
        y2, h2 = self.b(y, h)
        z, gate = self.c(y2, cond)
        return z, h2, gate


def _export_case():
    torch.manual_seed(0)
    m = _Exportable().eval()
    args = (
        randn(2, 5, 16, seed=107, dtype=torch.float32),
        randn(2, 5, 16, seed=108, dtype=torch.float32),
        randn(2, 8, seed=109, dtype=torch.float32),
    )
    # the float64 reference of the whole block
    a = [as_f64(t) for t in args]
    y, h = add_rms_norm_forward(a[0], a[1], as_f64(m.a.weight), 1e-6, 1.0)
    y2, h2 = add_layer_norm_forward(y, h, as_f64(m.b.weight), as_f64(m.b.bias), 1e-5)
    with torch.no_grad():
        shift, scale, gate = m.c.modulation(args[2])  # torch Linear: a peer
    z = modulated_layer_norm_forward(y2, as_f64(shift), as_f64(scale), 1e-6)
    return m, args, (z, h2, as_f64(gate))


def _check_outputs(outs, refs):
    for o, ref, what in zip(outs, refs, ("z", "h", "gate")):
        ours = as_f64(o.detach() if isinstance(o, torch.Tensor) else o)
        assert_matches_reference(ours, ref, torch.float32, None, what)


def test_torch_export_holds_plain_torch_ops():
    m, args, refs = _export_case()
    ep = torch.export.export(m, args)
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert not any("normkit" in t for t in targets), targets
    _check_outputs(ep.module()(*args), refs)


@pytest.mark.parametrize("dynamo", [False, True])
def test_onnx_export_runs_in_onnxruntime(dynamo, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    m, args, refs = _export_case()
    path = str(tmp_path / "fused.onnx")
    if dynamo:
        torch.onnx.export(m, args, path, dynamo=True)
    else:
        torch.onnx.export(m, args, path, dynamo=False, opset_version=17)
    sess = ort.InferenceSession(path)
    outs = sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)})
    _check_outputs(outs, refs)
