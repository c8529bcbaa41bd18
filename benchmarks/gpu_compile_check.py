"""``torch.compile(mode="reduce-overhead")`` with normkit's layers on a GPU: does a whole
training step compile (normkit's kernels are custom ops, so inductor keeps each as one
node and CUDA graphs capture the step), does it train as the eager step does, and what
does it cost against torch?

For the ``normkit bench`` models named by ``--models`` (default ``resnet18-bn`` and
``transformer-ln``), batch 8, it

1. compiles the training step (forward, cross-entropy, backward; the SGD step stays
   eager) of torch's and of normkit's copy with ``mode="reduce-overhead"``;
2. trains ``--steps`` steps compiled and ``--steps`` steps eagerly from the same start and
   prints the largest relative difference of parameters and buffers between the two;
   inductor fuses torch's own ops differently from eager, so torch's copy shows the scale
   of that difference, and normkit passes at most twice torch's difference or 1e-5;
3. times a step, interleaved, median of ``--repeats``: torch eager, torch compiled,
   normkit compiled (ratios: torch eager time / each time).

Usage (repository root, a CUDA machine)::

    PYTHONPATH=src python benchmarks/gpu_compile_check.py [--models resnet18-bn] [--out DIR]

Writes ``compile-cuda-<UTC>.csv`` and exits 1 when a compile fails or normkit drifts.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch
import torch.nn.functional as F

import _gpu  # benchmarks/_gpu.py: model pairs, states, drift test, interleaved timing
import _results  # benchmarks/_results.py: timestamp, load average, CSV


def _stepper(model, x, target, compiled: bool):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def loss_and_grads():
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        return loss

    fn = torch.compile(loss_and_grads, mode="reduce-overhead") if compiled else loss_and_grads

    def step():
        opt.zero_grad(set_to_none=True)
        fn()
        opt.step()

    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet18-bn,transformer-ln")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    stamp = _results.stamp()
    rows, failed = [], False
    for name in args.models.split(","):
        x, target, ref, ours = _gpu.model_pair(name, args.batch)
        drifts, steppers = {}, {}
        for impl, model in (("torch", ref), ("normkit", ours)):
            eager_model, compiled_model = copy.deepcopy(model), copy.deepcopy(model)
            eager = _stepper(eager_model, x, target, compiled=False)
            try:
                t0 = time.perf_counter()
                compiled = _stepper(compiled_model, x, target, compiled=True)
                compiled()  # compiles (the first calls warm up the CUDA graph trees)
                compiled()
                eager()
                eager()
                torch.cuda.synchronize()
                print(f"{name} {impl}: compiled in {time.perf_counter() - t0:.1f} s")
            except Exception as exc:  # report and go on
                print(f"{name} {impl}: compile failed: {type(exc).__name__}: {exc}")
                failed = True
                continue
            for _ in range(args.steps):
                eager()
                compiled()
            torch.cuda.synchronize()
            eager_state = _gpu.float_state(eager_model)
            drifts[impl] = _gpu.max_rel(eager_state, _gpu.float_state(compiled_model))
            ok = _gpu.drift_ok(impl, drifts)
            failed |= not ok
            print(
                f"{name} {impl}: compiled vs eager after {args.steps + 2} steps: "
                f"{drifts[impl]:.3g}" + ("" if ok else "  FAILED")
            )
            rows.append(dict(model=name, impl=impl, what="compiled_vs_eager", value=drifts[impl]))
            steppers[f"{impl}-compiled"] = compiled
            if impl == "torch":
                steppers["torch-eager"] = eager
        if "torch-eager" not in steppers:
            continue
        ms = _gpu.interleaved_medians(steppers, args.repeats)
        base = ms["torch-eager"]
        print(
            f"{name} batch={args.batch}: "
            + ", ".join(f"{k} {v:.3f} ms ({base / v:.2f}x)" for k, v in ms.items())
        )
        for k, v in ms.items():
            rows.append(dict(model=name, impl=k, what="step_ms", value=v))
    if rows:  # none when every capture/compile failed
        common = dict(timestamp=stamp, device=torch.cuda.get_device_name(), batch=args.batch)
        print(_results.write_csv(args.out, "compile-cuda", stamp, rows, common))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
