"""The vectorised float32 power of the general-beta LRN (normkit.ops.cpu.fastpow).

Expected values are numpy's float64 ``pow``, rounded once to float32: the correctly
rounded float32 power (to float64's precision). The replaced float32 ``powf`` is within
1 ulp of it; so must fastpow be, and equal to it on nearly every value, and bit-equal
to IEEE ``pow`` wherever the base is not a positive finite number.
"""

import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
pytest.importorskip("numba")

from normkit.conventions import canonicalize  # noqa: E402
from normkit.functional import local_response_norm  # noqa: E402
from normkit.ops.cpu import fastpow  # noqa: E402
from normkit.reference import lrn_backward, lrn_forward  # noqa: E402

from hostile import randn  # noqa: E402
from tolerance import assert_matches_reference  # noqa: E402

F32_MIN_SUBNORMAL = float(np.finfo(np.float32).smallest_subnormal)
F32_MAX = float(np.finfo(np.float32).max)
SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, -1.0, -1e-30, F32_MIN_SUBNORMAL, F32_MAX]
BETAS = [0.6, 0.1, 1 / 3, 2.5, 10.0, -0.3]


def _bases(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    wide = np.exp(rng.uniform(np.log(F32_MIN_SUBNORMAL), np.log(F32_MAX), 20000))
    typical = rng.uniform(0.5, 4.0, 20000)  # k + alpha * sum(x^2) with k ~ 1 or 2
    return np.concatenate([wide, typical, SPECIAL]).astype(np.float32)


def _truth(v: np.ndarray, neg_beta: float) -> np.ndarray:
    with np.errstate(all="ignore"):
        return (v.astype(np.float64) ** neg_beta).astype(np.float32)


def _ordered(a: np.ndarray) -> np.ndarray:
    # float32 bits as integers in the floats' order (+0 and -0 both 0): a difference of
    # them counts the float32 values in between, across zero and the subnormals too
    i = a.view(np.int32).astype(np.int64)
    return np.where(i < 0, -(i & 0x7FFFFFFF), i)


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(_ordered(a) - _ordered(b))


def _check(got: np.ndarray, want: np.ndarray, what: str) -> None:
    finite = np.isfinite(want) & (want != 0)
    # outside the finite nonzero range (0, inf, NaN): exactly IEEE pow's answer
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    assert same[~finite].all(), (what, got[~finite & ~same], want[~finite & ~same])
    assert _ulps(got[finite], want[finite]).max() <= 1, what
    # and the correctly rounded value itself on all but a few values near a rounding tie
    assert same[finite].mean() > 0.9999, (what, same[finite].mean())


@pytest.mark.parametrize("beta", BETAS)
def test_neg_pow_row_is_the_float32_rounded_power(beta):
    s = _bases(seed=1)
    p = np.empty_like(s)
    fastpow.neg_pow_row(s, p, len(s), -beta)
    _check(p, _truth(s, -beta), f"s ** {-beta}")


def _check_within(got: np.ndarray, truth64: np.ndarray, ulps: int, what: str) -> None:
    with np.errstate(all="ignore"):
        want = truth64.astype(np.float32)
    finite = np.isfinite(want)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    assert same[~finite].all(), (what, got[~finite & ~same], want[~finite & ~same])
    assert _ulps(got[finite], want[finite]).max() <= ulps, what


@pytest.mark.parametrize("beta", [0.6, 2.5])
def test_scale_rows_match_pow_including_the_fallback_values(beta):
    # scale_row: y = x * v ** -beta, scale_pow_t_row: p = v ** -beta, t = dy x p / v, with
    # v = k + alpha s formed in float32 (one rounding: the rows are compiled with
    # contract), against all of it in float64. Bound in float32 ulps: v's rounding moves
    # v ** -beta by beta/2, the power's own by 1/2, the products by 1/2 each
    s = _bases(seed=2)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(len(s)).astype(np.float32)
    dy = rng.standard_normal(len(s)).astype(np.float32)
    alpha, k = np.float32(1e-4), np.float32(1.0)
    with np.errstate(all="ignore"):
        v64 = np.float64(k) + np.float64(alpha) * s.astype(np.float64)
        p64 = v64**-beta
        y64 = x * p64
        t64 = dy.astype(np.float64) * x * p64 / v64
    bound = int(np.ceil(0.5 * beta + 1.0))
    y = np.empty_like(s)
    fastpow.scale_row(s, x, y, len(s), alpha, k, -beta)
    _check_within(y, y64, bound + 1, "x * v ** -beta")
    p = np.empty_like(s)
    t = np.empty_like(s)
    fastpow.scale_pow_t_row(s, x, dy, p, t, len(s), alpha, k, -beta)
    _check_within(p, p64, bound, "v ** -beta")
    _check_within(t, t64, bound + 3, "dy x v ** -beta / v")


def test_lrn_general_beta_float32_meets_the_reference_forward_and_backward():
    # the kernels that call fastpow, on a loud channel and both layouts, against float64
    x = randn(2, 9, 5, 7, seed=40)
    x[:, 4] *= 300.0
    dy = randn(2, 9, 5, 7, seed=41)
    spec = canonicalize(5, 2e-3, 0.6, 2.0)
    for layout in ("contiguous", "channels_last"):
        xi = x.clone() if layout == "contiguous" else x.to(memory_format=torch.channels_last)
        xi.requires_grad_(True)
        y = local_response_norm(xi, 5, 2e-3, 0.6, 2.0, backend="cpu")
        (dx,) = torch.autograd.grad(y, xi, dy)
        xn = x.double().numpy()
        assert_matches_reference(y, lrn_forward(xn, spec), torch.float32, what=f"y {layout}")
        assert_matches_reference(
            dx, lrn_backward(xn, dy.double().numpy(), spec), torch.float32, what=f"dx {layout}"
        )


def test_lrn_general_beta_zero_scale_gives_the_peers_inf_and_nan():
    # k = 0 and an all-zero window: the scale is 0, 0 ** -beta = inf, and y = 0 * inf is
    # NaN, as in float64 and in torch; one such window in a row must not disturb the rest
    x = torch.zeros(1, 3, 2, 6)
    x[0, :, :, 3:] = 1.5
    ours = local_response_norm(x, 3, 1.0, 0.6, 0.0, backend="cpu")
    peer = torch.nn.functional.local_response_norm(x.double(), 3, 1.0, 0.6, 0.0)
    assert torch.equal(torch.isnan(ours), torch.isnan(peer))
    fin = ~torch.isnan(peer)
    torch.testing.assert_close(ours[fin].double(), peer[fin], rtol=1e-6, atol=0.0)
