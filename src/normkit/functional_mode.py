"""``normkit.functional_mode``: serve ``torch.nn.functional`` norm calls with normkit's ops.

Third-party code often calls ``F.layer_norm`` & co. directly instead of using a module
that :func:`normkit.convert` could replace. Inside ``with normkit.functional_mode():``
a :class:`torch.overrides.TorchFunctionMode` intercepts

* ``F.layer_norm``, ``F.group_norm``, ``F.rms_norm``,
* ``F.batch_norm``, ``F.instance_norm`` (running-stat updates with ``momentum``,
  ``training`` / ``use_input_stats``, ``weight``/``bias`` None, as torch),
* ``F.local_response_norm`` (torch's convention),

wherever they are called from (``torch.nn`` modules included), and runs the matching
:mod:`normkit.functional` op, which computes torch's function. A call normkit cannot
serve exactly is passed to torch unchanged: mixed dtypes or devices among the tensors,
integer or non-tensor inputs, ``momentum=None``, autocast enabled, tracing by
``torch.compile``, or any argument normkit rejects (torch then raises its own error or
computes its own result). :data:`normkit.dispatch.last_backend` records, under
``"F.<name>"``, which ran: normkit's backend name (``"torch"``, ``"cpu"``, ``"triton"``,
or ``"native"`` where the size-aware ``auto`` ran torch's kernel on a shifted input, see
:mod:`normkit._native`) or ``"aten"`` for a call passed to torch unchanged.
"""

from __future__ import annotations

import inspect
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as TF
from torch.overrides import TorchFunctionMode

from . import dispatch
from . import functional as NF
from .ops import schema

__all__ = ["functional_mode", "NormkitFunctionMode", "SERVED"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _first(family: str) -> str:
    """The op whose backend choice stands for the family's (its forward op)."""
    return schema.ops_of(family)[0]


# BatchNorm's forward op that every mode runs (the stats op is skipped in eval)
_APPLY_BN = next(op for op in schema.ops_of("batch_norm") if op.endswith("_apply"))


def _layer_norm(a, backend):
    return NF.layer_norm(
        a["input"], a["normalized_shape"], a["weight"], a["bias"], a["eps"], backend=backend
    ), _first("layer_norm")


def _rms_norm(a, backend):
    return NF.rms_norm(
        a["input"], a["normalized_shape"], a["weight"], a["eps"], backend=backend
    ), _first("rms_norm")


def _group_norm(a, backend):
    return NF.group_norm(
        a["input"], a["num_groups"], a["weight"], a["bias"], a["eps"], backend=backend
    ), _first("group_norm")


def _batch_norm(a, backend):
    if a["momentum"] is None or (a["running_mean"] is None) != (a["running_var"] is None):
        return None, None  # torch decides what these mean
    return NF.batch_norm(
        a["input"],
        a["running_mean"],
        a["running_var"],
        a["weight"],
        a["bias"],
        bool(a["training"]),
        a["momentum"],
        a["eps"],
        backend=backend,
    ), _APPLY_BN


def _instance_norm(a, backend):
    if a["momentum"] is None:
        return None, None
    if (a["running_mean"] is None) != (a["running_var"] is None):
        return None, None  # torch decides what one buffer alone means
    op = _first("group_norm") if a["use_input_stats"] else _APPLY_BN
    return NF.instance_norm(
        a["input"],
        a["running_mean"],
        a["running_var"],
        a["weight"],
        a["bias"],
        bool(a["use_input_stats"]),
        a["momentum"],
        a["eps"],
        backend=backend,
    ), op


def _local_response_norm(a, backend):
    return NF.local_response_norm(
        a["input"], a["size"], a["alpha"], a["beta"], a["k"], convention="torch", backend=backend
    ), _first("lrn")


# torch.nn.functional function -> (name, server returning (output, op name) or (None, None))
SERVED: Dict[Callable, tuple] = {
    TF.layer_norm: ("layer_norm", _layer_norm),
    TF.rms_norm: ("rms_norm", _rms_norm),
    TF.group_norm: ("group_norm", _group_norm),
    TF.batch_norm: ("batch_norm", _batch_norm),
    TF.instance_norm: ("instance_norm", _instance_norm),
    TF.local_response_norm: ("local_response_norm", _local_response_norm),
}
_SIGNATURES = {f: inspect.signature(f) for f in SERVED}


def _servable(bound: dict) -> bool:
    x = bound.get("input")
    if not isinstance(x, torch.Tensor) or x.dtype not in _FLOATS:
        return False
    if type(x) is not torch.Tensor and not isinstance(x, torch.nn.Parameter):
        return False  # tensor subclasses have their own semantics
    for key, value in bound.items():
        if key == "input" or value is None:
            continue
        if isinstance(value, torch.Tensor):
            if value.dtype != x.dtype or value.device != x.device:
                return False  # torch's mixed-precision rules apply
    if torch.is_autocast_enabled(x.device.type):
        return False
    return not torch.compiler.is_compiling()


class NormkitFunctionMode(TorchFunctionMode):
    """The mode behind :func:`functional_mode`; ``backend`` as in normkit.functional."""

    def __init__(self, backend: str = "auto") -> None:
        super().__init__()
        dispatch.resolve(_first("layer_norm"), torch.empty(0), backend)  # validate the name early
        self.backend = backend

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        entry = SERVED.get(func)
        if entry is not None:
            name, serve = entry
            out = self._serve(func, name, serve, args, kwargs)
            if out is not None:
                return out
            dispatch.last_backend["F." + name] = "aten"
        return func(*args, **kwargs)

    def _serve(self, func, name, serve, args, kwargs) -> Optional[torch.Tensor]:
        try:
            bound = _SIGNATURES[func].bind(*args, **kwargs)
        except TypeError:
            return None  # torch reports its own signature error
        bound.apply_defaults()
        a = dict(bound.arguments)
        if not _servable(a):
            return None
        try:
            y, op = serve(a, self.backend)
        except (ValueError, TypeError):
            # normkit's validation runs before any state changes: torch raises or computes
            return None
        if y is None:
            return None
        dispatch.last_backend["F." + name] = dispatch.last_backend.get(op, "torch")
        return y


def functional_mode(backend: str = "auto") -> NormkitFunctionMode:
    """Context manager: ``torch.nn.functional`` norm calls inside run normkit's ops.

    Every ``F.layer_norm``, ``F.group_norm``, ``F.rms_norm``, ``F.batch_norm``,
    ``F.instance_norm`` and ``F.local_response_norm`` call made while the mode is
    active, from any code, computes torch's function with normkit's kernels; a call
    normkit cannot serve exactly runs torch's own (see :mod:`normkit.functional_mode`).

    Args:
        backend: ``"auto"`` (default), ``"torch"``, ``"cpu"`` or ``"triton"``.

    Returns:
        the mode, to use in a ``with`` statement.

    Example::

        >>> with normkit.functional_mode():
        ...     y = torch.nn.functional.layer_norm(torch.randn(2, 8), [8])
        >>> normkit.dispatch.last_backend["F.layer_norm"] in ("torch", "cpu", "native")
        True
    """
    return NormkitFunctionMode(backend)
