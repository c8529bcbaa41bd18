"""JSON persistence of fitted scalers: checksummed, no pickle, float64 bit-exact."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from typing import Any, Dict, List, Optional

import numpy as np

# class name -> scaler class; filled by _scalers when it defines them (load builds from
# it; importing _scalers here would make persistence and the scalers import each other)
SCALERS: dict = {}

_FORMAT = "normkit-scaler"
_FORMAT_VERSION = 1
#: a file of several scalers (``normkit scale fit`` with a method per column)
_SET_FORMAT = "normkit-scaler-set"


#: the most nesting a file written by ``save`` can have (meta included); checked
#: before ``json.loads``, whose recursion a nesting bomb would exhaust
MAX_DEPTH = 32
#: files larger than this are refused before reading (a stats file is ~25 bytes per value)
MAX_BYTES = 1 << 30
#: 2**53: above it float64 counts lose integers; n_rows / n_features beyond are forged
_MAX_INT = 1 << 53

#: how ``save`` spells the non-finite float64 values JSON has no number for
_NONFINITE = {"inf": math.inf, "-inf": -math.inf}


def _f64list(a: np.ndarray) -> List[Any]:
    """float64 values as JSON: shortest repr (bit-exact), NaN as null, +-inf as "inf"/"-inf"."""
    out: List[Any] = []
    for v in np.asarray(a, dtype=np.float64).tolist():
        if math.isnan(v):
            out.append(None)
        elif math.isinf(v):
            out.append("inf" if v > 0 else "-inf")
        else:
            out.append(v)
    return out


def _show(v) -> str:
    """A short repr of a (possibly huge, possibly hostile) value for an error message."""
    if isinstance(v, _Unreadable):
        return repr(v)
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(path, field: str, problem: str) -> ValueError:
    return ValueError(
        f"scaler file {path}: field {field!r} {problem}; the file was edited or "
        "corrupted: refit and save it again"
    )


def _from_f64list(values, n: int, key: str, path) -> np.ndarray:
    field = f"state.{key}"
    if not isinstance(values, list) or len(values) != n:
        got = (
            f"a list of length {len(values)}" if isinstance(values, list) else type(values).__name__
        )
        raise _bad(path, field, f"must be a list of n_features_in = {n} numbers, got {got}")
    out = np.empty(n, dtype=np.float64)
    for i, v in enumerate(values):
        if v is None:
            out[i] = np.nan
        elif isinstance(v, str) and v in _NONFINITE:
            out[i] = _NONFINITE[v]
        elif isinstance(v, float) and math.isfinite(v):
            out[i] = v
        elif isinstance(v, int) and not isinstance(v, bool) and abs(v) <= _MAX_INT:
            out[i] = v
        else:
            raise _bad(
                path,
                f"{field}[{i}]",
                f'is {_show(v)}: expected a finite number, null (NaN), "inf" or "-inf"',
            )
    return out


def _digest(body: Dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def _nesting_depth(text: str) -> int:
    """Deepest [ / { nesting of a JSON text (strings skipped), without recursion."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub("", text)):
        if m.group() in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    break
        else:
            depth -= 1
    return deepest


def _reject_constant(name: str):
    raise ValueError(
        f'the JSON constant {name} (save writes NaN as null and +-inf as "inf"/"-inf")'
    )


class _Unreadable:
    """A JSON number float64 cannot hold; the field check reports it with its field name."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        text = self.text
        short = text if len(text) <= 24 else f"{text[:20]}... ({len(text)} chars)"
        return f"{short} (out of float64 range)"

    __str__ = __repr__


def _parse_float(text: str):
    v = float(text)
    return v if math.isfinite(v) else _Unreadable(text)


def _parse_int(text: str):
    # far beyond any count or float64; never hand a 10**400 to int() and float()
    return _Unreadable(text) if len(text.lstrip("-")) > 20 else int(text)


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and ``os.replace``.

    An error (or a signal that raises, see ``normkit scale``) leaves any older
    file at ``path`` untouched and removes the temporary file; a SIGKILL can
    leave only a ``.<name>.*.tmp`` file behind, never a partial ``path``.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _body(scaler, meta: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The JSON document of one fitted scaler, without its checksum."""
    scaler._check_fitted("save")
    state = scaler._get_state()
    return {
        "format": _FORMAT,
        "version": _FORMAT_VERSION,
        "class": type(scaler).__name__,
        "params": scaler._json_params(),
        "n_features_in": int(scaler.n_features_in_),
        "state": {"n_rows": state["n_rows"], **{k: _f64list(state[k]) for k in scaler._STATE_KEYS}},
        "meta": meta if meta is not None else {},
    }


def _write_doc(body: Dict[str, Any], path, who: str) -> None:
    try:
        doc = dict(body, sha256=_digest(body))
        text = json.dumps(doc, indent=1, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{who}.save: meta must be JSON data (dicts, lists, "
            f"strings, finite numbers), got an error: {exc}"
        ) from None
    if _nesting_depth(text) > MAX_DEPTH:
        raise ValueError(
            f"{who}.save: meta is nested deeper than load "
            f"accepts ({MAX_DEPTH} levels in all); flatten it"
        )
    write_text_atomic(path, text + "\n")


def save(scaler, path, meta: Optional[Dict[str, Any]] = None) -> None:
    """Write ``scaler`` to ``path`` as checksummed JSON (the body of ``_BaseScaler.save``).

    Statistics that are NaN are written as ``null`` and +-inf (e.g. a variance
    that overflowed on finite data near 1e308, as scikit-learn allows) as the
    strings ``"inf"`` / ``"-inf"``, so the file stays strict JSON and
    :func:`load` reads every value back bit-identical. The write is atomic.
    """
    _write_doc(_body(scaler, meta), path, type(scaler).__name__)


def save_set(scalers, path, meta: Optional[Dict[str, Any]] = None) -> None:
    """Write several fitted scalers to one checksummed JSON file; see :func:`load_set`.

    ``normkit scale fit`` uses it when columns get different methods: one
    scaler per method, each with its column names in its own ``meta``.

    Args:
        scalers: ``(scaler, meta)`` pairs, at least one.
        path: the file (written atomically).
        meta: JSON data about the whole set. Default ``{}``.
    """
    scalers = list(scalers)
    if not scalers:
        raise ValueError("save_set: no scaler to save; pass (scaler, meta) pairs")
    body = {
        "format": _SET_FORMAT,
        "version": _FORMAT_VERSION,
        "scalers": [_body(s, m) for s, m in scalers],
        "meta": meta if meta is not None else {},
    }
    _write_doc(body, path, "save_set")


def _read(path, formats) -> Dict[str, Any]:
    """The parsed, checksum-verified document of ``path`` whose "format" is in ``formats``."""
    try:
        size = os.path.getsize(path)
        if size > MAX_BYTES:
            raise ValueError(
                f"scaler file {path} is {size} bytes, more than the {MAX_BYTES} "
                "a saved scaler can need; it is not a file written by save()"
            )
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"scaler file {path} is not UTF-8 text ({exc}); it is not a file written by save()"
        ) from None
    depth = _nesting_depth(text)
    if depth > MAX_DEPTH:
        raise ValueError(
            f"scaler file {path}: JSON nested more than {MAX_DEPTH} levels deep; "
            "it is not a file written by save()"
        )
    try:
        doc = json.loads(
            text, parse_constant=_reject_constant, parse_float=_parse_float, parse_int=_parse_int
        )
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"scaler file {path} is not valid JSON ({exc}); it is truncated or "
            "corrupted: write it again with save()"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise ValueError(
            f"scaler file {path}: unreadable value: {exc}; the file was edited or corrupted"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") not in formats:
        if isinstance(doc, dict) and doc.get("format") == _SET_FORMAT:
            raise ValueError(
                f"scaler file {path} holds several scalers (one per method, written by "
                "`normkit scale fit --column-method`); read it with "
                "normkit.preprocessing.load_set"
            )
        raise ValueError(
            f'scaler file {path}: not a normkit scaler file (missing "format": "{_FORMAT}")'
        )
    if doc.get("version") != _FORMAT_VERSION:
        raise ValueError(
            f"scaler file {path}: format version {str(doc.get('version'))[:20]!r} "
            f"is not supported (this normkit reads version {_FORMAT_VERSION})"
        )
    expected = doc.pop("sha256", None)
    if not isinstance(expected, str):
        raise ValueError(
            f'scaler file {path}: no "sha256" checksum; the file is truncated '
            "or was not written by save()"
        )
    try:
        actual = _digest(doc)
    except (ValueError, TypeError, RecursionError):
        actual = None
    if actual is None:
        # a value JSON-with-float64 cannot represent: the field checks name it
        _validate_any(doc, path)
    if actual != expected:
        raise ValueError(
            f"scaler file {path}: checksum mismatch (stored {expected[:12]}..., "
            f"content hashes to {str(actual)[:12]}...); the file was modified or "
            "corrupted after save(); refit and save again"
        )
    return doc


def load(path):
    """Read any scaler written by ``save``; raises ``ValueError`` on a damaged file.

    Every malformed or forged file (truncated, edited, a nesting bomb, wrong
    types, numbers out of range) gives a one-line ``ValueError`` naming the
    file and the field.

    Example::

        >>> scaler.save("stats.json"); same = normkit.preprocessing.load("stats.json")
    """
    return _validate(_read(path, (_FORMAT,)), path)


def load_set(path) -> list:
    """Read a file of :func:`save_set` (or of ``save``: a list of one) as a list of scalers.

    Each scaler carries its ``meta_``; the file is checked as :func:`load` checks one.

    Example::

        >>> scalers = normkit.preprocessing.load_set("stats.json")  # [StandardScaler(), ...]
    """
    return _validate_any(_read(path, (_FORMAT, _SET_FORMAT)), path)


def _validate_any(doc: Dict[str, Any], path) -> list:
    if doc.get("format") == _FORMAT:
        return [_validate(doc, path)]
    items = doc.get("scalers")
    if not isinstance(items, list) or not items:
        raise _bad(path, "scalers", "must be a non-empty list of scaler documents")
    if not isinstance(doc.get("meta", {}), dict):
        raise _bad(path, "meta", f"must be an object, got {type(doc.get('meta')).__name__}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or item.get("format") != _FORMAT:
            raise _bad(path, f"scalers[{i}]", f'must be an object with "format": "{_FORMAT}"')
        out.append(_validate(item, f"{path} (scalers[{i}])"))
    return out


def _validate(doc: Dict[str, Any], path):
    """Build the scaler from a parsed file, checking every field as if the file were hostile.

    A matching checksum proves nothing about intent: anyone can re-sign a file.
    """
    name = doc.get("class")
    if not isinstance(name, str) or name not in SCALERS:
        raise _bad(path, "class", f"is {_show(name)}, not one of {sorted(SCALERS)}")
    cls = SCALERS[name]
    params = doc.get("params", {})
    if not isinstance(params, dict):
        raise _bad(path, "params", f"must be an object, got {type(params).__name__}")
    valid = cls._param_names()
    for key in params:
        if key not in valid:
            raise _bad(path, f"params.{key[:40]}", f"is not a parameter of {name} (valid: {valid})")
    params = dict(params)
    if isinstance(params.get("feature_range"), list):
        params["feature_range"] = tuple(params["feature_range"])
    scaler = cls(**params)
    try:
        scaler._check_params()
    except (TypeError, ValueError) as exc:
        raise _bad(path, "params", f"is invalid: {exc}") from None
    n = doc.get("n_features_in")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= _MAX_INT:
        raise _bad(path, "n_features_in", f"must be an integer in 1..2**53, got {_show(n)}")
    raw = doc.get("state")
    if not isinstance(raw, dict):
        raise _bad(path, "state", f"must be an object, got {type(raw).__name__}")
    rows = raw.get("n_rows")
    if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= _MAX_INT:
        raise _bad(path, "state.n_rows", f"must be an integer in 1..2**53, got {_show(rows)}")
    state = {"n_rows": rows}
    for key in cls._STATE_KEYS:
        state[key] = _from_f64list(raw.get(key), n, key, path)
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise _bad(path, "meta", f"must be an object, got {type(meta).__name__}")
    _check_state_consistent(state, path)
    scaler._set_state(n, state)
    scaler.meta_ = meta
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
        # +inf (overflow on finite data near 1e308) and NaN are what fit produces there
        if np.any(var < 0):
            problems.append("negative var")
    if problems:
        raise ValueError(
            f"scaler file {path}: inconsistent statistics: {'; '.join(problems)}; "
            "the file was edited or corrupted: refit and save again"
        )
