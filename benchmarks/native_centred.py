"""How far torch's float32 CPU kernels stray from the float64 reference as data moves off
centre: the measurement behind ``normkit._native.CENTRED_MAX``.

On the CPU, ``backend="auto"`` runs torch's own layer/group/batch norm kernel on small
float32 inputs and keeps its result when every ``|mean| * rstd`` (each row's, group's or
channel's mean in units of its standard deviation) is at most ``CENTRED_MAX``; otherwise
it recomputes on the input minus torch's mean. This script gives every set of values the
offset ``k`` (mean k, std 1) for k in 0, 2, 4, 8, 16, 32, 100, runs torch's kernels
unshifted (``torch.native_layer_norm`` on (64, 768), ``native_group_norm`` with 8 groups
and ``native_batch_norm`` in training on (8, 64, 16, 16)), backpropagates a gradient of
mean 0 (and, with ``--dy-mean``, another mean) and reports the worst error over three seeds
of y, dx, dweight and dbias relative to ``max(1, max|reference|)``, the scale of the
float32 floor 2e-6 of ``tests/tolerance.py``. Writes
``benchmarks/results/native-centred-<timestamp>.csv``.

    PYTHONPATH=src python benchmarks/native_centred.py [--dy-mean 0]

A non-zero ``--dy-mean`` makes dweight = sum(dy * x_hat) a sum whose large terms cancel:
there even normkit's own kernels exceed the floor (at k = 0), so it says nothing about
the threshold.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import _results  # benchmarks/_results.py: timestamp, load average, CSV
from normkit.reference import norms as R

OFFSETS = (0.0, 2.0, 4.0, 8.0, 16.0, 32.0, 100.0)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _rel(got: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.max(np.abs(_np(got) - ref)) / max(1.0, np.max(np.abs(ref))))


def _data(shape, k, dy_mean, gen):
    x = (torch.randn(*shape, generator=gen, dtype=torch.float64) + k).float()
    dy = (torch.randn(*shape, generator=gen, dtype=torch.float64) + dy_mean).float()
    return x, dy


def _families(c_ln=768, c=64):
    def ln(x, w, b):
        return torch.native_layer_norm(x, (c_ln,), w, b, 1e-5)

    def ln_ref(x, dy, w, b):
        return (R.layer_norm_forward(x, (c_ln,), w, b)[0],) + R.layer_norm_backward(
            x, dy, (c_ln,), w, b
        )

    def gn(x, w, b):
        return torch.native_group_norm(x, w, b, x.shape[0], c, x[0, 0].numel(), 8, 1e-5)

    def gn_ref(x, dy, w, b):
        return (R.group_norm_forward(x, 8, w, b)[0],) + R.group_norm_backward(x, dy, 8, w, b)

    def bn(x, w, b):
        return torch.native_batch_norm(x, w, b, None, None, True, 0.1, 1e-5)

    def bn_ref(x, dy, w, b):
        return (R.batch_norm_forward(x, w, b)[0],) + R.batch_norm_backward(x, dy, w, b)

    return {
        "layer_norm": (ln, ln_ref, (64, c_ln), c_ln),
        "group_norm": (gn, gn_ref, (8, c, 16, 16), c),
        "batch_norm": (bn, bn_ref, (8, c, 16, 16), c),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dy-mean", type=float, default=0.0, help="mean of the gradient")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(2)
    gen = torch.Generator()
    rows = []
    for k in OFFSETS:
        for family, (run, ref, shape, c) in _families().items():
            worst = dict.fromkeys(("y", "dx", "dweight", "dbias", "mean_x_rstd"), 0.0)
            for seed in range(args.seeds):
                gen.manual_seed(seed)
                x, dy = _data(shape, k, args.dy_mean, gen)
                w, b = torch.randn(c, generator=gen), torch.randn(c, generator=gen)
                leaves = [t.clone().requires_grad_() for t in (x, w, b)]
                y, mean, rstd = run(*leaves)
                y.backward(dy)
                refs = ref(_np(x), _np(dy), _np(w), _np(b))
                got = (y, *[t.grad for t in leaves])
                for name, g, r in zip(("y", "dx", "dweight", "dbias"), got, refs):
                    worst[name] = max(worst[name], _rel(g, r))
                spread = float((mean * rstd).detach().abs().max())
                worst["mean_x_rstd"] = max(worst["mean_x_rstd"], spread)
            rows.append(
                dict(family=family, offset=k, dy_mean=args.dy_mean)
                | {key: f"{v:.3g}" for key, v in worst.items()}
            )
            print(" ".join(f"{key}={val}" for key, val in rows[-1].items()), flush=True)
    stamp = _results.stamp()
    common = {"timestamp": stamp, "torch_version": torch.__version__}
    path = _results.write_csv(args.out, "native-centred", stamp, rows, common)
    print(f"wrote {path}; the float32 floor is 2e-06 (relative to max(1, max|ref|))")


if __name__ == "__main__":
    main()
