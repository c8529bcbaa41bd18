"""The float64 reference against hand calculations and finite differences."""

import numpy as np
import pytest

from normkit.conventions import canonicalize
from normkit.reference import lrn_backward, lrn_forward, window_sum

from tolerance import numeric_grad


def test_window_sum_by_hand():
    v = np.array([1.0, 2.0, 3.0, 4.0])
    # back 2, ahead 1: out[i] = v[i-2] + v[i-1] + v[i] + v[i+1]
    assert window_sum(v, 2, 1, 0).tolist() == [3.0, 6.0, 10.0, 9.0]
    assert window_sum(v, 0, 0, 0).tolist() == v.tolist()


def test_seed_002_hand_calculation():
    # source document 3: depth_radius 2, bias 0, alpha 1, beta 1. First pixel value 1 of the
    # row 1..8: 1 / (1^2 + 2^2 + 3^2); the value 4: 4 / (2^2 + 3^2 + 4^2 + 5^2 + 6^2).
    row = np.arange(1.0, 9.0).reshape(1, 1, 1, 8)
    spec = canonicalize(5, 1.0, 1.0, 0.0, convention="tensorflow")
    y = lrn_forward(row, spec, channel_axis=-1)
    assert y[0, 0, 0, 0] == pytest.approx(1 / 14)
    assert y[0, 0, 0, 3] == pytest.approx(4 / 90)
    assert y[0, 0, 0, 7] == pytest.approx(8 / (36 + 49 + 64))


def test_caffe_within_channel_by_hand():
    # 3x3 box, alpha/9, k ignored: centre of a 3x3 of ones sees 9 ones, corner 4 ones.
    x = np.ones((1, 1, 3, 3))
    spec = canonicalize(3, 0.9, 1.0, 5.0, region="within", convention="caffe")
    y = lrn_forward(x, spec)
    assert y[0, 0, 1, 1] == pytest.approx(1 / (1 + 0.1 * 9))
    assert y[0, 0, 0, 0] == pytest.approx(1 / (1 + 0.1 * 4))


def test_size_larger_than_channels_keeps_divisor_n():
    x = np.full((1, 2, 1, 1), 2.0)
    spec = canonicalize(7, 0.7, 1.0, 1.0, convention="torch")
    # both channels see both squares (8), divided by n = 7 (not by C = 2)
    assert lrn_forward(x, spec)[0, 0, 0, 0] == pytest.approx(2 / (1 + 0.1 * 8))


@pytest.mark.parametrize(
    "convention,size,region",
    [
        ("torch", 4, "across"),
        ("onnx", 4, "across"),
        ("torch", 5, "across"),
        ("chainer", 2, "across"),
        ("caffe", 3, "within"),
        ("cuda-convnet", 2, "within"),
    ],
)
def test_backward_matches_finite_differences(convention, size, region):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3, 4))
    dy = rng.standard_normal(x.shape)
    spec = canonicalize(size, 0.7, 0.65, 1.3, region=region, convention=convention)
    numeric = numeric_grad(lambda v: float(np.sum(lrn_forward(v, spec) * dy)), x.copy())
    np.testing.assert_allclose(lrn_backward(x, dy, spec), numeric, rtol=1e-6, atol=1e-8)
