"""JSON persistence of fitted scalers: checksummed, no pickle, float64 bit-exact."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Dict, List, Optional

import numpy as np

_FORMAT = "normkit-scaler"
_FORMAT_VERSION = 1


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

def save(scaler, path, meta: Optional[Dict[str, Any]] = None) -> None:
    """Write ``scaler`` to ``path`` as checksummed JSON (the body of ``_BaseScaler.save``)."""
    scaler._check_fitted("save")
    state = scaler._get_state()
    body = {
        "format": _FORMAT,
        "version": _FORMAT_VERSION,
        "class": type(scaler).__name__,
        "params": scaler._json_params(),
        "n_features_in": int(scaler.n_features_in_),
        "state": {"n_rows": state["n_rows"],
                  **{k: _f64list(state[k]) for k in scaler._STATE_KEYS}},
        "meta": meta if meta is not None else {},
    }
    doc = dict(body, sha256=_digest(body))
    text = json.dumps(doc, indent=1, allow_nan=False)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


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
    from ._scalers import SCALERS

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

