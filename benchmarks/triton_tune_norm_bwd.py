"""Sweep the launch shape of the LayerNorm/RMSNorm backward Triton kernel on a GPU.

The backward kernel (``normkit.ops.triton.norms._layer_norm_bwd_kernel``) runs one
program per slice of rows; each program walks its rows one after another and keeps the
weight/bias partial sums of its rows, summed afterwards by ``column_sum``. How many
programs (``programs per SM`` x the SM count, the ``num_partials`` factor) and how many
warps each gets decide how much memory traffic is in flight. This script times the
backward (kernel + column sums, ``triton.testing.do_bench``, median) for each pair
against torch's own backward of the same layer, on the shapes of
``benchmarks/gpu_validate.py``'s bench, and writes one CSV row per configuration.

    PYTHONPATH=src python benchmarks/triton_tune_norm_bwd.py [--out DIR]

Correctness does not depend on the launch shape (tests/test_triton_kernels.py runs the
kernels with tiny blocks and many programs); the shipped defaults are in
``normkit.ops.triton._common`` (``num_partials``, ``warps_for``).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import torch
import torch.nn.functional as TF

import _results  # benchmarks/_results.py: timestamp, load average, CSV

ROOT = pathlib.Path(__file__).resolve().parents[1]

SHAPES = [(16384, 1024), (8192, 4096), (1024, 16384)]
PER_SM = [4, 8, 16, 32]
WARP_SCALE = [0.5, 1, 2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks/results"))
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.error("needs a CUDA device")
    import triton
    from triton.testing import do_bench

    import normkit.ops.triton._common as C
    import normkit.ops.triton.norms as N

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    default_partials, default_warps = C.num_partials, C.warps_for
    rows = []
    for dname in args.dtypes.split(","):
        dtype = getattr(torch, dname)
        for m, d in SHAPES:
            x = torch.randn(m, d, device="cuda", dtype=dtype)
            dy = torch.randn_like(x)
            w = torch.randn(d, device="cuda", dtype=dtype)
            b = torch.randn(d, device="cuda", dtype=dtype)
            for rms in (False, True):
                name = "rms_norm" if rms else "layer_norm"
                if rms:
                    _, rstd = N.rms_norm_fwd(x, w, 1e-6)
                    mean = None
                else:
                    _, mean, rstd = N.layer_norm_fwd(x, w, b, 1e-5)
                xt = x.detach().requires_grad_()
                wt = w.detach().requires_grad_()
                bt = b.detach().requires_grad_()
                yt = (
                    TF.rms_norm(xt, (d,), wt, 1e-6)
                    if rms
                    else TF.layer_norm(xt, (d,), wt, bt, 1e-5)
                )
                ins = [xt, wt] if rms else [xt, wt, bt]
                t_torch = do_bench(
                    lambda: torch.autograd.grad(yt, ins, dy, retain_graph=True), warmup=25, rep=100
                )
                for per_sm in PER_SM:
                    for scale in WARP_SCALE:
                        N.num_partials = lambda r, dev, k=per_sm: max(1, min(r, k * sms))
                        N.warps_for = lambda blk, s=scale: max(
                            1, min(32, int(default_warps(blk) * s))
                        )
                        try:
                            if rms:
                                fn = lambda: N.rms_norm_bwd(dy, x, rstd, w)  # noqa: E731
                            else:
                                fn = lambda: N.layer_norm_bwd(dy, x, mean, rstd, w)  # noqa: E731
                            t = do_bench(fn, warmup=25, rep=100)
                        except Exception as exc:  # a shape that does not compile: say so
                            print(f"{name} {dname} {m}x{d} per_sm={per_sm} warps*{scale}: {exc}")
                            continue
                        finally:
                            N.num_partials, N.warps_for = default_partials, default_warps
                        warps = max(
                            1, min(32, int(default_warps(triton.next_power_of_2(d)) * scale))
                        )
                        row = dict(
                            op=name,
                            dtype=dname,
                            shape=f"{m}x{d}",
                            programs_per_sm=per_sm,
                            num_warps=warps,
                            ours_ms=f"{t:.4f}",
                            torch_ms=f"{t_torch:.4f}",
                            speedup_vs_torch=f"{t_torch / t:.3f}",
                            device=torch.cuda.get_device_name(),
                            triton=triton.__version__,
                            torch=torch.__version__,
                        )
                        rows.append(row)
                        print(
                            f"{name:10s} {dname:8s} {m}x{d:<6d} per_sm {per_sm:2d} warps {warps:2d}"
                            f"  ours {t:.4f} ms  torch {t_torch:.4f} ms  x{t_torch / t:.2f}",
                            flush=True,
                        )
    path = _results.write_csv(args.out, "triton_tune_norm_bwd", _results.stamp(), rows)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
