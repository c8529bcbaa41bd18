"""How fast can a fused residual add + LayerNorm be on this machine? Its parts, timed.

issue 13 asks ``add_layer_norm`` forward+backward on (8192, 768) float32 to run 1.5x
torch's composite (``h = x + r``, ``F.layer_norm(h)``, autograd). This times, in one
process and interleaved (medians; outputs preallocated, so page faults play no part):

- the composite's pieces: torch's add, ``aten::native_layer_norm`` forward and backward
  (with weight/bias gradients) and the add of the two gradients reaching ``h``;
- normkit's fused kernels (``normkit.ops.cpu.fused``) forward and backward;
- the traffic floor of each fused kernel: a numba loop that only moves the same bytes
  (forward reads x, r and writes h, y; backward reads dy, dh, h and writes dx), once with
  ordinary stores and once with non-temporal 32-byte vector stores (``vmovntps``, which
  skip reading the written lines first);

and prints the ratio of the composite to the fused kernels and to the floors. The
composite-to-floor ratio is the most any fused kernel could reach here (the bench's
forward+backward also pays autograd and one gradient copy, on both sides).

    PYTHONPATH=src python benchmarks/add_norm_ceiling.py [--rows 8192] [--dim 768] [--repeats 30]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from _results import load_average, stamp, write_csv
from normkit import bench
from normkit.ops.cpu import fused, norms
from normkit.ops.cpu._pool import parallel_for

_ROWS_PER_CHUNK = 32  # as normkit.ops.cpu.norms


@intrinsic
def _stream_row(typingctx, dst, src):
    """Copy src (float32, length a multiple of 8) to dst with aligned non-temporal
    <8 x float> stores; dst must be 32-byte aligned (checked by the caller)."""

    def codegen(context, builder, sig, args):
        dty, sty = sig.args
        d = context.make_array(dty)(context, builder, args[0])
        s = context.make_array(sty)(context, builder, args[1])
        n = builder.extract_value(s.shape, 0)
        blocks = builder.sdiv(n, ir.Constant(n.type, 8))
        vec = ir.VectorType(ir.FloatType(), 8)
        dp = builder.bitcast(d.data, vec.as_pointer())
        sp = builder.bitcast(s.data, vec.as_pointer())
        nontemporal = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
        with cgutils.for_range(builder, blocks) as loop:
            v = builder.load(builder.gep(sp, [loop.index]), align=4)
            store = builder.store(v, builder.gep(dp, [loop.index]), align=32)
            store.set_metadata("nontemporal", nontemporal)
        return context.get_dummy_value()

    return types.void(dst, src), codegen


@njit(nogil=True, fastmath={"reassoc", "contract"})
def _fwd_floor(x, r, h, y, start, stop):
    for row in range(start, stop):
        xr, rr, hr, yr = x[row], r[row], h[row], y[row]
        for i in range(xr.shape[0]):
            a = xr[i] + rr[i]
            hr[i] = a
            yr[i] = a * 0.5
    return None


@njit(nogil=True, fastmath={"reassoc", "contract"})
def _fwd_floor_nt(x, r, h, y, start, stop):
    d = x.shape[1]
    th = np.empty(d, np.float32)
    ty = np.empty(d, np.float32)
    for row in range(start, stop):
        xr, rr = x[row], r[row]
        for i in range(d):
            a = xr[i] + rr[i]
            th[i] = a
            ty[i] = a * 0.5
        _stream_row(h[row], th)
        _stream_row(y[row], ty)


@njit(nogil=True, fastmath={"reassoc", "contract"})
def _bwd_floor(dy, dh, h, dx, start, stop):
    for chunk in range(start, stop):
        for row in range(chunk * _ROWS_PER_CHUNK, min(h.shape[0], (chunk + 1) * _ROWS_PER_CHUNK)):
            a, b, c, o = dy[row], dh[row], h[row], dx[row]
            for i in range(a.shape[0]):
                o[i] = a[i] + b[i] + c[i]


@njit(nogil=True, fastmath={"reassoc", "contract"})
def _bwd_floor_nt(dy, dh, h, dx, start, stop):
    d = h.shape[1]
    t = np.empty(d, np.float32)
    for chunk in range(start, stop):
        for row in range(chunk * _ROWS_PER_CHUNK, min(h.shape[0], (chunk + 1) * _ROWS_PER_CHUNK)):
            a, b, c = dy[row], dh[row], h[row]
            for i in range(d):
                t[i] = a[i] + b[i] + c[i]
            _stream_row(dx[row], t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    if args.rows < 64 or args.dim < 8 or args.dim % 8:
        ap.error(f"--rows >= 64 and --dim a multiple of 8 (>= 8), got {args.rows}, {args.dim}")
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {args.repeats}")
    m, d = args.rows, args.dim
    gen = torch.Generator().manual_seed(0)
    x, r, dy, dh = (torch.randn(m, d, generator=gen) for _ in range(4))
    w, b = torch.randn(d, generator=gen), torch.randn(d, generator=gen)
    h, y, dx, g = (torch.empty(m, d) for _ in range(4))
    for t in (h, y, dx):
        if t.data_ptr() % 32:
            raise SystemExit("a preallocated output is not 32-byte aligned: rerun")
    _, mean, rstd = torch.native_layer_norm(x + r, (d,), w, b, 1e-5)
    torch.add(x, r, out=h)
    fy, fh, fmean, frstd = fused.add_layer_norm_fwd(x, r, w, b, 1e-5, False)
    chunks = -(-m // _ROWS_PER_CHUNK)
    dwp = np.zeros((chunks, d), np.float32)
    dbp = np.zeros((chunks, d), np.float32)
    xs, rs, hs, ys, dys, dhs, dxs = (t.numpy() for t in (x, r, h, y, dy, dh, dx))
    fwd_args = (xs, rs, w.numpy(), b.numpy(), ys, hs, fmean.numpy(), frstd.numpy(), 1e-5, False)
    bwd_args = (dys, dhs, fh.numpy(), fmean.numpy(), frstd.numpy(), w.numpy(), dxs, dwp, dbp)
    bwd_args = bwd_args + (False, _ROWS_PER_CHUNK)
    fns = {
        "torch add (x + r)": lambda: torch.add(x, r, out=h),
        "torch layer_norm forward": lambda: torch.native_layer_norm(h, (d,), w, b, 1e-5),
        "torch layer_norm backward": lambda: torch.ops.aten.native_layer_norm_backward(
            dy, h, (d,), mean, rstd, w, b, [True, True, True]
        ),
        "torch add (dx + dh)": lambda: torch.add(dx, dh, out=g),
        "fused forward": lambda: parallel_for(fused._add_norm_fwd_kernel, m, fwd_args, 8),
        "fused backward": lambda: parallel_for(norms._layer_norm_bwd_kernel, chunks, bwd_args),
        "floor forward": lambda: parallel_for(_fwd_floor, m, (xs, rs, hs, ys), 8),
        "floor forward, nt stores": lambda: parallel_for(_fwd_floor_nt, m, (xs, rs, hs, ys), 8),
        "floor backward": lambda: parallel_for(_bwd_floor, chunks, (dys, dhs, hs, dxs)),
        "floor backward, nt stores": lambda: parallel_for(
            _bwd_floor_nt, chunks, (dys, dhs, hs, dxs)
        ),
    }
    # the non-temporal floors write what the ordinary ones do
    parallel_for(_fwd_floor_nt, m, (xs, rs, hs, ys), 8)
    parallel_for(_bwd_floor_nt, chunks, (dys, dhs, hs, dxs))
    if not (torch.equal(h, x + r) and torch.equal(y, (x + r) * 0.5)):
        raise SystemExit("the non-temporal forward floor wrote wrong values")
    if not torch.allclose(dx, dy + dh + h):
        raise SystemExit("the non-temporal backward floor wrote wrong values")
    times, _faults = bench._interleaved_ms(list(fns.values()), "cpu", 2, args.repeats)
    ms = dict(zip(fns, times))
    composite = sum(ms[k] for k in list(fns)[:4])
    fused_ms = ms["fused forward"] + ms["fused backward"]
    floor = ms["floor forward"] + ms["floor backward"]
    floor_nt = ms["floor forward, nt stores"] + ms["floor backward, nt stores"]
    print(f"load average {load_average()}; ({m}, {d}) float32, {torch.get_num_threads()} threads")
    for name, v in ms.items():
        print(f"  {name:28s} {v:7.2f} ms")
    print(f"composite {composite:.2f} ms, fused {fused_ms:.2f} ms: {composite / fused_ms:.2f}x")
    print(
        f"floor {floor:.2f} ms: ceiling {composite / floor:.2f}x; with nt stores "
        f"{floor_nt:.2f} ms: {composite / floor_nt:.2f}x"
    )
    ts = stamp()
    rows = [{"part": k, "median_ms": round(v, 3)} for k, v in ms.items()]
    rows += [
        {"part": "composite total", "median_ms": round(composite, 3)},
        {"part": "fused total", "median_ms": round(fused_ms, 3)},
        {"part": "floor total", "median_ms": round(floor, 3)},
        {"part": "floor total, nt stores", "median_ms": round(floor_nt, 3)},
    ]
    common = {
        "timestamp": ts,
        "shape": f"{m}x{d}",
        "threads": torch.get_num_threads(),
        "load_avg": load_average(),
    }
    print(write_csv(args.out, "add-norm-ceiling", ts, rows, common))
    return 0


if __name__ == "__main__":
    sys.exit(main())
