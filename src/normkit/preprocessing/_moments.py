"""Moment math: per-chunk min/max and (count, sum, M2), Chan's pairwise merge, scale rules.

References: T. F. Chan, G. H. Golub, R. J. LeVeque, "Algorithms for computing
the sample variance: analysis and recommendations", The American
Statistician 37(3), 1983; scikit-learn's ``utils.extmath._incremental_mean_and_var``
(whose expression order is kept, so results round identically).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ._input import _Batch
from ._torch import torch

_EPS64 = float(np.finfo(np.float64).eps)


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
        m2 = ssum(temp * temp, 0) - correction**2 / count
        return batch.as_numpy(count), batch.as_numpy(new_sum), batch.as_numpy(m2)
    ssum = np.nansum if has_nan else np.sum
    new_sum = ssum(x, axis=0)
    count = n - ssum(nan.astype(np.float64), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = new_sum / count
        temp = x - t
        correction = ssum(temp, axis=0)
        temp **= 2
        m2 = ssum(temp, axis=0) - correction**2 / count
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
