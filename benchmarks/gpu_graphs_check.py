"""CUDA graphs with normkit's layers: does a whole training step capture and replay, does it
train as the eager step does, and what does it cost against torch?

On CUDA the bench models are host-bound: every operator call costs the host 5-15 us while
the GPU idles, and normkit's exactness shift adds calls per BatchNorm layer
(``benchmarks/results/gpu-h200-20261128/README.md``). A CUDA graph replays the recorded
kernels with no per-call host work, which is how such models are run when speed matters
(``torch.cuda.graph``, or ``torch.compile(mode="reduce-overhead")``). Capture requires
that nothing in the step synchronizes with the host; this script is the check that
normkit's CUDA paths (the shifted native path and the Triton kernels) meet it.

For each bench model (``normkit.bench.MODELS``) and each of torch's layers and normkit's,
the script

1. captures one whole training step (forward, cross-entropy, backward, SGD with momentum)
   in a CUDA graph after three warm-up steps on a side stream, as torch's documentation
   shows for whole-network capture;
2. trains ``--steps`` steps by replaying the graph and ``--steps`` steps eagerly from the
   same start, with cuDNN's deterministic algorithms, and prints the largest relative
   difference of parameters and buffers between the two. normkit passes when its drift
   is at most 1e-5 or twice torch's own (the same kernels run in the same order; what
   remains is nondeterminism both share, such as atomic adds);
3. times a step, interleaved, median of ``--repeats``: torch eager, torch graphed,
   normkit eager, normkit graphed. Ratios are torch eager time / each time.

Usage (repository root, a CUDA machine)::

    PYTHONPATH=src python benchmarks/gpu_graphs_check.py [--batch 8] [--out DIR]

Writes ``graphs-cuda-<UTC>.csv`` to ``--out`` (default ``benchmarks/results``) and exits 1
when a capture fails or a graphed run drifts from its eager run.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

import torch
import torch.nn.functional as F

import _gpu  # benchmarks/_gpu.py: model pairs, states, drift test, interleaved timing
import _results  # benchmarks/_results.py: timestamp, load average, CSV
from normkit import bench


class _Trainer:
    """One model copy with its optimizer, stepped eagerly or through a captured graph."""

    def __init__(self, model, x, target):
        self.model = model.cuda()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.x = x.cuda()
        self.target = target.cuda()
        self.graph = None

    def eager(self):
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(self.x), self.target)
        loss.backward()
        self.opt.step()

    def capture(self):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.eager()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            loss = F.cross_entropy(self.model(self.x), self.target)
            loss.backward()
            self.opt.step()

    def replay(self):
        self.graph.replay()

    def state(self):
        return _gpu.float_state(self.model)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    stamp = _results.stamp()
    rows, failed = [], False
    for name in bench.MODELS:
        x, target, ref, ours = _gpu.model_pair(name, args.batch)
        # drift: graphed vs eager from the same start, per implementation
        torch.backends.cudnn.deterministic = True
        drifts = {}
        for impl, model in (("torch", ref), ("normkit", ours)):
            eager = _Trainer(copy.deepcopy(model), x, target)
            graphed = _Trainer(copy.deepcopy(model), x, target)
            try:
                graphed.capture()
            except Exception as exc:  # report and go on with the other models
                print(f"{name} {impl}: capture failed: {type(exc).__name__}: {exc}")
                failed = True
                continue
            for _ in range(3):  # the warm-up steps capture() ran
                eager.eager()
            for _ in range(args.steps):
                eager.eager()
                graphed.replay()
            torch.cuda.synchronize()
            drift = drifts[impl] = _gpu.max_rel(eager.state(), graphed.state())
            ok = _gpu.drift_ok(impl, drifts)
            failed |= not ok
            print(
                f"{name} {impl}: graphed vs eager after {args.steps} steps: {drift:.3g}"
                + ("" if ok else "  FAILED")
            )
            rows.append(dict(model=name, impl=impl, what="graphed_vs_eager_max_rel", value=drift))
        # timing: fresh copies, all four interleaved, torch's default algorithm choice
        torch.backends.cudnn.deterministic = False
        fns = {}
        for impl, model in (("torch", ref), ("normkit", ours)):
            eager = _Trainer(copy.deepcopy(model), x, target)
            graphed = _Trainer(copy.deepcopy(model), x, target)
            try:
                graphed.capture()
            except Exception:
                continue
            fns[f"{impl}-eager"] = eager.eager
            fns[f"{impl}-graphed"] = graphed.replay
        for fn in fns.values():  # warm-up
            fn()
        ms = _gpu.interleaved_medians(fns, args.repeats)
        base = ms["torch-eager"]
        print(
            f"{name} batch={args.batch}: "
            + ", ".join(f"{k} {v:.3f} ms ({base / v:.2f}x)" for k, v in ms.items())
        )
        for k, v in ms.items():
            rows.append(dict(model=name, impl=k, what="step_ms", value=v))
            rows.append(dict(model=name, impl=k, what="torch_eager_over_this", value=base / v))
    if rows:  # none when every capture/compile failed
        common = dict(timestamp=stamp, device=torch.cuda.get_device_name(), batch=args.batch)
        print(_results.write_csv(args.out, "graphs-cuda", stamp, rows, common))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
