"""The CPU backend's threading scheme: serial ``nogil`` numba kernels over chunks.

Why not numba's ``parallel=True`` (docs/design.md sections 3-4): on this class of machine
its default layer is GNU OpenMP, and once it has run any ``fork()`` (a
``DataLoader`` with ``num_workers > 0``) kills the child; the ``workqueue`` layer
aborts the process when two Python threads enter parallel kernels at once; TBB is
not loadable from pip. So every kernel here is a serial ``@njit(nogil=True)``
function over a range ``[start, stop)`` of independent work items (rows, planes,
channels), and this module runs the ranges on a few plain daemon threads:

* the calling thread always runs one chunk itself, so a pool that cannot help
  (busy with another caller's chunks) costs nothing but the wait;
* the pool is created lazily and thrown away in a forked child
  (``os.register_at_fork``): a child never waits on threads that did not survive
  the fork, and makes its own pool on first use;
* calls from several Python threads share the pool through a thread-safe queue;
  a chunk never submits chunks (no nested waits, no deadlock);
* the number of chunks follows ``torch.get_num_threads()`` (``NORMKIT_NUM_THREADS``
  overrides it), so a DataLoader worker (torch sets 1 thread there) runs serially.

Results never depend on the number of threads: kernels that reduce across work
items write per-item partials that one serial pass sums in a fixed order.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from typing import Callable, List, Sequence

import numpy as np
import torch

__all__ = ["num_threads", "parallel_for", "reset_after_fork"]

ENV_THREADS = "NORMKIT_NUM_THREADS"
_CHUNKS_PER_THREAD = 4


def num_threads() -> int:
    """Threads a kernel may use: $NORMKIT_NUM_THREADS, else torch's intra-op setting."""
    env = os.environ.get(ENV_THREADS)
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


def reset_after_fork() -> None:
    """Forget the parent's pool: its threads do not exist in a forked child."""
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()  # the parent may have held it at fork time


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


# Below this many elements in the largest array argument a call runs on the calling thread.
# Measured on the 2-core CI machine: waking a pool thread and waiting for it costs about
# 100-500 us per call (more on a busy machine), while a fused kernel streams 64 Ki float32
# elements (256 KiB) in well under that; tiny layers were 5-20x slower than torch because
# every call paid the hand-off (normkit bench --layers overhead).
SERIAL_BELOW = 1 << 16


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
