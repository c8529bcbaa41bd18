"""How much of a whole model's training step a normalization library can speed up.

For each ``normkit bench`` model, one train step with torch's own layers (forward,
cross-entropy, backward, SGD step) runs under ``torch.profiler`` on the CPU; the share of
host time spent in normalization operators (``aten::native_batch_norm*``,
``native_layer_norm*``, ``native_group_norm*``) bounds what any normalization kernel can
do for the step (Amdahl): even one that took no time at all would make the step at most
``1 / (1 - share)`` times faster. Prints that table and writes it to
``benchmarks/results/norm-share-<stamp>.csv``.

    PYTHONPATH=src python benchmarks/model_norm_share.py [--models resnet-big-bn,...]
        [--steps 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.profiler import profile

import _gpu
from _results import load_average, stamp, write_csv
from normkit import bench

NORM_OPS = ("native_batch_norm", "native_layer_norm", "native_group_norm")


def _is_norm(key: str) -> bool:
    return any(op in key for op in NORM_OPS)


def share(name: str, batch: int, steps: int) -> dict:
    x, target, model, _ = _gpu.model_pair(name, batch, device="cpu")
    step = bench._train_step_pair(model, x, target)[1]
    for _ in range(3):
        step()
    with profile() as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    norm = sum(e.self_cpu_time_total for e in events if _is_norm(e.key))
    frac = norm / total if total else 0.0
    return {
        "model": name,
        "batch": batch,
        "step_ms_profiled": round(total / steps / 1e3, 2),
        "norm_share": round(frac, 4),
        "max_step_speedup": round(1.0 / (1.0 - frac), 3) if frac < 1 else float("inf"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(bench.MODELS))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    unknown = sorted(set(names) - set(bench.MODELS))
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {sorted(bench.MODELS)}")
    if args.steps < 1:
        ap.error(f"--steps must be at least 1, got {args.steps}")
    rows = []
    ts = stamp()
    for name in names:
        for batch in bench.MODELS[name][2]:
            row = share(name, batch, args.steps)
            rows.append(row)
            print(
                f"{name:16s} batch {batch:2d}  step {row['step_ms_profiled']:8.2f} ms (profiled)"
                f"  normalization {100 * row['norm_share']:5.1f}%"
                f"  step speedup at most {row['max_step_speedup']:.3f}x"
            )
    common = {"timestamp": ts, "threads": torch.get_num_threads(), "load_avg": load_average()}
    print(write_csv(args.out, "norm-share", ts, rows, common))
    return 0


if __name__ == "__main__":
    sys.exit(main())
