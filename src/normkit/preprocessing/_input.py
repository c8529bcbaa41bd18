"""Input adaptation: one validated float64 view of a NumPy array or torch tensor."""

from __future__ import annotations

import sys
from typing import Optional

import numpy as np

from ._dtypes import output_dtype
from ._torch import is_tensor, torch

# Tests set this to run the accelerator code path (torch arithmetic) on CPU tensors.
_TORCH_ARITHMETIC_ON_CPU = False


class _Batch:
    """A validated 2-D input: float64 working copy plus how to rebuild the output.

    ``x`` is a float64 ``np.ndarray`` (NumPy input and CPU tensors, so a CPU
    tensor gives bit-for-bit the NumPy result) or a float64 ``torch.Tensor`` on
    the input's accelerator (``is_torch``: the arithmetic runs there).
    ``to_torch`` says the output goes back to torch. No copy is made when the
    input already is float64.
    """

    __slots__ = ("x", "is_torch", "to_torch", "out_dtype", "device")

    def __init__(self, x, is_torch, to_torch, out_dtype, device):
        self.x = x
        self.is_torch = is_torch
        self.to_torch = to_torch
        self.out_dtype = out_dtype
        self.device = device

    @property
    def n_rows(self) -> int:
        return int(self.x.shape[0])

    def isnan(self):
        return torch.isnan(self.x) if self.is_torch else np.isnan(self.x)

    def as_numpy(self, a) -> np.ndarray:
        if is_tensor(a):
            return a.detach().cpu().numpy()
        return np.asarray(a)

    def param(self, a: np.ndarray):
        """A float64 statistic vector in this batch's library and device."""
        if self.is_torch:
            return torch.as_tensor(np.ascontiguousarray(a, dtype=np.float64), device=self.device)
        return a

    def wrap(self, y64):
        """Cast a float64 result to the output type and dtype (the caller checks finiteness)."""
        if self.is_torch:
            return y64.to(self.out_dtype)
        if self.to_torch:
            return torch.from_numpy(np.ascontiguousarray(y64)).to(self.out_dtype)
        return y64.astype(self.out_dtype, copy=False)


def _pandas_to_numpy(X):
    """A pandas DataFrame/Series with nullable (extension) dtypes as float, pd.NA -> NaN.

    Returns None for anything else (``np.asarray`` handles it). Float32-only
    nullable columns stay float32; other nullable numbers become float64, as
    scikit-learn does.
    """
    pd = sys.modules.get("pandas")
    if pd is None or not isinstance(X, (pd.DataFrame, pd.Series)):
        return None
    dtypes = list(X.dtypes) if isinstance(X, pd.DataFrame) else [X.dtype]
    if not any(isinstance(d, pd.api.extensions.ExtensionDtype) for d in dtypes):
        return None
    for col, d in zip(getattr(X, "columns", [getattr(X, "name", 0)]), dtypes):
        kind = getattr(d, "kind", "O")
        if kind not in "fiub":
            raise TypeError(
                f"column {col!r} has dtype {d}, which is not numeric; select the "
                "numeric columns (e.g. X.select_dtypes('number'))"
            )
    target = np.float32 if all(str(d) == "Float32" for d in dtypes) else np.float64
    return X.to_numpy(dtype=target, na_value=np.nan)


def _numeric_kind_error(name: str, what: str, dtype) -> TypeError:
    return TypeError(
        f"{name}.{what}: input must be numeric (float, int or bool), got dtype {dtype}; "
        "convert it first, e.g. np.asarray(X, dtype=np.float64)"
    )


def _as_batch(name: str, what: str, X) -> _Batch:
    """Validate ``X`` as a 2-D numeric array/tensor without infinities."""
    if is_tensor(X):
        if X.is_complex():
            raise ValueError(
                f"{name}.{what}: Complex data not supported (got dtype "
                f"{X.dtype}); pass the real part or the magnitude"
            )
        out_dtype = output_dtype(X.dtype)
        # row-major working copy: the summation order (hence the last bits of the
        # statistics) must not depend on the input's memory layout
        x = X.detach().to(torch.float64).contiguous()
        to_torch, device = True, X.device
        is_torch = device.type != "cpu" or _TORCH_ARITHMETIC_ON_CPU
        if not is_torch:
            x = x.numpy()
    else:
        if hasattr(X, "tocsr") and hasattr(X, "nnz"):  # scipy.sparse, without importing scipy
            raise TypeError(
                f"{name}.{what}: sparse input is not supported (got "
                f"{type(X).__name__}); pass X.toarray() if it fits in memory, or "
                "stream dense chunks through partial_fit"
            )
        try:
            arr = _pandas_to_numpy(X)
            if arr is None:
                arr = np.asarray(X)
        except (ValueError, TypeError) as exc:  # ragged lists and the like
            raise TypeError(
                f"{name}.{what}: could not read the input as a numeric array "
                f"({exc}); pass a 2-D NumPy array or torch tensor"
            ) from None
        if arr.dtype.kind == "O":
            # numbers stored as Python objects (e.g. read from a mixed source) are fine
            try:
                arr = arr.astype(np.float64)
            except (ValueError, TypeError) as exc:
                raise TypeError(
                    f"{name}.{what}: input must be numeric, got an object array "
                    f"that does not convert to float ({exc})"
                ) from None
        if arr.dtype.kind == "c":
            raise ValueError(
                f"{name}.{what}: Complex data not supported (got dtype "
                f"{arr.dtype}); pass the real part or the magnitude"
            )
        if arr.dtype.kind not in "fiub":
            raise _numeric_kind_error(name, what, arr.dtype)
        out_dtype = output_dtype(arr.dtype)
        x = np.ascontiguousarray(arr, dtype=np.float64)
        is_torch, to_torch, device = False, False, None
    if x.ndim != 2:
        raise ValueError(
            f"{name}.{what}: expected a 2-D input (n_samples, n_features), got shape "
            f"{tuple(x.shape)}. Reshape your data, e.g. X.reshape(-1, 1) for a single "
            "feature or X.reshape(len(X), -1) to flatten samples"
        )
    batch = _Batch(x, is_torch, to_torch, out_dtype, device)
    inf = torch.isinf(x) if is_torch else np.isinf(x)
    if bool(inf.any()):
        raise ValueError(
            f"{name}.{what}: input contains infinite values "
            f"({_column_report(batch, inf, x)}); normkit scalers accept NaN "
            "(ignored by fit, kept by transform) but reject +-inf: replace them "
            "with NaN or drop those rows"
        )
    return batch


def _column_report(batch: _Batch, mask, x=None, limit: int = 5) -> str:
    """'column 2: 3 values (first at row 7, value -1.5); ...' for the columns hit by mask."""
    counts = batch.as_numpy(mask.sum(0)).astype(np.int64)
    first = batch.as_numpy(mask.to(torch.int8).argmax(0) if batch.is_torch else mask.argmax(0))
    cols = np.flatnonzero(counts)
    parts = []
    for c in cols[:limit]:
        r = int(first[c])
        value = "" if x is None else f", value {float(x[r, c])!r}"
        parts.append(f"column {c}: {counts[c]} value(s) (first at row {r}{value})")
    if len(cols) > limit:
        parts.append(f"and {len(cols) - limit} more column(s)")
    return f"{int(counts.sum())} in total; " + "; ".join(parts)


def _feature_names(X) -> Optional[np.ndarray]:
    """Column names of a DataFrame-like ``X`` when all are strings (scikit-learn's rule)."""
    if is_tensor(X) or not hasattr(X, "columns") or isinstance(X, np.ndarray):
        return None
    cols = list(X.columns)
    kinds = {isinstance(c, str) for c in cols}
    if kinds == {True}:
        return np.asarray(cols, dtype=object)
    if kinds == {True, False}:
        raise TypeError(
            "Feature names are only supported if all input features have string names, but "
            f"your input has {sorted({type(c).__name__ for c in cols})} as feature name / "
            "column name types. Convert them all to strings, e.g. X.columns = "
            "X.columns.astype(str)"
        )
    return None
