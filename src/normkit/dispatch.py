"""One table ``{op: {backend: implementation}}`` and the rule that picks a backend.

Backends:

* ``torch``  -- portable fallback written with torch ops (always available);
* ``cpu``    -- fused numba kernels (CPU tensors);
* ``triton`` -- fused Triton kernels (CUDA tensors).

A call passes ``backend="auto"`` (the default) or a backend name. The
environment variable ``NORMKIT_BACKEND`` overrides ``"auto"`` for every call.
The backend actually used is recorded in :data:`last_backend` so that tests,
benchmarks and users can observe it.

Rules: ``auto`` takes the fastest registered backend that supports the tensor
(device, dtype), else ``torch``. An explicitly requested backend that cannot
run the call raises a ``ValueError`` naming why and the fix: normkit never
silently runs something other than what was asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch

__all__ = ["BACKENDS", "ENV_VAR", "register", "resolve", "call", "last_backend", "table"]

BACKENDS = ("torch", "cpu", "triton")
ENV_VAR = "NORMKIT_BACKEND"
# auto's preference order per device type
_PREFERENCE = {"cpu": ("cpu", "torch"), "cuda": ("triton", "torch")}


@dataclass(frozen=True)
class Entry:
    fn: Callable
    # returns None if the backend can run a call on this tensor, else the reason it cannot
    why_not: Callable[[torch.Tensor], Optional[str]]


def _always(_x: torch.Tensor) -> Optional[str]:
    return None


table: Dict[str, Dict[str, Entry]] = {}
last_backend: Dict[str, str] = {}


def register(op: str, backend: str, fn: Callable,
             why_not: Callable[[torch.Tensor], Optional[str]] = _always) -> None:
    """Register ``fn`` as ``backend``'s implementation of ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    table.setdefault(op, {})[backend] = Entry(fn, why_not)


def _requested(backend: str) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "auto") or "auto"
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (from argument or ${ENV_VAR}); "
                         f"choose 'auto' or one of {BACKENDS}")
    return backend


def resolve(op: str, x: torch.Tensor, backend: str = "auto") -> str:
    """Name of the backend that will run ``op`` on ``x``."""
    if op not in table:
        raise KeyError(f"normkit has no op {op!r}; known: {sorted(table)}")
    impls = table[op]
    backend = _requested(backend)
    if backend == "auto":
        for name in _PREFERENCE.get(x.device.type, ("torch",)):
            entry = impls.get(name)
            if entry is not None and entry.why_not(x) is None:
                return name
        return "torch"
    entry = impls.get(backend)
    if entry is None:
        raise ValueError(f"backend {backend!r} has no implementation of {op!r} "
                         f"(available: {sorted(impls)}); use backend='auto' or 'torch'")
    reason = entry.why_not(x)
    if reason is not None:
        raise ValueError(f"backend {backend!r} cannot run {op!r} here: {reason}; "
                         "use backend='auto' or 'torch'")
    return backend


def call(op: str, backend: str, *args):
    """Run ``op`` with an already resolved ``backend`` and record the choice."""
    last_backend[op] = backend
    return table[op][backend].fn(*args)


def _register_builtin() -> None:
    from .ops import torch_ops

    register("lrn_fwd", "torch", torch_ops.lrn_fwd)
    register("lrn_bwd", "torch", torch_ops.lrn_bwd)
    for op in ("layer_norm_fwd", "layer_norm_bwd", "rms_norm_fwd", "rms_norm_bwd",
               "group_norm_fwd", "group_norm_bwd", "batch_norm_stats", "batch_norm_apply",
               "batch_norm_bwd_reduce", "batch_norm_bwd_apply"):
        register(op, "torch", getattr(torch_ops, op))
    # optional fast backends: each package registers its ops if its compiler imports
    import importlib

    for package in ("cpu", "triton"):
        try:
            backend = importlib.import_module(f".ops.{package}", __package__)
        except ImportError:  # numba / triton not installed: torch fallback only
            continue
        backend.register(register)


_register_builtin()


# --- fused residual-add norms and modulated LayerNorm (issue 13) ---------------------------
FUSED_OPS = ("add_rms_norm_fwd", "add_rms_norm_bwd", "add_layer_norm_fwd", "add_layer_norm_bwd",
             "modulated_layer_norm_fwd", "modulated_layer_norm_bwd")


def _register_fused() -> None:
    import importlib

    from .ops import torch_fused

    for op in FUSED_OPS:
        register(op, "torch", getattr(torch_fused, op))
    for package in ("cpu", "triton"):
        try:
            backend = importlib.import_module(f".ops.{package}", __package__)
            kernels = importlib.import_module(f".ops.{package}.fused", __package__)
        except ImportError:  # compiler missing, or no fused kernels for this backend yet
            continue
        # the kernels' own gate first (e.g. a row-size limit), else the backend's
        why_not = (getattr(kernels, "why_not", None) or getattr(backend, "why_not", None)
                   or backend.why_not_tensor)
        for op in FUSED_OPS:
            if hasattr(kernels, op):
                register(op, package, getattr(kernels, op), why_not)


_register_fused()
