"""Output buffers for the cpu kernels: recycled when large, else advised to huge pages.

glibc serves every allocation of 32 MiB or more with a fresh ``mmap`` whose 4 KB
pages are faulted in (and zeroed by the kernel) on first touch; for a memory-bound
kernel those faults cost as much as the kernel itself (DESIGN.md section 5: "reuse
buffers"). So large outputs come from a small cache of buffers that normkit keeps:
a buffer is handed out again only when nothing but the cache references its storage
(the caller dropped every tensor and view of it), checked under a lock. A fresh
large buffer is advised to use transparent huge pages (``madvise(MADV_HUGEPAGE)``
before anything touched it: 512x fewer faults). Smaller buffers are plain
``torch.empty`` (glibc recycles them from its heap, already mapped).

The cache holds at most ``NORMKIT_CPU_CACHE_MB`` MiB (default 256: room for the
2-4 outputs of a forward+backward at AlexNet-layer sizes; 0 disables it) of buffers;
:func:`clear_cache` releases them. It needs torch's storage use count, a private
function: a torch without it gets plain allocations (the cache is off).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from typing import Dict, List, Tuple

import torch

__all__ = ["empty_like", "empty", "clear_cache", "cached_bytes"]

_MADV_HUGEPAGE = 14
_HUGE = 2 * 1024 * 1024
# glibc's largest dynamic mmap threshold: from here on every allocation is a fresh mmap
_MIN_BYTES = 32 * 1024 * 1024
_PER_SIZE = 4  # buffers kept per byte size
ENV_CACHE = "NORMKIT_CPU_CACHE_MB"

_madvise = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _madvise = _libc.madvise
        _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        _madvise.restype = ctypes.c_int
    except (OSError, AttributeError):
        _madvise = None

_lock = threading.Lock()
# nbytes -> [(flat uint8 buffer, storage use count when only the cache holds it)]
_cache: Dict[int, List[Tuple[torch.Tensor, int]]] = {}


def _reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at fork time


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


# private torch API: without it we cannot tell whether a caller still holds a buffer
_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _uses(t: torch.Tensor) -> int:
    return _storage_use_count(t.untyped_storage()._cdata)


def _limit() -> int:
    if _storage_use_count is None:
        return 0
    env = os.environ.get(ENV_CACHE)
    if not env:
        return 256 * 2 ** 20
    try:
        return max(0, int(env)) * 2 ** 20
    except ValueError:
        raise ValueError(f"${ENV_CACHE} must be an integer number of MiB, got {env!r}; "
                         f"e.g. export {ENV_CACHE}=0 to disable the buffer cache") from None


def _advise(t: torch.Tensor) -> torch.Tensor:
    nbytes = t.numel() * t.element_size()
    if _madvise is None or nbytes < _MIN_BYTES:
        return t
    addr = t.data_ptr()
    start = (addr + _HUGE - 1) // _HUGE * _HUGE  # whole huge pages inside the buffer only
    stop = (addr + nbytes) // _HUGE * _HUGE
    if stop > start:
        _madvise(start, stop - start, _MADV_HUGEPAGE)  # advisory: failure changes nothing
    return t


def cached_bytes() -> int:
    """Bytes held by the buffer cache (in use by callers or free)."""
    with _lock:
        return sum(n * len(v) for n, v in _cache.items())


def clear_cache() -> None:
    """Drop the cache's references (buffers still used by callers stay alive with them)."""
    with _lock:
        _cache.clear()


def empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """A contiguous CPU tensor of ``shape``/``dtype`` with uninitialised values."""
    shape = tuple(shape)
    numel = 1
    for s in shape:
        numel *= s
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    if nbytes < _MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    limit = _limit()
    with _lock:
        entries = _cache.setdefault(nbytes, [])
        for buf, base in entries:
            if _uses(buf) <= base:  # nobody but the cache holds it
                return buf.view(dtype).view(shape)  # the view's reference marks it taken
        total = sum(n * len(v) for n, v in _cache.items())
        if len(entries) < _PER_SIZE and total + nbytes <= limit:
            buf = _advise(torch.empty(nbytes, dtype=torch.uint8))
            entries.append((buf, _uses(buf)))
            return buf.view(dtype).view(shape)
    return _advise(torch.empty(shape, dtype=dtype))


def empty_like(t: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(t)`` for a contiguous ``t`` (large ones recycled, see above)."""
    if not t.is_contiguous():
        return torch.empty_like(t)
    return empty(t.shape, t.dtype)
