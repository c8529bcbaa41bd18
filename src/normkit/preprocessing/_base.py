"""The scaler base class: scikit-learn estimator protocol, fit/partial_fit/transform
lifecycle, validation, out-of-range counting and shard merging."""

from __future__ import annotations

import inspect
import sys
import warnings
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from . import _dask
from ._dask import is_dask
from ._input import _as_batch, _Batch, _column_report, _feature_names
from ._moments import _nan_min_max
from ._torch import is_tensor, torch


class OutOfRangeWarning(UserWarning):
    """``transform`` met values outside the range seen by ``fit``."""


class NotFittedError(ValueError, AttributeError):
    """A scaler was used before ``fit`` (a ValueError, like scikit-learn's NotFittedError)."""


class OutOfRangeCounts(NamedTuple):
    """Per-feature counts of values outside ``[data_min_, data_max_]`` (int64 arrays)."""

    below: np.ndarray
    above: np.ndarray

    @property
    def total(self) -> np.ndarray:
        return self.below + self.above


_OUTPUTS = ("default", "pandas", "polars")


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
                raise ValueError(
                    f"{type(self).__name__}.set_params: unknown parameter {key!r}; "
                    f"valid parameters are {valid}"
                )
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        sig = inspect.signature(type(self).__init__)
        args = [
            f"{k}={v!r}"
            for k, v in self.get_params().items()
            if sig.parameters[k].default is inspect.Parameter.empty
            or v != sig.parameters[k].default
        ]
        return f"{type(self).__name__}({', '.join(args)})"

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "n_features_in_")

    def __sklearn_tags__(self):
        # only scikit-learn calls this, so importing it here adds no dependency
        from sklearn.utils import InputTags, Tags, TargetTags, TransformerTags

        tags = Tags(
            estimator_type=None,
            target_tags=TargetTags(required=False),
            transformer_tags=TransformerTags(),
            regressor_tags=None,
            classifier_tags=None,
        )
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
        if is_dask(X):
            return _dask.partial_fit(self, X)
        name = type(self).__name__
        batch = _as_batch(name, "partial_fit", X)
        shape = tuple(batch.x.shape)
        if batch.n_rows == 0:
            raise ValueError(
                f"{name}.partial_fit: found array with 0 sample(s) (shape={shape}) "
                "while a minimum of 1 is required to compute statistics"
            )
        first = not hasattr(self, "n_features_in_")
        names = _feature_names(X)
        if not first:
            self._check_feature_names(names, "partial_fit")
            self._check_n_features(batch, "partial_fit")
        elif batch.x.shape[1] == 0:
            raise ValueError(
                f"{name}.partial_fit: found array with 0 feature(s) "
                f"(shape={shape}) while a minimum of 1 is required."
            )
        # every check before the first change: a rejected chunk leaves the scaler as it was
        self._check_domain(batch, "partial_fit")
        if first:
            self._init_state(batch.x.shape[1])
            if names is not None:
                self.feature_names_in_ = names
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
                f"{what}"
            )

    def _check_n_features(self, batch: _Batch, what: str) -> None:
        got = batch.x.shape[1]
        if got != self.n_features_in_:
            name = type(self).__name__
            raise ValueError(
                f"{name}.{what}: X has {got} features, but {name} is expecting "
                f"{self.n_features_in_} features as input (the number fit saw); pass data "
                "with the same columns as fit, or refit"
            )

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
                "no value in that column (its statistics are NaN: fit on data that has some)"
            )
        return y

    def _count_out_of_range(self, batch: _Batch) -> Tuple[np.ndarray, np.ndarray]:
        x = batch.x
        lo, hi = batch.param(self._st_min), batch.param(self._st_max)
        below = batch.as_numpy((x < lo).sum(0)).astype(np.int64)
        above = batch.as_numpy((x > hi).sum(0)).astype(np.int64)
        return below, above

    def _check_feature_names(self, names, what: str) -> None:
        """scikit-learn's column-name validation: reordered or renamed columns raise."""
        fitted = getattr(self, "feature_names_in_", None)
        cls = type(self).__name__
        if fitted is None and names is None:
            return
        if fitted is not None and names is None:
            warnings.warn(
                f"X does not have valid feature names, but {cls} was fitted with feature names",
                UserWarning,
                stacklevel=3,
            )
            return
        if fitted is None:
            warnings.warn(
                f"X has feature names, but {cls} was fitted without feature names",
                UserWarning,
                stacklevel=3,
            )
            return
        if len(fitted) != len(names) or np.any(fitted != names):
            # the same text as scikit-learn's, so code matching its message works for both
            def listed(items):
                items = sorted(items)
                lines = "".join(f"- {n}\n" for n in items[:5])
                return lines + ("- ...\n" if len(items) > 5 else "")

            unseen = set(names) - set(fitted)
            missing = set(fitted) - set(names)
            msg = "The feature names should match those that were passed during fit.\n"
            if unseen:
                msg += "Feature names unseen at fit time:\n" + listed(unseen)
            if missing:
                msg += "Feature names seen at fit time, yet now missing:\n" + listed(missing)
            if not unseen and not missing:
                msg += "Feature names must be in the same order as they were in fit.\n"
            raise ValueError(
                msg + f"({cls}.{what}: select the columns in fit's order, "
                "X[scaler.feature_names_in_])"
            )

    def out_of_range(self, X) -> OutOfRangeCounts:
        """Count, per feature, the values of ``X`` outside ``[data_min_, data_max_]``.

        ``transform`` never changes the scaler (scikit-learn's contract); use this
        to monitor drift instead. NaN counts as neither.

        Args:
            X: (n_samples, n_features) array, tensor or DataFrame.

        Returns:
            :class:`OutOfRangeCounts` ``(below, above)`` with ``.total``.

        Example::

            >>> s = MinMaxScaler().fit([[0.0], [1.0]]); s.out_of_range([[2.0], [-1.0]]).total
            array([2])
        """
        self._check_fitted("out_of_range")
        batch = _as_batch(type(self).__name__, "out_of_range", X)
        self._check_n_features(batch, "out_of_range")
        return OutOfRangeCounts(*self._count_out_of_range(batch))

    def transform(self, X):
        """Scale ``X`` with the fitted statistics (the scaler itself is not changed).

        :class:`MinMaxScaler` warns (:class:`OutOfRangeWarning`) about values
        outside ``[data_min_, data_max_]`` unless ``clip=True``;
        :meth:`out_of_range` returns the per-feature counts.

        Args:
            X: (n_samples, n_features) array, tensor or DataFrame.

        Returns:
            Same type, device and floating dtype as ``X`` (float64 / torch's
            default dtype for integer input); NaN stays NaN. A pandas or polars
            DataFrame when ``set_output`` (or scikit-learn's global
            ``transform_output``) asks for it.
        """
        if is_dask(X):
            return _dask.apply(self, X, "transform")
        name = type(self).__name__
        self._check_fitted("transform")
        batch = _as_batch(name, "transform", X)
        self._check_feature_names(_feature_names(X), "transform")
        self._check_n_features(batch, "transform")
        self._check_domain(batch, "transform")
        if self._WARN_OUT_OF_RANGE and not getattr(self, "clip", False):
            self._warn_out_of_range(batch)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            # overflow is reported by _finish with the column and count
            y = self._finish(batch, self._forward(batch), "transform")
        return self._wrap_output(X, y)

    def _warn_out_of_range(self, batch: _Batch) -> None:
        name = type(self).__name__
        below, above = self._count_out_of_range(batch)
        out = below + above
        if out.any():
            cols = np.flatnonzero(out)
            detail = "; ".join(f"column {c}: {below[c]} below, {above[c]} above" for c in cols[:5])
            if len(cols) > 5:
                detail += f"; and {len(cols) - 5} more column(s)"
            warnings.warn(
                f"{name}.transform: {int(out.sum())} value(s) fall outside "
                f"the fitted range [data_min_, data_max_] ({detail}); their outputs leave "
                "feature_range. New data moved min/max: refit (partial_fit) on it, or pass "
                "clip=True to clip",
                OutOfRangeWarning,
                stacklevel=3,
            )

    # -- scikit-learn's set_output API ---------------------------------------------

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Output feature names: the input's (an elementwise map keeps columns).

        Args:
            input_features: ``None`` (default: ``feature_names_in_``, else
                ``x0 .. x{n-1}``) or names that must equal ``feature_names_in_``.

        Returns:
            object ndarray of str, one per feature.
        """
        self._check_fitted("get_feature_names_out")
        fitted = getattr(self, "feature_names_in_", None)
        if input_features is None:
            if fitted is not None:
                return fitted.copy()
            return np.asarray([f"x{i}" for i in range(self.n_features_in_)], dtype=object)
        names = np.asarray(input_features, dtype=object)
        if fitted is not None and (len(names) != len(fitted) or np.any(names != fitted)):
            raise ValueError(
                f"input_features is not equal to feature_names_in_: got "
                f"{list(names)[:5]}, fitted {list(fitted)[:5]}"
            )
        if len(names) != self.n_features_in_:
            raise ValueError(
                f"input_features should have length equal to number of features "
                f"({self.n_features_in_}), got {len(names)}"
            )
        return names

    def set_output(self, *, transform=None):
        """Choose the container ``transform`` returns (scikit-learn's set_output API).

        Args:
            transform: ``"default"`` (the input's type), ``"pandas"``,
                ``"polars"``, or ``None`` (unchanged). Default ``None``.

        Returns:
            self

        Example::

            >>> StandardScaler().set_output(transform="pandas").fit_transform(df)  # a DataFrame
        """
        if transform is None:
            return self
        if transform not in _OUTPUTS:
            raise ValueError(
                f"{type(self).__name__}.set_output: transform must be one of "
                f"{list(_OUTPUTS)} or None, got {transform!r}"
            )
        # the attribute name scikit-learn's clone() copies
        self._sklearn_output_config = {"transform": transform}
        return self

    def _output_kind(self) -> str:
        kind = getattr(self, "_sklearn_output_config", {}).get("transform", "default")
        if kind == "default":
            sk = sys.modules.get("sklearn")
            if sk is not None:  # scikit-learn's global set_config(transform_output=...)
                kind = sk.get_config().get("transform_output", "default")
        return kind

    def _wrap_output(self, X, y):
        kind = self._output_kind()
        if kind == "default":
            return y
        if is_tensor(y):
            y = y.detach().cpu().numpy()
        names = list(self.get_feature_names_out())
        if kind == "pandas":
            import pandas as pd

            index = X.index if isinstance(X, pd.DataFrame) else None
            return pd.DataFrame(y, columns=names, index=index, copy=False)
        import polars as pl

        return pl.from_numpy(np.asarray(y), schema=names, orient="row")

    def inverse_transform(self, X):
        """Map scaled data back to the original units.

        Args:
            X: (n_samples, n_features) array or tensor in the scaled space.

        Returns:
            Same type, device and floating dtype as ``X``.
        """
        if is_dask(X):
            return _dask.apply(self, X, "inverse_transform")
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
        return {
            "n_rows": int(self._st_rows),
            "data_min": self._st_min.copy(),
            "data_max": self._st_max.copy(),
        }

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
            raise TypeError(
                f"{name}.merge: can only merge another {name}, got {type(other).__name__}"
            )
        mine, theirs = self._json_params(), other._json_params()  # (0, 1) == [0, 1]
        diff = [k for k in mine if mine[k] != theirs[k]]
        if diff:
            pairs = ", ".join(f"{k}: {mine[k]!r} vs {theirs[k]!r}" for k in diff)
            raise ValueError(
                f"{name}.merge: parameters differ ({pairs}); merge scalers built "
                "with the same parameters"
            )
        if not hasattr(other, "n_features_in_"):
            return self
        if not hasattr(self, "n_features_in_"):
            self._set_state(other.n_features_in_, other._get_state())
            return self
        if other.n_features_in_ != self.n_features_in_:
            raise ValueError(
                f"{name}.merge: the scalers saw different numbers of features "
                f"({self.n_features_in_} vs {other.n_features_in_}); shards must "
                "have the same columns"
            )
        self._st_rows += other._st_rows
        self._st_min = np.fmin(self._st_min, other._st_min)
        self._st_max = np.fmax(self._st_max, other._st_max)
        self._merge_extra(other)
        self._publish()
        return self

    def sync(self, process_group=None):
        """Combine the statistics of every rank of a ``torch.distributed`` group (in place).

        Every rank ends with the same statistics: those of all ranks' data
        together, merged in rank order. A collective: every rank of the group
        must call it; ranks that saw no data may call it unfitted.

        Args:
            process_group: the group; ``None`` (default) is the default group.

        Returns:
            self
        """
        from ._sync import sync

        return sync(self, process_group)

    # -- persistence ---------------------------------------------------------------

    def _json_params(self) -> Dict[str, Any]:
        out = {}
        for k, v in self.get_params().items():
            out[k] = list(v) if isinstance(v, tuple) else v
        return out

    def save(self, path, meta: Optional[Dict[str, Any]] = None) -> None:
        """Write the fitted scaler to a JSON file (no pickle); see :func:`load`.

        float64 statistics are written as their shortest round-trip decimal
        (Python's ``repr``), so :func:`load` reads them back bit-identical. A
        SHA-256 of the content lets ``load`` detect a truncated or edited file.

        Args:
            path: file to write.
            meta: optional JSON-serializable notes (e.g. column names); checksummed too.
        """
        from ._persist import save

        save(self, path, meta)

    @classmethod
    def load(cls, path):
        """Read a scaler written by :meth:`save`; on a subclass, the file must hold that class."""
        from ._persist import load

        scaler = load(path)
        if cls is not _BaseScaler and type(scaler) is not cls:
            raise ValueError(
                f"{cls.__name__}.load: {path} holds a {type(scaler).__name__}, "
                f"not a {cls.__name__}; use normkit.preprocessing.load(path)"
            )
        return scaler

    # -- export ---------------------------------------------------------------------

    def to_module(self):
        """An ``nn.Module`` applying this fitted scaler to the last dimension of its input."""
        raise NotImplementedError
