"""normkit's CPU kernels on torch's OpenMP team versus on normkit's own threads.

After a parallel op, torch's OpenMP worker threads keep spinning for a while (GNU libgomp's
default wait policy). A kernel of normkit's that runs right after a torch op (every layer
of a real model) on normkit's own pool then shares the second core with that spinning
thread. This script times each kernel call in three situations, for both runners
(``NORMKIT_CPU_POOL=openmp`` and ``threads``, see ``src/normkit/ops/cpu/_pool.py``):

* ``after_torch``: right after a torch op of the same size (as in a model);
* ``after_idle``: after 5 ms of sleep (every thread has gone to sleep);
* ``torch_after``: torch's own op right after normkit's call (does normkit slow torch?).

Rows are interleaved (runner by runner, case by case, ``--repeats`` rounds), medians in
milliseconds and minor page faults per call, with the load average; written to
``benchmarks/results/omp-vs-pool-<timestamp>.csv``.

Every call allocates a fresh output of 16-25 MB. With glibc's default settings, whether
that memory is still mapped (free) or has been returned to the OS and must be faulted in
again (thousands of page faults, several ms) depends on the order of earlier allocations
and frees, for torch's outputs as for normkit's, and that swamps the difference measured
here. So, by default, this script (not the library) asks glibc to keep freed memory:
``mallopt(M_MMAP_THRESHOLD, 32 MiB)`` and ``mallopt(M_TRIM_THRESHOLD, 1 GiB)``, as
``normkit bench --malloc keep`` does; ``--default-malloc`` leaves the allocator alone.

    PYTHONPATH=src python benchmarks/omp_vs_pool.py [--repeats 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import torch

import _results  # benchmarks/_results.py: timestamp, load average, CSV
import normkit.functional as NF
from normkit.bench import keep_freed_memory
from normkit.ops.cpu import _pool

# name: (input maker, normkit call, torch call of the same op)
CASES = {
    "group_norm fwd (16, 256, 32, 32)": (
        lambda: (torch.randn(16, 256, 32, 32), torch.randn(256), torch.randn(256)),
        lambda x, w, b: NF.group_norm(x, 32, w, b, 1e-5, backend="cpu"),
        lambda x, w, b: torch.group_norm(x, 32, w, b, 1e-5),
    ),
    "layer_norm fwd (8192, 768)": (
        lambda: (torch.randn(8192, 768), torch.randn(768), torch.randn(768)),
        lambda x, w, b: NF.layer_norm(x, (768,), w, b, 1e-5, backend="cpu"),
        lambda x, w, b: torch.layer_norm(x, (768,), w, b, 1e-5),
    ),
    "batch_norm train fwd (8, 64, 64, 64)": (
        lambda: (torch.randn(8, 64, 64, 64), torch.randn(64), torch.randn(64)),
        lambda x, w, b: NF.batch_norm(x, None, None, w, b, True, 0.1, 1e-5, backend="cpu"),
        lambda x, w, b: torch.batch_norm(x, w, b, None, None, True, 0.1, 1e-5, False),
    ),
}


def _timed(fn, faults: list) -> float:
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return elapsed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="rounds (default 30)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--out", default="benchmarks/results", help="CSV folder")
    parser.add_argument(
        "--default-malloc", action="store_true", help="leave glibc's trim/mmap settings alone"
    )
    args = parser.parse_args(argv)
    kept = False if args.default_malloc else keep_freed_memory()
    torch.set_num_threads(args.threads)
    os.environ.pop(_pool.ENV_THREADS, None)
    rows, times, faults = [], {}, {}
    inputs = {name: make() for name, (make, _, _) in CASES.items()}
    runners = ("openmp", "threads")
    for name, (_, ours, theirs) in CASES.items():  # compile and warm every path
        for runner in runners:
            os.environ[_pool.ENV_POOL] = runner
            ours(*inputs[name])
            theirs(*inputs[name])
    for _ in range(args.repeats):
        for runner in runners:
            os.environ[_pool.ENV_POOL] = runner
            used = _pool.runner()
            for name, (_, ours, theirs) in CASES.items():
                x = inputs[name]
                for situation in ("after_torch", "after_idle", "torch_after"):
                    key = (name, used, situation)
                    if situation == "after_torch":
                        theirs(*x)
                    elif situation == "after_idle":
                        time.sleep(0.005)
                    else:
                        ours(*x)
                    call = theirs if situation == "torch_after" else ours
                    got = faults.setdefault(key, [])
                    times.setdefault(key, []).append(_timed(lambda f=call, a=x: f(*a), got))
    os.environ.pop(_pool.ENV_POOL, None)
    load, stamp = _results.load_average(), _results.stamp()
    malloc = "glibc keeps freed memory (mallopt)" if kept else "default"
    print(f"load average {load}; torch {torch.__version__}, {args.threads} threads; {malloc}")
    print(f"{'case':40s} {'runner':8s} {'situation':12s} {'median ms':>9s} {'faults':>7s}")
    for key, ts in sorted(times.items()):
        name, used, situation = key
        ms = statistics.median(ts) * 1e3
        flt = statistics.median(faults[key])
        print(f"{name:40s} {used:8s} {situation:12s} {ms:9.3f} {flt:7.0f}")
        rows.append(
            dict(
                case=name,
                runner=used,
                situation=situation,
                median_ms=f"{ms:.4f}",
                median_minor_faults=f"{flt:.0f}",
            )
        )
    common = dict(
        timestamp=stamp,
        torch_version=torch.__version__,
        threads=args.threads,
        load_avg=load,
        repeats=args.repeats,
        malloc=malloc,
    )
    path = _results.write_csv(args.out, "omp-vs-pool", stamp, rows, common)
    print(f"wrote {len(rows)} rows to {path}")


if __name__ == "__main__":
    main()
