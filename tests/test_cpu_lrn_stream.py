"""The (N, C, L) LRN kernels that stream channels: squares summed straight from x, the
backward's adjoint window from a ring of ``width`` rows (no (C, block) work buffers).

Expected values: the float64 reference (``normkit.reference``), tolerance from torch's
port in the same dtype (tests/tolerance.py); windows at and past the channel edges,
wider than C, even, 1 channel, and a channel 1000x louder than its neighbours.
"""

import pytest
import torch

pytest.importorskip("numba")

from normkit.conventions import CanonicalLRN  # noqa: E402
from normkit.ops import cpu, torch_ops  # noqa: E402
from normkit.reference import lrn_backward, lrn_forward  # noqa: E402

from hostile import randn  # noqa: E402
from tolerance import assert_matches_reference  # noqa: E402

CASES = {
    # name: (shape (N, C, L), back, ahead)
    "size 5, C 96": ((2, 96, 700), 2, 2),  # several position blocks per sample
    "size 5, C 5": ((2, 5, 33), 2, 2),  # every channel at an edge
    "size 7 (generic taps)": ((2, 12, 40), 3, 3),
    "even, back 2 ahead 1": ((2, 9, 21), 2, 1),
    "wider than C": ((3, 3, 17), 2, 2),
    "one channel": ((2, 1, 50), 2, 2),
    "size 1": ((2, 4, 30), 0, 0),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta", [0.5, 0.75, 1.0, 0.6])
@pytest.mark.parametrize("case", list(CASES))
def test_streamed_lrn_matches_reference(case, beta, dtype):
    shape, back, ahead = CASES[case]
    alpha, k = 0.3, 1.2
    x64 = randn(*shape, seed=80, std=2.0)
    x64[:, shape[1] // 2] *= 1000.0  # one loud channel: direct sums, no cancellation
    dy64 = randn(*shape, seed=81)
    x, dy = x64.to(dtype), dy64.to(dtype)
    spec = CanonicalLRN("across", back + ahead + 1, back, ahead, alpha, beta, k)
    ref_y = lrn_forward(x.double().numpy(), spec)
    ref_dx = lrn_backward(x.double().numpy(), dy.double().numpy(), spec)
    y = cpu.lrn.lrn_fwd(x, back, ahead, alpha, beta, k, False)
    dx = cpu.lrn.lrn_bwd(x, dy, back, ahead, alpha, beta, k, False)
    peer_y = torch_ops.lrn_fwd(x, back, ahead, alpha, beta, k, False)
    peer_dx = torch_ops.lrn_bwd(x, dy, back, ahead, alpha, beta, k, False)
    assert_matches_reference(y, ref_y, dtype, torch_same_dtype=peer_y, what=f"y {case}")
    assert_matches_reference(dx, ref_dx, dtype, torch_same_dtype=peer_dx, what=f"dx {case}")


def test_streamed_lrn_does_not_depend_on_thread_count(monkeypatch):
    x = randn(4, 64, 900, seed=82, dtype=torch.float32)
    dy = randn(4, 64, 900, seed=83, dtype=torch.float32)
    results = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("NORMKIT_NUM_THREADS", threads)
        y = cpu.lrn.lrn_fwd(x, 2, 2, 1e-4, 0.75, 1.0, False)
        results.append((y, cpu.lrn.lrn_bwd(x, dy, 2, 2, 1e-4, 0.75, 1.0, False)))
    for y, dx in results[1:]:
        assert torch.equal(y, results[0][0]) and torch.equal(dx, results[0][1])
