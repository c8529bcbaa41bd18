"""What the CUDA scripts in this folder share: ``normkit bench``'s models as a torch /
normkit pair on the device (or the CPU), a model's floating-point state and how far two states part,
the pass test for normkit's drift, and interleaved, synchronized timing.

Imported by the scripts in this folder (``python benchmarks/<script>.py`` puts the folder
on ``sys.path``).
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

import normkit
from normkit import bench

__all__ = ["model_pair", "float_state", "max_rel", "drift_ok", "interleaved_medians"]


def model_pair(name: str, batch: int, device: str = "cuda"):
    """``(x, target, torch_model, normkit_model)`` for ``bench.MODELS[name]`` on ``device``
    (the CUDA device for the scripts here; ``model_norm_share.py`` asks for the CPU),
    normkit's copy with torch's weights. The lazy layers are materialised on the device,
    so ``NORMKIT_BACKEND=triton`` (CUDA tensors only) works from the first call."""
    build, shape, _batches, _quick = bench.MODELS[name]
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(batch, *shape, generator=gen).to(device)
    target = torch.randint(0, 10, (batch,), generator=gen).to(device)
    torch.manual_seed(3)
    ref = build(bench._norm_factory(torch.nn)).to(device)
    ref(x)
    ours = build(bench._norm_factory(normkit)).to(device)
    ours(x)
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))
    return x, target, ref, ours


def float_state(model) -> dict:
    """The model's floating-point parameters and buffers, in float64 on the CPU."""
    return {
        k: v.detach().double().cpu() for k, v in model.state_dict().items() if v.is_floating_point()
    }


def max_rel(a: dict, b: dict) -> float:
    """The largest difference between two :func:`float_state` dicts, each tensor's relative
    to its largest value in ``a``."""
    return max(float((a[k] - b[k]).abs().max()) / max(float(a[k].abs().max()), 1e-30) for k in a)


def drift_ok(impl: str, drifts: dict) -> bool:
    """normkit passes when its drift is at most 1e-5 or twice torch's own (``drifts``
    holds torch's first); torch's is the yardstick and always passes."""
    return impl == "torch" or drifts[impl] <= max(1e-5, 2 * drifts.get("torch", 0.0))


def interleaved_medians(fns: dict, repeats: int, unit: float = 1e3) -> dict:
    """``{name: median time}`` (seconds times ``unit``) of the functions taking turns call by
    call, each call synchronized before and after."""
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t0)
    return {k: unit * statistics.median(v) for k, v in times.items()}
