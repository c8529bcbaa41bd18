"""Output buffers for the cpu kernels: always fresh, large ones advised to huge pages.

glibc serves every allocation of 32 MiB or more with a fresh ``mmap`` whose 4 KB pages
are faulted in (and zeroed by the kernel) on first touch; for a memory-bound kernel
those faults cost a large share of the kernel time. A fresh large buffer is therefore
advised to use transparent huge pages (``madvise(MADV_HUGEPAGE)`` before anything
touched it: up to 512x fewer faults). Smaller buffers are plain ``torch.empty``.

Every call returns memory that nothing else references. An earlier version recycled
large buffers by polling the storage's reference count; that handed out memory still
in use (a storage moved to shared memory by a DataLoader worker or a
``torch.multiprocessing`` queue, or kept alive only through ``y.untyped_storage()``),
so it was removed: correctness first, see docs/design.md (performance model).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

__all__ = ["empty_like", "empty"]

_MADV_HUGEPAGE = 14
_HUGE = 2 * 1024 * 1024
# glibc's largest dynamic mmap threshold: from here on every allocation is a fresh mmap
_MIN_BYTES = 32 * 1024 * 1024

_madvise = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _madvise = _libc.madvise
        _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        _madvise.restype = ctypes.c_int
    except (OSError, AttributeError):
        _madvise = None


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


def empty(shape, dtype: torch.dtype) -> torch.Tensor:
    """A fresh contiguous CPU tensor of ``shape``/``dtype`` with uninitialised values."""
    return _advise(torch.empty(tuple(shape), dtype=dtype))


def empty_like(t: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(t)``: fresh memory, large contiguous buffers advised to huge pages."""
    if not t.is_contiguous():
        return torch.empty_like(t)
    return _advise(torch.empty(t.shape, dtype=t.dtype))
