"""Where the host time of one normkit layer call goes on a CUDA device.

A small layer on a GPU is bound by the host: what it costs is the Python and launch
work per call, not the kernel. This script runs one BatchNorm2d training step
(forward + backward) and one LayerNorm step on a small CUDA tensor through
``backend="triton"`` (the kernel path) and ``backend="auto"`` (which takes the native
path at this size), and torch's own layers, and prints

* the time per step of each (host-bound: the GPU work is microseconds),
* any call that synchronizes with the device (``torch.cuda.set_sync_debug_mode``),
* the top functions by own time in a ``cProfile`` of the kernel path.

    PYTHONPATH=src python benchmarks/gpu_overhead_profile.py
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
import warnings

import torch
import torch.nn.functional as TF

import normkit.functional as NF


def _per_call_us(fn, n=300) -> float:
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.error("needs a CUDA device: this profiles the host cost of CUDA layer calls")
    dev = "cuda"
    x = torch.randn(8, 64, 32, 32, device=dev, requires_grad=True)
    w = torch.randn(64, device=dev, requires_grad=True)
    b = torch.randn(64, device=dev, requires_grad=True)
    rm, rv = torch.zeros(64, device=dev), torch.ones(64, device=dev)
    xl = torch.randn(8, 64, 256, device=dev, requires_grad=True)
    wl = torch.randn(256, device=dev, requires_grad=True)
    bl = torch.randn(256, device=dev, requires_grad=True)

    def bn(backend):
        if backend == "torch-eager":
            return lambda: TF.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5).sum().backward()
        return lambda: (
            NF.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5, backend=backend).sum().backward()
        )

    def ln(backend):
        if backend == "torch-eager":
            return lambda: TF.layer_norm(xl, (256,), wl, bl).sum().backward()
        return lambda: NF.layer_norm(xl, (256,), wl, bl, backend=backend).sum().backward()

    for name, make in (("batch_norm (8,64,32,32)", bn), ("layer_norm (8,64,256)", ln)):
        times = {be: _per_call_us(make(be)) for be in ("torch-eager", "auto", "triton")}
        print(
            f"{name}: fwd+bwd per step, us: "
            + ", ".join(f"{be} {t:.1f}" for be, t in times.items()),
            flush=True,
        )

    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bn("triton")()
        ln("triton")()
        bn("auto")()
        ln("auto")()
        torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode(0)
    syncs = [str(c.message).splitlines()[0] for c in caught if "synchroniz" in str(c.message)]
    print(f"synchronizing calls in one step of each: {len(syncs)}", flush=True)
    for line in sorted(set(syncs))[:10]:
        print("   ", line, flush=True)

    prof = cProfile.Profile()
    step = bn("triton")
    prof.enable()
    for _ in range(200):
        step()
    torch.cuda.synchronize()
    prof.disable()
    print("cProfile, batch_norm kernel path, 200 steps, top 25 by own time:", flush=True)
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
