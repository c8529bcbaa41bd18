"""The suite's one tolerance policy (docs/design.md section 2).

Everything is compared with the float64 reference. A low-precision result
passes when

    max|ours - ref| <= 2 * max|torch_same_dtype - ref| + ATOL[dtype]

so normkit may be at most twice as far from the truth as torch itself is in the
same dtype (plus a floor). Where torch has no counterpart, ``torch_err`` is 0
and the floor ``ATOL[dtype]`` (relative to the reference's scale) applies.
"""

from __future__ import annotations

import numpy as np
import torch

# floors, relative to max(1, max|ref|)
ATOL = {
    torch.float64: 1e-12,
    torch.float32: 2e-6,
    torch.bfloat16: 1.6e-2,
    torch.float16: 2e-3,
}


def as_f64(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().to("cpu", torch.float64).numpy()
    return np.asarray(t, dtype=np.float64)


def max_err(a, ref) -> float:
    a, ref = as_f64(a), as_f64(ref)
    assert a.shape == ref.shape, f"shape {a.shape} != reference {ref.shape}"
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - ref)))


def assert_matches_reference(ours, ref, dtype, torch_same_dtype=None, what="output"):
    """Apply the policy; on failure report both errors."""
    ref64 = as_f64(ref)
    ours64 = as_f64(ours)
    assert np.all(np.isfinite(ours64) == np.isfinite(ref64)), f"{what}: non-finite mismatch"
    finite = np.isfinite(ref64)
    scale = max(1.0, float(np.max(np.abs(ref64[finite]))) if finite.any() else 1.0)
    err = float(np.max(np.abs(ours64[finite] - ref64[finite]))) if finite.any() else 0.0
    torch_err = (
        0.0
        if torch_same_dtype is None
        else max_err(np.where(finite, as_f64(torch_same_dtype), 0), np.where(finite, ref64, 0))
    )
    bound = 2 * torch_err + ATOL[dtype] * scale
    assert err <= bound, (
        f"{what}: max|ours - ref| = {err:.3g} exceeds 2*{torch_err:.3g} + "
        f"{ATOL[dtype]:g}*{scale:.3g} = {bound:.3g} ({dtype})"
    )


def numeric_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central finite differences of the scalar ``f`` at ``x`` (float64; ``x`` is restored)."""
    g = np.zeros_like(x)
    flat = x.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f(x)
        flat[i] = old - eps
        minus = f(x)
        flat[i] = old
        g.reshape(-1)[i] = (plus - minus) / (2 * eps)
    return g
