"""The numba ``cpu`` backend against the float64 reference and torch, every op x dtype.

LRN is checked against ``normkit.reference``; the norm ops against float64
computations written here and ``torch.nn.functional`` (forward, and autograd
through it for gradients), under the suite's tolerance policy (tests/tolerance.py).
"""

import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("numba")

from normkit import dispatch  # noqa: E402
from normkit.conventions import CanonicalLRN, canonicalize  # noqa: E402
from normkit.functional import local_response_norm  # noqa: E402
from normkit.ops import cpu, torch_ops  # noqa: E402
from normkit.reference import lrn_backward, lrn_forward  # noqa: E402

from hostile import randn  # noqa: E402
from tolerance import ATOL, assert_matches_reference, max_err  # noqa: E402

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
BETAS = [0.5, 0.75, 1.0, 0.6]


def _rounded(x64, dtype):
    """The input as the kernel sees it: rounded to ``dtype``, then exact in float64."""
    x = x64.to(dtype)
    return x, x.double()


# --- LRN ----------------------------------------------------------------------------------


def _lrn_layouts(x):
    yield "contiguous", x
    if x.dim() == 4:
        yield "channels_last", x.contiguous(memory_format=torch.channels_last)
    yield "strided", x.transpose(0, -1).contiguous().transpose(0, -1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize(
    "case", ["across 4-D", "across rank 3", "across rank 5", "within", "even window"]
)
def test_lrn_fwd_bwd_every_dtype_layout_and_beta(dtype, beta, case):
    shape, back, ahead, within = {
        "across 4-D": ((3, 7, 5, 4), 2, 2, False),
        "across rank 3": ((2, 6, 33), 1, 1, False),
        "across rank 5": ((2, 5, 3, 2, 3), 2, 2, False),
        "within": ((2, 3, 7, 6), 1, 1, True),
        "even window": ((2, 9, 3, 4), 2, 1, False),
    }[case]
    alpha, k = 0.4, 1.3
    x64 = randn(*shape, seed=1)
    dy64 = randn(*shape, seed=2)
    x, xr = _rounded(x64, dtype)
    dy, dyr = _rounded(dy64, dtype)
    # the canonical form directly (covers even windows and within)
    spec = CanonicalLRN(
        "within" if within else "across", back + ahead + 1, back, ahead, alpha, beta, k
    )
    ref_y = lrn_forward(xr.numpy(), spec)
    ref_dx = lrn_backward(xr.numpy(), dyr.numpy(), spec)
    peer_y = torch_ops.lrn_fwd(x, back, ahead, alpha, beta, k, within)
    peer_dx = torch_ops.lrn_bwd(x, dy, back, ahead, alpha, beta, k, within)
    for name, xv in _lrn_layouts(x):
        y = cpu.lrn.lrn_fwd(xv, back, ahead, alpha, beta, k, within)
        dx = cpu.lrn.lrn_bwd(xv, dy, back, ahead, alpha, beta, k, within)
        assert y.dtype == dtype and dx.dtype == dtype and y.shape == x.shape
        assert_matches_reference(y, ref_y, dtype, torch_same_dtype=peer_y, what=f"y {name}")
        assert_matches_reference(dx, ref_dx, dtype, torch_same_dtype=peer_dx, what=f"dx {name}")


@pytest.mark.parametrize("beta", BETAS)
def test_lrn_gradcheck_float64_cpu_backend(beta):
    x = randn(2, 6, 3, 4, seed=3).requires_grad_()
    for region, convention in (("across", "torch"), ("across", "onnx"), ("within", "caffe")):
        size = 3 if region == "within" else 4 if convention == "onnx" else 5

        def f(v, size=size, region=region, convention=convention):
            return local_response_norm(
                v, size, 0.7, beta, 1.1, region=region, convention=convention, backend="cpu"
            )

        assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-8)
        assert dispatch.last_backend["lrn_bwd"] == "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_lrn_loud_channel_and_huge_values(dtype, layout):
    # one channel 1000x louder: a running add/subtract window loses 5-13% in float32
    x = randn(2, 16, 5, 5, seed=4)
    x[:, 7] *= 1000.0
    x = x.to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    spec = canonicalize(5, 1.0, 0.75, 1.0)
    y = local_response_norm(x, 5, 1.0, 0.75, 1.0, backend="cpu")
    ref = lrn_forward(x.double().numpy(), spec)
    rel = np.max(np.abs(y.double().numpy() - ref) / np.maximum(np.abs(ref), 1e-30))
    assert rel < (1e-5 if dtype == torch.float32 else 1e-12)
    dy = randn(2, 16, 5, 5, seed=5).to(dtype)
    dx = cpu.lrn.lrn_bwd(x, dy, 2, 2, 1.0 / 5, 0.75, 1.0, False)
    ref_dx = lrn_backward(x.double().numpy(), dy.double().numpy(), spec)
    scale = np.abs(ref_dx).max()
    assert (
        np.max(np.abs(dx.double().numpy() - ref_dx))
        <= (1e-5 if dtype == torch.float32 else 1e-12) * scale
    )
    # 1e38: x^2 is inf in float32; a running sum would give inf - inf = NaN
    huge = torch.full((1, 6, 2, 2), 1e38, dtype=torch.float32)
    for within in (False, True):
        y = cpu.lrn.lrn_fwd(huge, 1, 1, 1.0 / 3, 0.75, 1.0, within)
        assert not torch.isnan(y).any()
        assert y.abs().max().item() < 1e-10  # float64 truth: ~1e38 * (1e76)^-0.75 ~ 1e-19


@pytest.mark.parametrize("beta", BETAS)
def test_lrn_nhwc_user_input_uses_no_copy_path_and_matches(beta):
    x = randn(2, 5, 4, 11, seed=6, dtype=torch.float32)  # N H W C
    spec = canonicalize(5, 0.5, beta, 1.0)
    y = local_response_norm(x, 5, 0.5, beta, 1.0, channel_dim=-1, backend="cpu")
    ref = lrn_forward(x.double().numpy(), spec, channel_axis=-1)
    assert y.is_contiguous()
    assert_matches_reference(y, ref, torch.float32)


def test_lrn_size_larger_than_channels_keeps_divisor():
    x = randn(2, 3, 4, 4, seed=7)
    ours = local_response_norm(x, 9, 0.5, 0.75, 1.0, backend="cpu")
    theirs = F.local_response_norm(x, 9, 0.5, 0.75, 1.0)
    assert max_err(ours, theirs) < 1e-13


# --- norm ops: helpers ----------------------------------------------------------------


def _params(n, dtype, seed):
    w = randn(n, seed=seed).to(dtype)
    b = randn(n, seed=seed + 1).to(dtype)
    return w, b


def _grads(fn, x, params, dy):
    """Autograd gradients of fn(x, *params) with respect to x and every non-None param."""
    leaves = [x] + [p for p in params if p is not None]
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    it = iter(leaves[1:])
    args = [next(it) if p is not None else None for p in params]
    out = fn(leaves[0], *args)
    grads = torch.autograd.grad(out, leaves, dy)
    return out.detach(), grads


def _peer_or_none(fn):
    try:
        return fn()
    except RuntimeError:  # torch lacks this dtype on CPU
        return None


AFFINE = [(True, True), (True, False), (False, False)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("shape", [(37, 64), (5, 1023), (3, 4, 24)])
def test_layer_norm(dtype, affine, shape):
    d = shape[-1]
    x64 = randn(*shape, seed=10, mean=0.5, std=2.0)
    dy64 = randn(*shape, seed=11)
    w64, b64 = _params(d, torch.float64, 12)
    w64 = w64 if affine[0] else None
    b64 = b64 if affine[1] else None
    x, xr = _rounded(x64, dtype)
    dy, dyr = _rounded(dy64, dtype)
    w = None if w64 is None else w64.to(dtype)
    b = None if b64 is None else b64.to(dtype)
    wr = None if w is None else w.double()
    br = None if b is None else b.double()

    def ln(v, ww, bb):
        return F.layer_norm(v, (d,), ww, bb, 1e-5)

    ref_y, ref_g = _grads(ln, xr, [wr, br], dyr)
    peer = _peer_or_none(lambda: _grads(ln, x, [w, b], dy))
    y, mean, rstd = cpu.norms.layer_norm_fwd(x, w, b, 1e-5)
    assert y.dtype == dtype and mean.dtype == (
        torch.float64 if dtype == torch.float64 else torch.float32
    )
    assert_matches_reference(y, ref_y, dtype, peer and peer[0], what="y")
    assert_matches_reference(mean, xr.mean(-1), dtype, what="mean")
    assert_matches_reference(rstd, (xr.var(-1, unbiased=False) + 1e-5).rsqrt(), dtype, what="rstd")
    dx, dw, db = cpu.norms.layer_norm_bwd(dy, x, mean, rstd, w)
    assert_matches_reference(dx, ref_g[0], dtype, peer and peer[1][0], what="dx")
    i = 1
    if w is not None:
        assert dw.dtype == dtype
        assert_matches_reference(dw, ref_g[i], dtype, peer and peer[1][i], what="dweight")
        i += 1
    else:
        assert dw is None
    ref_db = dyr.reshape(-1, d).sum(0)
    assert_matches_reference(db, ref_db, dtype, peer and dy.reshape(-1, d).sum(0), what="dbias")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_weight", [True, False])
@pytest.mark.parametrize("shape", [(37, 64), (5, 1023)])
def test_rms_norm(dtype, with_weight, shape):
    d = shape[-1]
    x64 = randn(*shape, seed=20, mean=0.3)
    dy64 = randn(*shape, seed=21)
    x, xr = _rounded(x64, dtype)
    dy, dyr = _rounded(dy64, dtype)
    w = randn(d, seed=22).to(dtype) if with_weight else None
    wr = None if w is None else w.double()

    def rms(v, ww):
        return F.rms_norm(v, (d,), ww, 1e-6)

    ref_y, ref_g = _grads(rms, xr, [wr], dyr)
    peer = _peer_or_none(lambda: _grads(rms, x, [w], dy))
    y, rstd = cpu.norms.rms_norm_fwd(x, w, 1e-6)
    assert_matches_reference(y, ref_y, dtype, peer and peer[0], what="y")
    assert_matches_reference(rstd, (xr.pow(2).mean(-1) + 1e-6).rsqrt(), dtype, what="rstd")
    dx, dw = cpu.norms.rms_norm_bwd(dy, x, rstd, w)
    assert_matches_reference(dx, ref_g[0], dtype, peer and peer[1][0], what="dx")
    if with_weight:
        assert_matches_reference(dw, ref_g[1], dtype, peer and peer[1][1], what="dweight")
    else:
        assert dw is None


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("shape,groups", [((3, 8, 5, 7), 4), ((2, 6, 17), 6), ((2, 4, 9), 1)])
def test_group_norm_and_instance_norm(dtype, affine, shape, groups):
    c = shape[1]
    x64 = randn(*shape, seed=30, mean=-1.0, std=3.0)
    dy64 = randn(*shape, seed=31)
    x, xr = _rounded(x64, dtype)
    dy, dyr = _rounded(dy64, dtype)
    w64, b64 = _params(c, torch.float64, 32)
    w = w64.to(dtype) if affine[0] else None
    b = b64.to(dtype) if affine[1] else None
    wr = None if w is None else w.double()
    br = None if b is None else b.double()

    def gn(v, ww, bb):
        return F.group_norm(v, groups, ww, bb, 1e-5)

    ref_y, ref_g = _grads(gn, xr, [wr, br], dyr)
    peer = _peer_or_none(lambda: _grads(gn, x, [w, b], dy))
    y, mean, rstd = cpu.norms.group_norm_fwd(x, w, b, groups, 1e-5)
    assert mean.shape == (shape[0], groups)
    grouped = xr.reshape(shape[0], groups, -1)
    assert_matches_reference(mean, grouped.mean(-1), dtype, what="mean")
    assert_matches_reference(
        rstd, (grouped.var(-1, unbiased=False) + 1e-5).rsqrt(), dtype, what="rstd"
    )
    assert_matches_reference(y, ref_y, dtype, peer and peer[0], what="y")
    dx, dw, db = cpu.norms.group_norm_bwd(dy, x, mean, rstd, w, groups)
    assert_matches_reference(dx, ref_g[0], dtype, peer and peer[1][0], what="dx")
    i = 1
    if w is not None:
        assert_matches_reference(dw, ref_g[i], dtype, peer and peer[1][i], what="dweight")
        i += 1
    else:
        assert dw is None
    ref_db = dyr.transpose(0, 1).reshape(c, -1).sum(1)
    assert_matches_reference(db, ref_db, dtype, what="dbias")
    if groups == c:  # InstanceNorm is GroupNorm with G = C
        ref_in = F.instance_norm(xr, weight=wr, bias=br, eps=1e-5)
        assert_matches_reference(y, ref_in, dtype, peer and peer[0], what="instance norm")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("shape", [(4, 5, 6, 7), (16, 3), (3, 4, 33)])
def test_batch_norm_train_and_eval(dtype, affine, shape):
    c = shape[1]
    x64 = randn(*shape, seed=40, mean=2.0, std=0.5)
    dy64 = randn(*shape, seed=41)
    x, xr = _rounded(x64, dtype)
    dy, dyr = _rounded(dy64, dtype)
    w64, b64 = _params(c, torch.float64, 42)
    w = w64.to(dtype) if affine[0] else None
    b = b64.to(dtype) if affine[1] else None
    wr = None if w is None else w.double()
    br = None if b is None else b.double()
    eps = 1e-5

    def bn(v, ww, bb):
        return F.batch_norm(v, None, None, ww, bb, training=True, eps=eps)

    ref_y, ref_g = _grads(bn, xr, [wr, br], dyr)
    peer = _peer_or_none(lambda: _grads(bn, x, [w, b], dy))
    mean, var = cpu.norms.batch_norm_stats(x)
    dims = [0] + list(range(2, len(shape)))
    assert_matches_reference(mean, xr.mean(dims), dtype, what="mean")
    assert_matches_reference(var, xr.var(dims, unbiased=False), dtype, what="var")
    rstd = (var + eps).rsqrt()
    y = cpu.norms.batch_norm_apply(x, mean, rstd, w, b)
    assert_matches_reference(y, ref_y, dtype, peer and peer[0], what="y")
    sum_dy, sum_dy_xhat = cpu.norms.batch_norm_bwd_reduce(dy, x, mean, rstd)
    count = x.numel() // c
    dx = cpu.norms.batch_norm_bwd_apply(dy, x, mean, rstd, w, sum_dy, sum_dy_xhat, count)
    assert_matches_reference(dx, ref_g[0], dtype, peer and peer[1][0], what="dx")
    i = 1
    if w is not None:  # dweight = sum_dy_xhat, dbias = sum_dy
        assert_matches_reference(sum_dy_xhat, ref_g[i], dtype, peer and peer[1][i], what="dweight")
        i += 1
    if b is not None:
        assert_matches_reference(sum_dy, ref_g[i], dtype, peer and peer[1][i], what="dbias")
    # eval: the same apply with running statistics
    rm, rv = randn(c, seed=43), randn(c, seed=44).abs() + 0.5
    ref_eval = F.batch_norm(xr, rm, rv, wr, br, training=False, eps=eps)
    y_eval = cpu.norms.batch_norm_apply(x, rm, (rv + eps).rsqrt(), w, b)
    assert_matches_reference(y_eval, ref_eval, dtype, what="eval y")


def test_batch_norm_identity_seed_003():
    # gamma = sqrt(var + eps), beta = mean returns the input
    x = randn(8, 3, 5, 5, seed=45, mean=3.0)
    mean, var = cpu.norms.batch_norm_stats(x)
    eps = 1e-5
    y = cpu.norms.batch_norm_apply(x, mean, (var + eps).rsqrt(), (var + eps).sqrt(), mean)
    assert max_err(y, x) < 1e-12


@pytest.mark.parametrize("op", ["layer", "group", "batch", "rms"])
def test_statistics_at_mean_1e4_float32(op):
    # E[x^2] - E[x]^2 is garbage here in float32; two-pass / Chan is not
    x64 = randn(64, 8, 96, seed=50, mean=1e4, std=1.0)
    x = x64.float()
    xr = x.double()
    if op == "layer":
        _, mean, rstd = cpu.norms.layer_norm_fwd(x, None, None, 1e-5)
        ref_var = xr.var(-1, unbiased=False)
    elif op == "group":
        _, mean, rstd = cpu.norms.group_norm_fwd(x, None, None, 4, 1e-5)
        ref_var = xr.reshape(64, 4, -1).var(-1, unbiased=False)
    elif op == "rms":
        _, rstd = cpu.norms.rms_norm_fwd(x, None, 1e-5)
        ref = (xr.pow(2).mean(-1) + 1e-5).rsqrt()
        assert max_err(rstd, ref) <= 1e-6 * ref.abs().max().item()
        return
    else:
        mean, var = cpu.norms.batch_norm_stats(x)
        ref_var = xr.var((0, 2), unbiased=False)
        assert max_err(var, ref_var) < 1e-4 * ref_var.max().item()
        return
    assert max_err((rstd.double() ** -2 - 1e-5), ref_var) < 1e-4 * ref_var.max().item()
    y, _, _ = cpu.norms.layer_norm_fwd(x, None, None, 1e-5)
    ref_y = F.layer_norm(xr, (96,), eps=1e-5)
    assert max_err(y, ref_y) < 1e-3  # torch's own float32 result is worse here
    assert_matches_reference(
        y, ref_y, torch.float32, torch_same_dtype=F.layer_norm(x, (96,), eps=1e-5)
    )


def test_zero_variance_rows_give_zero_not_nan():
    x = torch.full((4, 32), 7.0)
    y, mean, rstd = cpu.norms.layer_norm_fwd(x, None, None, 1e-5)
    assert torch.equal(y, torch.zeros_like(y))
    mean_b, var_b = cpu.norms.batch_norm_stats(torch.full((4, 3, 9), -2.0))
    assert torch.equal(var_b, torch.zeros(3))


def test_weight_gradients_do_not_depend_on_thread_count(monkeypatch):
    from normkit.ops.cpu import _pool

    rows = _pool.SERIAL_BELOW // 257 + 40  # large enough to be split over threads
    x = randn(rows, 257, seed=60, dtype=torch.float32)
    dy = randn(rows, 257, seed=61, dtype=torch.float32)
    w = randn(257, seed=62, dtype=torch.float32)
    xg = randn(6, 8, rows, seed=63, dtype=torch.float32)
    dyg = randn(6, 8, rows, seed=64, dtype=torch.float32)
    results = []
    for threads in ("1", "2", "3"):
        monkeypatch.setenv("NORMKIT_NUM_THREADS", threads)
        _, mean, rstd = cpu.norms.layer_norm_fwd(x, w, None, 1e-5)
        ln = cpu.norms.layer_norm_bwd(dy, x, mean, rstd, w)
        _, gm, gr = cpu.norms.group_norm_fwd(xg, w[:8], None, 2, 1e-5)
        gn = cpu.norms.group_norm_bwd(dyg, xg, gm, gr, w[:8], 2)
        results.append([ln[0], ln[1], ln[2], gn[0], gn[1], gn[2]])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def _kernel_outputs(seed: int) -> list:
    """Every output of LayerNorm, GroupNorm and BatchNorm fwd/bwd and LRN fwd on inputs
    large enough to be split over threads (> _pool.SERIAL_BELOW elements)."""
    from normkit.ops.cpu import _pool

    rows = _pool.SERIAL_BELOW // 257 + 40
    x = randn(rows, 257, seed=seed, dtype=torch.float32, mean=30.0)
    dy = randn(rows, 257, seed=seed + 1, dtype=torch.float32)
    w = randn(257, seed=seed + 2, dtype=torch.float32)
    plane = 50 * (_pool.SERIAL_BELOW // (48 * 50) + 1)  # 6 * 8 * plane > SERIAL_BELOW
    xg = randn(6, 8, plane, seed=seed + 3, dtype=torch.float32)
    dyg = randn(6, 8, plane, seed=seed + 4, dtype=torch.float32)
    y, mean, rstd = cpu.norms.layer_norm_fwd(x, w, None, 1e-5)
    out = [y, mean, rstd, *cpu.norms.layer_norm_bwd(dy, x, mean, rstd, w)]
    yg, gm, gr = cpu.norms.group_norm_fwd(xg, w[:8], None, 2, 1e-5)
    out += [yg, gm, gr, *cpu.norms.group_norm_bwd(dyg, xg, gm, gr, w[:8], 2)]
    bm, bv = cpu.norms.batch_norm_stats(xg)
    out += [bm, bv, *cpu.norms.batch_norm_bwd_reduce(dyg, xg, bm, bv.add(1e-5).rsqrt())]
    out.append(local_response_norm(xg.reshape(6, 8, -1, 50), 5, 1e-2, 0.75, 1.0, backend="cpu"))
    return out


def test_openmp_team_and_own_threads_give_the_same_bits(monkeypatch):
    # parallel_for runs chunks on torch's OpenMP team by default (where torch's runtime
    # exports GOMP_parallel) and on normkit's own threads with NORMKIT_CPU_POOL=threads:
    # the chunks and their order of reduction are the same, so are the results
    from normkit.ops.cpu import _pool

    monkeypatch.setenv("NORMKIT_NUM_THREADS", "2")
    results = {}
    for pool in ("threads", "openmp"):
        monkeypatch.setenv(_pool.ENV_POOL, pool)
        results[_pool.runner()] = _kernel_outputs(70)
    monkeypatch.setenv("NORMKIT_NUM_THREADS", "1")
    results["serial"] = _kernel_outputs(70)
    assert "threads" in results
    if torch.backends.openmp.is_available() and sys.platform.startswith("linux"):
        assert "openmp" in results  # torch's wheel on Linux: libgomp in torch/lib
    for name, outs in results.items():
        for a, b in zip(results["serial"], outs):
            assert torch.equal(a, b), name


def test_cpu_pool_env_is_validated(monkeypatch):
    from normkit.ops.cpu import _pool

    monkeypatch.setenv(_pool.ENV_POOL, "gpu")
    with pytest.raises(ValueError, match=r"NORMKIT_CPU_POOL must be 'openmp' or 'threads'"):
        cpu.norms.layer_norm_fwd(randn(4, 8, seed=1), None, None, 1e-5)  # even a small call
    monkeypatch.setenv(_pool.ENV_POOL, "threads")
    assert _pool.runner() == "threads"


def test_group_norm_bad_groups_message():
    with pytest.raises(
        ValueError,
        match=r"num_channels \(6\) must be divisible by "
        r"num_groups \(4\)",
    ):
        cpu.norms.group_norm_fwd(torch.ones(2, 6, 3), None, None, 4, 1e-5)


def test_norm_ops_accept_non_contiguous_input():
    x = randn(16, 40, seed=70, dtype=torch.float32).t()  # (40, 16), strided
    y, _, _ = cpu.norms.layer_norm_fwd(x, None, None, 1e-5)
    assert_matches_reference(y, F.layer_norm(x.double(), (16,), eps=1e-5), torch.float32)
    xc = randn(4, 6, 5, 5, seed=71, dtype=torch.float32).contiguous(
        memory_format=torch.channels_last
    )
    mean, var = cpu.norms.batch_norm_stats(xc)
    assert_matches_reference(var, xc.double().var((0, 2, 3), unbiased=False), torch.float32)


# --- dispatch --------------------------------------------------------------------------


def test_dispatch_registers_cpu_for_every_op():
    for op in cpu.OPS:
        assert "cpu" in dispatch.table[op], op


def test_auto_picks_cpu_for_cpu_tensors_and_explicit_cpu_works():
    x = randn(2, 6, 4, 4, seed=80)
    assert dispatch.resolve("lrn_fwd", x, "auto") == "cpu"
    y = local_response_norm(x, 5)
    assert dispatch.last_backend["lrn_fwd"] == "cpu"
    y_cpu = local_response_norm(x, 5, backend="cpu")
    assert dispatch.last_backend["lrn_fwd"] == "cpu"
    y_torch = local_response_norm(x, 5, backend="torch")
    assert dispatch.last_backend["lrn_fwd"] == "torch"
    assert max_err(y, y_torch) < 1e-14 and torch.equal(y, y_cpu)


def test_env_override_selects_backend(monkeypatch):
    x = randn(2, 6, 4, 4, seed=81)
    monkeypatch.setenv("NORMKIT_BACKEND", "torch")
    local_response_norm(x, 5)
    assert dispatch.last_backend["lrn_fwd"] == "torch"
    monkeypatch.setenv("NORMKIT_BACKEND", "cpu")
    local_response_norm(x, 5)
    assert dispatch.last_backend["lrn_fwd"] == "cpu"


def test_unsupported_request_raises_clear_error():
    meta = torch.empty(2, 6, 4, 4, device="meta")
    with pytest.raises(ValueError, match="needs a CPU tensor, got device meta"):
        dispatch.resolve("lrn_fwd", meta, "cpu")
    assert cpu.why_not(torch.ones(3, dtype=torch.int32)) is not None
    with pytest.raises(ValueError, match="NORMKIT_NUM_THREADS must be >= 1"):
        os.environ["NORMKIT_NUM_THREADS"] = "0"
        try:
            cpu.lrn.lrn_fwd(torch.ones(1, 2, 3), 1, 1, 1.0, 0.5, 1.0, False)
        finally:
            del os.environ["NORMKIT_NUM_THREADS"]


def test_atol_floor_is_tight_for_float32_lrn():
    # the cpu kernel is as accurate as torch's float32 LRN, not merely within the floor
    x = randn(4, 32, 9, 9, seed=82, dtype=torch.float32)
    spec = canonicalize(5, 1e-2, 0.75, 1.0)
    ref = lrn_forward(x.double().numpy(), spec)
    ours = local_response_norm(x, 5, 1e-2, backend="cpu")
    theirs = F.local_response_norm(x, 5, 1e-2)
    assert max_err(ours, ref) <= 2 * max_err(theirs, ref) + ATOL[torch.float32] * 1e-3


@pytest.mark.parametrize("channels_last", [False, True])
def test_lrn_backward_with_expanded_grad_from_sum(channels_last):
    # y.sum().backward() hands backward a stride-0 dy
    x = randn(2, 6, 4, 4, seed=83)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ours = x.clone().requires_grad_()
    local_response_norm(ours, 5, backend="cpu").sum().backward()
    theirs = x.clone().requires_grad_()
    F.local_response_norm(theirs, 5).sum().backward()
    assert max_err(ours.grad, theirs.grad) < 1e-13


# --- fresh output buffers ----------------------------------------------------------------

BIG = (9, 1024, 1024)  # 36 MiB of float32: above the huge-page advice threshold


def test_live_outputs_never_alias():
    from normkit.ops.cpu import _alloc

    a = _alloc.empty(BIG, torch.float32)
    b = _alloc.empty(BIG, torch.float32)
    assert a.data_ptr() != b.data_ptr() and a.shape == BIG and a.dtype == torch.float32
    x = randn(2, 48, 256, 384, seed=90, dtype=torch.float32)  # 36 MiB
    y1 = cpu.lrn.lrn_fwd(x, 2, 2, 1e-3, 0.75, 1.0, False)
    y2 = cpu.lrn.lrn_fwd(x * 2, 2, 2, 1e-3, 0.75, 1.0, False)
    assert y1.data_ptr() != y2.data_ptr()
    ref = torch_ops.lrn_fwd(x, 2, 2, 1e-3, 0.75, 1.0, False)
    assert max_err(y1, ref) < 1e-5  # y1 was not overwritten by the second call


# --- output memory is never handed out twice (issue 10 item 2) ----------------------------
#
# Each case hands an LRN output to someone else (another process through shared memory, or
# a bare storage handle) and drops the tensor; later LRN calls of the same size must not
# write into that memory. Outputs are large (36 MiB), the size at which a buffer cache
# would recycle them.

_SAFE_SHAPE = (1, 9, 1024, 1024)


def _lrn_item(i):
    x = torch.full(_SAFE_SHAPE, float(i + 1))
    x[0, :, 0, 0] = torch.arange(9.0)  # not constant everywhere: channel windows differ
    return x


def _torch_lrn(i):
    return F.local_response_norm(_lrn_item(i), 3, 1e-2, 0.75, 1.0)


class _LRNOutputs(torch.utils.data.Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        return local_response_norm(_lrn_item(i), 3, 1e-2, 0.75, 1.0, backend="cpu")


def test_outputs_sent_by_dataloader_workers_stay_intact():
    loader = torch.utils.data.DataLoader(
        _LRNOutputs(), batch_size=None, num_workers=1, multiprocessing_context="fork"
    )
    got = list(loader)  # every item is kept while the worker computes the next ones
    for i, y in enumerate(got):
        assert max_err(y, _torch_lrn(i)) < 1e-5, f"item {i} changed after it was received"


def _queue_child(q, ack):
    torch.set_num_threads(1)  # as DataLoader workers do: the parent's OpenMP pool did not fork
    for i in range(3):
        y = local_response_norm(_lrn_item(i), 3, 1e-2, 0.75, 1.0, backend="cpu")
        q.put(y)
        del y
        ack.get()  # the parent holds item i (shared memory) before we compute the next


def test_outputs_sent_through_a_multiprocessing_queue_stay_intact():
    import torch.multiprocessing as mp

    ctx = mp.get_context("fork")
    q, ack = ctx.Queue(), ctx.Queue()
    p = ctx.Process(target=_queue_child, args=(q, ack))
    p.start()
    got = []
    try:
        for _ in range(3):
            got.append(q.get(timeout=60))
            ack.put(None)
    finally:
        p.join(60)
    assert p.exitcode == 0
    for i, y in enumerate(got):
        assert max_err(y, _torch_lrn(i)) < 1e-5, f"item {i} changed after it was received"


def test_output_kept_only_through_its_storage_stays_intact():
    storage = local_response_norm(_lrn_item(0), 3, 1e-2, 0.75, 1.0, backend="cpu").untyped_storage()
    for i in (1, 2):  # same size: a recycling allocator would reuse the storage's memory
        local_response_norm(_lrn_item(i), 3, 1e-2, 0.75, 1.0, backend="cpu")
    kept = torch.empty(0).set_(storage).view(_SAFE_SHAPE)
    assert max_err(kept, _torch_lrn(0)) < 1e-5


def test_memoised_auto_resolution_follows_env_and_registrations(monkeypatch):
    x = torch.ones(2, 3)
    monkeypatch.delenv("NORMKIT_BACKEND", raising=False)
    assert dispatch.resolve("layer_norm_fwd", x) == "cpu"
    assert dispatch.resolve("layer_norm_fwd", x) == "cpu"  # memoised: same answer
    monkeypatch.setenv("NORMKIT_BACKEND", "torch")
    assert dispatch.resolve("layer_norm_fwd", x) == "torch"  # the env var still wins
    monkeypatch.setenv("NORMKIT_BACKEND", "bogus")
    with pytest.raises(ValueError, match="unknown backend 'bogus'"):
        dispatch.resolve("layer_norm_fwd", x)
    monkeypatch.delenv("NORMKIT_BACKEND")
    # a dtype the cpu backend cannot run falls back to torch, memoised separately
    assert dispatch.resolve("layer_norm_fwd", torch.ones(2, 3, dtype=torch.int64)) == "torch"
    assert dispatch.resolve("layer_norm_fwd", x) == "cpu"
    # registering a backend again forgets what was memoised
    entry = dispatch.table["layer_norm_fwd"]["cpu"]
    dispatch.register("layer_norm_fwd", "cpu", entry.fn, lambda t: "disabled for the test")
    try:
        assert dispatch.resolve("layer_norm_fwd", x) == "torch"
    finally:
        dispatch.register("layer_norm_fwd", "cpu", entry.fn, entry.why_not)
    assert dispatch.resolve("layer_norm_fwd", x) == "cpu"
