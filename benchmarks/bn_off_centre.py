"""Training BatchNorm on data that sits off centre, call after call (e.g. the first layer
on raw inputs): normkit's CPU native path against torch eager.

torch's float32 kernel is not exact there (about 4e-4 at mean 1e4); normkit's native path
checks each call and, off centre, redoes it on the recentred input, or, once the layer's
running statistics are off centre too, shifts the input first (``normkit._native``).
This script times the module call, torch and normkit interleaved, after ``--warm`` calls
have moved the running statistics to the data, for data at mean 0 and at ``--mean``.

Usage (repository root)::

    PYTHONPATH=src python benchmarks/bn_off_centre.py [--repeats 30] [--out DIR]

Writes ``bn-off-centre-<UTC>.csv``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

import _results  # benchmarks/_results.py: timestamp, load average, CSV
import normkit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mean", type=float, default=1e4)
    ap.add_argument("--warm", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    stamp = _results.stamp()
    rows = []
    for shape in [(8, 64, 32, 32), (1, 32, 8, 8)]:
        for mean in (0.0, args.mean):
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(*shape, generator=gen) * 2 + mean
            dy = torch.randn(*shape, generator=gen)
            ref, ours = torch.nn.BatchNorm2d(shape[1]), normkit.BatchNorm2d(shape[1])
            with torch.no_grad():
                for _ in range(args.warm):  # running statistics move to the data
                    ref(x)
                    ours(x)
            leaf = x.clone().requires_grad_()

            def fwd(m, x=x):
                def call():
                    with torch.no_grad():
                        m(x)

                return call

            def fwdbwd(m, leaf=leaf, dy=dy):
                def call():
                    leaf.grad = None
                    m(leaf).backward(dy)

                return call

            fns = {
                ("fwd", "torch-eager"): fwd(ref),
                ("fwd", "normkit-auto"): fwd(ours),
                ("fwdbwd", "torch-eager"): fwdbwd(ref),
                ("fwdbwd", "normkit-auto"): fwdbwd(ours),
            }
            times = {k: [] for k in fns}
            repeats = args.repeats * (10 if shape[0] == 1 else 1)
            for i in range(repeats):
                for k in fns if i % 2 == 0 else list(fns)[::-1]:
                    t0 = time.perf_counter()
                    fns[k]()
                    times[k].append(time.perf_counter() - t0)
            for (pass_, impl), ts in times.items():
                ms = 1e3 * statistics.median(ts)
                torch_ms = 1e3 * statistics.median(times[(pass_, "torch-eager")])
                rows.append(
                    dict(
                        shape="x".join(map(str, shape)),
                        mean=mean,
                        pass_=pass_,
                        impl=impl,
                        median_ms=round(ms, 4),
                        ratio_vs_torch=round(torch_ms / ms, 3),
                    )
                )
                print(
                    f"{rows[-1]['shape']:12s} mean {mean:<8g} {pass_:6s} {impl:13s} "
                    f"{ms:8.3f} ms  torch/this {torch_ms / ms:5.2f}"
                )
    common = dict(timestamp=stamp, threads=args.threads, load_avg=_results.load_average())
    path = _results.write_csv(args.out, "bn-off-centre", stamp, rows, common)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
