"""normkit.preprocessing against scikit-learn, hand calculations and its own contracts."""

import json
import math
import warnings

import numpy as np
import pytest
import torch

from normkit import preprocessing as P

skp = pytest.importorskip("sklearn.preprocessing")
datasets = pytest.importorskip("sklearn.datasets")

RTOL = 1e-12


def assert_rel(ours, ref, rtol=RTOL, what=""):
    """|ours - ref| <= rtol * max(|ref|) per array (relative to the array's scale)."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    assert np.array_equal(np.isnan(ours), np.isnan(ref)), f"{what}: NaN positions differ"
    ok = ~np.isnan(ref)
    if not ok.any():
        return
    scale = max(float(np.max(np.abs(ref[ok]))), np.finfo(np.float64).tiny)
    err = float(np.max(np.abs(ours[ok] - ref[ok])))
    assert err <= rtol * scale, f"{what}: max err {err:.3g} > {rtol:g} * {scale:.3g}"


def _data(name):
    rng = np.random.default_rng(7)
    if name == "wine":
        return datasets.load_wine().data
    if name == "breast_cancer":
        return datasets.load_breast_cancer().data
    if name == "digits":  # many constant (always 0) pixels
        return datasets.load_digits().data
    if name == "huge_offsets":  # |mean| / std up to 1e9: E[x^2]-E[x]^2 would be garbage
        X = rng.normal(size=(2000, 4)) * np.array([1.0, 1e-3, 5.0, 1e3])
        return X + np.array([1e9, -1e6, 1e4, 3.0])
    if name == "mixed_units":
        return np.column_stack(
            [
                rng.uniform(-10, 10, 500),
                rng.uniform(-100, 100, 500),
                rng.exponential(1e5, 500),
                rng.integers(0, 3, 500),
            ]
        )
    raise KeyError(name)


DATASETS = ["wine", "breast_cancer", "digits", "huge_offsets", "mixed_units"]
PAIRS = [
    (P.StandardScaler, skp.StandardScaler, ("mean_", "var_", "scale_")),
    (P.MinMaxScaler, skp.MinMaxScaler, ("data_min_", "data_max_", "data_range_", "scale_", "min_")),
]


def _compare(ours, ref, attrs, X):
    for a in attrs:
        assert_rel(getattr(ours, a), getattr(ref, a), what=a)
    assert np.array_equal(np.asarray(ours.n_samples_seen_), np.asarray(ref.n_samples_seen_))
    assert ours.n_features_in_ == ref.n_features_in_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", P.OutOfRangeWarning)
        Y = ours.transform(X)
    assert_rel(Y, ref.transform(X), what="transform")
    assert_rel(
        ours.inverse_transform(Y), ref.inverse_transform(ref.transform(X)), what="inverse_transform"
    )


# ---------------------------------------------------------------- exactness to sklearn


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("ours_cls,ref_cls,attrs", PAIRS, ids=["standard", "minmax"])
def test_fit_equals_sklearn(name, ours_cls, ref_cls, attrs):
    X = _data(name)
    _compare(ours_cls().fit(X), ref_cls().fit(X), attrs, X)


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("ours_cls,ref_cls,attrs", PAIRS, ids=["standard", "minmax"])
def test_partial_fit_many_chunks_equals_sklearn(name, ours_cls, ref_cls, attrs):
    X = _data(name)
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.choice(np.arange(1, len(X)), size=17, replace=False))
    ours, ref = ours_cls(), ref_cls()
    for chunk in np.split(X, cuts):
        ours.partial_fit(chunk)
        ref.partial_fit(chunk)
    _compare(ours, ref, attrs, X)
    # chunked equals one fit on everything, up to the rounding of the data itself: a
    # value of 1e9 carries an absolute error of eps*1e9, which no summation order undoes
    whole = ours_cls().fit(X)
    for a in attrs:
        if a == "var_":
            continue  # = scale_**2
        slack = (
            0.0 if ours_cls is P.MinMaxScaler else 64 * np.finfo(float).eps * np.abs(whole.mean_)
        )
        err = np.abs(getattr(ours, a) - getattr(whole, a))
        assert np.all(err <= RTOL * np.abs(getattr(whole, a)) + slack), a


def test_huge_offset_variance_is_right_by_hand():
    # var of {1e9 + 1, 1e9 + 3} is 1 exactly; the naive E[x^2]-E[x]^2 gives 0 here
    X = np.array([[1e9 + 1.0], [1e9 + 3.0]])
    s = P.StandardScaler().partial_fit(X[:1]).partial_fit(X[1:])
    assert s.mean_[0] == 1e9 + 2.0 and s.var_[0] == 1.0 and s.scale_[0] == 1.0
    assert s.transform(X).ravel().tolist() == [-1.0, 1.0]


@pytest.mark.parametrize("with_mean,with_std", [(True, False), (False, True), (False, False)])
def test_standard_flags_equal_sklearn(with_mean, with_std):
    X = _data("wine")
    ours = P.StandardScaler(with_mean=with_mean, with_std=with_std)
    ref = skp.StandardScaler(with_mean=with_mean, with_std=with_std)
    for chunk in np.array_split(X, 5):
        ours.partial_fit(chunk)
        ref.partial_fit(chunk)
    for a in ("mean_", "var_", "scale_"):
        if getattr(ref, a) is None:
            assert getattr(ours, a) is None, a
        else:
            assert_rel(getattr(ours, a), getattr(ref, a), what=a)
    assert_rel(ours.transform(X), ref.transform(X))
    assert_rel(ours.inverse_transform(ours.transform(X)), X)


def test_constant_features_get_scale_one_like_sklearn():
    X = np.column_stack([np.full(10, 0.1), np.full(10, -7.0), np.arange(10.0), np.zeros(10)])
    for ours_cls, ref_cls, attrs in PAIRS:
        ours, ref = ours_cls().fit(X), ref_cls().fit(X)
        _compare(ours, ref, attrs, X)
    s = P.StandardScaler().fit(X)
    assert s.scale_[[0, 1, 3]].tolist() == [1.0, 1.0, 1.0]
    m = P.MinMaxScaler(feature_range=(-2, 5)).fit(X)
    assert m.scale_[[0, 1, 3]].tolist() == [7.0, 7.0, 7.0]  # (b - a) / 1
    assert np.all(m.transform(X)[:, [0, 1, 3]] == -2.0)  # constants map to a


def _with_nans(seed=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(300, 5)) * [1, 10, 100, 1e-2, 1] + [0, 5, -50, 1, 1e6]
    for col, rate in enumerate([0.0, 0.05, 0.3, 0.6, 0.01]):
        X[rng.random(300) < rate, col] = np.nan
    return X


@pytest.mark.parametrize("ours_cls,ref_cls,attrs", PAIRS, ids=["standard", "minmax"])
def test_nan_ignored_in_fit_and_kept_in_transform(ours_cls, ref_cls, attrs):
    X = _with_nans()
    ours, ref = ours_cls().fit(X), ref_cls().fit(X)
    _compare(ours, ref, attrs, X)
    assert np.array_equal(np.isnan(ours.transform(X)), np.isnan(X))
    ours, ref = ours_cls(), ref_cls()
    for chunk in np.array_split(X, 9):
        ours.partial_fit(chunk)
        ref.partial_fit(chunk)
    _compare(ours, ref, attrs, X)


def test_nan_sample_counts_are_per_feature_like_sklearn():
    X = _with_nans()
    s = P.StandardScaler().fit(X)
    ref = skp.StandardScaler().fit(X)
    assert isinstance(s.n_samples_seen_, np.ndarray)
    assert s.n_samples_seen_.tolist() == ref.n_samples_seen_.tolist()
    assert s.n_samples_seen_.tolist() == (300 - np.isnan(X).sum(0)).tolist()
    # without NaNs it is a plain integer, as in sklearn
    assert int(P.StandardScaler().fit(np.ones((4, 2))).n_samples_seen_) == 4
    assert np.ndim(P.StandardScaler().fit(np.ones((4, 2))).n_samples_seen_) == 0


def test_chunk_with_an_all_nan_column_keeps_that_columns_statistics():
    X = _data("wine")[:, :3].copy()
    chunk = X[:10].copy()
    chunk[:, 1] = np.nan
    s = P.StandardScaler().fit(X[10:]).partial_fit(chunk)
    ref = P.StandardScaler().fit(np.vstack([X[10:], chunk]))
    assert_rel(s.mean_, ref.mean_)
    assert_rel(s.var_, ref.var_)
    assert s.n_samples_seen_.tolist() == [len(X), len(X) - 10, len(X)]


@pytest.mark.parametrize("order", ["nan chunk last", "nan chunk first"])
def test_all_nan_chunk_where_sklearn_gives_nan_normkit_keeps_statistics(order):
    # sklearn 1.9 turns var_ (nan chunk later) or mean_ (nan chunk first) into NaN for good;
    # the right answer is the statistics of the values that exist: column 0 is {1, 3, 7}
    chunks = [np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[np.nan, 5.0]]), np.array([[7.0, 5.0]])]
    if order == "nan chunk first":
        chunks = chunks[1:2] + chunks[:1] + chunks[2:]
    s = P.StandardScaler()
    for c in chunks:
        s.partial_fit(c)
    assert math.isclose(s.mean_[0], 11 / 3, rel_tol=1e-15)
    assert math.isclose(
        s.var_[0], ((1 - 11 / 3) ** 2 + (3 - 11 / 3) ** 2 + (7 - 11 / 3) ** 2) / 3, rel_tol=1e-14
    )
    assert s.n_samples_seen_.tolist() == [3, 4]


def test_column_never_seen_has_nan_statistics_and_refuses_finite_data():
    X = np.array([[1.0, np.nan], [2.0, np.nan]])
    s = P.StandardScaler().fit(X)
    assert np.isnan(s.mean_[1]) and np.isnan(s.var_[1]) and s.n_samples_seen_.tolist() == [2, 0]
    assert np.isnan(s.transform(X)[:, 1]).all()
    with pytest.raises(ValueError, match="column 1: 1 value.*fit saw no value in that column"):
        s.transform(np.array([[1.0, 5.0]]))


def test_minmax_feature_range_and_clip_equal_sklearn():
    X = _data("wine")
    new = X * 1.3 - 2  # data outside the fitted range
    for clip in (False, True):
        ours = P.MinMaxScaler(feature_range=(-3, 7), clip=clip).fit(X)
        ref = skp.MinMaxScaler(feature_range=(-3, 7), clip=clip).fit(X)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", P.OutOfRangeWarning)
            assert_rel(ours.transform(new), ref.transform(new))


# ---------------------------------------------------------------- hand calculations


def test_hand_minmax_and_zscore():
    X = np.array([[1.0, 10.0], [3.0, 20.0], [5.0, 40.0]])
    m = P.MinMaxScaler().fit(X)
    assert m.transform(X).tolist() == [[0.0, 0.0], [0.5, 1 / 3], [1.0, 1.0]]
    assert m.data_range_.tolist() == [4.0, 30.0]
    s = P.StandardScaler().fit(X[:, :1])
    # mean 3, population variance (4 + 0 + 4) / 3
    assert s.mean_.tolist() == [3.0] and math.isclose(s.var_[0], 8 / 3, rel_tol=1e-15)
    assert np.allclose(
        s.transform(X[:, :1]).ravel(), [-2 / math.sqrt(8 / 3), 0, 2 / math.sqrt(8 / 3)], rtol=1e-15
    )


def test_hand_fixed_transforms_and_inverses():
    x = np.array([[0.0], [1.0], [3.0], [-0.5]])
    r = P.ReciprocalScaler().fit(x)
    assert r.transform(x).ravel().tolist() == [1.0, 0.5, 0.25, 2.0]
    assert r.inverse_transform(r.transform(x)).ravel().tolist() == x.ravel().tolist()
    p = np.array([[1.0], [10.0], [1000.0], [0.01]])
    lg = P.Log10Scaler().fit(p)
    assert lg.transform(p).ravel().tolist() == [0.0, 1.0, 3.0, -2.0]
    assert_rel(lg.inverse_transform(lg.transform(p)), p, rtol=1e-15)
    a = np.array([[0.0], [1.0], [-1.0], [1e300]])
    at = P.ArctanScaler().fit(a)
    assert_rel(at.transform(a), [[0.0], [0.5], [-0.5], [1.0]], rtol=1e-16)
    assert_rel(at.inverse_transform(np.array([[0.5], [-0.5]])), [[1.0], [-1.0]], rtol=1e-15)


@pytest.mark.parametrize(
    "cls,f,finv,gen",
    [
        (
            P.ReciprocalScaler,
            lambda x: 1 / (1 + x),
            lambda y: 1 / y - 1,
            lambda r: r.exponential(100, (50, 3)),
        ),
        (P.Log10Scaler, np.log10, lambda y: 10**y, lambda r: r.lognormal(0, 5, (50, 3))),
        (
            P.ArctanScaler,
            lambda x: np.arctan(x) * 2 / np.pi,
            lambda y: np.tan(y * np.pi / 2),
            lambda r: r.normal(0, 30, (50, 3)),
        ),
    ],
)
def test_fixed_transforms_equal_numpy_formula(cls, f, finv, gen):
    X = gen(np.random.default_rng(0))
    X[4, 1] = np.nan
    s = cls().fit(X)
    assert s.n_samples_seen_ == 50 and s.n_features_in_ == 3
    assert_rel(s.transform(X), f(X))
    assert_rel(s.inverse_transform(s.transform(X)), X, rtol=1e-11)
    assert_rel(s.inverse_transform(f(X)), finv(f(X)))


# ---------------------------------------------------------------- inputs: numpy and torch


@pytest.mark.parametrize("cls", list(P.SCALERS.values()))
@pytest.mark.parametrize(
    "dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64]
)
def test_torch_input_keeps_type_device_dtype(cls, dtype):
    X = np.abs(_data("wine")) + 1.0  # >= 1 so the int64 cast stays in log10's domain
    Xt = torch.tensor(X).to(dtype)
    s = cls().fit(Xt)
    Y = s.transform(Xt)
    want = dtype if dtype.is_floating_point else torch.get_default_dtype()
    assert isinstance(Y, torch.Tensor) and Y.dtype == want and Y.device == Xt.device
    # statistics do not depend on the container: fit on the same values in numpy
    ref = cls().fit(Xt.to(torch.float64).numpy())
    assert_rel(s.data_min_, ref.data_min_)
    Yref = ref.transform(Xt.to(torch.float64).numpy())
    tol = {
        torch.float64: 1e-12,
        torch.float32: 2e-6,
        torch.float16: 1e-3,
        torch.bfloat16: 8e-3,
    }.get(want)
    assert_rel(Y.double().numpy(), Yref, rtol=tol)
    if not (cls is P.ArctanScaler and tol > 1e-4):  # see the bf16 test below
        assert s.inverse_transform(Y).dtype == want


def test_arctan_output_rounded_to_one_has_no_inverse():
    # atan(1e4)*2/pi = 1 - 6.4e-5 rounds to exactly 1 in bfloat16: an error, never inf
    s = P.ArctanScaler().fit(torch.ones(1, 1))
    y = s.transform(torch.tensor([[1e4]], dtype=torch.bfloat16))
    assert y.item() == 1.0
    with pytest.raises(ValueError, match=r"\|y\| >= 1"):
        s.inverse_transform(y)


def test_numpy_dtypes_and_lists():
    X = np.array([[1, 2], [3, 8]], dtype=np.int32)
    Y = P.MinMaxScaler().fit_transform(X)
    assert Y.dtype == np.float64 and Y.tolist() == [[0.0, 0.0], [1.0, 1.0]]
    Y32 = P.StandardScaler().fit_transform(X.astype(np.float32))
    assert Y32.dtype == np.float32
    assert P.MinMaxScaler().fit_transform([[1.0], [2.0]]).tolist() == [[0.0], [1.0]]


def test_transform_does_not_modify_input():
    X = _data("wine")
    Xc = X.copy()
    Xt = torch.tensor(X)
    for cls in (P.StandardScaler, P.MinMaxScaler):
        cls().fit(X).transform(X)
        cls(with_mean=False, with_std=False).fit(X).transform(
            X
        ) if cls is P.StandardScaler else None
        cls().fit(Xt).inverse_transform(Xt)
    assert np.array_equal(X, Xc) and np.array_equal(Xt.numpy(), Xc)


@pytest.mark.parametrize("cls", list(P.SCALERS.values()))
def test_accelerator_code_path_matches_numpy(cls, monkeypatch):
    """The torch arithmetic a CUDA tensor takes, run on CPU, equals the NumPy path."""
    # no 1e6 offset column here: torch sums in another order than NumPy, and at
    # |mean|/std = 1e6 that alone moves the output by 1e-10 (the data's own rounding)
    X = np.abs(_with_nans()[:, :4]) + 0.5
    ref = cls()
    for chunk in np.array_split(X, 4):
        ref.partial_fit(chunk)
    monkeypatch.setattr(P._input, "_TORCH_ARITHMETIC_ON_CPU", True)
    ours = cls()
    for chunk in torch.tensor(X).split(75):
        ours.partial_fit(chunk)
    for a in ("data_min_", "data_max_", "scale_", "min_", "mean_", "var_", "n_samples_seen_"):
        if getattr(ref, a, None) is not None:
            assert_rel(getattr(ours, a), getattr(ref, a), what=a)
    new = np.vstack([X, X.max(0) + 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", P.OutOfRangeWarning)
        Y = ours.transform(torch.tensor(new))
        assert_rel(Y.numpy(), ref.transform(new))
    assert (
        ours.out_of_range(torch.tensor(new)).total.tolist() == ref.out_of_range(new).total.tolist()
    )
    assert_rel(ours.inverse_transform(Y).numpy(), new, rtol=1e-11)
    bad = torch.tensor(X)
    bad[5, 2] = -np.inf
    with pytest.raises(ValueError, match=r"column 2: 1 value\(s\) \(first at row 5"):
        ours.transform(bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cls", list(P.SCALERS.values()))
def test_cuda_tensors_match_cpu(cls):
    X = torch.tensor(np.abs(_data("breast_cancer")) + 0.5)
    cpu = cls()
    gpu = cls()
    for chunk in X.split(97):
        cpu.partial_fit(chunk)
        gpu.partial_fit(chunk.cuda())
    Y = gpu.transform(X.cuda().float())
    assert Y.is_cuda and Y.dtype == torch.float32
    for a in ("data_min_", "data_max_", "scale_", "mean_", "var_"):
        if getattr(cpu, a, None) is not None:
            assert_rel(getattr(gpu, a), getattr(cpu, a), what=a)
    assert_rel(Y.cpu().double().numpy(), cpu.transform(X.float()).double().numpy(), rtol=2e-6)


# ---------------------------------------------------------------- out of range (seed's caveat)


def test_out_of_range_counted_and_warned():
    s = P.MinMaxScaler().fit(np.array([[0.0, 0.0], [10.0, 1.0]]))
    new = np.array([[-1.0, 0.5], [11.0, 2.0], [12.0, np.nan], [5.0, 3.0]])
    with pytest.warns(
        P.OutOfRangeWarning,
        match=r"5 value\(s\).*column 0: 1 below, 2 above; "
        r"column 1: 0 below, 2 above.*clip=True",
    ):
        Y = s.transform(new)
    counts = s.out_of_range(new)
    assert counts.below.tolist() == [1, 0] and counts.above.tolist() == [2, 2]
    assert counts.total.tolist() == [3, 2]
    assert Y[1, 0] == 1.1 and np.isnan(Y[2, 1])  # unclipped, NaN kept
    c = P.MinMaxScaler(clip=True).fit(np.array([[0.0, 0.0], [10.0, 1.0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # clip=True: clipping is the answer, no warning
        Yc = c.transform(new)
    assert c.out_of_range(new).total.tolist() == [3, 2]
    assert np.nanmin(Yc) == 0.0 and np.nanmax(Yc) == 1.0 and np.isnan(Yc[2, 1])
    # in-range data: counts are zero, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.transform(np.array([[3.0, 0.2]]))
    assert s.out_of_range(np.array([[3.0, 0.2]])).total.tolist() == [0, 0]
    assert not hasattr(s, "n_out_of_range_")  # transform leaves the estimator unchanged


def test_standard_scaler_counts_out_of_range_without_warning():
    s = P.StandardScaler().fit(np.array([[0.0], [1.0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.transform(np.array([[2.0], [-1.0], [0.5]]))
    counts = s.out_of_range(np.array([[2.0], [-1.0], [0.5]]))
    assert counts.above.tolist() == [1] and counts.below.tolist() == [1]


# ---------------------------------------------------------------- errors


def test_log10_domain_error_names_column_and_count():
    X = np.ones((6, 3))
    X[[1, 4], 2] = [0.0, -3.0]
    with pytest.raises(
        ValueError,
        match=r"log10 needs x > 0.*column 2: 2 value\(s\) "
        r"\(first at row 1, value 0.0\)",
    ):
        P.Log10Scaler().fit(X)
    s = P.Log10Scaler().fit(np.ones((2, 3)))
    with pytest.raises(ValueError, match="column 2"):
        s.transform(X)


def test_rejected_chunk_leaves_the_scaler_unchanged():
    s = P.Log10Scaler()
    with pytest.raises(ValueError):
        s.partial_fit(np.array([[1.0], [-1.0]]))
    assert not hasattr(s, "n_features_in_")  # still unfitted, not half-initialized
    s.partial_fit(np.array([[1.0, 2.0]]))
    for bad in (np.array([[0.0, 1.0]]), np.array([[np.inf, 1.0]]), np.ones((1, 3))):
        with pytest.raises(ValueError):
            s.partial_fit(bad)
    assert s.n_samples_seen_ == 1 and s.data_max_.tolist() == [1.0, 2.0]


def test_reciprocal_pole_is_an_error_not_inf():
    X = np.array([[0.0, -1.0], [1.0, 2.0], [-1.0, -1.0]])
    with pytest.raises(
        ValueError,
        match=r"pole at x = -1.*column 0: 1 value\(s\).*column 1: "
        r"2 value\(s\)",
    ):
        P.ReciprocalScaler().fit(X)
    with pytest.raises(ValueError, match="y = 0"):
        P.ReciprocalScaler().fit(np.ones((2, 2))).inverse_transform(np.zeros((1, 2)))


def test_arctan_inverse_outside_open_interval_is_an_error():
    s = P.ArctanScaler().fit(np.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"\|y\| >= 1"):
        s.inverse_transform(np.array([[1.0]]))


@pytest.mark.parametrize("cls", list(P.SCALERS.values()))
def test_infinity_rejected_nan_allowed(cls):
    X = np.ones((5, 3)) * 2
    X[2, 1] = np.inf
    X[3, 1] = -np.inf
    with pytest.raises(ValueError, match=r"infinite values \(2 in total; column 1: 2 value"):
        cls().fit(X)
    with pytest.raises(ValueError, match="infinite"):
        cls().fit(torch.tensor(X))
    X[2:4, 1] = np.nan
    Y = cls().fit(X).transform(X)
    assert np.isnan(Y[2, 1]) and np.isnan(Y[3, 1]) and np.isfinite(Y[0]).all()


@pytest.mark.parametrize(
    "bad",
    [
        np.array([["a", "b"]]),
        np.array([[object()]]),
        np.array([["1.5", "x"]], dtype=object),
        [[1.0, 2.0], [3.0]],
    ],
)
def test_non_numeric_input_is_a_type_error(bad):
    with pytest.raises(TypeError, match="numeric"):
        P.StandardScaler().fit(bad)


@pytest.mark.parametrize("bad", [np.array([[1 + 2j]]), torch.tensor([[1 + 1j]])])
def test_complex_input_is_rejected(bad):
    with pytest.raises(ValueError, match="Complex data not supported"):
        P.StandardScaler().fit(bad)


def test_object_array_of_numbers_and_sparse_input():
    X = np.array([[1, 2.5], [3, 4.5]], dtype=object)
    assert P.MinMaxScaler().fit_transform(X).tolist() == [[0.0, 0.0], [1.0, 1.0]]
    sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="sparse input is not supported.*toarray"):
        P.StandardScaler().fit(sparse.csr_matrix(np.eye(3)))


def test_shape_errors():
    s = P.MinMaxScaler().fit(np.ones((3, 4)))
    with pytest.raises(ValueError, match="X has 3 features, but MinMaxScaler is expecting 4"):
        s.transform(np.ones((2, 3)))
    with pytest.raises(ValueError, match="X has 5 features"):
        s.partial_fit(np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"expected a 2-D input .* shape \(4,\).*Reshape"):
        P.MinMaxScaler().fit(np.ones(4))
    with pytest.raises(ValueError, match=r"0 sample\(s\)"):
        P.StandardScaler().fit(np.ones((0, 3)))
    assert s.transform(np.ones((0, 4))).shape == (0, 4)  # empty batch is fine after fit


@pytest.mark.parametrize("cls", list(P.SCALERS.values()))
def test_transform_before_fit(cls):
    with pytest.raises(P.NotFittedError, match="not fitted yet; call fit"):
        cls().transform(np.ones((2, 2)))
    with pytest.raises(ValueError, match="not fitted"):
        cls().inverse_transform(np.ones((2, 2)))
    with pytest.raises(ValueError, match="not fitted"):
        cls().to_module()


def test_bad_parameters():
    with pytest.raises(ValueError, match="smaller than its maximum"):
        P.MinMaxScaler(feature_range=(1, 0)).fit(np.ones((2, 1)))
    with pytest.raises(ValueError, match="two finite numbers"):
        P.MinMaxScaler(feature_range=(0, np.inf)).fit(np.ones((2, 1)))
    with pytest.raises(TypeError, match="with_mean must be True or False"):
        P.StandardScaler(with_mean="yes").fit(np.ones((2, 1)))


def test_overflow_in_low_precision_output_is_an_error():
    s = P.MinMaxScaler().fit(np.array([[0.0], [1e-3]]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", P.OutOfRangeWarning)
        with pytest.raises(ValueError, match="would become inf.*float16.*column 0"):
            s.transform(np.array([[100.0]], dtype=np.float16))  # 1e5 > float16 max
        assert s.transform(np.array([[100.0]], dtype=np.float32))[0, 0] == np.float32(1e5)
    with pytest.raises(ValueError, match="would become inf"):
        P.Log10Scaler().fit(np.ones((1, 1))).inverse_transform(np.array([[400.0]]))


# ---------------------------------------------------------------- merge


@pytest.mark.parametrize("name", ["wine", "huge_offsets"])
@pytest.mark.parametrize("ours_cls,ref_cls,attrs", PAIRS, ids=["standard", "minmax"])
def test_merge_of_shards_equals_fit_on_all(name, ours_cls, ref_cls, attrs):
    X = _data(name)
    shards = np.array_split(X, [7, 50, 51])
    merged = ours_cls()  # an unfitted scaler takes the first shard's state
    ref = ref_cls()
    for shard in shards:
        merged.merge(ours_cls().fit(shard))
        ref.partial_fit(shard)
    # sklearn's own fit and partial_fit differ by 3e-9 at |mean|/std = 1e9 (the data's
    # rounding); against partial_fit over the same shards the merge agrees to 1e-12
    _compare(merged, ref, attrs, X)
    if name == "wine":
        _compare(merged, ref_cls().fit(X), attrs, X)


def test_merge_with_nans_and_unfitted():
    X = _with_nans()
    a = P.StandardScaler().fit(X[:100])
    b = P.StandardScaler().fit(X[100:])
    a.merge(b).merge(P.StandardScaler())
    ref = skp.StandardScaler().fit(X)
    assert_rel(a.mean_, ref.mean_)
    assert_rel(a.var_, ref.var_)
    assert a.n_samples_seen_.tolist() == ref.n_samples_seen_.tolist()


def test_merge_errors():
    a = P.StandardScaler().fit(np.ones((2, 2)))
    with pytest.raises(TypeError, match="can only merge another StandardScaler"):
        a.merge(P.MinMaxScaler().fit(np.ones((2, 2))))
    with pytest.raises(ValueError, match="parameters differ.*with_mean"):
        a.merge(P.StandardScaler(with_mean=False).fit(np.ones((2, 2))))
    with pytest.raises(ValueError, match="different numbers of features"):
        a.merge(P.StandardScaler().fit(np.ones((2, 3))))


def test_sync_without_distributed_is_a_clear_error():
    with pytest.raises(RuntimeError, match="torch.distributed is not initialized"):
        P.StandardScaler().fit(np.ones((2, 2))).sync()


# ---------------------------------------------------------------- persistence


def _bits(a):
    return np.asarray(a, dtype=np.float64).view(np.int64).tolist()


@pytest.mark.parametrize("cls", list(P.SCALERS.values()))
def test_save_load_round_trip_is_bit_identical(cls, tmp_path):
    X = np.abs(_with_nans()) + 1e-3
    X[:, 3] = np.nan  # an all-NaN column: its min/max are NaN and must survive
    kwargs = {"feature_range": (-1.5, 2.25), "clip": True} if cls is P.MinMaxScaler else {}
    s = cls(**kwargs).fit(X)
    path = tmp_path / "s.json"
    s.save(path, meta={"columns": list("abcde")})
    t = P.load(path)
    assert type(t) is cls and t.get_params() == s.get_params()
    assert t.meta_ == {"columns": list("abcde")}
    for a in (
        "data_min_",
        "data_max_",
        "data_range_",
        "scale_",
        "min_",
        "mean_",
        "var_",
        "n_samples_seen_",
    ):
        if getattr(s, a, None) is not None:
            assert _bits(getattr(t, a)) == _bits(getattr(s, a)), a
    assert _bits(t.transform(X)) == _bits(s.transform(X))
    assert cls.load(path).n_features_in_ == 5
    json.loads(path.read_text())  # strict JSON: no NaN tokens


def test_save_load_keeps_awkward_float64_values_exact(tmp_path):
    X = np.array(
        [[0.1, 1e-308, 1 / 3], [0.7, 5e-324, 2 / 3], [np.pi, 1.7976931348623157e308, 1e16 + 2]]
    )
    s = P.MinMaxScaler().fit(X)
    s.save(tmp_path / "m.json")
    t = P.load(tmp_path / "m.json")
    assert _bits(t.data_min_) == _bits(s.data_min_) and _bits(t.scale_) == _bits(s.scale_)


def test_damaged_files_give_clear_errors(tmp_path):
    s = P.StandardScaler().fit(_data("wine"))
    path = tmp_path / "s.json"
    s.save(path)
    text = path.read_text()
    trunc = tmp_path / "trunc.json"
    trunc.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="not valid JSON.*truncated"):
        P.load(trunc)
    doc = json.loads(text)
    doc["state"]["mean"][3] *= 1.0000001
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="checksum mismatch"):
        P.load(tampered)
    doc = json.loads(text)
    del doc["sha256"]
    (tmp_path / "nosum.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match='no "sha256"'):
        P.load(tmp_path / "nosum.json")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a normkit scaler file"):
        P.load(tmp_path / "other.json")
    # well-formed, checksum recomputed, but impossible statistics
    from normkit.preprocessing._persist import _digest

    for field, value in [("var", -1.0), ("count", 1e9), ("data_min", 1e300)]:
        doc = json.loads(text)
        doc["state"][field][0] = value
        del doc["sha256"]
        doc["sha256"] = _digest(doc)
        forged = tmp_path / f"forged_{field}.json"
        forged.write_text(json.dumps(doc))
        with pytest.raises(ValueError, match="inconsistent statistics"):
            P.load(forged)
    with pytest.raises(ValueError, match="holds a StandardScaler, not a MinMaxScaler"):
        P.MinMaxScaler.load(path)
    with pytest.raises(ValueError, match="not fitted"):
        P.MinMaxScaler().save(tmp_path / "x.json")


# ---------------------------------------------------------------- to_module


@pytest.mark.parametrize("cls", list(P.SCALERS.values()))
def test_to_module_matches_transform_and_carries_buffers(cls):
    X = np.abs(_data("wine")) + 0.5
    s = cls(**({"clip": True} if cls is P.MinMaxScaler else {})).fit(X[:100])
    m = s.to_module()
    assert isinstance(m, torch.nn.Module)
    Xt = torch.tensor(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", P.OutOfRangeWarning)
        want = s.transform(X)
    assert_rel(m(Xt).numpy(), want, rtol=1e-15)
    assert m(Xt.float()).dtype == torch.float32
    assert_rel(m(Xt.float()).double().numpy(), want, rtol=1e-6)
    # batch dims in front of the feature dim broadcast
    assert m(Xt.reshape(2, -1, X.shape[1])[:, :3]).shape == (2, 3, X.shape[1])
    sd = m.state_dict()
    if cls is P.StandardScaler:
        assert set(sd) == {"mean", "scale"} and torch.equal(sd["mean"], torch.tensor(s.mean_))
    if cls is P.MinMaxScaler:
        assert set(sd) == {"scale", "min"} and torch.equal(sd["min"], torch.tensor(s.min_))
    # a model carries its own normalization, and exports with it
    model = torch.nn.Sequential(m, torch.nn.Linear(X.shape[1], 2)).double()
    exported = torch.export.export(model, (Xt[:4],))
    assert torch.allclose(exported.module()(Xt[:4]), model(Xt[:4]), rtol=1e-15, atol=0)


# ---------------------------------------------------------------- scikit-learn protocol


def test_get_set_params_clone_and_pipeline():
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    s = P.MinMaxScaler(feature_range=(-1, 1))
    assert s.get_params() == {"feature_range": (-1, 1), "clip": False}
    assert s.set_params(clip=True) is s and s.clip is True
    with pytest.raises(ValueError, match="unknown parameter 'bogus'"):
        s.set_params(bogus=1)
    c = clone(s)
    assert c is not s and c.get_params() == s.get_params()
    assert repr(P.MinMaxScaler(feature_range=(-1, 1))) == "MinMaxScaler(feature_range=(-1, 1))"

    data = datasets.load_wine()
    ours = Pipeline([("scale", P.StandardScaler()), ("clf", LogisticRegression(max_iter=500))])
    ref = Pipeline([("scale", skp.StandardScaler()), ("clf", LogisticRegression(max_iter=500))])
    ours.fit(data.data, data.target)
    ref.fit(data.data, data.target)
    assert (ours.predict(data.data) == ref.predict(data.data)).all()
    ours.set_params(scale__with_mean=False)
    assert ours.named_steps["scale"].with_mean is False
    assert ours.fit(data.data, data.target).score(data.data, data.target) > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("cls", list(P.SCALERS.values()))
def test_to_module_exports_to_onnx_with_the_model(cls):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    X = np.abs(_data("wine")) + 0.5
    s = cls(**({"clip": True} if cls is P.MinMaxScaler else {})).fit(X[:100])
    model = torch.nn.Sequential(s.to_module(), torch.nn.Linear(X.shape[1], 2)).float()
    x = torch.tensor(X, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    sess = ort.InferenceSession(program.model_proto.SerializeToString())
    out = sess.run(None, {sess.get_inputs()[0].name: X.astype(np.float32)})[0]
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(P.SCALERS))
def test_docstring_examples_run(name):
    import doctest

    finder = doctest.DocTestFinder()
    (test,) = finder.find(getattr(P, name), name, globs={"np": np, **vars(P)})[:1]
    runner = doctest.DocTestRunner()
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted >= 1 and result.failed == 0


def test_layouts_give_identical_results():
    import hostile

    X = _with_nans()[:, :4]
    ref = P.StandardScaler().fit(X)
    want = ref.transform(X)
    for name, t in hostile.layouts(torch.tensor(X)):
        s = P.StandardScaler().fit(t)
        assert _bits(s.mean_) == _bits(ref.mean_), name
        assert np.array_equal(s.transform(t).numpy(), want, equal_nan=True), name
    fortran = np.asfortranarray(X)
    assert np.array_equal(P.StandardScaler().fit(fortran).transform(fortran), want, equal_nan=True)
