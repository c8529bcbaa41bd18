"""Where splitting a CPU kernel call over threads starts to pay (``_pool.SERIAL_BELOW``).

``parallel_for`` runs a call on the calling thread alone when its largest array has fewer
than ``SERIAL_BELOW`` elements: entering a parallel region (waking a thread, handing it
the GIL for each chunk's dispatch) has a fixed cost. This script times whole layer calls
through ``normkit.functional`` with ``backend="cpu"`` at sizes 2**15 to 2**21 elements,
once with every call serial and once with every call split (``SERIAL_BELOW`` forced to
``2**40`` and to 1), interleaved per size, medians in microseconds. glibc keeps freed
memory (``normkit.bench.keep_freed_memory``) so page faults do not blur the comparison.
Writes ``benchmarks/results/serial-below-<timestamp>.csv`` with the load average.

    PYTHONPATH=src python benchmarks/serial_below.py [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import _results  # benchmarks/_results.py: timestamp, load average, CSV
import normkit.functional as NF
from normkit.bench import keep_freed_memory
from normkit.ops.cpu import _pool


def _cases(n: int) -> dict:
    x = torch.randn(n // (16 * 64), 16, 8, 8, requires_grad=True)
    rows = torch.randn(n // 256, 256, requires_grad=True)
    w = torch.randn(256)

    def lrn(v):
        return NF.local_response_norm(v, 5, 1e-4, 0.75, 1.0, backend="cpu")

    return {
        "lrn fwd": lambda: lrn(x.detach()),
        "lrn fwd+bwd": lambda: lrn(x).sum().backward(),
        "layer_norm fwd+bwd": lambda: (
            NF.layer_norm(rows, (256,), w, backend="cpu").sum().backward()
        ),
        "batch_norm fwd+bwd": lambda: (
            NF.batch_norm(x, None, None, training=True, backend="cpu").sum().backward()
        ),
    }


def _median_us(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", default="benchmarks/results", help="CSV folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    adopted, rows = _pool.SERIAL_BELOW, []
    try:
        for log2 in range(15, 22):
            n = 1 << log2
            repeats = max(10, 400 >> max(0, log2 - 15))
            for name, fn in _cases(n).items():
                got = {}
                for mode, below in (("serial", 1 << 40), ("split", 1)):
                    _pool.SERIAL_BELOW = below
                    got[mode] = _median_us(fn, repeats)
                rows.append(
                    dict(elements=n, case=name, **{f"{k}_us": f"{v:.1f}" for k, v in got.items()})
                )
                print(
                    f"{n:>8d}  {name:20s} serial {got['serial']:8.0f} us"
                    f"  split {got['split']:8.0f} us"
                )
    finally:
        _pool.SERIAL_BELOW = adopted
    load, stamp = _results.load_average(), _results.stamp()
    common = dict(timestamp=stamp, threads=args.threads, load_avg=load)
    path = _results.write_csv(args.out, "serial-below", stamp, rows, common)
    print(f"load average {load}; wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()
