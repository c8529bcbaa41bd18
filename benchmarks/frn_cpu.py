"""FRN + TLU forward+backward on CPU: normkit's backends against a torch eager composite.

    PYTHONPATH=src python benchmarks/frn_cpu.py [--shape 16,64,56,56] [--repeats 7]

Prints the median time of forward+backward (fresh graph each repeat, preallocated dy) for
``filter_response_norm(backend="cpu")`` (numba), ``backend="torch"`` and the same math
written as eager torch ops with autograd. A standalone script until FRN joins
``normkit bench`` (kept out of bench.py to avoid a merge conflict); it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from normkit.functional import filter_response_norm


def composite(x, w, b, t):
    nu2 = x.square().mean((2, 3), keepdim=True)
    view = (1, -1, 1, 1)
    return torch.maximum(x * torch.rsqrt(nu2 + 1e-6) * w.view(view) + b.view(view), t.view(view))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="16,64,56,56")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))
    x = torch.randn(*shape, requires_grad=True)
    c = shape[1]
    w, b, t = (
        torch.ones(c, requires_grad=True),
        torch.zeros(c, requires_grad=True),
        torch.zeros(c, requires_grad=True),
    )
    dy = torch.randn(shape)
    cases = {
        "normkit cpu (numba)": lambda: filter_response_norm(x, w, b, t, backend="cpu"),
        "normkit torch backend": lambda: filter_response_norm(x, w, b, t, backend="torch"),
        "torch eager composite": lambda: composite(x, w, b, t),
    }
    times = {}
    for name, fn in cases.items():
        for _ in range(2):
            fn().backward(dy)
        ts = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn().backward(dy)
            ts.append(time.perf_counter() - t0)
        times[name] = statistics.median(ts)
    base = times["torch eager composite"]
    for name, sec in times.items():
        print(f"{name:24s} fwd+bwd {sec * 1e3:8.1f} ms   eager/this {base / sec:5.2f}x")


if __name__ == "__main__":
    main()
