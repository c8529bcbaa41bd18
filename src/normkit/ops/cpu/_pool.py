"""The CPU backend's threading scheme: serial ``nogil`` numba kernels over chunks.

Why not numba's ``parallel=True`` (docs/design.md sections 3-4): on this class of machine
its default layer is GNU OpenMP, and once it has run any ``fork()`` (a
``DataLoader`` with ``num_workers > 0``) kills the child; the ``workqueue`` layer
aborts the process when two Python threads enter parallel kernels at once; TBB is
not loadable from pip. So every kernel here is a serial ``@njit(nogil=True)``
function over a range ``[start, stop)`` of independent work items (rows, planes,
channels), and :func:`parallel_for` runs the ranges on one of two sets of threads:

* **torch's own OpenMP team** (the default on Linux where torch runs on an OpenMP runtime
  that exports ``GOMP_parallel``: the GNU libgomp of torch's wheels; LLVM's and Intel's
  runtimes export the same entry point, untested here). After each parallel op torch's
  OpenMP worker threads keep spinning for a while (libgomp's default wait policy); a
  thread of normkit's own started then has to share a core with that spinning thread, and
  on a 2-core machine a kernel that follows a torch op (every layer of a real model) ran
  close to single-threaded speed (right after a torch op, BatchNorm forward on
  (8, 64, 64, 64) took 5.4 ms versus 2.3 ms on the team; ``benchmarks/omp_vs_pool.py``).
  Running the chunks on torch's team reuses the threads that are already awake. The
  region is entered through the runtime's ``GOMP_parallel`` (ctypes releases the GIL);
  each team thread takes the GIL only to hand its next chunk to the numba kernel, which
  releases it again while it runs.
* **a few plain daemon threads of normkit's** (the fallback: another runtime, or
  ``NORMKIT_CPU_POOL=threads``, and always in a forked child: GNU OpenMP is not safe to
  use in a child whose parent used it, which is why numba's OpenMP layer aborts there):

  - the calling thread always runs one chunk itself, so a pool that cannot help
    (busy with another caller's chunks) costs nothing but the wait;
  - the pool is created lazily and thrown away in a forked child
    (``os.register_at_fork``): a child never waits on threads that did not survive
    the fork, and makes its own pool on first use;
  - calls from several Python threads share the pool through a thread-safe queue;
    a chunk never submits chunks (no nested waits, no deadlock).

Either way the number of chunks follows ``torch.get_num_threads()`` (``NORMKIT_NUM_THREADS``
overrides it), so a DataLoader worker (torch sets 1 thread there) runs serially; a call
from several Python threads at once gets one OpenMP team per calling thread, as torch's
own ops do.

Results never depend on the threads: kernels that reduce across work items write
per-item partials that one serial pass sums in a fixed order.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import queue
import re
import sys
import threading
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ... import _env

__all__ = ["num_threads", "parallel_for", "reset_after_fork", "runner"]

ENV_THREADS = "NORMKIT_NUM_THREADS"
ENV_POOL = "NORMKIT_CPU_POOL"  # "openmp" (default where available) or "threads"
_threads_env = _env.reader(ENV_THREADS)  # both read on every kernel call
_pool_env = _env.reader(ENV_POOL)
_CHUNKS_PER_THREAD = 4


def num_threads() -> int:
    """Threads a kernel may use: $NORMKIT_NUM_THREADS, else torch's intra-op setting."""
    env = _threads_env()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(
                f"${ENV_THREADS} must be a positive integer, got {env!r}; "
                f"unset it or e.g. export {ENV_THREADS}=2"
            ) from None
        if value < 1:
            raise ValueError(f"${ENV_THREADS} must be >= 1, got {value}")
        return value
    return max(1, torch.get_num_threads())


class _Pool:
    """A fixed set of daemon threads pulling ``(fn, args, done)`` tasks from one queue."""

    def __init__(self, size: int):
        self.size = size
        self.tasks: "queue.SimpleQueue" = queue.SimpleQueue()
        self.threads = [
            threading.Thread(target=self._work, name=f"normkit-cpu-{i}", daemon=True)
            for i in range(size)
        ]
        for t in self.threads:
            t.start()

    def _work(self) -> None:
        _local.in_worker = True
        while True:
            fn, args, done = self.tasks.get()
            try:
                fn(*args)
            except BaseException as exc:  # handed back to the caller, never lost
                done.error = exc
            finally:
                done.set()


class _Done(threading.Event):
    error = None


_local = threading.local()
_pool_lock = threading.Lock()
_pool: "_Pool | None" = None


_forked = False  # True in a forked child: never enter an OpenMP region there


def reset_after_fork() -> None:
    """Forget the parent's pool (its threads do not exist in a forked child) and stop
    using OpenMP in the child."""
    global _pool, _pool_lock, _forked
    _pool = None
    _pool_lock = threading.Lock()  # the parent may have held it at fork time
    _forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reset_after_fork)


def _get_pool(size: int) -> _Pool:
    global _pool
    with _pool_lock:
        if _pool is None or _pool.size < size:
            # a larger request replaces the pool; old threads idle forever as daemons (rare)
            _pool = _Pool(size)
        return _pool


def split(total: int, parts: int) -> List[tuple]:
    """``parts`` contiguous, nearly equal ranges covering ``range(total)``."""
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    ranges, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        ranges.append((start, stop))
        start = stop
    return ranges


# --- torch's OpenMP team ------------------------------------------------------------------


class _OpenMP:
    """``GOMP_parallel`` of the OpenMP runtime torch itself is running on."""

    _CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)

    def __init__(self, lib: ctypes.CDLL):
        self._parallel = lib.GOMP_parallel
        self._parallel.argtypes = (self._CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint)
        self._parallel.restype = None
        self._tasks: Dict[int, tuple] = {}  # key -> (drain, errors), one per region
        self._keys = itertools.count(1)
        self._callback = self._CALLBACK(self._enter)  # kept alive with the runtime

    def _enter(self, key) -> None:
        # runs on every thread of the team (the caller is thread 0), GIL taken by ctypes
        drain, errors = self._tasks[key]
        try:
            drain()
        except BaseException as exc:  # handed back to the caller, never lost
            errors.append(exc)

    def run(self, drain: Callable[[], None], threads: int) -> None:
        key = next(self._keys)
        errors: List[BaseException] = []
        self._tasks[key] = (drain, errors)
        try:
            self._parallel(self._callback, key, threads, 0)  # ctypes releases the GIL
        finally:
            del self._tasks[key]
        if errors:
            raise errors[0]


def _torch_openmp_library() -> Optional[str]:
    """Path of the OpenMP runtime torch's ops run on in this process, or None.

    torch's wheels bring their own (``torch/lib/libgomp.so.1`` on Linux); otherwise the one
    OpenMP runtime loaded is taken to be torch's. Several and none of them torch's: None
    (normkit's own threads are used).
    """
    if not sys.platform.startswith("linux") or not torch.backends.openmp.is_available():
        return None
    try:
        with open("/proc/self/maps") as maps:
            text = maps.read()
    except OSError:
        return None
    found = sorted(set(re.findall(r"(/\S*/lib(?:gomp|iomp5|omp)\b[^/\s]*\.so[^/\s]*)", text)))
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
    own = [path for path in found if path.startswith(torch_dir)]
    if own:
        return own[0]
    return found[0] if len(found) == 1 else None


_openmp: "_OpenMP | None" = None
_openmp_checked = False


def _get_openmp() -> "_OpenMP | None":
    global _openmp, _openmp_checked
    if not _openmp_checked:
        with _pool_lock:
            if not _openmp_checked:
                path = _torch_openmp_library()
                try:
                    _openmp = _OpenMP(ctypes.CDLL(path)) if path else None
                except (OSError, AttributeError):  # not loadable, or no GOMP_parallel
                    _openmp = None
                _openmp_checked = True
    return _openmp


def runner() -> str:
    """Which threads :func:`parallel_for` uses now: ``"openmp"`` (torch's OpenMP team) or
    ``"threads"`` (normkit's pool); ``$NORMKIT_CPU_POOL`` picks, default ``openmp`` where
    torch's runtime allows it (never in a forked child)."""
    choice = _pool_env() or "openmp"
    if choice not in ("openmp", "threads"):
        raise ValueError(
            f"${ENV_POOL} must be 'openmp' or 'threads', got {choice!r}; unset it for the "
            "default (openmp where available)"
        )
    if choice == "openmp" and not _forked and _get_openmp() is not None:
        return "openmp"
    return "threads"


# Below this many elements in the largest array argument a call runs on the calling thread.
# Entering a parallel region costs a fixed few hundred microseconds on the 2-core CI machine
# (waking a thread, handing it the GIL for each chunk's dispatch), more than a kernel
# streaming a few hundred KiB takes. benchmarks/serial_below.py (whole layer calls, serial
# versus split, benchmarks/results/serial-below-20261127T231640Z.csv): splitting LRN pays from
# 128-256 Ki elements on, LayerNorm and BatchNorm from 512 Ki-1 Mi; below 128 Ki every case
# was 1.4-2.2x faster serial. (The earlier 64 Ki came from normkit's own pool, whose hand-off
# was measured alone, not inside a layer call.)
SERIAL_BELOW = 1 << 17


def _elements(args: Sequence) -> int:
    return max((a.size for a in args if isinstance(a, np.ndarray)), default=SERIAL_BELOW)


def parallel_for(kernel: Callable, total: int, args: Sequence, min_items: int = 1) -> None:
    """Run ``kernel(*args, start, stop)`` over ``range(total)`` in chunks.

    ``kernel`` must be a ``nogil`` numba function whose chunks are independent.
    ``min_items``: fewest work items worth a thread (small calls stay serial).
    The range is cut into a few chunks per thread that the threads pull from a
    shared counter, so a thread the OS descheduled (a busy, shared machine) holds
    up one small chunk, not half of the work.
    """
    if total <= 0:
        return
    threads = num_threads()  # validates $NORMKIT_NUM_THREADS on every call
    team = runner()  # and $NORMKIT_CPU_POOL
    # small calls (the hand-off to the pool costs more than the whole kernel) and calls
    # from inside the pool (never wait on the pool there) run here
    if threads == 1 or _elements(args) < SERIAL_BELOW or getattr(_local, "in_worker", False):
        kernel(*args, 0, total)
        return
    threads = min(threads, max(1, total // max(1, min_items)))
    if threads <= 1:
        kernel(*args, 0, total)
        return
    ranges = split(total, threads * _CHUNKS_PER_THREAD)
    counter = itertools.count()  # next() is atomic under the GIL

    def drain() -> None:
        while True:
            i = next(counter)
            if i >= len(ranges):
                return
            kernel(*args, *ranges[i])

    if team == "openmp":
        _openmp.run(drain, threads)
        return
    pool = _get_pool(threads - 1)
    pending = []
    for _ in range(threads - 1):
        done = _Done()
        pool.tasks.put((drain, (), done))
        pending.append(done)
    try:
        drain()
    finally:
        for done in pending:
            done.wait()
    for done in pending:
        if done.error is not None:
            raise done.error
