"""The float64 norm references against hand calculations and finite differences."""

import numpy as np
import pytest

from normkit.reference import (
    batch_norm_backward,
    batch_norm_eval_forward,
    batch_norm_forward,
    group_norm_backward,
    group_norm_forward,
    instance_norm_backward,
    instance_norm_forward,
    layer_norm_backward,
    layer_norm_forward,
    moments,
    rms_norm_backward,
    rms_norm_forward,
    running_stats_update,
)

from tolerance import numeric_grad


def _check_grads(forward, backward, x, params, dy, rtol=1e-6, atol=1e-8):
    """Finite differences of sum(forward(x, *params) * dy) against backward's outputs."""
    analytic = backward(x, dy, *params)
    numeric = numeric_grad(lambda v: float(np.sum(forward(v, *params) * dy)), x.copy())
    np.testing.assert_allclose(analytic[0], numeric, rtol=rtol, atol=atol)
    for i, p in enumerate(params):
        if p is None:
            assert analytic[i + 1] is None
            continue
        num = numeric_grad(
            lambda v, i=i: float(
                np.sum(forward(x, *[v if j == i else q for j, q in enumerate(params)]) * dy)
            ),
            p.copy(),
        )
        np.testing.assert_allclose(analytic[i + 1], num, rtol=rtol, atol=atol)


RNG = np.random.default_rng(0)


def test_moments_by_hand():
    mean, var = moments(np.array([[1.0, 2.0, 3.0, 6.0]]), (1,))
    assert mean.item() == 3.0
    assert var.item() == pytest.approx((4 + 1 + 0 + 9) / 4)


def test_moments_at_mean_1e4_are_exact_where_naive_formula_cancels():
    # values 1e4 + {-1, 0, 1}: variance 2/3. In float32, E[x^2] - E[x]^2 is
    # (1e8 + 2/3) - 1e8, below float32's resolution of 8 at 1e8.
    x = np.array([[1e4 - 1, 1e4, 1e4 + 1]])
    _, var = moments(x, (1,))
    assert var.item() == pytest.approx(2 / 3, rel=1e-12)
    x32 = x.astype(np.float32)
    naive = float((x32 * x32).mean() - x32.mean() ** 2)
    assert abs(naive - 2 / 3) > 0.1


def test_batch_norm_by_hand():
    x = np.array([[1.0], [3.0]])  # N=2, C=1: mean 2, var 1
    y, mean, var = batch_norm_forward(x, np.array([2.0]), np.array([0.5]), eps=0.0)
    assert mean.tolist() == [2.0] and var.tolist() == [1.0]
    assert y[:, 0].tolist() == [-1.5, 2.5]


def test_batch_norm_with_gamma_sqrt_var_beta_mean_is_identity():
    # source document 4: with gamma = sqrt(var + eps) and beta = mean, BN returns its input
    x = RNG.standard_normal((5, 3, 4)) * 3 + 7
    _, mean, var = batch_norm_forward(x, eps=1e-3)
    y, _, _ = batch_norm_forward(x, np.sqrt(var + 1e-3), mean, eps=1e-3)
    np.testing.assert_allclose(y, x, rtol=1e-13, atol=1e-12)


def test_layer_norm_and_rms_by_hand():
    y, mean, rstd = layer_norm_forward(np.array([[1.0, 3.0]]), (2,), eps=0.0)
    assert y.tolist() == [[-1.0, 1.0]] and mean.tolist() == [2.0] and rstd.tolist() == [1.0]
    y, rstd = rms_norm_forward(np.array([[3.0, 4.0]]), (2,), np.array([1.0, 2.0]), eps=0.0)
    r = 1 / np.sqrt(12.5)
    np.testing.assert_allclose(y, [[3 * r, 8 * r]], rtol=1e-15)


def test_group_norm_identities():
    x = RNG.standard_normal((2, 6, 5))
    w, b = RNG.standard_normal(6), RNG.standard_normal(6)
    # G = 1: layer norm over (C, L) followed by a per-channel affine
    y1, _, _ = group_norm_forward(x, 1, w, b)
    ln, _, _ = layer_norm_forward(x, (6, 5))
    np.testing.assert_allclose(y1, ln * w[:, None] + b[:, None], rtol=1e-12, atol=1e-12)
    # G = C: per-channel, per-sample statistics, by hand
    yc, mean, _ = instance_norm_forward(x, w, b)
    by_hand = (x - x.mean(2, keepdims=True)) / np.sqrt(x.var(2, keepdims=True) + 1e-5)
    np.testing.assert_allclose(yc, by_hand * w[:, None] + b[:, None], rtol=1e-12, atol=1e-12)
    assert mean.shape == (2, 6)


def test_group_norm_rejects_non_divisible_groups():
    with pytest.raises(
        ValueError, match=r"num_channels \(6\) must be divisible by num_groups \(4\)"
    ):
        group_norm_forward(np.zeros((1, 6, 2)), 4)


def test_running_stats_rule():
    rm, rv = running_stats_update(
        np.zeros(1),
        np.ones(1),
        np.array([2.0]),
        np.array([3.0]),
        count=4,
        momentum=0.1,
        num_batches_tracked=1,
    )
    assert rm.tolist() == [pytest.approx(0.2)]
    assert rv.tolist() == [pytest.approx(0.9 + 0.1 * 3.0 * 4 / 3)]
    rm, rv = running_stats_update(
        np.array([1.0]),
        np.array([1.0]),
        np.array([4.0]),
        np.array([3.0]),
        count=2,
        momentum=None,
        num_batches_tracked=3,
    )  # cumulative: (2 * old + new) / 3
    assert rm.tolist() == [pytest.approx(2.0)]
    assert rv.tolist() == [pytest.approx((2 + 6.0) / 3)]


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 5), (2, 3, 2, 2)])
def test_batch_norm_backward_matches_finite_differences(shape, affine):
    x = RNG.standard_normal(shape) * 2 + 1
    dy = RNG.standard_normal(shape)
    params = (
        [RNG.standard_normal(shape[1]), RNG.standard_normal(shape[1])] if affine else [None, None]
    )
    _check_grads(
        lambda v, w, b: batch_norm_forward(v, w, b, 1e-3)[0],
        lambda v, d, w, b: batch_norm_backward(v, d, w, b, 1e-3),
        x,
        params,
        dy,
    )


def test_batch_norm_eval_backward_is_dy_weight_rstd():
    x = RNG.standard_normal((3, 2, 4))
    dy = RNG.standard_normal(x.shape)
    rm, rv, w = np.array([0.3, -1.0]), np.array([2.0, 0.5]), np.array([1.5, -0.7])
    numeric = numeric_grad(
        lambda v: float(np.sum(batch_norm_eval_forward(v, rm, rv, w, None, 1e-5) * dy)), x.copy()
    )
    analytic = dy * (w / np.sqrt(rv + 1e-5))[None, :, None]
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("normalized_shape", [(5,), (3, 5)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_backward_matches_finite_differences(normalized_shape, affine):
    x = RNG.standard_normal((2, 3, 5))
    dy = RNG.standard_normal(x.shape)
    params = (
        [RNG.standard_normal(normalized_shape), RNG.standard_normal(normalized_shape)]
        if affine
        else [None, None]
    )
    _check_grads(
        lambda v, w, b: layer_norm_forward(v, normalized_shape, w, b, 1e-4)[0],
        lambda v, d, w, b: layer_norm_backward(v, d, normalized_shape, w, b, 1e-4),
        x,
        params,
        dy,
    )


@pytest.mark.parametrize("groups", [1, 2, 6])
@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_backward_matches_finite_differences(groups, affine):
    x = RNG.standard_normal((2, 6, 3))
    dy = RNG.standard_normal(x.shape)
    params = [RNG.standard_normal(6), RNG.standard_normal(6)] if affine else [None, None]
    _check_grads(
        lambda v, w, b: group_norm_forward(v, groups, w, b, 1e-4)[0],
        lambda v, d, w, b: group_norm_backward(v, d, groups, w, b, 1e-4),
        x,
        params,
        dy,
    )


def test_instance_norm_backward_matches_finite_differences():
    x = RNG.standard_normal((2, 3, 2, 3))
    dy = RNG.standard_normal(x.shape)
    params = [RNG.standard_normal(3), RNG.standard_normal(3)]
    _check_grads(
        lambda v, w, b: instance_norm_forward(v, w, b, 1e-4)[0],
        lambda v, d, w, b: instance_norm_backward(v, d, w, b, 1e-4),
        x,
        params,
        dy,
    )


@pytest.mark.parametrize("affine", [True, False])
def test_rms_norm_backward_matches_finite_differences(affine):
    x = RNG.standard_normal((3, 2, 4))
    dy = RNG.standard_normal(x.shape)
    params = [RNG.standard_normal((2, 4))] if affine else [None]
    _check_grads(
        lambda v, w: rms_norm_forward(v, (2, 4), w, 1e-4)[0],
        lambda v, d, w: rms_norm_backward(v, d, (2, 4), w, 1e-4),
        x,
        params,
        dy,
    )


def test_rms_norm_is_layer_norm_without_centring():
    # for zero-mean rows the two coincide; by hand, y = x / sqrt(<x^2> + eps)
    x = RNG.standard_normal((4, 6))
    x -= x.mean(1, keepdims=True)
    np.testing.assert_allclose(
        rms_norm_forward(x, (6,), eps=1e-5)[0], layer_norm_forward(x, (6,), eps=1e-5)[0], rtol=1e-12
    )
