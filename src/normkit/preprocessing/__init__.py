"""Data scalers: min-max, z-score, 1/(1+x), log10 and atan(x)*2/pi.

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
* ``out_of_range(X)`` counts values outside the fitted range (new data can
  move min and max); ``MinMaxScaler.transform`` warns with the counts, or
  clips with ``clip=True``. ``transform`` never changes the scaler.
* scikit-learn citizens: ``set_output`` (pandas, polars),
  ``get_feature_names_out``, ``feature_names_in_`` with scikit-learn's
  column-name validation; pandas nullable dtypes read with ``pd.NA`` as NaN.
* dask Arrays and DataFrames: per-block statistics merged exactly, lazy
  transforms of the same dask type.
* ``save`` / ``load`` write JSON with a checksum (no pickle); float64 values
  read back bit-identical.
* ``to_module`` turns a fitted scaler into an ``nn.Module`` with its
  statistics as buffers.

Missing and infinite values, as in scikit-learn: NaN is allowed, ignored by
``fit`` and kept by ``transform``; +-inf is rejected with an error naming the
column and the count.

Layout of this package (one concern per module; the public names live here):

* ``_dtypes``: the dtype policy (which dtype comes out, which one computes).
* ``_input``: input adaptation (NumPy / torch / pandas to a float64 batch).
* ``_moments``: per-chunk moments and Chan's merge.
* ``_base``: the estimator base class (fit lifecycle, validation, merge).
* ``_sync``: ``torch.distributed`` synchronisation.
* ``_persist``: JSON save / load.
* ``_scalers``: the five scalers.
* ``_modules``: the ``nn.Module`` twins (imports torch; loaded on first use).
"""

from __future__ import annotations

from ._base import NotFittedError, OutOfRangeCounts, OutOfRangeWarning
from ._base import _BaseScaler as _BaseScaler  # the base class, for subclassing tests
from ._persist import load, load_set
from ._scalers import (
    SCALERS,
    ArctanScaler,
    Log10Scaler,
    MinMaxScaler,
    ReciprocalScaler,
    StandardScaler,
)

__all__ = [
    "MinMaxScaler",
    "StandardScaler",
    "ReciprocalScaler",
    "Log10Scaler",
    "ArctanScaler",
    "OutOfRangeWarning",
    "OutOfRangeCounts",
    "NotFittedError",
    "load",
    "load_set",
    "SCALERS",
    "MinMaxScale",
    "Standardize",
    "ReciprocalTransform",
    "Log10Transform",
    "ArctanTransform",
]

_MODULE_TWINS = (
    "MinMaxScale",
    "Standardize",
    "ReciprocalTransform",
    "Log10Transform",
    "ArctanTransform",
)


def __getattr__(name):
    # the nn.Module twins import torch: load them only when asked for (PEP 562)
    if name in _MODULE_TWINS:
        from . import _modules

        return getattr(_modules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_MODULE_TWINS))
