"""dask Arrays and DataFrames on a distributed.LocalCluster (2 worker processes) vs scikit-learn."""

import warnings

import numpy as np
import pytest

from normkit import preprocessing as P

da = pytest.importorskip("dask.array")
dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")
pd = pytest.importorskip("pandas")
skp = pytest.importorskip("sklearn.preprocessing")


@pytest.fixture(scope="module")
def client():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
        c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def _data(seed=0, n=3001):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)) * [1, 10, 1e3, 0.1] + [0, 5, 1e5, -2]
    X[[3, 500, 2999], 1] = np.nan
    return X


# ~45 s on the shared 2-core machine (each worker process imports normkit, hence torch): slow
@pytest.mark.slow
def test_dask_array_fit_transform_equals_sklearn(client):
    X = _data()
    dX = da.from_array(X, chunks=(700, 2))  # column chunks too: rechunked per row block
    s = P.StandardScaler().fit(dX)
    ref = skp.StandardScaler().fit(X)
    np.testing.assert_allclose(s.mean_, ref.mean_, rtol=1e-14)
    np.testing.assert_allclose(s.var_, ref.var_, rtol=1e-13)
    np.testing.assert_array_equal(s.n_samples_seen_, ref.n_samples_seen_)
    Y = s.transform(dX)
    assert isinstance(Y, da.Array)  # lazy, same dask type
    got = Y.compute()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(X))
    np.testing.assert_allclose(got, ref.transform(X), rtol=1e-12, atol=1e-12)
    back = s.inverse_transform(Y).compute()
    np.testing.assert_allclose(back, X, rtol=1e-12)
    m = P.MinMaxScaler().fit(dX)
    mref = skp.MinMaxScaler().fit(X)
    np.testing.assert_array_equal(m.data_min_, mref.data_min_)
    np.testing.assert_array_equal(m.data_max_, mref.data_max_)


@pytest.mark.slow
def test_dask_dataframe_partial_fit_and_lazy_transform(client):
    X = _data(1)
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    ddf = dd.from_pandas(df, npartitions=5)
    s = P.StandardScaler()
    s.partial_fit(ddf.partitions[:2]).partial_fit(ddf.partitions[2:])
    ref = skp.StandardScaler().fit(df)
    assert list(s.feature_names_in_) == ["a", "b", "c", "d"]
    np.testing.assert_allclose(s.mean_, ref.mean_, rtol=1e-14)
    np.testing.assert_allclose(s.var_, ref.var_, rtol=1e-13)
    out = s.transform(ddf)
    assert isinstance(out, dd.DataFrame)
    got = out.compute()
    assert list(got.columns) == ["a", "b", "c", "d"] and got.index.equals(df.index)
    np.testing.assert_allclose(got.to_numpy(), ref.transform(df), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="same order"):
        s.transform(ddf[["b", "a", "c", "d"]])


def test_dask_in_process_scheduler_equals_sklearn():
    """The same code path without a cluster (dask's threaded scheduler): quick, always run."""
    X = _data(3)
    dX = da.from_array(X, chunks=(400, 4))
    s = P.StandardScaler().fit(dX)
    ref = skp.StandardScaler().fit(X)
    np.testing.assert_allclose(s.mean_, ref.mean_, rtol=1e-14)
    np.testing.assert_allclose(s.var_, ref.var_, rtol=1e-13)
    Y = s.transform(dX)
    assert isinstance(Y, da.Array)
    np.testing.assert_allclose(Y.compute(), ref.transform(X), rtol=1e-12, atol=1e-12)
    ddf = dd.from_pandas(pd.DataFrame(X, columns=list("abcd")), npartitions=3)
    out = P.MinMaxScaler().fit(ddf).transform(ddf)
    assert isinstance(out, dd.DataFrame)
    np.testing.assert_allclose(
        out.compute().to_numpy(), skp.MinMaxScaler().fit_transform(X), rtol=1e-12, atol=1e-15
    )


def test_conventions_spark_and_polars():
    pl = pytest.importorskip("polars")
    X = _data(2)[:, [0, 2, 3]]
    df = pl.DataFrame(X, schema=["a", "b", "c"], orient="row")
    s = P.StandardScaler.from_convention("polars").fit(X)
    want = df.select([(pl.col(c) - pl.col(c).mean()) / pl.col(c).std() for c in df.columns])
    np.testing.assert_allclose(s.transform(X), want.to_numpy(), rtol=1e-12, atol=1e-12)
    spark = P.StandardScaler.from_convention("spark").fit(X)
    assert spark.with_mean is False and spark.ddof == 1
    # Spark: x / sample std, hand formula
    np.testing.assert_allclose(spark.transform(X), X / X.std(0, ddof=1), rtol=1e-13)
    with pytest.raises(ValueError, match="unknown convention 'pandas'"):
        P.StandardScaler.from_convention("pandas")
