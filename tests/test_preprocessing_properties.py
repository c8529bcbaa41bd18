"""Property tests (hypothesis): chunked = whole, merge = fit on all, round trips."""

import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from normkit import preprocessing as P

skp = pytest.importorskip("sklearn.preprocessing")

# NORMKIT_HYPOTHESIS_EXAMPLES=600 for a deeper search than the default suite's
SETTINGS = settings(
    max_examples=int(os.environ.get("NORMKIT_HYPOTHESIS_EXAMPLES", 60)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# moderate magnitudes with an offset: the property is about the algorithm, not about
# data whose own rounding (|mean|/std ~ 1e15) leaves no significant digits
values = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def matrices(draw, min_rows=1, max_rows=40, nan=True):
    n = draw(st.integers(min_rows, max_rows))
    f = draw(st.integers(1, 4))
    X = draw(hnp.arrays(np.float64, (n, f), elements=values))
    if nan:
        mask = draw(hnp.arrays(np.bool_, (n, f), elements=st.booleans()))
        rate = draw(st.sampled_from([0.0, 0.0, 0.2]))
        X = np.where(mask & (np.arange(n)[:, None] % 5 < 5 * rate), np.nan, X)
    return X


@st.composite
def matrix_and_cuts(draw):
    X = draw(matrices(min_rows=2))
    k = draw(st.integers(1, min(6, len(X) - 1)))
    cuts = sorted(draw(st.sets(st.integers(1, len(X) - 1), min_size=k, max_size=k)))
    return X, cuts


def _close(a, b, X, what):
    """Agreement to float64 rounding of the data: relative 1e-9 plus eps*|x| of the data."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    assert np.array_equal(np.isnan(a), np.isnan(b)), what
    ok = ~np.isnan(b)
    slack = 1e-9 * np.abs(b[ok]) + 1e3 * np.finfo(float).eps * np.nanmax(np.abs(X))
    assert np.all(np.abs(a[ok] - b[ok]) <= slack), f"{what}: {a} vs {b}"


@SETTINGS
@given(matrix_and_cuts())
def test_chunked_equals_whole_and_sklearn(data):
    X, cuts = data
    chunks = np.split(X, cuts)
    for cls, ref_cls, attrs in [
        (P.StandardScaler, skp.StandardScaler, ("mean_", "var_")),
        (P.MinMaxScaler, skp.MinMaxScaler, ("data_min_", "data_max_", "scale_", "min_")),
    ]:
        # columns that are NaN in every row make sklearn warn; their stats stay NaN in both
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            assume(not np.isnan(X).all(0).any())
            chunked, ref = cls(), ref_cls()
            for c in chunks:
                chunked.partial_fit(c)
                if np.isnan(c).all(0).any():  # sklearn NaNs a column missing in a chunk
                    ref = None
                elif ref is not None:
                    ref.partial_fit(c)
        whole = cls().fit(X)
        for a in attrs:
            _close(getattr(chunked, a), getattr(whole, a), X, f"{cls.__name__}.{a} chunked")
            if ref is not None:
                # same chunks, same algorithm: only the last digits may differ
                _close(getattr(chunked, a), getattr(ref, a), X, f"{cls.__name__}.{a} vs sklearn")
        assert np.array_equal(
            np.asarray(chunked.n_samples_seen_), np.asarray(whole.n_samples_seen_)
        )
        # min/max are exact whatever the chunking
        assert np.array_equal(chunked.data_min_, whole.data_min_, equal_nan=True)


@SETTINGS
@given(matrix_and_cuts())
def test_merge_in_any_order_equals_whole(data):
    X, cuts = data
    assume(not np.isnan(X).all(0).any())
    parts = [
        P.StandardScaler().fit(c) if not np.isnan(c).all() else P.StandardScaler()
        for c in np.split(X, cuts)
        if len(c)
    ]
    # some shard may have columns it never saw (all NaN): merge keeps the others' stats
    forward, backward = P.StandardScaler(), P.StandardScaler()
    for p in parts:
        forward.merge(p)
    for p in reversed(parts):
        backward.merge(p)
    whole = P.StandardScaler().fit(X)
    for s in (forward, backward):
        _close(s.mean_, whole.mean_, X, "mean_")
        _close(s.scale_, whole.scale_, X, "scale_")
        assert np.array_equal(s.data_max_, whole.data_max_)


@SETTINGS
@given(matrices(), st.sampled_from(list(P.SCALERS)))
def test_transform_inverse_round_trip(X, name):
    cls = P.SCALERS[name]
    if name == "Log10Scaler":
        X = np.abs(X) + 1e-3
    elif name == "ReciprocalScaler":
        X = np.abs(X)  # x >= 0: the seed's use, y in (0, 1]
    elif name == "ArctanScaler":
        X = np.clip(X, -1e4, 1e4)  # beyond ~1e15 atan*2/pi rounds to 1: not invertible
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        s = cls().fit(X)
    Y = s.transform(X)
    Z = s.inverse_transform(Y)
    assert np.array_equal(np.isnan(Z), np.isnan(X))
    ok = ~np.isnan(X)
    scale = np.nanmax(np.abs(X), axis=0, initial=0.0) + 1e-300
    # conditioning: log10/1/(1+x)/atan lose ~|x| relative digits; scalers are affine
    assert np.all(np.abs(Z - X)[ok] <= (1e-11 * np.broadcast_to(scale, X.shape))[ok] + 1e-12)


@SETTINGS
@given(matrices(max_rows=15), st.sampled_from(list(P.SCALERS)))
def test_save_load_bit_identical(tmp_path_factory, X, name):
    cls = P.SCALERS[name]
    if name == "Log10Scaler":
        X = np.abs(X) + 1e-300
    elif name == "ReciprocalScaler":
        X = np.where(X == -1, 0.0, X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        s = cls().fit(X)
    path = tmp_path_factory.mktemp("p") / "s.json"
    s.save(path)
    t = P.load(path)
    for k in cls._STATE_KEYS:
        a = s._get_state()[k]
        b = t._get_state()[k]
        a, b = np.atleast_1d(np.asarray(a, float)), np.atleast_1d(np.asarray(b, float))
        assert np.array_equal(np.isnan(a), np.isnan(b)), k  # NaN (any sign bit) stays NaN
        assert a[~np.isnan(a)].view(np.int64).tolist() == b[~np.isnan(b)].view(np.int64).tolist()
