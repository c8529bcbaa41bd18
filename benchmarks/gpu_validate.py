"""Validate every Triton kernel on a CUDA GPU against float64, then benchmark it against torch.

One command on a machine with a CUDA GPU (see benchmarks/README-gpu.md):

    PYTHONPATH=src python benchmarks/gpu_validate.py

1. Validation: each op of docs/ops.md x {float32, float16, bfloat16, float64}, forward and
   every gradient, on mid-sized shapes (odd widths, a loud channel, mean 1e4), compared
   with float64 math (normkit.reference for LRN) under the suite's tolerance policy
   (tests/tolerance.py): max|ours - ref| <= 2 max|torch_same_dtype - ref| + atol.
2. Benchmark: tensors of at least 16 MB, timed with triton.testing.do_bench (median),
   normkit's Triton kernels against torch's own CUDA ops in the same dtype; reported
   as time ratios and as a fraction of the measured device-to-device copy bandwidth,
   using the minimum-traffic bytes model of docs/design.md section 3.

A CSV (one row per case) goes to $OUT if set, else benchmarks/results/. Exit status 1
if any validation case fails.

Without CUDA, ``--smoke`` (with TRITON_INTERPRET=1) runs the validation on tiny shapes
in Triton's interpreter and builds, without timing, every benchmark case: a check of
this script, not of the GPU.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import pathlib
import platform
import sys
from typing import Dict, List, Optional

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # the one tolerance policy: tests/tolerance.py

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


# --------------------------------------------------------------------------- references
#
# The ground truth is normkit.reference (float64 NumPy, hand-derived backward passes), the
# same one the test-suite uses: each function returns [y, dx, dweight(, dbias)] as float64.


def ref_outputs(kind, x, dy, w, b, eps, groups=None):
    from normkit import reference as R

    from tolerance import as_f64

    x, dy, w, b = (as_f64(t) for t in (x, dy, w, b))
    if kind == "layer_norm":
        shape = (x.shape[-1],)
        y = R.layer_norm_forward(x, shape, w, b, eps)[0]
        return [y, *R.layer_norm_backward(x, dy, shape, w, b, eps)]
    if kind == "rms_norm":
        shape = (x.shape[-1],)
        y = R.rms_norm_forward(x, shape, w, eps)[0]
        return [y, *R.rms_norm_backward(x, dy, shape, w, eps)]
    if kind == "group_norm":
        y = R.group_norm_forward(x, groups, w, b, eps)[0]
        return [y, *R.group_norm_backward(x, dy, groups, w, b, eps)]
    y = R.batch_norm_forward(x, w, b, eps)[0]
    return [y, *R.batch_norm_backward(x, dy, w, b, eps)]


def grads(fn, inputs, dy):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    return [out.detach(), *torch.autograd.grad(out, leaves, dy)]


def torch_peer(fn, inputs, dy):
    try:
        return grads(fn, inputs, dy)
    except (RuntimeError, NotImplementedError):  # no kernel for this dtype
        return None


# ------------------------------------------------------------------------- our ops, fused


def make_ours(T):
    """Forward+backward of each layer through normkit's Triton ops: (inputs, dy) -> outputs."""
    from normkit.ops.triton.lrn import lrn_bwd, lrn_fwd

    def lrn(x, dy, back, ahead, alpha, beta, k, within):
        return [
            lrn_fwd(x, back, ahead, alpha, beta, k, within),
            lrn_bwd(x, dy, back, ahead, alpha, beta, k, within),
        ]

    def layer_norm(x, w, b, dy, eps):
        y, mean, rstd = T.layer_norm_fwd(x, w, b, eps)
        return [y, *T.layer_norm_bwd(dy, x, mean, rstd, w)]

    def rms_norm(x, w, dy, eps):
        y, rstd = T.rms_norm_fwd(x, w, eps)
        return [y, *T.rms_norm_bwd(dy, x, rstd, w)]

    def group_norm(x, w, b, dy, groups, eps):
        y, mean, rstd = T.group_norm_fwd(x, w, b, groups, eps)
        return [y, *T.group_norm_bwd(dy, x, mean, rstd, w, groups)]

    def batch_norm(x, w, b, dy, eps):
        mean, var = T.batch_norm_stats(x)
        rstd = torch.rsqrt(var + eps)
        y = T.batch_norm_apply(x, mean, rstd, w, b)
        s_dy, s_dyx = T.batch_norm_bwd_reduce(dy, x, mean, rstd)
        dx = T.batch_norm_bwd_apply(dy, x, mean, rstd, w, s_dy, s_dyx, x.shape[0] * x.shape[2])
        return [y, dx, s_dyx.to(w.dtype), s_dy.to(w.dtype)]

    return dict(
        lrn=lrn,
        layer_norm=layer_norm,
        rms_norm=rms_norm,
        group_norm=group_norm,
        batch_norm=batch_norm,
    )


# --------------------------------------------------------------------------- validation


def validation_cases(smoke: bool):
    """(name, kind, shape, extra kwargs). Mid-sized on a GPU, tiny in the interpreter."""
    if smoke:
        return [
            ("lrn across n=5", "lrn", (2, 7, 3, 5), dict(back=2, ahead=2, within=False)),
            ("lrn across even n=4", "lrn", (2, 7, 3, 5), dict(back=2, ahead=1, within=False)),
            ("lrn within 3x3", "lrn", (1, 2, 5, 6), dict(back=1, ahead=1, within=True)),
            ("layer_norm", "layer_norm", (4, 37), {}),
            ("rms_norm", "rms_norm", (4, 37), {}),
            ("group_norm G=2", "group_norm", (2, 4, 5), dict(groups=2)),
            ("batch_norm", "batch_norm", (3, 4, 5), {}),
        ]
    return [
        ("lrn across n=5", "lrn", (8, 96, 27, 27), dict(back=2, ahead=2, within=False)),
        (
            "lrn across even n=4 (torch)",
            "lrn",
            (4, 64, 13, 31),
            dict(back=2, ahead=1, within=False),
        ),
        (
            "lrn across tf r=5 (11 taps)",
            "lrn",
            (4, 16, 17, 17),
            dict(back=5, ahead=5, within=False),
        ),
        (
            "lrn across loud channel",
            "lrn",
            (4, 32, 15, 15),
            dict(back=2, ahead=2, within=False, loud=True),
        ),
        ("lrn within 3x3 (caffe)", "lrn", (4, 16, 31, 33), dict(back=1, ahead=1, within=True)),
        ("lrn within 4x4 even", "lrn", (2, 8, 20, 21), dict(back=2, ahead=1, within=True)),
        ("layer_norm D=1023", "layer_norm", (333, 1023), {}),
        ("layer_norm D=8192+7 (chunked)", "layer_norm", (64, 8199), {}),
        ("layer_norm mean 1e4", "layer_norm", (128, 768), dict(mean=1e4)),
        ("rms_norm D=4099", "rms_norm", (97, 4099), {}),
        ("group_norm G=32", "group_norm", (4, 64, 1023), dict(groups=32)),
        ("instance_norm (G=C)", "group_norm", (4, 32, 961), dict(groups=32)),
        ("group_norm mean 1e4", "group_norm", (4, 32, 255), dict(groups=8, mean=1e4)),
        ("batch_norm 2d", "batch_norm", (16, 64, 961), {}),
        ("batch_norm 1d (L=1)", "batch_norm", (4097, 33, 1), {}),
        ("batch_norm mean 1e4", "batch_norm", (8, 16, 1023), dict(mean=1e4)),
    ]


def run_validation(T, device, dtypes, smoke) -> List[Dict]:
    from normkit.conventions import CanonicalLRN
    from normkit.reference import lrn_backward, lrn_forward

    from tolerance import ATOL, as_f64, max_err

    ours = make_ours(T)
    rows = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    for name, kind, shape, kw in validation_cases(smoke):
        for dname, dtype in dtypes.items():
            mean = kw.get("mean", 0.0)
            if mean and dtype in (torch.float16, torch.bfloat16):
                continue  # 1e4 + N(0, 1) is not representable in half precision
            x64 = torch.randn(*shape, generator=gen, dtype=torch.float64) + mean
            if kw.get("loud"):
                x64[:, shape[1] // 2] *= 1000.0
            x = x64.to(dtype).to(device)
            dy = torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
            c = shape[-1] if kind in ("layer_norm", "rms_norm") else shape[1]
            w = (1 + 0.5 * torch.randn(c, generator=gen, dtype=torch.float64)).to(dtype).to(device)
            b = (0.5 * torch.randn(c, generator=gen, dtype=torch.float64)).to(dtype).to(device)
            eps = 1e-5
            if kind == "lrn":
                back, ahead, within = kw["back"], kw["ahead"], kw["within"]
                alpha, beta, k = 1e-4 / (back + ahead + 1), 0.75, 1.0
                spec = CanonicalLRN(
                    "within" if within else "across", back + ahead + 1, back, ahead, alpha, beta, k
                )
                ref = [
                    torch.from_numpy(lrn_forward(as_f64(x), spec)),
                    torch.from_numpy(lrn_backward(as_f64(x), as_f64(dy), spec)),
                ]
                got = ours["lrn"](x, dy, back, ahead, alpha, beta, k, within)
                peer = None
                if not within and back >= ahead and back - ahead <= 1:  # torch's window
                    peer = torch_peer(
                        lambda xx: F.local_response_norm(
                            xx, back + ahead + 1, alpha * (back + ahead + 1), beta, k
                        ),
                        [x],
                        dy,
                    )
                labels = ["y", "dx"]
            elif kind == "layer_norm":
                ref = ref_outputs(kind, x, dy, w, b, eps)
                got = ours["layer_norm"](x, w, b, dy, eps)
                peer = torch_peer(
                    lambda xx, ww, bb: F.layer_norm(xx, (c,), ww, bb, eps), [x, w, b], dy
                )
                labels = ["y", "dx", "dweight", "dbias"]
            elif kind == "rms_norm":
                ref = ref_outputs(kind, x, dy, w, None, eps)
                got = ours["rms_norm"](x, w, dy, eps)
                peer = torch_peer(lambda xx, ww: F.rms_norm(xx, (c,), ww, eps), [x, w], dy)
                labels = ["y", "dx", "dweight"]
            elif kind == "group_norm":
                g = kw["groups"]
                ref = ref_outputs(kind, x, dy, w, b, eps, groups=g)
                got = ours["group_norm"](x, w, b, dy, g, eps)
                peer = torch_peer(
                    lambda xx, ww, bb: F.group_norm(xx, g, ww, bb, eps), [x, w, b], dy
                )
                labels = ["y", "dx", "dweight", "dbias"]
            else:
                ref = ref_outputs(kind, x, dy, w, b, eps)
                got = ours["batch_norm"](x, w, b, dy, eps)
                peer = torch_peer(
                    lambda xx, ww, bb: F.batch_norm(xx, None, None, ww, bb, True, 0.1, eps),
                    [x, w, b],
                    dy,
                )
                labels = ["y", "dx", "dweight", "dbias"]
            for i, label in enumerate(labels):
                r = as_f64(ref[i])
                scale = max(1.0, float(abs(r).max())) if r.size else 1.0
                err = max_err(got[i], r)
                torch_err = max_err(peer[i], r) if peer is not None else 0.0
                bound = 2 * torch_err + ATOL[dtype] * scale
                rows.append(
                    dict(
                        kind="validate",
                        case=name,
                        output=label,
                        dtype=dname,
                        shape="x".join(map(str, shape)),
                        max_err=f"{err:.3g}",
                        torch_err=f"{torch_err:.3g}" if peer is not None else "",
                        bound=f"{bound:.3g}",
                        passed=err <= bound,
                    )
                )
                status = "ok  " if err <= bound else "FAIL"
                print(
                    f"[{status}] {name:32s} {label:8s} {dname:9s} err {err:.3g} "
                    f"(torch {torch_err:.3g}, bound {bound:.3g})",
                    flush=True,
                )
    return rows


# ---------------------------------------------------------------------------- benchmark


def bench_cases(smoke: bool):
    """(name, kind, shape, kwargs). Sizes: >= 16 MB in float32 and float16 (docs/design.md section 3)."""
    if smoke:
        return [
            ("lrn across n=5", "lrn", (2, 8, 4, 4), dict(back=2, ahead=2, within=False)),
            ("layer_norm", "layer_norm", (4, 64), {}),
            ("batch_norm", "batch_norm", (2, 4, 8), {}),
        ]
    return [
        (
            "lrn across n=5 AlexNet conv1",
            "lrn",
            (32, 96, 55, 55),
            dict(back=2, ahead=2, within=False),
        ),
        ("lrn across n=5 conv2", "lrn", (64, 256, 27, 27), dict(back=2, ahead=2, within=False)),
        ("lrn within 3x3", "lrn", (32, 96, 55, 55), dict(back=1, ahead=1, within=True)),
        ("layer_norm D=1024", "layer_norm", (16384, 1024), {}),
        ("layer_norm D=4096", "layer_norm", (8192, 4096), {}),
        ("layer_norm D=16384 (chunked)", "layer_norm", (1024, 16384), {}),
        ("rms_norm D=4096", "rms_norm", (8192, 4096), {}),
        ("group_norm G=32", "group_norm", (32, 128, 3136), dict(groups=32)),
        ("instance_norm G=C", "group_norm", (32, 128, 3136), dict(groups=128)),
        ("batch_norm 2d", "batch_norm", (32, 128, 3136), {}),
        ("batch_norm 1d L=1", "batch_norm", (262144, 64, 1), {}),
    ]


def _torch_layer(kind, kw, c, eps=1e-5):
    if kind == "lrn":
        n = kw["back"] + kw["ahead"] + 1
        if kw["within"]:
            return None  # torch has no within-channel LRN
        return lambda x, w, b: F.local_response_norm(x, n, 1e-4, 0.75, 1.0)
    if kind == "layer_norm":
        return lambda x, w, b: F.layer_norm(x, (c,), w, b, eps)
    if kind == "rms_norm":
        return lambda x, w, b: F.rms_norm(x, (c,), w, eps)
    if kind == "group_norm":
        g = kw["groups"]
        if g == c:  # InstanceNorm: torch's own instance_norm path
            return lambda x, w, b: F.instance_norm(x, weight=w, bias=b, eps=eps)
        return lambda x, w, b: F.group_norm(x, g, w, b, eps)
    return lambda x, w, b: F.batch_norm(x, None, None, w, b, True, 0.1, eps)


def _model_bytes(kind, numel, itemsize):
    """Minimum DRAM traffic (docs/design.md section 3): fwd 2N (BatchNorm 3N), bwd 3N (BatchNorm 5N)."""
    if kind == "batch_norm":
        return 3 * numel * itemsize, 5 * numel * itemsize
    return 2 * numel * itemsize, 3 * numel * itemsize


def run_bench(T, device, dtypes, smoke) -> List[Dict]:
    rows = []
    if smoke:
        timer = None
        copy_gbps = float("nan")
    else:
        from triton.testing import do_bench

        def timer(fn):
            return do_bench(fn, warmup=25, rep=200, return_mode="median")

        src = torch.empty(64 * 2**20, dtype=torch.float32, device=device)  # 256 MB
        dst = torch.empty_like(src)
        copy_ms = timer(lambda: dst.copy_(src))
        copy_gbps = 2 * src.numel() * 4 / (copy_ms * 1e-3) / 1e9
        print(f"device-to-device copy: {copy_gbps:.0f} GB/s (read + write, 256 MB)", flush=True)
        del src, dst
    rows.append(dict(kind="copy", case="copy_ 256 MB float32", gbps=f"{copy_gbps:.1f}"))
    ours = make_ours(T)
    from normkit.ops.triton.lrn import lrn_bwd, lrn_fwd

    for name, kind, shape, kw in bench_cases(smoke):
        for dname, dtype in dtypes.items():
            if dtype == torch.float64:
                continue  # float64 is for gradcheck, not for speed
            x = torch.randn(*shape, device=device, dtype=dtype)
            dy = torch.randn_like(x)
            c = shape[-1] if kind in ("layer_norm", "rms_norm") else shape[1]
            w = torch.ones(c, device=device, dtype=dtype)
            b = torch.zeros(c, device=device, dtype=dtype)
            if kind == "lrn":
                a = (
                    kw["back"],
                    kw["ahead"],
                    1e-4 / (kw["back"] + kw["ahead"] + 1),
                    0.75,
                    1.0,
                    kw["within"],
                )
                fwd = lambda: lrn_fwd(x, *a)  # noqa: E731
                bwd = lambda: lrn_bwd(x, dy, *a)  # noqa: E731
            elif kind == "layer_norm":
                y, mean, rstd = T.layer_norm_fwd(x, w, b, 1e-5)
                fwd = lambda: T.layer_norm_fwd(x, w, b, 1e-5)  # noqa: E731
                bwd = lambda: T.layer_norm_bwd(dy, x, mean, rstd, w)  # noqa: E731
            elif kind == "rms_norm":
                y, rstd = T.rms_norm_fwd(x, w, 1e-6)
                fwd = lambda: T.rms_norm_fwd(x, w, 1e-6)  # noqa: E731
                bwd = lambda: T.rms_norm_bwd(dy, x, rstd, w)  # noqa: E731
            elif kind == "group_norm":
                g = kw["groups"]
                y, mean, rstd = T.group_norm_fwd(x, w, b, g, 1e-5)
                fwd = lambda: T.group_norm_fwd(x, w, b, g, 1e-5)  # noqa: E731
                bwd = lambda: T.group_norm_bwd(dy, x, mean, rstd, w, g)  # noqa: E731
            else:
                mean, var = T.batch_norm_stats(x)
                rstd = torch.rsqrt(var + 1e-5)

                def fwd():
                    m, v = T.batch_norm_stats(x)
                    return T.batch_norm_apply(x, m, torch.rsqrt(v + 1e-5), w, b)

                def bwd():
                    s1, s2 = T.batch_norm_bwd_reduce(dy, x, mean, rstd)
                    return T.batch_norm_bwd_apply(
                        dy, x, mean, rstd, w, s1, s2, x.shape[0] * x.shape[2]
                    )

            layer = _torch_layer(kind, kw, c)
            # torch's backward also computes dweight/dbias, as ours does
            leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, b)]
            yt = None
            try:
                yt = layer(*leaves) if layer is not None else None
            except (RuntimeError, NotImplementedError):  # e.g. torch's CPU LRN in float16
                layer = None
            if layer is not None:
                t_fwd = lambda: layer(x, w, b)  # noqa: E731
                t_bwd = lambda: torch.autograd.grad(  # noqa: E731
                    yt, leaves, dy, retain_graph=True, allow_unused=True
                )
            fwd()
            bwd()
            if timer is None:  # smoke: every case builds and runs once
                times = dict(
                    ours_fwd=float("nan"),
                    ours_bwd=float("nan"),
                    torch_fwd=float("nan"),
                    torch_bwd=float("nan"),
                )
            else:
                times = dict(
                    ours_fwd=timer(fwd),
                    ours_bwd=timer(bwd),
                    torch_fwd=timer(t_fwd) if layer else float("nan"),
                    torch_bwd=timer(t_bwd) if layer else float("nan"),
                )
            fb, bb = _model_bytes(kind, x.numel(), x.element_size())
            mb = x.numel() * x.element_size() / 2**20
            for phase, nbytes in (("fwd", fb), ("bwd", bb)):
                ours_ms, torch_ms = times[f"ours_{phase}"], times[f"torch_{phase}"]
                gbps = nbytes / (ours_ms * 1e-3) / 1e9
                rows.append(
                    dict(
                        kind="bench",
                        case=name,
                        output=phase,
                        dtype=dname,
                        shape="x".join(map(str, shape)),
                        tensor_mb=f"{mb:.1f}",
                        ours_ms=f"{ours_ms:.4f}",
                        torch_ms=f"{torch_ms:.4f}",
                        speedup_vs_torch=f"{torch_ms / ours_ms:.2f}",
                        model_bytes=nbytes,
                        gbps=f"{gbps:.1f}",
                        frac_copy_bw=f"{gbps / copy_gbps:.2f}",
                    )
                )
                print(
                    f"{name:32s} {phase} {dname:9s} {mb:7.1f} MB  ours {ours_ms:8.4f} ms  "
                    f"torch {torch_ms:8.4f} ms  x{torch_ms / ours_ms:5.2f}  "
                    f"{gbps:6.0f} GB/s = {gbps / copy_gbps:.2f} of copy",
                    flush=True,
                )
            del x, dy, leaves, yt
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dtypes",
        default="float32,float16,bfloat16,float64",
        help="comma-separated subset of %(default)s",
    )
    parser.add_argument("--skip-validate", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="no GPU: tiny shapes in Triton's interpreter (TRITON_INTERPRET=1), "
        "no timing; checks this script only",
    )
    parser.add_argument(
        "--shapes",
        choices=("tiny", "full"),
        default=None,
        help="validation shapes (default: full on a GPU, tiny with --smoke; "
        "full shapes in the interpreter take minutes)",
    )
    parser.add_argument(
        "--out",
        default=os.environ.get("OUT") or str(ROOT / "benchmarks/results"),
        help="directory for the CSV (default: $OUT, else benchmarks/results)",
    )
    args = parser.parse_args(argv)
    dtypes = {d: DTYPES[d] for d in args.dtypes.split(",")}

    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            parser.error(
                "--smoke needs TRITON_INTERPRET=1 in the environment (set before "
                "Python starts) so the kernels run in Triton's interpreter"
            )
        device = "cpu"
    else:
        if not torch.cuda.is_available():
            parser.error(
                "no CUDA device: run on a GPU machine, or use "
                "TRITON_INTERPRET=1 ... --smoke to check the script on a CPU"
            )
        device = "cuda"
    import triton

    import normkit.ops.triton as T

    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter)"
    meta = dict(
        device=gpu,
        torch=torch.__version__,
        triton=triton.__version__,
        python=platform.python_version(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    print(meta, flush=True)
    rows = []
    if not args.skip_validate:
        tiny = args.shapes == "tiny" if args.shapes else args.smoke
        rows += run_validation(T, device, dtypes, tiny)
    if not args.skip_bench:
        rows += run_bench(T, device, dtypes, args.smoke)
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = meta["date"].replace(":", "").replace("+0000", "Z")
    path = out_dir / f"gpu_validate_{'smoke_' if args.smoke else ''}{stamp}.csv"
    fields = [
        "kind",
        "case",
        "output",
        "dtype",
        "shape",
        "tensor_mb",
        "max_err",
        "torch_err",
        "bound",
        "passed",
        "ours_ms",
        "torch_ms",
        "speedup_vs_torch",
        "model_bytes",
        "gbps",
        "frac_copy_bw",
        *meta,
    ]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, **meta})
    failed = [r for r in rows if r.get("kind") == "validate" and not r["passed"]]
    n_val = sum(r.get("kind") == "validate" for r in rows)
    print(f"wrote {path}; validation: {n_val - len(failed)}/{n_val} passed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
