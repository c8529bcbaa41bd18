"""Model-zoo training on a GPU: torchvision's ResNet-18 and torch's pre-norm Transformer
encoder, converted with ``normkit.convert``, trained side by side with torch's own layers.

For each model it

1. trains three copies for ``--steps`` SGD steps (momentum, in-place ReLU and residual
   adds as the zoo writes them) on inputs centred at ``--mean``: torch's float32 layers,
   normkit's float32 layers (``normkit.convert``), and torch's layers in float64 as the
   reference; it prints each float32 copy's largest relative parameter and running-statistic
   deviation from the float64 copy. normkit passes when its deviation is at most twice
   torch's plus 2e-6 (the suite's tolerance policy applied to whole training runs);
2. runs one bfloat16 autocast training step of the converted model (must be finite);
3. times a training step (forward, cross-entropy, backward, SGD) of torch's and normkit's
   float32 copies, interleaved, median of ``--repeats`` (printed as torch time / normkit
   time).

Usage (repository root, a CUDA machine with torchvision)::

    PYTHONPATH=src python benchmarks/gpu_zoo_check.py [--device cuda] [--out DIR]

Without torchvision a small hand-written residual BN network takes ResNet-18's place.
Exits 1 when a deviation check fails.
"""

from __future__ import annotations

import argparse
import copy
import csv
import functools
import os
import statistics
import sys
import time
from datetime import datetime, timezone

import torch
import torch.nn as nn
import torch.nn.functional as F

import normkit


def _resnet():
    try:
        import torchvision

        return "torchvision resnet18", torchvision.models.resnet18(num_classes=10), (3, 64, 64)
    except ImportError:
        layers = [nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(True)]
        layers += [nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)]
        layers += [nn.ReLU(True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)]
        return "small BN net (no torchvision)", nn.Sequential(*layers), (3, 16, 16)


class _Encoder(nn.Module):
    def __init__(self, d=128, heads=4, layers=2):
        super().__init__()
        one = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True)
        one.norm_first = True
        self.body = nn.TransformerEncoder(one, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        return self.head(self.norm(self.body(x)).mean(1))


def _models():
    yield _resnet()
    yield "pre-norm Transformer encoder (d 128, 2 layers)", _Encoder(), (32, 128)


def _step(model, opt, x, target):
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), target)
    loss.backward()
    opt.step()
    return loss


def _deviation(model, ref) -> float:
    """Largest |a - b| / max(1, max|b|) over parameters and floating buffers."""
    worst = 0.0
    a_state, b_state = model.state_dict(), ref.state_dict()
    for name, b in b_state.items():
        if not b.is_floating_point():
            continue
        a = a_state[name].double()
        scale = max(1.0, float(b.abs().max()))
        worst = max(worst, float((a - b).abs().max()) / scale)
    return worst


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--mean", type=float, default=50.0, help="centre of the input data")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    args = ap.parse_args(argv)
    dev = args.device
    rows, failed = [], False
    for name, base, shape in _models():
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(1)
        xs = [torch.randn(args.batch, *shape, generator=gen) + args.mean for _ in range(4)]
        ts = [torch.randint(0, 10, (args.batch,), generator=gen) for _ in range(4)]
        ref = copy.deepcopy(base).to(dev, torch.float64)
        theirs = copy.deepcopy(base).to(dev)
        ours = normkit.convert(copy.deepcopy(base).to(dev))
        copies = {"reference": ref, "torch": theirs, "normkit": ours}
        opts = {
            k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in copies.items()
        }
        for i in range(args.steps):
            x, t = xs[i % 4].to(dev), ts[i % 4].to(dev)
            for k, m in copies.items():
                _step(m, opts[k], x.double() if k == "reference" else x, t)
        dev_torch, dev_ours = _deviation(theirs, ref), _deviation(ours, ref)
        ok = dev_ours <= 2 * dev_torch + 2e-6
        failed |= not ok
        print(
            f"[{'ok  ' if ok else 'FAIL'}] {name}: {args.steps} steps at mean {args.mean:g}: "
            f"deviation from float64 torch {dev_torch:.3g}, normkit {dev_ours:.3g}"
        )
        with torch.autocast(dev, dtype=torch.bfloat16):
            loss = _step(ours, opts["normkit"], xs[0].to(dev), ts[0].to(dev))
        finite = bool(torch.isfinite(loss))
        failed |= not finite
        print(f"[{'ok  ' if finite else 'FAIL'}] {name}: bfloat16 autocast step, loss {loss:.4f}")
        # timing: interleaved, order reversed each round
        x, t = xs[0].to(dev), ts[0].to(dev)
        fns = {
            "torch": functools.partial(_step, theirs, opts["torch"], x, t),
            "normkit": functools.partial(_step, ours, opts["normkit"], x, t),
        }
        for fn in fns.values():
            for _ in range(3):
                fn()
        times = {k: [] for k in fns}
        order = list(fns)
        for _ in range(args.repeats):
            for k in order:
                _sync(dev)
                t0 = time.perf_counter()
                fns[k]()
                _sync(dev)
                times[k].append((time.perf_counter() - t0) * 1e3)
            order.reverse()
        med = {k: statistics.median(v) for k, v in times.items()}
        ratio = med["torch"] / med["normkit"]
        print(
            f"       {name}: train step batch {args.batch}, torch {med['torch']:.2f} ms, "
            f"normkit {med['normkit']:.2f} ms, ratio {ratio:.2f}"
        )
        rows.append(
            dict(
                model=name,
                device=torch.cuda.get_device_name() if dev == "cuda" else dev,
                torch=torch.__version__,
                steps=args.steps,
                mean=args.mean,
                deviation_torch=f"{dev_torch:.3g}",
                deviation_normkit=f"{dev_ours:.3g}",
                deviation_ok=ok,
                bf16_finite=finite,
                batch=args.batch,
                torch_ms=f"{med['torch']:.3f}",
                normkit_ms=f"{med['normkit']:.3f}",
                ratio=f"{ratio:.3f}",
            )
        )
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(args.out, f"zoo-{dev}-{stamp}.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
