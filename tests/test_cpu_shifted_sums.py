"""The cpu kernels' one-pass statistics (shifted sums, docs/norms.md) and their fallback.

LayerNorm, GroupNorm/InstanceNorm, the fused residual add + LayerNorm and the modulated
LayerNorm take mean and variance from one pass of sums of ``x - s`` with the shift ``s``
the first value of the row (group); a row whose shift is an outlier is redone by the
corrected two-pass algorithm. Expected values: the float64 reference (``normkit.reference``)
and numpy's float64 moments of the values the kernel saw; torch in the same dtype gives
the tolerance (tests/tolerance.py). The bound checked is the one docs/norms.md derives.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("numba")

from normkit.ops import cpu  # noqa: E402
from normkit.ops.cpu.norms import SHIFT_Q_MAX, SUM_BLOCK  # noqa: E402
from normkit.reference import fused as ref_fused  # noqa: E402
from normkit.reference import norms as ref_norms  # noqa: E402

from hostile import randn  # noqa: E402
from tolerance import as_f64, assert_matches_reference  # noqa: E402

U32 = 2.0**-24  # unit roundoff of float32
# docs/norms.md: |relative error of var| <= 3 gamma / (1 - q), gamma = (SUM_BLOCK + 1) u,
# q <= SHIFT_Q_MAX on the one-pass path (the two-pass fallback is tighter still); plus the
# float32 rounding of the saved rstd (2u on var) and float64 slack
VAR_REL_BOUND = 3 * (SUM_BLOCK + 1) * U32 / (1 - SHIFT_Q_MAX) + 4 * U32
EPS = 1e-5


def _rows(case: str, m: int, d: int, seed: int) -> torch.Tensor:
    """(m, d) float64 rows of std 1 for each hostile case; exactly representable in float32."""
    x = randn(m, d, seed=seed)
    if case == "mean 0":
        pass
    elif case == "mean 1e4":
        x = x + 1e4
    elif case == "outlier shift":  # the first value, the shift, 1000 std above the rest
        x[:, 0] = 1000.0
    elif case == "outlier shift at 1e4":
        x = x + 1e4
        x[:, 0] = 1e4 - 3000.0
    elif case == "outlier shift 3e7":  # x - s rounds to ulp(3e7) = 2 std: d loses the data
        x[:, 0] = 3e7
    elif case == "shift at the threshold":
        # (s - mean)^2 / (var + (s - mean)^2) near SHIFT_Q_MAX: the largest one-pass error
        z = float(np.sqrt(SHIFT_Q_MAX / (1 - SHIFT_Q_MAX)))
        x = x + 5e3
        x[: m // 2, 0] = 5e3 + 0.98 * z
        x[m // 2 :, 0] = 5e3 + 1.02 * z
    elif case == "constant rows":
        x = torch.full((m, d), 7.25, dtype=torch.float64)
    else:
        raise AssertionError(case)
    return x.float().double()  # the values the float32 kernel sees


CASES = [
    "mean 0",
    "mean 1e4",
    "outlier shift",
    "outlier shift at 1e4",
    "outlier shift 3e7",
    "shift at the threshold",
    "constant rows",
]


def _check_stats(mean, rstd, values64: np.ndarray, what: str, eps: float = EPS):
    """mean/rstd (float32) against float64 moments of ``values64`` (rows x n)."""
    ref_mean = values64.mean(axis=1)
    ref_var = values64.var(axis=1)
    mean = as_f64(mean).reshape(-1)
    var = as_f64(rstd).reshape(-1) ** -2 - eps
    std = np.sqrt(ref_var)
    # the saved mean is float32: half an ulp of the mean, plus a small multiple of u * std
    assert np.all(np.abs(mean - ref_mean) <= U32 * np.abs(ref_mean) + 1e-5 * std + 1e-30), what
    scale = ref_var + eps  # var enters through rstd = 1/sqrt(var + eps)
    rel = np.abs(var - ref_var) / scale
    assert rel.max() <= VAR_REL_BOUND, f"{what}: var relative error {rel.max():.3g}"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("d", [768, 1500, 5])  # one block + tail, several blocks, tiny rows
def test_layer_norm_stats_and_output(case, d):
    x64 = _rows(case, 64, d, seed=d)
    x = x64.float()
    w, b = randn(d, seed=1, dtype=torch.float32), randn(d, seed=2, dtype=torch.float32)
    y, mean, rstd = cpu.norms.layer_norm_fwd(x, w, b, EPS)
    _check_stats(mean, rstd, x64.numpy(), f"LayerNorm {case}")
    ref_y, _, _ = ref_norms.layer_norm_forward(x64.numpy(), (d,), as_f64(w), as_f64(b), EPS)
    assert_matches_reference(y, ref_y, torch.float32, F.layer_norm(x, (d,), w, b, EPS), case)


@pytest.mark.parametrize("case", CASES)
def test_layer_norm_backward_after_one_pass_stats(case):
    d = 300
    x64 = _rows(case, 40, d, seed=3)
    x, dy = x64.float(), randn(40, d, seed=4, dtype=torch.float32)
    w = randn(d, seed=5, dtype=torch.float32)
    _, mean, rstd = cpu.norms.layer_norm_fwd(x, w, None, EPS)
    dx, dw, _ = cpu.norms.layer_norm_bwd(dy, x, mean, rstd, w)
    ref = ref_norms.layer_norm_backward(x64.numpy(), as_f64(dy), (d,), as_f64(w), None, EPS)
    xt, wt = x.clone().requires_grad_(), w.clone().requires_grad_()
    F.layer_norm(xt, (d,), wt, None, EPS).backward(dy)
    assert_matches_reference(dx, ref[0], torch.float32, xt.grad, f"dx {case}")
    assert_matches_reference(dw, ref[1], torch.float32, wt.grad, f"dweight {case}")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("shape, groups", [((4, 8, 300), 2), ((2, 3, 4096), 3), ((3, 6, 1), 2)])
def test_group_norm_stats_and_output(case, shape, groups):
    n, c, ell = shape
    rows = _rows(case, n * groups, (c // groups) * ell, seed=c)  # one row per (sample, group)
    x64 = rows.reshape(n, c, ell)
    x = x64.float()
    w, b = randn(c, seed=6, dtype=torch.float32), randn(c, seed=7, dtype=torch.float32)
    y, mean, rstd = cpu.norms.group_norm_fwd(x, w, b, groups, EPS)
    _check_stats(mean, rstd, rows.numpy(), f"GroupNorm {case}")
    ref_y, _, _ = ref_norms.group_norm_forward(x64.numpy(), groups, as_f64(w), as_f64(b), EPS)
    peer = F.group_norm(x, groups, w, b, EPS)
    assert_matches_reference(y, ref_y, torch.float32, peer, case)


@pytest.mark.parametrize("case", CASES)
def test_add_layer_norm_stats_and_gradients(case):
    m, d = 48, 768
    h64 = _rows(case, m, d, seed=8)
    r = randn(m, d, seed=9, dtype=torch.float32)
    x = (h64 - r.double()).float()  # so that h = x + r lands on the hostile rows
    w, b = randn(d, seed=10, dtype=torch.float32), randn(d, seed=11, dtype=torch.float32)
    dy, dh = randn(m, d, seed=12, dtype=torch.float32), randn(m, d, seed=13, dtype=torch.float32)
    y, h, mean, rstd = cpu.fused.add_layer_norm_fwd(x, r, w, b, EPS, False)
    assert torch.equal(h, x + r)  # float32 add, as torch
    _check_stats(mean, rstd, h.double().numpy(), f"add_layer_norm {case}")
    a = [as_f64(t) for t in (x, r, w, b, dy, dh)]
    ref_y, _ = ref_fused.add_layer_norm_forward(a[0], a[1], a[2], a[3], EPS)
    assert_matches_reference(y, ref_y, torch.float32, F.layer_norm(x + r, (d,), w, b, EPS), "y")
    dsum, dw, db = cpu.fused.add_layer_norm_bwd(dy, dh, h, mean, rstd, w)
    ref = ref_fused.add_layer_norm_backward(a[0], a[1], a[4], a[5], a[2], a[3], EPS)
    lx, lr, lw, lb = (t.clone().requires_grad_() for t in (x, r, w, b))
    ch = lx + lr
    torch.autograd.backward((F.layer_norm(ch, (d,), lw, lb, EPS), ch), (dy, dh))
    assert_matches_reference(dsum, ref[0], torch.float32, lx.grad, f"dx {case}")
    assert_matches_reference(dw, ref[2], torch.float32, lw.grad, f"dweight {case}")
    assert_matches_reference(db, ref[3], torch.float32, lb.grad, f"dbias {case}")


def test_add_layer_norm_without_residual_is_layer_norm():
    x = _rows("outlier shift at 1e4", 16, 300, seed=14).float()
    y, h, mean, rstd = cpu.fused.add_layer_norm_fwd(x, None, None, None, EPS, False)
    assert torch.equal(h, x) and h.data_ptr() != x.data_ptr()
    _check_stats(mean, rstd, x.double().numpy(), "add_layer_norm, no residual")
    ref_y, _, _ = ref_norms.layer_norm_forward(x.double().numpy(), (300,), eps=EPS)
    assert_matches_reference(y, ref_y, torch.float32, F.layer_norm(x, (300,), eps=EPS))


@pytest.mark.parametrize("case", CASES)
def test_modulated_layer_norm_stats(case):
    n, t, d = 4, 12, 384
    x64 = _rows(case, n * t, d, seed=15)
    x = x64.float().reshape(n, t, d)
    shift, scale = randn(n, d, seed=16, dtype=torch.float32), randn(n, d, seed=17).float() * 0.1
    y, mean, rstd = cpu.fused.modulated_layer_norm_fwd(x, shift, scale, 1e-6)
    _check_stats(mean, rstd, x64.numpy(), f"modulated {case}", eps=1e-6)
    ref_y = ref_fused.modulated_layer_norm_forward(
        x.double().numpy(), as_f64(shift), as_f64(scale), 1e-6
    )
    peer = F.layer_norm(x, (d,), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    assert_matches_reference(y, ref_y, torch.float32, peer, case)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["mean 0", "outlier shift"])
def test_half_precision_inputs_go_through_float32(dtype, case):
    x64 = _rows(case, 32, 512, seed=18) * 0.25 + 300.0  # fp16 squares of 300 overflow
    x = x64.to(dtype)
    xr = x.double()
    w, b = randn(512, seed=19, dtype=dtype), randn(512, seed=20, dtype=dtype)
    y, _, _ = cpu.norms.layer_norm_fwd(x, w, b, EPS)
    assert y.dtype == dtype
    ref_y, _, _ = ref_norms.layer_norm_forward(xr.numpy(), (512,), as_f64(w), as_f64(b), EPS)
    assert_matches_reference(y, ref_y, dtype, F.layer_norm(x, (512,), w, b, EPS), "LayerNorm")
    r = randn(32, 512, seed=21, dtype=dtype)
    y2, h2, _, _ = cpu.fused.add_layer_norm_fwd(x, r, w, b, EPS, False)
    ref_y2, _ = ref_fused.add_layer_norm_forward(xr.numpy(), as_f64(r), as_f64(w), as_f64(b), EPS)
    peer = F.layer_norm(x + r, (512,), w, b, EPS)
    assert_matches_reference(y2, ref_y2, dtype, peer, "add_layer_norm")
    xg = x.reshape(4, 8, 512)
    yg, _, _ = cpu.norms.group_norm_fwd(xg, None, None, 2, EPS)
    ref_g, _, _ = ref_norms.group_norm_forward(xg.double().numpy(), 2, eps=EPS)
    assert_matches_reference(yg, ref_g, dtype, F.group_norm(xg, 2, eps=EPS), "GroupNorm")


def test_nan_row_stays_in_its_row():
    x = randn(8, 300, seed=22, dtype=torch.float32)
    x[3, 7] = float("nan")
    y, mean, rstd = cpu.norms.layer_norm_fwd(x, None, None, EPS)
    assert torch.isnan(y[3]).all() and torch.isfinite(torch.cat([y[:3], y[4:]])).all()
    ref = F.layer_norm(x[4:].double(), (300,), eps=EPS)
    assert_matches_reference(y[4:], ref, torch.float32, F.layer_norm(x[4:], (300,), eps=EPS))


def test_results_do_not_depend_on_thread_count(monkeypatch):
    # large enough (> the pool's serial cut-off) that 2 and 3 threads really split the work;
    # rows of both paths (one-pass and outlier fallback) in every chunk
    m, d = 300, 768
    x = _rows("mean 1e4", m, d, seed=23).float()
    x[::7, 0] += 500.0
    r = randn(m, d, seed=24, dtype=torch.float32)
    w, b = randn(d, seed=25, dtype=torch.float32), randn(d, seed=26, dtype=torch.float32)
    dy, dh = randn(m, d, seed=27, dtype=torch.float32), randn(m, d, seed=28, dtype=torch.float32)
    xg = x.reshape(20, 32, 360)
    results = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("NORMKIT_NUM_THREADS", threads)
        out = list(cpu.norms.layer_norm_fwd(x, w, b, EPS))
        y, h, mean, rstd = cpu.fused.add_layer_norm_fwd(x, r, w, b, EPS, False)
        out += [y, h, mean, rstd, *cpu.fused.add_layer_norm_bwd(dy, dh, h, mean, rstd, w)]
        out += list(cpu.norms.group_norm_fwd(xg, w[:32], b[:32], 8, EPS))
        sh, sc = w.expand(3, d).contiguous(), b.expand(3, d).contiguous()
        out += list(cpu.fused.modulated_layer_norm_fwd(x.reshape(3, 100, d), sh, sc, EPS))
        results.append(out)
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            assert torch.equal(a, b_)


def test_infinite_first_value_in_rms_norm_behaves_like_torch():
    # the RMS path has shift 0: an infinite first value gives inf * 0 = NaN there and 0
    # elsewhere (rstd = 0), as torch, not a NaN row
    x = randn(4, 64, seed=29, dtype=torch.float32)
    x[1, 0] = float("inf")
    y, h, rstd = cpu.fused.add_rms_norm_fwd(x, None, None, 1e-6, False)
    peer = F.rms_norm(x, (64,), eps=1e-6)
    assert torch.equal(torch.isnan(y), torch.isnan(peer))
    assert torch.equal(y[1, 1:], peer[1, 1:])
