"""Where torch's kernel (shifted, normkit._native) stops beating normkit's fused kernel.

For each family and a ladder of sizes, times forward+backward (a fresh graph per call)
and forward under ``no_grad`` of

* ``native``: ``normkit._native``'s shifted torch call (what ``auto`` runs below the
  threshold), and
* ``kernel``: ``normkit.functional`` with ``backend="cpu"`` (the numba kernels), or
  ``backend="triton"`` with ``--device cuda`` (each call then ends with a synchronize),

interleaved in one process, medians of ``--repeats``. The suggested thresholds of a
family (one for forward only, one for forward+backward) are the smallest size from which
the kernel wins that pass at that size and every larger one measured;
``normkit._native.THRESHOLDS`` (``CUDA_THRESHOLDS``) holds the values adopted. Writes
``benchmarks/results/crossover-<timestamp>.csv`` with the load average.

    PYTHONPATH=src python benchmarks/crossover.py [--repeats 30] [--threads 2]
    PYTHONPATH=src python benchmarks/crossover.py --device cuda --max-log2 26
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time

import torch

import _results  # benchmarks/_results.py: timestamp, load average, CSV
import normkit.functional as NF
from normkit import _native

FAMILIES = {
    # family: (make input of about n elements, native call, kernel call, has params)
    "layer_norm": (
        lambda n: torch.randn(max(1, n // 256), 256),
        lambda x, w, b: _native.layer_norm(x, (x.shape[-1],), w, b, 1e-5),
        lambda x, w, b: NF.layer_norm(x, (x.shape[-1],), w, b, 1e-5, backend=_kernel(x)),
    ),
    "rms_norm": (
        lambda n: torch.randn(max(1, n // 256), 256),
        lambda x, w, b: _native.rms_norm(x, (x.shape[-1],), w, 1e-6),
        lambda x, w, b: NF.rms_norm(x, (x.shape[-1],), w, 1e-6, backend=_kernel(x)),
    ),
    "group_norm": (
        lambda n: torch.randn(max(1, n // (32 * 64)), 32, 8, 8),
        lambda x, w, b: _native.group_norm(x, 8, w, b, 1e-5),
        lambda x, w, b: NF.group_norm(x, 8, w, b, 1e-5, backend=_kernel(x)),
    ),
    # instance norm is group norm with one group per channel; torch's group norm kernel is
    # slower there than with few groups, so it has its own threshold
    "instance_norm": (
        lambda n: torch.randn(max(1, n // (64 * 1024)), 64, 32, 32),
        lambda x, w, b: _native.group_norm(x, x.shape[1], w, b, 1e-5),
        lambda x, w, b: NF.instance_norm(x, None, None, w, b, True, 0.1, 1e-5, backend=_kernel(x)),
    ),
    "batch_norm": (
        lambda n: torch.randn(max(2, n // (32 * 64)), 32, 8, 8),
        lambda x, w, b: _native.batch_norm_train(x, None, None, w, b, 0.1, 1e-5),
        lambda x, w, b: NF.batch_norm(x, None, None, w, b, True, 0.1, 1e-5, backend=_kernel(x)),
    ),
    # the fused add + norm: x is also the residual (h = 2x); y + h is differentiated, so the
    # backward takes the gradient of both outputs
    "add_rms_norm": (
        lambda n: torch.randn(max(1, n // 768), 768),
        lambda x, w, b: torch.add(*_native.add_rms_norm(x, x, (x.shape[-1],), w, 1e-6)),
        lambda x, w, b: torch.add(*NF.add_rms_norm(x, x, x.shape[-1], w, 1e-6, backend=_kernel(x))),
    ),
    "add_layer_norm": (
        lambda n: torch.randn(max(1, n // 768), 768),
        lambda x, w, b: torch.add(*_native.add_layer_norm(x, x, (x.shape[-1],), w, b, 1e-5)),
        lambda x, w, b: torch.add(
            *NF.add_layer_norm(x, x, x.shape[-1], w, b, 1e-5, backend=_kernel(x))
        ),
    ),
    # x (N, 64 tokens, 256); w and b stand for scale and shift, (N, 256)
    "modulated_layer_norm": (
        lambda n: torch.randn(max(1, n // (64 * 256)), 64, 256),
        lambda x, w, b: _native.modulated_layer_norm(x, b, w, 1e-6),
        lambda x, w, b: NF.modulated_layer_norm(x, b, w, 1e-6, backend=_kernel(x)),
    ),
}


def _kernel(x: torch.Tensor) -> str:
    """The kernel backend timed against the native path: Triton on CUDA, numba on CPU."""
    return "triton" if x.is_cuda else "cpu"


def _params(family: str, x: torch.Tensor):
    if family == "modulated_layer_norm":  # scale and shift, one row per sample
        w = (0.1 * torch.randn(x.shape[0], x.shape[-1], device=x.device)).requires_grad_()
        return w, torch.randn(x.shape[0], x.shape[-1], device=x.device).requires_grad_()
    d = (
        x.shape[-1]
        if family in ("layer_norm", "rms_norm", "add_rms_norm", "add_layer_norm")
        else x.shape[1]
    )
    w = torch.randn(d, device=x.device).requires_grad_()
    b = torch.randn(d, device=x.device).requires_grad_()
    return w, b


def _time(fn, repeats: int, sync):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()  # on CUDA: the call's kernels have finished
        out.append(time.perf_counter() - t)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--min-log2", type=int, default=10, help="smallest size, 2**k elements")
    ap.add_argument("--max-log2", type=int, default=23, help="largest size, 2**k elements")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device here; run on a GPU machine")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.set_num_threads(args.threads)
    load, stamp = _results.load_average(), _results.stamp()
    where = torch.cuda.get_device_name() if cuda else f"{args.threads} threads"
    backend = "triton" if cuda else "cpu"
    print(f"load average {load}; {where}; kernel backend {backend}; medians of {args.repeats}")
    # the fields every CSV row shares
    run = dict(timestamp=stamp, load_avg=load, threads=args.threads, device=where)
    rows = []
    for family in args.families.split(","):
        make, native, kernel = FAMILIES[family]
        wins_from = {"fwd": None, "fwdbwd": None}
        for n in [1 << k for k in range(args.min_log2, args.max_log2 + 1)]:
            x = make(n).to(args.device).requires_grad_()
            w, b = _params(family, x)
            dy = torch.randn_like(x)

            def fwdbwd(f, x=x, w=w, b=b, dy=dy):
                return lambda: f(x, w, b).backward(dy)

            def fwd(f, x=x, w=w, b=b):
                def run():
                    with torch.no_grad():
                        f(x, w, b)

                return run

            res = {}
            for pass_name, wrap in (("fwdbwd", fwdbwd), ("fwd", fwd)):
                for f in (native, kernel):  # warm-up (numba compile, allocator)
                    for _ in range(3):
                        wrap(f)()
                tn, tk = [], []
                for _ in range(args.repeats):  # interleaved: load hits both alike
                    tn += _time(wrap(native), 1, sync)
                    tk += _time(wrap(kernel), 1, sync)
                res[pass_name] = (statistics.median(tn) * 1e6, statistics.median(tk) * 1e6)
                if res[pass_name][1] < res[pass_name][0]:
                    wins_from[pass_name] = wins_from[pass_name] or x.numel()
                else:
                    wins_from[pass_name] = None
            for pass_name, (tn, tk) in res.items():
                rows.append(
                    dict(
                        run,
                        family=family,
                        shape="x".join(map(str, x.shape)),
                        numel=x.numel(),
                        pass_=pass_name,
                        native_us=f"{tn:.1f}",
                        kernel_us=f"{tk:.1f}",
                        kernel_speedup=f"{tn / tk:.3f}",
                    )
                )
            print(
                f"{family:11s} {x.numel():>8d}  fwd+bwd native {res['fwdbwd'][0]:8.1f} us "
                f"kernel {res['fwdbwd'][1]:8.1f} us   fwd native {res['fwd'][0]:8.1f} "
                f"kernel {res['fwd'][1]:8.1f}"
            )
        print(
            f"  -> {family}: the kernel wins forward from {wins_from['fwd']} elements on, "
            f"forward+backward from {wins_from['fwdbwd']} on (None: not in the sizes measured)"
        )
        for pass_name, numel in wins_from.items():
            rows.append(
                dict(
                    run,
                    family=family,
                    shape="",
                    numel=numel or "",
                    pass_=f"suggested_threshold_{pass_name}",
                    native_us="",
                    kernel_us="",
                    kernel_speedup="",
                )
            )
    path = _results.write_csv(args.out, "crossover", stamp, rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
