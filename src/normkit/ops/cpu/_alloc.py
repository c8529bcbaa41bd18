"""Output buffers that fault in as 2 MB pages.

glibc serves every tensor over 32 MB with a fresh ``mmap`` whose 4 KB pages are
faulted in on first touch; on a VM each fault costs microseconds, and for a
memory-bound kernel the faults of its output can cost as much as the kernel
itself (DESIGN.md section 5). Asking the kernel for transparent huge pages on a
fresh buffer (``madvise(MADV_HUGEPAGE)``, before anything touched it) cuts the
fault count 512x. Only buffers of 32 MiB or more are advised: smaller ones are
usually recycled from glibc's heap, already mapped, where advice buys nothing.
Purely advisory: where THP is off, the platform is not Linux or the call fails, the
buffer is an ordinary one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

__all__ = ["empty_like", "empty"]

_MADV_HUGEPAGE = 14
_HUGE = 2 * 1024 * 1024
# glibc serves allocations of 32 MiB and more (its largest dynamic mmap threshold) with a
# fresh mmap every time; smaller ones are usually recycled from the heap, already mapped
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


def empty_like(t: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(t)`` (same strides), advised to use huge pages."""
    return _advise(torch.empty_like(t))


def empty(*shape, dtype) -> torch.Tensor:
    """``torch.empty(shape, dtype=dtype)`` on the CPU, advised to use huge pages."""
    return _advise(torch.empty(*shape, dtype=dtype))
