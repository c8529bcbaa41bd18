"""dask collections: per-partition statistics merged exactly, lazy transforms.

``fit`` / ``partial_fit`` on a dask Array or DataFrame fit one scaler per
block (on the workers, in parallel) and merge them in block order with
:meth:`merge`: min/max by min/max, means and variances with Chan, Golub and
LeVeque's pairwise update, so the result equals a ``partial_fit`` over the
blocks in order. ``transform`` / ``inverse_transform`` return the same dask
type, still lazy (``map_blocks`` / ``map_partitions``).
"""

from __future__ import annotations

import numpy as np

from ._dtypes import output_dtype


def is_dask(X) -> bool:
    """A dask Array or DataFrame (checked without importing dask)."""
    mod = type(X).__module__
    return mod.startswith("dask.") or mod.startswith("dask_expr")


def _is_frame(X) -> bool:
    return hasattr(X, "map_partitions") and hasattr(X, "columns")


def _fit_block(cls, params, block):
    if len(block) == 0:
        return None
    return cls(**params).partial_fit(block)


def partial_fit(scaler, X):
    """Fit one scaler per block on the workers, then merge them into ``scaler`` in order."""
    import dask

    if _is_frame(X):
        blocks = X.to_delayed()
    else:
        if X.ndim != 2:
            raise ValueError(
                f"{type(scaler).__name__}.partial_fit: expected a 2-D dask array "
                f"(n_samples, n_features), got {X.ndim}-D; reshape it"
            )
        blocks = X.rechunk({1: -1}).to_delayed().ravel()
    fit_block = dask.delayed(_fit_block, pure=True)
    params = scaler.get_params()
    parts = dask.compute(*[fit_block(type(scaler), params, b) for b in blocks])
    parts = [p for p in parts if p is not None]
    if not parts:
        raise ValueError(f"{type(scaler).__name__}.partial_fit: the dask collection has no rows")
    for part in parts:
        names = getattr(part, "feature_names_in_", None)
        if hasattr(scaler, "n_features_in_"):
            scaler._check_feature_names(names, "partial_fit")
            scaler.merge(part)
        else:
            scaler.merge(part)  # adopts the part's state (merge resets an unfitted scaler)
            if names is not None:
                scaler.feature_names_in_ = names.copy()
    return scaler


def _frame_block(df, scaler, method):
    import pandas as pd

    y = getattr(scaler, method)(df)
    if isinstance(y, pd.DataFrame):
        return y
    return pd.DataFrame(y, index=df.index, columns=df.columns)


def apply(scaler, X, method: str):
    """``transform`` / ``inverse_transform`` of a dask collection, lazily, same dask type."""
    name = type(scaler).__name__
    scaler._check_fitted(method)
    if _is_frame(X):
        import pandas as pd

        from ._input import _feature_names

        if method == "transform":
            scaler._check_feature_names(_feature_names(X), method)
        if len(X.columns) != scaler.n_features_in_:
            raise ValueError(
                f"{name}.{method}: X has {len(X.columns)} features, but {name} "
                f"is expecting {scaler.n_features_in_} features as input"
            )
        dtypes = [
            np.dtype(d) if not hasattr(d, "numpy_dtype") else np.dtype(d.numpy_dtype)
            for d in X.dtypes
        ]
        out = np.float32 if all(d == np.float32 for d in dtypes) else np.float64
        meta = pd.DataFrame({c: pd.Series([], dtype=out) for c in X.columns})
        return X.map_partitions(_frame_block, scaler, method, meta=meta)
    if X.ndim != 2 or X.shape[1] != scaler.n_features_in_:
        raise ValueError(
            f"{name}.{method}: expected a 2-D dask array with "
            f"{scaler.n_features_in_} columns, got shape {X.shape}"
        )
    X = X.rechunk({1: -1})
    return X.map_blocks(lambda b: getattr(scaler, method)(b), dtype=output_dtype(X.dtype))
