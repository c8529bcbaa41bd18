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
(device, dtype), else ``torch``. Below a measured size, ``auto`` on a float32 CPU tensor
runs torch's own layer/group/batch/RMS norm kernel on a shifted input instead (exact to
the same contract; see :mod:`normkit._native`); ``last_backend`` then says ``"native"``.
An explicitly requested backend that cannot run the call raises a ``ValueError`` naming
why and the fix: normkit never silently runs something other than what was asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch

from . import _env

__all__ = ["BACKENDS", "ENV_VAR", "register", "resolve", "resolve_all", "call", "last_backend"]
__all__ += ["table", "env_backend", "transforming"]

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

# Backends whose ``why_not`` depends only on the tensor's device type, dtype and layout
# (not on its size): their resolution is memoised per (op, request, device type, dtype,
# layout), so a layer call does not re-check the same conditions every time.
_STATIC = frozenset(("torch", "cpu"))
_memo: Dict[tuple, str] = {}
_memo_all: Dict[tuple, Dict[str, str]] = {}  # resolve_all's, for the same cases


def register(
    op: str, backend: str, fn: Callable, why_not: Callable[[torch.Tensor], Optional[str]] = _always
) -> None:
    """Register ``fn`` as ``backend``'s implementation of ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    table.setdefault(op, {})[backend] = Entry(fn, why_not)
    _memo.clear()
    _memo_all.clear()


env_backend = _env.reader(ENV_VAR)  # $NORMKIT_BACKEND, read on every call


def _requested(backend: str) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend == "auto":
        backend = env_backend() or "auto"
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(
            f"unknown backend {backend!r} (from argument or ${ENV_VAR}); "
            f"choose 'auto' or one of {BACKENDS}"
        )
    return backend


def resolve(op: str, x: torch.Tensor, backend: str = "auto") -> str:
    """Name of the backend that will run ``op`` on ``x``."""
    env = env_backend()
    if backend == "auto" and (not env or env == "auto") and type(x) is torch.Tensor:
        key = (op, x.device.type, x.dtype, x.layout)
        chosen = _memo.get(key)
        if chosen is None:
            chosen = _resolve(op, x, backend)
            # memoise only when every backend auto looked at is size-independent
            order = _PREFERENCE.get(x.device.type, ("torch",))
            looked = order[: order.index(chosen) + 1] if chosen in order else order
            if all(name in _STATIC for name in looked if name in table.get(op, {})):
                _memo[key] = chosen
        return chosen
    return _resolve(op, x, backend)


# torch.func's transforms (grad, vjp, jacrev, vmap, ...) have an interpreter on this stack
_interpreters = getattr(torch._C._functorch, "peek_interpreter_stack", lambda: None)


def transforming() -> bool:
    """A torch.func transform (grad, vjp, jacrev, jvp, vmap, ...) is active."""
    return _interpreters() is not None


def _no_transform(op: str) -> None:
    """Refuse, with the way out, a kernel call inside a torch.func transform (not while
    torch.compile traces: dynamo runs autograd.Functions under an interpreter of its own)."""
    if transforming() and not torch.compiler.is_compiling():
        raise RuntimeError(
            f"normkit: {op} cannot run inside a torch.func transform (grad, vjp, jacrev, "
            "vmap, ...): normkit's kernels run through autograd.Functions that do not "
            "implement functorch's setup_context/vmap rules. Inside a transform, normkit "
            "works where backend='auto' hands the call to torch's own kernel (float32 "
            "BatchNorm, LayerNorm, GroupNorm, InstanceNorm and RMSNorm below the sizes in "
            "normkit._native.THRESHOLDS / CUDA_THRESHOLDS); for this call use torch.nn's "
            "layer, or take the transform out (e.g. torch.autograd.grad instead of "
            "torch.func.grad)"
        )


def resolve_all(ops: tuple, x: torch.Tensor, backend: str = "auto") -> Dict[str, str]:
    """``{op: resolve(op, x, backend)}`` for the ops of one layer call, in one lookup when
    every choice is memoised (``auto``, no ``$NORMKIT_BACKEND``, size-independent backends).
    Raises inside a torch.func transform, which the ops' autograd.Functions cannot run in."""
    _no_transform(ops[0])
    if backend == "auto" and type(x) is torch.Tensor:
        env = env_backend()
        if not env or env == "auto":
            key = (ops, x.device.type, x.dtype, x.layout)
            hit = _memo_all.get(key)
            if hit is not None:
                return dict(hit)  # a copy: callers keep theirs on autograd's ctx
            chosen = {op: resolve(op, x, backend) for op in ops}
            if all((op,) + key[1:] in _memo for op in ops):
                _memo_all[key] = dict(chosen)
            return chosen
    return {op: resolve(op, x, backend) for op in ops}


def _resolve(op: str, x: torch.Tensor, backend: str) -> str:
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
        raise ValueError(
            f"backend {backend!r} has no implementation of {op!r} "
            f"(available: {sorted(impls)}); use backend='auto' or 'torch'"
        )
    reason = entry.why_not(x)
    if reason is not None:
        raise ValueError(
            f"backend {backend!r} cannot run {op!r} here: {reason}; use backend='auto' or 'torch'"
        )
    return backend


def call(op: str, backend: str, *args):
    """Run ``op`` with an already resolved ``backend`` and record the choice."""
    last_backend[op] = backend
    return table[op][backend].fn(*args)


def _register_builtin() -> None:
    """Register every backend's implementations, as declared in :mod:`normkit.ops.schema`.

    Kernel modules attach themselves to ops with ``@schema.implements(op, backend)``;
    importing a backend package imports its kernel modules. ``schema.check_backend``
    fails loudly when a backend implements an op the schema does not list for it, or
    misses one it does.
    """
    import importlib

    from .ops import schema, torch_frn, torch_fused, torch_ops  # noqa: F401  (imports register)

    for op, fn in schema.check_backend("torch").items():
        register(op, "torch", fn)
    # optional fast backends: registered when their compiler (numba / triton) imports
    for package in ("cpu", "triton"):
        try:
            backend = importlib.import_module(f".ops.{package}", __package__)
        except ImportError:  # numba / triton not installed: torch fallback only
            continue
        for op, fn in schema.check_backend(package).items():
            register(op, package, fn, schema.gate(package, op) or backend.why_not)


_register_builtin()
