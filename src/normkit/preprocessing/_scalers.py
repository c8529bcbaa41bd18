"""The five scalers: min-max, z-score, 1/(1+x), log10 and atan(x)*2/pi."""

from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np

from . import _persist
from ._base import _BaseScaler
from ._input import _Batch, _column_report
from ._moments import _chunk_moments, _is_constant, _merge_moments, _zero_scale_to_one
from ._torch import torch


class MinMaxScaler(_BaseScaler):
    r"""Min-max scaling of each feature to ``feature_range``.

    .. math::
        y = (x - \min) / (\max - \min) \cdot (b - a) + a
          = x \cdot \text{scale\_} + \text{min\_}

    Same attributes and results as ``sklearn.preprocessing.MinMaxScaler``: a
    constant feature (range < 10 eps) gets ``scale_ = b - a`` (it maps to ``a``).
    The classic caveat — new data can fall outside the fitted min/max —
    is reported by ``transform`` with an :class:`OutOfRangeWarning` (counts
    per feature from :meth:`out_of_range`); ``clip=True`` clips the output to
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
        ok = (
            isinstance(fr, (tuple, list))
            and len(fr) == 2
            and all(
                isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
                for v in fr
            )
        )
        if not ok or not all(math.isfinite(float(v)) for v in fr):
            raise ValueError(
                f"MinMaxScaler: feature_range must be two finite numbers (a, b), got {fr!r}"
            )
        if not float(fr[0]) < float(fr[1]):
            raise ValueError(
                f"MinMaxScaler: feature_range minimum must be smaller than its "
                f"maximum, got {tuple(fr)!r}; e.g. feature_range=(0, 1)"
            )
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

    def to_module(self):
        """A :class:`MinMaxScale` module with ``scale_`` and ``min_`` as buffers."""
        self._check_fitted("to_module")
        clip = tuple(float(v) for v in self.feature_range) if self.clip else None
        from ._modules import MinMaxScale

        return MinMaxScale(
            torch.from_numpy(self.scale_.copy()), torch.from_numpy(self.min_.copy()), clip=clip
        )


class StandardScaler(_BaseScaler):
    r"""Z-score standardization of each feature.

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
        ddof: 0 (default) divides by the population std (scikit-learn); 1 by the
            sample std sqrt(M2 / (n - 1)) (Spark, polars). ``var_`` is always
            the population variance, as in scikit-learn. See
            :meth:`from_convention`.

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

    #: ``with_mean`` / ``ddof`` as other engines define standardization (their docs):
    #: scikit-learn ``StandardScaler`` (population std), Spark MLlib ``StandardScaler``
    #: (``withMean=False`` by default, unbiased sample std), polars ``Expr.std`` (``ddof=1``)
    CONVENTIONS = {
        "sklearn": {"with_mean": True, "ddof": 0},
        "spark": {"with_mean": False, "ddof": 1},
        "polars": {"with_mean": True, "ddof": 1},
    }

    def __init__(self, with_mean=True, with_std=True, ddof=0):
        self.with_mean = with_mean
        self.with_std = with_std
        self.ddof = ddof

    @classmethod
    def from_convention(cls, name: str, **overrides) -> "StandardScaler":
        """A scaler with another engine's defaults: ``"sklearn"``, ``"spark"`` or ``"polars"``.

        Example::

            >>> StandardScaler.from_convention("spark")
            StandardScaler(with_mean=False, ddof=1)
        """
        if name not in cls.CONVENTIONS:
            raise ValueError(
                f"StandardScaler.from_convention: unknown convention {name!r}; "
                f"known: {sorted(cls.CONVENTIONS)}"
            )
        return cls(**{**cls.CONVENTIONS[name], **overrides})

    def _check_params(self) -> None:
        for k in ("with_mean", "with_std"):
            if not isinstance(getattr(self, k), (bool, np.bool_)):
                raise TypeError(
                    f"StandardScaler: {k} must be True or False, got {getattr(self, k)!r}"
                )
        if self.ddof not in (0, 1) or isinstance(self.ddof, bool):
            raise ValueError(
                f"StandardScaler: ddof must be 0 (population std, scikit-learn) "
                f"or 1 (sample std, Spark/polars), got {self.ddof!r}"
            )

    def _init_state(self, n_features: int) -> None:
        super()._init_state(n_features)
        self._st_count = np.zeros(n_features)
        self._st_mean = np.zeros(n_features)
        self._st_var = np.zeros(n_features)

    def _update_moments(self, batch: _Batch) -> None:
        count_b, sum_b, m2_b = _chunk_moments(batch)
        self._st_count, self._st_mean, self._st_var = _merge_moments(
            self._st_count, self._st_mean, self._st_var, count_b, sum_b, m2_b
        )

    def _merge_extra(self, other: "StandardScaler") -> None:
        self._st_count, self._st_mean, self._st_var = _merge_moments(
            self._st_count,
            self._st_mean,
            self._st_var,
            other._st_count,
            other._st_mean * other._st_count,
            other._st_var * other._st_count,
        )

    def _get_state(self) -> Dict[str, Any]:
        state = super()._get_state()
        state.update(
            count=self._st_count.copy(), mean=self._st_mean.copy(), var=self._st_var.copy()
        )
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
            var = self.var_
            if self.ddof:
                # sample variance M2 / (n - 1); one value has no spread (Spark: std 0)
                n = self._st_count
                with np.errstate(invalid="ignore", divide="ignore"):
                    var = np.where(n > 1, self._st_var * n / (n - 1), 0.0)
                var = np.where(unseen, np.nan, var)
            with np.errstate(invalid="ignore"):
                self.scale_ = _zero_scale_to_one(np.sqrt(var), constant)
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

    def to_module(self):
        """A :class:`Standardize` module with ``mean`` and ``scale`` buffers."""
        self._check_fitted("to_module")
        n = self.n_features_in_
        mean = self.mean_ if self.with_mean else np.zeros(n)
        scale = self.scale_ if self.with_std else np.ones(n)
        from ._modules import Standardize

        return Standardize(torch.from_numpy(mean.copy()), torch.from_numpy(scale.copy()))


class _FixedScaler(_BaseScaler):
    """A fixed elementwise map: fit only records the feature count and the data range."""

    def __init__(self):
        pass

    def _domain_error(self, batch: _Batch, mask, what: str, rule: str, fix: str):
        if bool(mask.any()):
            raise ValueError(
                f"{type(self).__name__}.{what}: {rule} "
                f"({_column_report(batch, mask, batch.x)}); {fix}"
            )


class ReciprocalScaler(_FixedScaler):
    r"""The map y = 1 / (1 + x): large x lands in (0, 1].

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
        self._domain_error(
            batch,
            batch.x == -1,
            what,
            "1/(1+x) has a pole at x = -1",
            "remove or shift those values (1/(1+x) would be infinite)",
        )

    def _check_inverse_domain(self, batch: _Batch) -> None:
        self._domain_error(
            batch,
            batch.x == 0,
            "inverse_transform",
            "y = 0 is not an output of 1/(1+x)",
            "inverse_transform takes values produced by transform",
        )

    def _forward(self, batch: _Batch):
        return 1.0 / (1.0 + batch.x)

    def _inverse(self, batch: _Batch):
        return 1.0 / batch.x - 1.0

    def to_module(self):
        """A :class:`ReciprocalTransform` module."""
        self._check_fitted("to_module")
        from ._modules import ReciprocalTransform

        return ReciprocalTransform(self.n_features_in_)


class Log10Scaler(_FixedScaler):
    r"""The map y = log10(x), for x > 0.

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
        # "Negative values in data" is the phrase scikit-learn's positive-only checks look for
        rule = (
            "Negative values in data: log10 needs x > 0"
            if bool((batch.x < 0).any())
            else "log10 needs x > 0, found x = 0"
        )
        self._domain_error(
            batch,
            batch.x <= 0,
            what,
            rule,
            "shift the data (e.g. log10(x + c) with c > -min(x)) or use "
            "ArctanScaler / ReciprocalScaler, which accept any sign",
        )

    def _forward(self, batch: _Batch):
        return torch.log10(batch.x) if batch.is_torch else np.log10(batch.x)

    def _inverse(self, batch: _Batch):
        x = batch.x
        return torch.pow(10.0, x) if batch.is_torch else np.power(10.0, x)

    def to_module(self):
        """A :class:`Log10Transform` module."""
        self._check_fitted("to_module")
        from ._modules import Log10Transform

        return Log10Transform(self.n_features_in_)


class ArctanScaler(_FixedScaler):
    r"""The map y = atan(x) * 2 / pi: any real x lands in (-1, 1).

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
        self._domain_error(
            batch,
            mask,
            "inverse_transform",
            "atan(x)*2/pi lies in (-1, 1), found |y| >= 1",
            "inverse_transform takes values produced by transform",
        )

    def _forward(self, batch: _Batch):
        x = batch.x
        return (torch.atan(x) if batch.is_torch else np.arctan(x)) * (2.0 / math.pi)

    def _inverse(self, batch: _Batch):
        x = batch.x * (math.pi / 2.0)
        return torch.tan(x) if batch.is_torch else np.tan(x)

    def to_module(self):
        """An :class:`ArctanTransform` module."""
        self._check_fitted("to_module")
        from ._modules import ArctanTransform

        return ArctanTransform(self.n_features_in_)


SCALERS = {
    cls.__name__: cls
    for cls in (MinMaxScaler, StandardScaler, ReciprocalScaler, Log10Scaler, ArctanScaler)
}
_persist.SCALERS.update(SCALERS)  # what load() may build
