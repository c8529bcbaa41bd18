"""What a page-faulted output costs: writing a fresh 16 MiB buffer, faulted in or not.

Each round allocates a 16 MiB float32 tensor and fills it (as a kernel writes its output),
first in a child process where glibc serves it with a fresh mapping every time (its
initial mmap threshold, 128 KiB, pinned with ``mallopt``; with the default dynamic
threshold whether that happens depends on the process's earlier allocations), then in a
child where ``normkit.bench.keep_freed_memory`` asked glibc to keep freed memory. Prints
the median time per round, the minor page faults per round and the time per fault;
writes nothing.

    PYTHONPATH=src python benchmarks/page_faults.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = """
import ctypes, resource, statistics, sys, time
import torch
from normkit.bench import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
else:  # glibc's initial mmap threshold, pinned: every 16 MiB block is a fresh mapping
    assert ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)
torch.set_num_threads(1)
rounds = int(sys.argv[2])
times, faults = [], []
for i in range(rounds + 3):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    torch.empty(4 << 20).fill_(1.0)  # the 16 MiB "output"
    t1 = time.perf_counter()
    if i >= 3:
        times.append(t1 - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(statistics.median(times) * 1e3, statistics.median(faults))
"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds (default 20)")
    args = parser.parse_args(argv)
    results = {}
    for mode in ("mmap", "keep"):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, mode, str(args.rounds)],
            capture_output=True,
            text=True,
            check=True,
            env=os.environ,
        ).stdout.split()
        results[mode] = (float(out[0]), float(out[1]))
        ms, faults = results[mode]
        print(f"{mode:8s} {ms:8.3f} ms per 16 MiB output, {faults:6.0f} minor faults")
    (slow, faults), (fast, _) = results["mmap"], results["keep"]
    if faults > 0:
        print(f"about {(slow - fast) * 1e3 / faults:.2f} us per fault on this machine")


if __name__ == "__main__":
    main()
