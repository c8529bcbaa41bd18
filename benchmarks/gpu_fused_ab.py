"""The fused ops on CUDA, call by call: torch's composite against normkit's ``auto`` (its
native path below ``normkit._native.CUDA_THRESHOLDS``) and the Triton kernels.

``normkit bench`` times each implementation in its own block with ``triton.testing.do_bench``;
at the bench shapes these calls are host-bound and such blocks moved by up to 1.5x between
runs. Here the implementations take turns call by call (each call synchronized before and
after, ``time.perf_counter``), so drift in the host's speed hits them alike, and the
number of aten operator calls and kernel launches of one call is counted with
``torch.profiler``.

Usage (repository root, a CUDA machine)::

    PYTHONPATH=src python benchmarks/gpu_fused_ab.py [--repeats 300] [--out DIR]

Writes ``fused-ab-cuda-<UTC>.csv``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

import _gpu  # benchmarks/_gpu.py: interleaved timing
import _results  # benchmarks/_results.py: timestamp, load average, CSV
import normkit.functional as NF
from normkit import bench, dispatch


def _cases(dev):
    gen = torch.Generator().manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen)).to(dev)

    d = 768

    def add_rms(v, rr, ww):
        h = v + rr
        return F.rms_norm(h, (d,), ww, 1e-6), h

    def add_ln(v, rr, ww, bb):
        h = v + rr
        return F.layer_norm(h, (d,), ww, bb, 1e-5), h

    x, r, w, b = rnd(8192, d), rnd(8192, d), rnd(d), rnd(d)
    dy, dh = rnd(8192, d), rnd(8192, d)
    yield (
        "add_rms_norm 8192x768",
        [x, r, w],
        (dy, dh),
        {
            "torch": add_rms,
            "auto": lambda v, rr, ww: NF.add_rms_norm(v, rr, d, ww, 1e-6),
            "triton": lambda v, rr, ww: NF.add_rms_norm(v, rr, d, ww, 1e-6, backend="triton"),
        },
    )
    yield (
        "add_layer_norm 8192x768",
        [x, r, w, b],
        (dy, dh),
        {
            "torch": add_ln,
            "auto": lambda v, rr, ww, bb: NF.add_layer_norm(v, rr, d, ww, bb, 1e-5),
            "triton": lambda v, rr, ww, bb: NF.add_layer_norm(
                v, rr, d, ww, bb, 1e-5, backend="triton"
            ),
        },
    )
    n, t, d = 32, 256, 1152
    xm, shift, scale = rnd(n, t, d), rnd(n, d), rnd(n, d, scale=0.1)
    yield (
        "modulated_layer_norm 32x256x1152",
        [xm, shift, scale],
        (rnd(n, t, d),),
        {
            "torch": lambda v, s, c: (
                F.layer_norm(v, (d,), eps=1e-6) * (1 + c[:, None]) + s[:, None]
            ),
            "auto": lambda v, s, c: NF.modulated_layer_norm(v, s, c, 1e-6),
            "triton": lambda v, s, c: NF.modulated_layer_norm(v, s, c, 1e-6, backend="triton"),
        },
    )


def _closures(fn, inputs, grads):
    """``normkit bench``'s (forward, forward+backward) closures: the gradient of both outputs
    for the add + norm ops, of the one output otherwise."""
    if len(grads) == 2:
        return bench._two_output_pair(fn, inputs, *grads)
    return bench._autograd_pair(fn, inputs, grads[0])


def _counts(fn):
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = prof.events()
    aten = sum(1 for e in events if e.name.startswith("aten::"))
    launches = sum(
        1 for e in events if e.name in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx")
    )
    return aten, launches


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    dev = torch.device("cuda")
    stamp = _results.stamp()
    rows = []
    for case, inputs, grads, impls in _cases(dev):
        for pass_ in ("fwd", "fwdbwd"):
            fns = {k: _closures(fn, inputs, grads)[pass_ == "fwdbwd"] for k, fn in impls.items()}
            backends = {}
            for k, fn in fns.items():  # warm-up (Triton compiles here)
                dispatch.last_backend.clear()
                for _ in range(5):
                    fn()
                backends[k] = "/".join(sorted(set(dispatch.last_backend.values()))) or "-"
            med = _gpu.interleaved_medians(fns, args.repeats, unit=1e6)
            for k, fn in fns.items():
                aten, launches = _counts(fn)
                ratio = med["torch"] / med[k]
                print(
                    f"{case:34s} {pass_:6s} {k:6s} ({backends[k]}) {med[k]:8.1f} us  "
                    f"torch/this {ratio:5.2f}  "
                    f"aten calls {aten:3d}  launches {launches:3d}"
                )
                rows.append(
                    dict(
                        case=case,
                        pass_=pass_,
                        impl=k,
                        ran=backends[k],
                        median_us=round(med[k], 1),
                        torch_over_this=round(ratio, 3),
                        aten_calls=aten,
                        launches=launches,
                    )
                )
    common = dict(timestamp=stamp, device=torch.cuda.get_device_name(), repeats=args.repeats)
    path = _results.write_csv(args.out, "fused-ab-cuda", stamp, rows, common)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
