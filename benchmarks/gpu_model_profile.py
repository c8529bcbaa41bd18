"""Where a whole model's training step spends its host time on CUDA, torch's layers against
normkit's: one profiled step of a ``normkit bench`` model (default ``resnet18-bn``,
batch 8) under ``torch.profiler``.

For each of the two models it prints the wall time of a step (synchronized, median of
20), the number of operator calls and of kernel launches in one step, and the operators
with the most host time; then any call of normkit's step that synchronizes with the
device (``torch.cuda.set_sync_debug_mode("warn")``).

    PYTHONPATH=src python benchmarks/gpu_model_profile.py [--model resnet18-bn] [--batch 8]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

import normkit
from normkit import bench


def _wall_ms(fn, device, n=20):
    for _ in range(5):
        fn()
    out = []
    for _ in range(n):
        torch.cuda.synchronize(device)
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        out.append((time.perf_counter() - t) * 1e3)
    return statistics.median(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet18-bn", choices=sorted(bench.MODELS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    dev = args.device
    build, shape = bench.MODELS[args.model][:2]
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(args.batch, *shape, generator=gen).to(dev)
    target = torch.randint(0, 10, (args.batch,), generator=gen).to(dev)
    torch.manual_seed(3)
    ref = build(bench._norm_factory(torch.nn)).to(dev)
    ref(x)
    ours = build(bench._norm_factory(normkit)).to(dev)
    ours(x)
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))
    for name, model in (("torch", ref), ("normkit", ours)):
        _, step = bench._train_step_pair(model, x, target)
        ms = _wall_ms(step, dev)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize(dev)
        events = prof.key_averages()
        ops = sum(e.count for e in events if e.key.startswith("aten::"))
        launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel"))
        print(
            f"\n== {name}: {args.model} batch {args.batch}: step {ms:.2f} ms; "
            f"{ops} aten calls, {launches} kernel launches in one step"
        )
        print(
            events.table(
                sort_by="self_cpu_time_total", row_limit=args.top, max_name_column_width=48
            )
        )
    if args.model in bench.MODELS:
        _, step = bench._train_step_pair(ours, x, target)
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
        torch.cuda.set_sync_debug_mode(0)
        syncs = [str(w.message)[:120] for w in caught if "synchroniz" in str(w.message)]
        print(f"\nnormkit step: {len(syncs)} synchronizing calls", *syncs[:5], sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
