"""Data scalers of seed 000: min-max, z-score, 1/(1+x), log10 and atan(x)*2/pi.

Every scaler works per feature (the columns of a 2-D input), takes NumPy
arrays or torch tensors (CPU or GPU) and returns the input's type, device and
floating dtype. Statistics are kept in float64 whatever the input dtype, so
``fit`` on a float32 tensor and ``fit`` on the same values in float64 agree.

* :class:`MinMaxScaler` and :class:`StandardScaler` reproduce scikit-learn's
  classes of the same names (attributes, constant features, NaN handling,
  incremental algorithm) to float64 rounding.
* ``partial_fit`` streams chunks; ``merge`` combines scalers fitted on
  different shards; ``sync`` combines all ranks of a ``torch.distributed``
  group. Means and variances merge with Chan, Golub and LeVeque's pairwise
  update (the same one scikit-learn uses), minima and maxima by min/max.
* ``transform`` counts values outside the fitted range (seed 000's caveat:
  "when new data arrives, max and min may change"); ``MinMaxScaler`` warns with
  the counts, or clips with ``clip=True``.
* ``save`` / ``load`` write JSON with a checksum (no pickle); float64 values
  read back bit-identical.
* ``to_module`` turns a fitted scaler into an ``nn.Module`` with its
  statistics as buffers.

Missing and infinite values, as in scikit-learn: NaN is allowed, ignored by
``fit`` and kept by ``transform``; +-inf is rejected with an error naming the
column and the count.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import warnings
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

__all__ = [
    "MinMaxScaler",
    "StandardScaler",
    "ReciprocalScaler",
    "Log10Scaler",
    "ArctanScaler",
    "OutOfRangeWarning",
    "NotFittedError",
    "load",
    "SCALERS",
    "MinMaxScale",
    "Standardize",
    "ReciprocalTransform",
    "Log10Transform",
    "ArctanTransform",
]

_EPS64 = float(np.finfo(np.float64).eps)
_FORMAT = "normkit-scaler"
_FORMAT_VERSION = 1


# Tests set this to run the accelerator code path (torch arithmetic) on CPU tensors.
_TORCH_ARITHMETIC_ON_CPU = False


class OutOfRangeWarning(UserWarning):
    """``transform`` met values outside the range seen by ``fit``."""


class NotFittedError(ValueError, AttributeError):
    """A scaler was used before ``fit`` (a ValueError, like scikit-learn's NotFittedError)."""


# ----------------------------------------------------------------------------
# Array plumbing: one code path for NumPy arrays and torch tensors.
# ----------------------------------------------------------------------------

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
        if isinstance(a, torch.Tensor):
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


def _numeric_kind_error(name: str, what: str, dtype) -> TypeError:
    return TypeError(
        f"{name}.{what}: input must be numeric (float, int or bool), got dtype {dtype}; "
        "convert it first, e.g. np.asarray(X, dtype=np.float64)")


def _as_batch(name: str, what: str, X) -> _Batch:
    """Validate ``X`` as a 2-D numeric array/tensor without infinities."""
    if isinstance(X, torch.Tensor):
        if X.is_complex():
            raise ValueError(f"{name}.{what}: Complex data not supported (got dtype "
                             f"{X.dtype}); pass the real part or the magnitude")
        out_dtype = X.dtype if X.is_floating_point() else torch.get_default_dtype()
        # row-major working copy: the summation order (hence the last bits of the
        # statistics) must not depend on the input's memory layout
        x = X.detach().to(torch.float64).contiguous()
        to_torch, device = True, X.device
        is_torch = device.type != "cpu" or _TORCH_ARITHMETIC_ON_CPU
        if not is_torch:
            x = x.numpy()
    else:
        if hasattr(X, "tocsr") and hasattr(X, "nnz"):  # scipy.sparse, without importing scipy
            raise TypeError(f"{name}.{what}: sparse input is not supported (got "
                            f"{type(X).__name__}); pass X.toarray() if it fits in memory, or "
                            "stream dense chunks through partial_fit")
        try:
            arr = np.asarray(X)
        except (ValueError, TypeError) as exc:  # ragged lists and the like
            raise TypeError(f"{name}.{what}: could not read the input as a numeric array "
                            f"({exc}); pass a 2-D NumPy array or torch tensor") from None
        if arr.dtype.kind == "O":
            # numbers stored as Python objects (e.g. read from a mixed source) are fine
            try:
                arr = arr.astype(np.float64)
            except (ValueError, TypeError) as exc:
                raise TypeError(f"{name}.{what}: input must be numeric, got an object array "
                                f"that does not convert to float ({exc})") from None
        if arr.dtype.kind == "c":
            raise ValueError(f"{name}.{what}: Complex data not supported (got dtype "
                             f"{arr.dtype}); pass the real part or the magnitude")
        if arr.dtype.kind not in "fiub":
            raise _numeric_kind_error(name, what, arr.dtype)
        out_dtype = arr.dtype if arr.dtype.kind == "f" else np.dtype(np.float64)
        x = np.ascontiguousarray(arr, dtype=np.float64)
        is_torch, to_torch, device = False, False, None
    if x.ndim != 2:
        raise ValueError(
            f"{name}.{what}: expected a 2-D input (n_samples, n_features), got shape "
            f"{tuple(x.shape)}. Reshape your data, e.g. X.reshape(-1, 1) for a single "
            "feature or X.reshape(len(X), -1) to flatten samples")
    batch = _Batch(x, is_torch, to_torch, out_dtype, device)
    inf = torch.isinf(x) if is_torch else np.isinf(x)
    if bool(inf.any()):
        raise ValueError(f"{name}.{what}: input contains infinite values "
                         f"({_column_report(batch, inf, x)}); normkit scalers accept NaN "
                         "(ignored by fit, kept by transform) but reject +-inf: replace them "
                         "with NaN or drop those rows")
    return batch


def _column_report(batch: _Batch, mask, x=None, limit: int = 5) -> str:
    """'column 2: 3 values (first at row 7, value -1.5); ...' for the columns hit by mask."""
    counts = batch.as_numpy(mask.sum(0)).astype(np.int64)
    first = batch.as_numpy(mask.to(torch.int8).argmax(0) if batch.is_torch
                           else mask.argmax(0))
    cols = np.flatnonzero(counts)
    parts = []
    for c in cols[:limit]:
        r = int(first[c])
        value = "" if x is None else f", value {float(x[r, c])!r}"
        parts.append(f"column {c}: {counts[c]} value(s) (first at row {r}{value})")
    if len(cols) > limit:
        parts.append(f"and {len(cols) - limit} more column(s)")
    return f"{int(counts.sum())} in total; " + "; ".join(parts)


def _nan_min_max(batch: _Batch) -> Tuple[np.ndarray, np.ndarray]:
    """Per-column min and max ignoring NaN (NaN for an all-NaN column), no warnings."""
    x = batch.x
    if batch.is_torch:
        nan = torch.isnan(x)
        lo = torch.where(nan, torch.inf, x).amin(0)
        hi = torch.where(nan, -torch.inf, x).amax(0)
        all_nan = nan.all(0)
        lo = torch.where(all_nan, torch.nan, lo)
        hi = torch.where(all_nan, torch.nan, hi)
        return batch.as_numpy(lo), batch.as_numpy(hi)
    return np.fmin.reduce(x, axis=0), np.fmax.reduce(x, axis=0)


def _chunk_moments(batch: _Batch):
    """(count, sum, M2) per column of one chunk, NaN ignored, in scikit-learn's order.

    M2 is the corrected two-pass sum of squares (Chan, Golub & LeVeque):
    ``sum((x - T)**2) - sum(x - T)**2 / n`` with ``T = sum(x) / n``; the
    correction term cancels the rounding error of ``T``.
    """
    x = batch.x
    nan = batch.isnan()
    has_nan = bool(nan.any())
    n = batch.n_rows
    if batch.is_torch:
        ssum = torch.nansum if has_nan else torch.sum
        new_sum = ssum(x, 0)
        count = n - ssum(nan.to(torch.float64), 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = new_sum / count
        temp = x - t
        correction = ssum(temp, 0)
        m2 = ssum(temp * temp, 0) - correction ** 2 / count
        return batch.as_numpy(count), batch.as_numpy(new_sum), batch.as_numpy(m2)
    ssum = np.nansum if has_nan else np.sum
    new_sum = ssum(x, axis=0)
    count = n - ssum(nan.astype(np.float64), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = new_sum / count
        temp = x - t
        correction = ssum(temp, axis=0)
        temp **= 2
        m2 = ssum(temp, axis=0) - correction ** 2 / count
    return count, new_sum, m2


def _merge_moments(count_a, mean_a, var_a, count_b, sum_b, m2_b):
    """Chan's pairwise merge of (count, mean, biased var) with (count, sum, M2).

    Written with scikit-learn's expression order (``_incremental_mean_and_var``)
    so a chunked fit rounds exactly as scikit-learn's ``partial_fit`` does.
    Columns the new part has no value for keep their old statistics.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        # a column with no value yet has mean NaN (0/0); it must contribute 0, not NaN*0
        seen_a = count_a > 0
        last_sum = np.where(seen_a, mean_a * count_a, 0.0)
        count = count_a + count_b
        mean = (last_sum + sum_b) / count
        last_m2 = np.where(seen_a, var_a * count_a, 0.0)
        last_over_new = count_a / count_b
        m2 = last_m2 + m2_b + last_over_new / count * (last_sum / last_over_new - sum_b) ** 2
        m2 = np.where(count_a == 0, m2_b, m2)
        var = m2 / count
    keep = count_b == 0
    mean = np.where(keep, mean_a, mean)
    var = np.where(keep, var_a, var)
    # the corrected two-pass M2 of a constant column can round to -1e-30
    var = np.where(var < 0, 0.0, var)
    return count, mean, var


def _zero_scale_to_one(scale: np.ndarray, constant_mask: Optional[np.ndarray] = None):
    """scikit-learn's rule: a (near) zero scale becomes 1 (constants map to 0 or to a)."""
    if constant_mask is None:
        constant_mask = scale < 10 * _EPS64
    scale = np.array(scale, dtype=np.float64, copy=True)
    scale[constant_mask] = 1.0
    return scale


def _is_constant(var, mean, n_samples):
    """Variance indistinguishable from 0 given the two-pass algorithm's error bound."""
    upper = n_samples * _EPS64 * var + (n_samples * mean * _EPS64) ** 2
    return var <= upper


def _f64list(a: np.ndarray) -> List[Optional[float]]:
    """float64 values as JSON numbers (shortest repr reads back bit-identical); NaN as null."""
    return [None if math.isnan(v) else v for v in np.asarray(a, dtype=np.float64).tolist()]


def _from_f64list(values, n: int, key: str, path) -> np.ndarray:
    if not isinstance(values, list) or len(values) != n:
        raise ValueError(f"scaler file {path}: state field {key!r} must be a list of {n} numbers, "
                         f"got {type(values).__name__} of length "
                         f"{len(values) if isinstance(values, list) else '-'}; the file is "
                         "corrupted")
    out = np.empty(n, dtype=np.float64)
    for i, v in enumerate(values):
        if v is None:
            out[i] = np.nan
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[i] = v
        else:
            raise ValueError(f"scaler file {path}: state field {key!r}[{i}] is {v!r}, not a "
                             "number; the file is corrupted")
    return out


def _digest(body: Dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------
# The base class: fitting protocol, validation, range counting, persistence.
# ----------------------------------------------------------------------------

class _BaseScaler:
    """Shared machinery. Subclasses define ``_forward``/``_inverse`` on float64 arrays.

    Internal state (always float64, whatever the public attributes look like):
    ``_st_rows`` rows seen, ``_st_min`` / ``_st_max`` per column (NaN ignored).
    """

    #: state keys written to JSON / exchanged by ``sync``, after ``n_rows``
    _STATE_KEYS: Tuple[str, ...] = ("data_min", "data_max")
    #: whether ``transform`` warns about values outside the fitted range
    _WARN_OUT_OF_RANGE = False

    # -- scikit-learn estimator protocol ------------------------------------

    @classmethod
    def _param_names(cls) -> List[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> Dict[str, Any]:
        """Constructor arguments, as scikit-learn's ``clone`` and ``Pipeline`` expect."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        """Set constructor arguments; unknown names raise ``ValueError``."""
        valid = self._param_names()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(f"{type(self).__name__}.set_params: unknown parameter {key!r}; "
                                 f"valid parameters are {valid}")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        sig = inspect.signature(type(self).__init__)
        args = [f"{k}={v!r}" for k, v in self.get_params().items()
                if sig.parameters[k].default is inspect.Parameter.empty
                or v != sig.parameters[k].default]
        return f"{type(self).__name__}({', '.join(args)})"

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "n_features_in_")

    def __sklearn_tags__(self):
        # only scikit-learn calls this, so importing it here adds no dependency
        from sklearn.utils import InputTags, Tags, TargetTags, TransformerTags
        tags = Tags(estimator_type=None, target_tags=TargetTags(required=False),
                    transformer_tags=TransformerTags(), regressor_tags=None,
                    classifier_tags=None)
        tags.input_tags = InputTags(allow_nan=True)
        return tags

    # -- fitting -------------------------------------------------------------

    def _reset(self) -> None:
        for attr in list(vars(self)):
            if attr.endswith("_") and not attr.startswith("__") or attr.startswith("_st_"):
                delattr(self, attr)

    def _check_params(self) -> None:
        """Validate constructor arguments (at fit time, as scikit-learn does)."""

    def fit(self, X, y=None):
        """Compute the statistics of ``X`` from scratch (forgets earlier fits).

        Args:
            X: (n_samples, n_features) array or tensor; NaN ignored, +-inf rejected.
            y: ignored (scikit-learn API).

        Returns:
            self
        """
        self._reset()
        return self.partial_fit(X)

    def partial_fit(self, X, y=None):
        """Update the statistics with one more chunk of rows.

        ``partial_fit`` over chunks equals ``fit`` on their concatenation (to
        float64 rounding for the mean and variance, exactly for min/max).

        Args:
            X: (n_samples, n_features) array or tensor.
            y: ignored.

        Returns:
            self
        """
        self._check_params()
        name = type(self).__name__
        batch = _as_batch(name, "partial_fit", X)
        shape = tuple(batch.x.shape)
        if batch.n_rows == 0:
            raise ValueError(f"{name}.partial_fit: found array with 0 sample(s) (shape={shape}) "
                             "while a minimum of 1 is required to compute statistics")
        first = not hasattr(self, "n_features_in_")
        if not first:
            self._check_n_features(batch, "partial_fit")
        elif batch.x.shape[1] == 0:
            raise ValueError(f"{name}.partial_fit: found array with 0 feature(s) "
                             f"(shape={shape}) while a minimum of 1 is required.")
        # every check before the first change: a rejected chunk leaves the scaler as it was
        self._check_domain(batch, "partial_fit")
        if first:
            self._init_state(batch.x.shape[1])
        lo, hi = _nan_min_max(batch)
        self._st_min = np.fmin(self._st_min, lo)
        self._st_max = np.fmax(self._st_max, hi)
        self._st_rows += batch.n_rows
        self._update_moments(batch)
        self._publish()
        return self

    def fit_transform(self, X, y=None, **fit_params):
        """``fit(X)`` then ``transform(X)``."""
        return self.fit(X, y).transform(X)

    def _init_state(self, n_features: int) -> None:
        self.n_features_in_ = n_features
        self._st_rows = 0
        self._st_min = np.full(n_features, np.nan)
        self._st_max = np.full(n_features, np.nan)

    def _update_moments(self, batch: _Batch) -> None:
        """Subclasses that need more than min/max update it here."""

    def _publish(self) -> None:
        """Derive the public (scikit-learn-named) attributes from the internal state."""
        self.n_samples_seen_ = int(self._st_rows)
        self.data_min_ = self._st_min.copy()
        self.data_max_ = self._st_max.copy()

    # -- transforming ------------------------------------------------------------

    def _check_fitted(self, what: str) -> None:
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError(
                f"{type(self).__name__}.{what}: this scaler is not fitted yet; call fit(X) "
                "(or partial_fit on chunks, or load a saved scaler) before "
                f"{what}")

    def _check_n_features(self, batch: _Batch, what: str) -> None:
        got = batch.x.shape[1]
        if got != self.n_features_in_:
            name = type(self).__name__
            raise ValueError(
                f"{name}.{what}: X has {got} features, but {name} is expecting "
                f"{self.n_features_in_} features as input (the number fit saw); pass data "
                "with the same columns as fit, or refit")

    def _check_domain(self, batch: _Batch, what: str) -> None:
        """Raise when the forward map is undefined somewhere in ``batch``."""

    def _check_inverse_domain(self, batch: _Batch) -> None:
        """Raise when the inverse map is undefined somewhere in ``batch``."""

    def _finish(self, batch: _Batch, y64, what: str):
        """Cast to the output dtype; a finite input must not become inf or NaN."""
        y = batch.wrap(y64)
        if batch.is_torch:
            bad_out = ~torch.isfinite(y) & ~torch.isnan(batch.x)
        elif batch.to_torch:
            bad_out = ~torch.isfinite(y).numpy() & ~np.isnan(batch.x)
        else:
            bad_out = ~np.isfinite(y) & ~np.isnan(batch.x)
        if bool(bad_out.any()):
            raise ValueError(
                f"{type(self).__name__}.{what}: finite inputs would become inf or NaN in "
                f"{batch.out_dtype} ({_column_report(batch, bad_out, batch.x)}); either the "
                "result overflows the output dtype (pass float64 or float32 data) or fit saw "
                "no value in that column (its statistics are NaN: fit on data that has some)")
        return y

    def _count_out_of_range(self, batch: _Batch) -> Tuple[np.ndarray, np.ndarray]:
        x = batch.x
        lo, hi = batch.param(self._st_min), batch.param(self._st_max)
        below = batch.as_numpy((x < lo).sum(0)).astype(np.int64)
        above = batch.as_numpy((x > hi).sum(0)).astype(np.int64)
        return below, above

    def transform(self, X):
        """Scale ``X`` with the fitted statistics.

        Also sets ``n_below_range_``, ``n_above_range_`` and ``n_out_of_range_``
        (per-feature counts of values outside ``[data_min_, data_max_]`` in
        this call); :class:`MinMaxScaler` warns about them unless ``clip=True``.

        Args:
            X: (n_samples, n_features) array or tensor.

        Returns:
            Same type, device and floating dtype as ``X`` (float64 / torch's
            default dtype for integer input); NaN stays NaN.
        """
        name = type(self).__name__
        self._check_fitted("transform")
        batch = _as_batch(name, "transform", X)
        self._check_n_features(batch, "transform")
        self._check_domain(batch, "transform")
        below, above = self._count_out_of_range(batch)
        self.n_below_range_, self.n_above_range_ = below, above
        self.n_out_of_range_ = below + above
        if self._WARN_OUT_OF_RANGE and not getattr(self, "clip", False) and \
                self.n_out_of_range_.any():
            cols = np.flatnonzero(self.n_out_of_range_)
            detail = "; ".join(f"column {c}: {below[c]} below, {above[c]} above"
                               for c in cols[:5])
            if len(cols) > 5:
                detail += f"; and {len(cols) - 5} more column(s)"
            warnings.warn(
                f"{name}.transform: {int(self.n_out_of_range_.sum())} value(s) fall outside "
                f"the fitted range [data_min_, data_max_] ({detail}); their outputs leave "
                "feature_range. New data moved min/max: refit (partial_fit) on it, or pass "
                "clip=True to clip", OutOfRangeWarning, stacklevel=2)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            # overflow is reported by _finish with the column and count
            return self._finish(batch, self._forward(batch), "transform")

    def inverse_transform(self, X):
        """Map scaled data back to the original units.

        Args:
            X: (n_samples, n_features) array or tensor in the scaled space.

        Returns:
            Same type, device and floating dtype as ``X``.
        """
        name = type(self).__name__
        self._check_fitted("inverse_transform")
        batch = _as_batch(name, "inverse_transform", X)
        self._check_n_features(batch, "inverse_transform")
        self._check_inverse_domain(batch)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            return self._finish(batch, self._inverse(batch), "inverse_transform")

    def _forward(self, batch: _Batch):
        raise NotImplementedError

    def _inverse(self, batch: _Batch):
        raise NotImplementedError

    # -- merging -------------------------------------------------------------------

    def _get_state(self) -> Dict[str, Any]:
        return {"n_rows": int(self._st_rows), "data_min": self._st_min.copy(),
                "data_max": self._st_max.copy()}

    def _set_state(self, n_features: int, state: Dict[str, Any]) -> None:
        self._reset()
        self._init_state(n_features)
        self._st_rows = int(state["n_rows"])
        self._st_min = np.asarray(state["data_min"], dtype=np.float64).copy()
        self._st_max = np.asarray(state["data_max"], dtype=np.float64).copy()
        self._set_extra_state(state)
        self._publish()

    def _set_extra_state(self, state: Dict[str, Any]) -> None:
        pass

    def _merge_extra(self, other: "_BaseScaler") -> None:
        pass

    def merge(self, other: "_BaseScaler"):
        """Combine with a scaler of the same kind fitted on another shard (in place).

        Afterwards ``self`` holds the statistics of both shards, as if one
        scaler had been ``partial_fit`` on all of their data. An unfitted
        ``other`` changes nothing.

        Args:
            other: same class and same parameters as ``self``.

        Returns:
            self

        Example::

            >>> a = StandardScaler().fit(shard0); b = StandardScaler().fit(shard1)
            >>> a.merge(b)   # == StandardScaler().fit(np.vstack([shard0, shard1]))
        """
        name = type(self).__name__
        if type(other) is not type(self):
            raise TypeError(f"{name}.merge: can only merge another {name}, got "
                            f"{type(other).__name__}")
        mine, theirs = self._json_params(), other._json_params()  # (0, 1) == [0, 1]
        diff = [k for k in mine if mine[k] != theirs[k]]
        if diff:
            pairs = ", ".join(f"{k}: {mine[k]!r} vs {theirs[k]!r}" for k in diff)
            raise ValueError(f"{name}.merge: parameters differ ({pairs}); merge scalers built "
                             "with the same parameters")
        if not hasattr(other, "n_features_in_"):
            return self
        if not hasattr(self, "n_features_in_"):
            self._set_state(other.n_features_in_, other._get_state())
            return self
        if other.n_features_in_ != self.n_features_in_:
            raise ValueError(f"{name}.merge: the scalers saw different numbers of features "
                             f"({self.n_features_in_} vs {other.n_features_in_}); shards must "
                             "have the same columns")
        self._st_rows += other._st_rows
        self._st_min = np.fmin(self._st_min, other._st_min)
        self._st_max = np.fmax(self._st_max, other._st_max)
        self._merge_extra(other)
        self._publish()
        return self

    def _state_vector(self) -> np.ndarray:
        state = self._get_state()
        parts = [np.array([state["n_rows"]], dtype=np.float64)]
        parts += [np.asarray(state[k], dtype=np.float64) for k in self._STATE_KEYS]
        return np.concatenate(parts)

    def _state_from_vector(self, vec: np.ndarray, n_features: int) -> Dict[str, Any]:
        state = {"n_rows": int(vec[0])}
        for i, k in enumerate(self._STATE_KEYS):
            state[k] = vec[1 + i * n_features: 1 + (i + 1) * n_features].copy()
        return state

    def sync(self, process_group=None):
        """Combine the statistics of every rank of a ``torch.distributed`` group (in place).

        Every rank ends with the same statistics: those of all ranks' data
        together, merged in rank order (so the result does not depend on
        timing). Ranks that saw no data may call ``sync`` unfitted. A
        collective: every rank of the group must call it.

        Args:
            process_group: the group; ``None`` (default) is the default group.

        Returns:
            self
        """
        import torch.distributed as dist

        name = type(self).__name__
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(f"{name}.sync: torch.distributed is not initialized; call "
                               "torch.distributed.init_process_group first (or use merge() "
                               "to combine scalers in one process)")
        world = dist.get_world_size(process_group)
        backend = dist.get_backend(process_group)
        device = (torch.device("cuda", torch.cuda.current_device())
                  if str(backend) == "nccl" else torch.device("cpu"))
        n_feat = float(self.n_features_in_) if hasattr(self, "n_features_in_") else -1.0
        header = torch.tensor([n_feat], dtype=torch.float64, device=device)
        headers = [torch.empty_like(header) for _ in range(world)]
        dist.all_gather(headers, header, group=process_group)
        feats = [int(h.item()) for h in headers]
        fitted = sorted({f for f in feats if f >= 0})
        if len(fitted) > 1:
            raise ValueError(f"{name}.sync: ranks were fitted with different numbers of "
                             f"features {feats} (-1 = not fitted); every rank must see the "
                             "same columns")
        if not fitted:
            return self
        n_features = fitted[0]
        length = 1 + len(self._STATE_KEYS) * n_features
        if n_feat >= 0:
            vec = torch.as_tensor(self._state_vector(), device=device)
        else:
            vec = torch.zeros(length, dtype=torch.float64, device=device)
        vecs = [torch.empty_like(vec) for _ in range(world)]
        dist.all_gather(vecs, vec, group=process_group)
        total = type(self)(**self.get_params())
        for rank, v in enumerate(vecs):
            if feats[rank] < 0:
                continue
            part = type(self)(**self.get_params())
            part._set_state(n_features, self._state_from_vector(v.cpu().numpy(), n_features))
            total.merge(part)
        self._set_state(n_features, total._get_state())
        return self

    # -- persistence ---------------------------------------------------------------

    def _json_params(self) -> Dict[str, Any]:
        out = {}
        for k, v in self.get_params().items():
            out[k] = list(v) if isinstance(v, tuple) else v
        return out

    def save(self, path, meta: Optional[Dict[str, Any]] = None) -> None:
        """Write the fitted scaler to a JSON file (no pickle).

        float64 statistics are written as their shortest round-trip decimal
        (Python's ``repr``), so :func:`load` reads them back bit-identical. A
        SHA-256 of the content lets ``load`` detect a truncated or edited file.

        Args:
            path: file to write.
            meta: optional JSON-serializable notes (e.g. column names); checksummed too.
        """
        self._check_fitted("save")
        state = self._get_state()
        body = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "class": type(self).__name__,
            "params": self._json_params(),
            "n_features_in": int(self.n_features_in_),
            "state": {"n_rows": state["n_rows"],
                      **{k: _f64list(state[k]) for k in self._STATE_KEYS}},
            "meta": meta if meta is not None else {},
        }
        doc = dict(body, sha256=_digest(body))
        text = json.dumps(doc, indent=1, allow_nan=False)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")

    @classmethod
    def load(cls, path):
        """Read a scaler written by :meth:`save`; on a subclass, the file must hold that class."""
        scaler = load(path)
        if cls is not _BaseScaler and type(scaler) is not cls:
            raise ValueError(f"{cls.__name__}.load: {path} holds a {type(scaler).__name__}, "
                             f"not a {cls.__name__}; use normkit.preprocessing.load(path)")
        return scaler

    # -- export ---------------------------------------------------------------------

    def to_module(self) -> nn.Module:
        """An ``nn.Module`` applying this fitted scaler to the last dimension of its input."""
        raise NotImplementedError


def load(path):
    """Read any scaler written by ``save``; raises ``ValueError`` on a damaged file.

    Example::

        >>> scaler.save("stats.json"); same = normkit.preprocessing.load("stats.json")
    """
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise ValueError(f"scaler file {path} is not UTF-8 text ({exc}); it is not a file "
                         "written by save()") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"scaler file {path} is not valid JSON ({exc}); it is truncated or "
                         "corrupted: write it again with save()") from None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise ValueError(f"scaler file {path}: not a normkit scaler file (missing "
                         f"\"format\": \"{_FORMAT}\")")
    if doc.get("version") != _FORMAT_VERSION:
        raise ValueError(f"scaler file {path}: format version {doc.get('version')!r} is not "
                         f"supported (this normkit reads version {_FORMAT_VERSION})")
    expected = doc.pop("sha256", None)
    if not isinstance(expected, str):
        raise ValueError(f"scaler file {path}: no \"sha256\" checksum; the file is truncated "
                         "or was not written by save()")
    try:
        actual = _digest(doc)
    except ValueError:
        actual = None
    if actual != expected:
        raise ValueError(f"scaler file {path}: checksum mismatch (stored {expected[:12]}..., "
                         f"content hashes to {str(actual)[:12]}...); the file was modified or "
                         "corrupted after save(); refit and save again")
    cls = SCALERS.get(doc.get("class"))
    if cls is None:
        raise ValueError(f"scaler file {path}: unknown scaler class {doc.get('class')!r}; "
                         f"known: {sorted(SCALERS)}")
    params = dict(doc.get("params") or {})
    if "feature_range" in params and isinstance(params["feature_range"], list):
        params["feature_range"] = tuple(params["feature_range"])
    try:
        scaler = cls(**params)
    except TypeError as exc:
        raise ValueError(f"scaler file {path}: bad parameters for {cls.__name__}: {exc}") from None
    n = doc.get("n_features_in")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"scaler file {path}: n_features_in must be a positive integer, "
                         f"got {n!r}")
    raw = doc.get("state")
    if not isinstance(raw, dict) or not isinstance(raw.get("n_rows"), int):
        raise ValueError(f"scaler file {path}: missing or malformed \"state\"")
    state = {"n_rows": raw["n_rows"]}
    for key in cls._STATE_KEYS:
        state[key] = _from_f64list(raw.get(key), n, key, path)
    _check_state_consistent(state, path)
    scaler._check_params()
    scaler._set_state(n, state)
    scaler.meta_ = doc.get("meta") or {}
    return scaler


def _check_state_consistent(state: Dict[str, Any], path) -> None:
    """The checksum catches accidents; this catches a file that is well-formed but impossible."""
    problems = []
    rows = state["n_rows"]
    if rows < 1:
        problems.append(f"n_rows = {rows} (must be >= 1)")
    lo, hi = state["data_min"], state["data_max"]
    if np.any(np.isnan(lo) != np.isnan(hi)) or np.any(lo > hi):
        problems.append("data_min > data_max (or NaN in only one of them)")
    if np.any(~np.isfinite(lo) & ~np.isnan(lo)) or np.any(~np.isfinite(hi) & ~np.isnan(hi)):
        problems.append("infinite data_min / data_max")
    if "count" in state:
        count, var = state["count"], state["var"]
        if np.any((count < 0) | (count > rows) | (count != np.round(count))):
            problems.append(f"count outside the integers 0..n_rows={rows}")
        if np.any(var < 0) or np.any(~np.isfinite(var) & ~np.isnan(var)):
            problems.append("negative or infinite var")
    if problems:
        raise ValueError(f"scaler file {path}: inconsistent statistics: {'; '.join(problems)}; "
                         "the file was edited or corrupted: refit and save again")


# ----------------------------------------------------------------------------
# The scalers.
# ----------------------------------------------------------------------------

class MinMaxScaler(_BaseScaler):
    r"""Min-max scaling of each feature to ``feature_range`` (seed 000, method 1).

    .. math::
        y = (x - \min) / (\max - \min) \cdot (b - a) + a
          = x \cdot \text{scale\_} + \text{min\_}

    Same attributes and results as ``sklearn.preprocessing.MinMaxScaler``: a
    constant feature (range < 10 eps) gets ``scale_ = b - a`` (it maps to ``a``).
    The seed's caveat — new data can fall outside the fitted min/max —
    is counted by ``transform`` (``n_out_of_range_``) and reported with an
    :class:`OutOfRangeWarning`; ``clip=True`` clips the output to
    ``feature_range`` instead.

    Args:
        feature_range: ``(a, b)`` with ``a < b``. Default ``(0, 1)``.
        clip: clip transformed values to ``feature_range``. Default ``False``.

    Attributes:
        data_min_, data_max_, data_range_, scale_, min_: per feature, float64.
        n_samples_seen_: rows seen (int, NaN rows included, as scikit-learn).
        n_features_in_: number of features.

    Shape:
        X: (n_samples, n_features); output the same.

    Example::

        >>> s = MinMaxScaler().fit(np.array([[1.0], [3.0]]))
        >>> s.transform(np.array([[2.0]]))
        array([[0.5]])
    """

    _WARN_OUT_OF_RANGE = True

    def __init__(self, feature_range=(0, 1), clip=False):
        self.feature_range = feature_range
        self.clip = clip

    def _check_params(self) -> None:
        fr = self.feature_range
        ok = (isinstance(fr, (tuple, list)) and len(fr) == 2 and
              all(isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
                  for v in fr))
        if not ok or not all(math.isfinite(float(v)) for v in fr):
            raise ValueError(f"MinMaxScaler: feature_range must be two finite numbers (a, b), "
                             f"got {fr!r}")
        if not float(fr[0]) < float(fr[1]):
            raise ValueError(f"MinMaxScaler: feature_range minimum must be smaller than its "
                             f"maximum, got {tuple(fr)!r}; e.g. feature_range=(0, 1)")
        if not isinstance(self.clip, (bool, np.bool_)):
            raise TypeError(f"MinMaxScaler: clip must be True or False, got {self.clip!r}")

    def _publish(self) -> None:
        super()._publish()
        a, b = float(self.feature_range[0]), float(self.feature_range[1])
        self.data_range_ = self.data_max_ - self.data_min_
        self.scale_ = (b - a) / _zero_scale_to_one(self.data_range_)
        self.min_ = a - self.data_min_ * self.scale_

    def _forward(self, batch: _Batch):
        y = batch.x * batch.param(self.scale_)
        y += batch.param(self.min_)
        if self.clip:
            a, b = float(self.feature_range[0]), float(self.feature_range[1])
            y = y.clamp(a, b) if batch.is_torch else np.clip(y, a, b, out=y)
        return y

    def _inverse(self, batch: _Batch):
        return (batch.x - batch.param(self.min_)) / batch.param(self.scale_)

    def to_module(self) -> nn.Module:
        """A :class:`MinMaxScale` module with ``scale_`` and ``min_`` as buffers."""
        self._check_fitted("to_module")
        clip = tuple(float(v) for v in self.feature_range) if self.clip else None
        return MinMaxScale(torch.from_numpy(self.scale_.copy()),
                           torch.from_numpy(self.min_.copy()), clip=clip)


class StandardScaler(_BaseScaler):
    r"""Z-score standardization of each feature (seed 000, method 2).

    .. math::
        y = (x - \mu) / \sigma

    with the population standard deviation ``sigma = sqrt(var_)``. Same
    attributes and results as ``sklearn.preprocessing.StandardScaler``
    (constant features get ``scale_ = 1``; with NaNs, ``n_samples_seen_`` is
    a per-feature array when the counts differ). Streaming uses the corrected
    two-pass chunk moments merged with Chan's update: no ``E[x^2] - E[x]^2``,
    so a mean of 1e9 with unit spread loses nothing.

    Args:
        with_mean: subtract the mean. Default ``True``.
        with_std: divide by the standard deviation. Default ``True``.

    Attributes:
        mean_ (None when neither flag is set), var_ and scale_ (None when
        ``with_std=False``): per feature, float64. ``n_samples_seen_``,
        ``n_features_in_``. Also ``data_min_`` / ``data_max_`` (normkit's, for
        the out-of-range counts).

    Shape:
        X: (n_samples, n_features); output the same.

    Example::

        >>> s = StandardScaler().fit(np.array([[1.0], [3.0]]))
        >>> s.mean_, s.scale_
        (array([2.]), array([1.]))
    """

    _STATE_KEYS = ("data_min", "data_max", "count", "mean", "var")

    def __init__(self, with_mean=True, with_std=True):
        self.with_mean = with_mean
        self.with_std = with_std

    def _check_params(self) -> None:
        for k in ("with_mean", "with_std"):
            if not isinstance(getattr(self, k), (bool, np.bool_)):
                raise TypeError(f"StandardScaler: {k} must be True or False, got "
                                f"{getattr(self, k)!r}")

    def _init_state(self, n_features: int) -> None:
        super()._init_state(n_features)
        self._st_count = np.zeros(n_features)
        self._st_mean = np.zeros(n_features)
        self._st_var = np.zeros(n_features)

    def _update_moments(self, batch: _Batch) -> None:
        count_b, sum_b, m2_b = _chunk_moments(batch)
        self._st_count, self._st_mean, self._st_var = _merge_moments(
            self._st_count, self._st_mean, self._st_var, count_b, sum_b, m2_b)

    def _merge_extra(self, other: "StandardScaler") -> None:
        self._st_count, self._st_mean, self._st_var = _merge_moments(
            self._st_count, self._st_mean, self._st_var, other._st_count,
            other._st_mean * other._st_count, other._st_var * other._st_count)

    def _get_state(self) -> Dict[str, Any]:
        state = super()._get_state()
        state.update(count=self._st_count.copy(), mean=self._st_mean.copy(),
                     var=self._st_var.copy())
        return state

    def _set_extra_state(self, state: Dict[str, Any]) -> None:
        self._st_count = np.asarray(state["count"], dtype=np.float64).copy()
        self._st_mean = np.asarray(state["mean"], dtype=np.float64).copy()
        self._st_var = np.asarray(state["var"], dtype=np.float64).copy()

    def _publish(self) -> None:
        super()._publish()
        counts = self._st_count.astype(np.int64)
        # scikit-learn's convention: a scalar when every feature saw the same count
        n_seen = counts[0] if counts.min() == counts.max() else counts
        self.n_samples_seen_ = n_seen
        if not self.with_mean and not self.with_std:
            self.mean_ = None
            self.var_ = None
            self.scale_ = None
            return
        unseen = self._st_count == 0  # every value NaN so far: no statistic (as sklearn)
        self.mean_ = np.where(unseen, np.nan, self._st_mean)
        if self.with_std:
            self.var_ = np.where(unseen, np.nan, self._st_var)
            constant = _is_constant(self.var_, self.mean_, n_seen)
            with np.errstate(invalid="ignore"):
                self.scale_ = _zero_scale_to_one(np.sqrt(self.var_), constant)
        else:
            self.var_ = None
            self.scale_ = None

    def _forward(self, batch: _Batch):
        y = batch.x
        if self.with_mean:
            y = y - batch.param(self.mean_)
        if self.with_std:
            y = y / batch.param(self.scale_)
        if y is batch.x:
            y = y.clone() if batch.is_torch else y.copy()
        return y

    def _inverse(self, batch: _Batch):
        y = batch.x
        if self.with_std:
            y = y * batch.param(self.scale_)
        if self.with_mean:
            y = y + batch.param(self.mean_)
        if y is batch.x:
            y = y.clone() if batch.is_torch else y.copy()
        return y

    def to_module(self) -> nn.Module:
        """A :class:`Standardize` module with ``mean`` and ``scale`` buffers."""
        self._check_fitted("to_module")
        n = self.n_features_in_
        mean = self.mean_ if self.with_mean else np.zeros(n)
        scale = self.scale_ if self.with_std else np.ones(n)
        return Standardize(torch.from_numpy(mean.copy()), torch.from_numpy(scale.copy()))


class _FixedScaler(_BaseScaler):
    """A fixed elementwise map: fit only records the feature count and the data range."""

    def __init__(self):
        pass

    def _domain_error(self, batch: _Batch, mask, what: str, rule: str, fix: str):
        if bool(mask.any()):
            raise ValueError(f"{type(self).__name__}.{what}: {rule} "
                             f"({_column_report(batch, mask, batch.x)}); {fix}")


class ReciprocalScaler(_FixedScaler):
    r"""The map y = 1 / (1 + x) (seed 000, method 3): large x lands in (0, 1].

    .. math::
        y = \frac{1}{1 + x}, \qquad x = \frac{1}{y} - 1

    Defined for every x except the pole x = -1 (an error, never inf). Meant
    for x >= 0, where y is in (0, 1] and decreasing; for x < -1 y is negative.

    Shape:
        X: (n_samples, n_features); output the same.

    Example::

        >>> ReciprocalScaler().fit_transform(np.array([[0.0], [1.0], [3.0]])).ravel().tolist()
        [1.0, 0.5, 0.25]
    """

    def _check_domain(self, batch: _Batch, what: str) -> None:
        self._domain_error(batch, batch.x == -1, what, "1/(1+x) has a pole at x = -1",
                           "remove or shift those values (1/(1+x) would be infinite)")

    def _check_inverse_domain(self, batch: _Batch) -> None:
        self._domain_error(batch, batch.x == 0, "inverse_transform",
                           "y = 0 is not an output of 1/(1+x)",
                           "inverse_transform takes values produced by transform")

    def _forward(self, batch: _Batch):
        return 1.0 / (1.0 + batch.x)

    def _inverse(self, batch: _Batch):
        return 1.0 / batch.x - 1.0

    def to_module(self) -> nn.Module:
        """A :class:`ReciprocalTransform` module."""
        self._check_fitted("to_module")
        return ReciprocalTransform(self.n_features_in_)


class Log10Scaler(_FixedScaler):
    r"""The map y = log10(x) (seed 000, method 4), for x > 0.

    .. math::
        y = \log_{10} x, \qquad x = 10^{y}

    x <= 0 is an error naming the column and the count (never -inf or NaN).

    Shape:
        X: (n_samples, n_features); output the same.

    Example::

        >>> Log10Scaler().fit_transform(np.array([[1.0], [10.0], [1000.0]])).ravel().tolist()
        [0.0, 1.0, 3.0]
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        return tags

    def _check_domain(self, batch: _Batch, what: str) -> None:
        self._domain_error(batch, batch.x <= 0, what, "log10 needs x > 0, found x <= 0",
                           "shift the data (e.g. log10(x + c) with c > -min(x)) or use "
                           "ArctanScaler / ReciprocalScaler, which accept any sign")

    def _forward(self, batch: _Batch):
        return torch.log10(batch.x) if batch.is_torch else np.log10(batch.x)

    def _inverse(self, batch: _Batch):
        x = batch.x
        return torch.pow(10.0, x) if batch.is_torch else np.power(10.0, x)

    def to_module(self) -> nn.Module:
        """A :class:`Log10Transform` module."""
        self._check_fitted("to_module")
        return Log10Transform(self.n_features_in_)


class ArctanScaler(_FixedScaler):
    r"""The map y = atan(x) * 2 / pi (seed 000, method 5): any real x lands in (-1, 1).

    .. math::
        y = \frac{2}{\pi}\arctan x, \qquad x = \tan\left(\frac{\pi}{2} y\right)

    ``inverse_transform`` needs |y| < 1. Beyond |x| ~ 1e15, y rounds to
    +-1 in float64 and the map is no longer invertible.

    Shape:
        X: (n_samples, n_features); output the same.

    Example::

        >>> ArctanScaler().fit_transform(np.array([[0.0], [1.0]])).ravel().tolist()
        [0.0, 0.5]
    """

    def _check_inverse_domain(self, batch: _Batch) -> None:
        x = batch.x
        mask = (x.abs() if batch.is_torch else np.abs(x)) >= 1
        self._domain_error(batch, mask, "inverse_transform",
                           "atan(x)*2/pi lies in (-1, 1), found |y| >= 1",
                           "inverse_transform takes values produced by transform")

    def _forward(self, batch: _Batch):
        x = batch.x
        return (torch.atan(x) if batch.is_torch else np.arctan(x)) * (2.0 / math.pi)

    def _inverse(self, batch: _Batch):
        x = batch.x * (math.pi / 2.0)
        return torch.tan(x) if batch.is_torch else np.tan(x)

    def to_module(self) -> nn.Module:
        """An :class:`ArctanTransform` module."""
        self._check_fitted("to_module")
        return ArctanTransform(self.n_features_in_)


SCALERS = {cls.__name__: cls for cls in
           (MinMaxScaler, StandardScaler, ReciprocalScaler, Log10Scaler, ArctanScaler)}


# ----------------------------------------------------------------------------
# nn.Modules: a model carries its own input normalization.
# ----------------------------------------------------------------------------

def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # float64 stays float64; everything else (fp16/bf16/fp32) computes in float32
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class _ScalerModule(nn.Module):
    """Elementwise over the last dimension (the features); no data-dependent checks,
    so the module traces and exports (validate data with the scaler, not the module)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}"

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        return self._map(x.to(_compute_dtype(x))).to(dtype)


class MinMaxScale(_ScalerModule):
    r"""``y = x * scale + min`` over the last dimension, optionally clipped.

    Args:
        scale: (F,) buffer (``MinMaxScaler.scale_``).
        min: (F,) buffer (``MinMaxScaler.min_``).
        clip: ``(a, b)`` to clamp the output, or ``None`` (default).

    Shape:
        (*, F) -> (*, F)

    Example::

        >>> m = MinMaxScaler().fit(X).to_module(); m(torch.as_tensor(X))
    """

    def __init__(self, scale: torch.Tensor, min: torch.Tensor, clip=None):
        super().__init__(scale.numel())
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("min", min.detach().clone())
        self.clip = clip

    def _map(self, x):
        y = x * self.scale.to(x.dtype) + self.min.to(x.dtype)
        if self.clip is not None:
            y = y.clamp(self.clip[0], self.clip[1])
        return y


class Standardize(_ScalerModule):
    r"""``y = (x - mean) / scale`` over the last dimension.

    Args:
        mean: (F,) buffer; zeros for ``with_mean=False``.
        scale: (F,) buffer; ones for ``with_std=False``.

    Shape:
        (*, F) -> (*, F)

    Example::

        >>> m = StandardScaler().fit(X).to_module(); m(torch.as_tensor(X))
    """

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor):
        super().__init__(mean.numel())
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("scale", scale.detach().clone())

    def _map(self, x):
        return (x - self.mean.to(x.dtype)) / self.scale.to(x.dtype)


class ReciprocalTransform(_ScalerModule):
    """``y = 1 / (1 + x)``. Shape (*, F) -> (*, F). Args: num_features."""

    def _map(self, x):
        return torch.reciprocal(1.0 + x)


class Log10Transform(_ScalerModule):
    """``y = log10(x)``. Shape (*, F) -> (*, F). Args: num_features."""

    def _map(self, x):
        return torch.log10(x)


class ArctanTransform(_ScalerModule):
    """``y = atan(x) * 2 / pi``. Shape (*, F) -> (*, F). Args: num_features."""

    def _map(self, x):
        return torch.atan(x) * (2.0 / math.pi)
