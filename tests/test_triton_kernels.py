"""The Triton backend (every op of docs/ops.md) run in Triton's interpreter on CPU tensors.

Without a CUDA device, tests/conftest.py sets ``TRITON_INTERPRET=1`` before triton
is imported, and every kernel runs in Triton's interpreter on CPU tensors; with
one, the same tests run on the GPU. Results are compared with float64 math written here, with
``normkit.reference`` for LRN and with torch in the same dtype, under the one
tolerance policy of ``tolerance.py``. The interpreter checks indexing, masking,
the math and the dtype handling; it says nothing about GPU speed, and it does
not model races between programs (the kernels avoid shared writes by design:
see ``test_no_atomics_anywhere``).
"""

from __future__ import annotations

import importlib
import os
import pathlib
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip(
    "triton",
    reason="triton is not installed: normkit has no triton backend "
    "to test (pip install 'normkit[gpu]')",
)

from normkit import dispatch  # noqa: E402  -- importing dispatch registers the triton backend
from normkit.conventions import CanonicalLRN  # noqa: E402
from normkit.reference import lrn_backward, lrn_forward  # noqa: E402

import hostile  # noqa: E402
from tolerance import assert_matches_reference  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
PREFIX = "normkit.ops.triton"
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


T = importlib.import_module(PREFIX)
if T.INTERPRET:
    DEVICE = "cpu"
elif torch.cuda.is_available():
    DEVICE = "cuda"
else:  # pragma: no cover -- only when a user sets TRITON_INTERPRET=0 on a machine without CUDA
    pytest.skip(
        "the Triton kernels can run neither on a GPU (no CUDA device) nor in the "
        "interpreter (TRITON_INTERPRET is set to something other than 1)",
        allow_module_level=True,
    )


def randn(*shape, dtype=torch.float64, seed=0, mean=0.0, std=1.0):
    """hostile.randn, on the device the kernels run on."""
    return hostile.randn(*shape, dtype=dtype, seed=seed, mean=mean, std=std, device=DEVICE)


@pytest.fixture(autouse=True)
def _default_device():
    """Factory calls inside a test (torch.zeros, ...) allocate where the kernels run."""
    if DEVICE == "cpu":
        yield
        return
    torch.set_default_device(DEVICE)
    try:
        yield
    finally:
        torch.set_default_device(None)


@pytest.fixture(params=["default blocks", "tiny blocks"])
def blocks(request, monkeypatch):
    """Run each case with the shipped block sizes and with tiny ones (many chunks/tiles)."""
    if request.param == "tiny blocks":
        monkeypatch.setattr(T.lrn, "BLOCK_R", 4)
        monkeypatch.setattr(T.lrn, "BLOCK_Q", 16)
        monkeypatch.setattr(T.norms, "MAX_BLOCK", 16)
        monkeypatch.setattr(T.batch_norm, "BLOCK", 16)
    return request.param


def _peer(fn, *args):
    """torch's answer in the same dtype, or None where torch has no CPU kernel for it."""
    try:
        return fn(*args)
    except (RuntimeError, NotImplementedError):
        return None


def _grads(fn, inputs, dy):
    """fn(*inputs) and the gradients w.r.t. every tensor input, by torch autograd."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in inputs]
    out = fn(*leaves)
    wrt = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(out, wrt, dy)
    it = iter(grads)
    return out.detach(), [next(it) if t is not None else None for t in leaves]


def _check(ours, ref, dtype, peer=None, what=""):
    if ref is None:
        assert ours is None, f"{what}: expected None"
        return
    assert ours is not None, f"{what}: got None"
    assert ours.dtype == dtype or dtype is None, f"{what}: dtype {ours.dtype}"
    assert_matches_reference(ours, ref, ours.dtype, peer, what=what)


# --- registration and gating ---------------------------------------------------------


def test_every_op_of_the_contract_is_registered():
    documented = re.findall(r"^\| `(\w+)` \|", (ROOT / "docs" / "ops.md").read_text(), re.M)
    assert documented, "could not read the op table of docs/ops.md"
    assert sorted(T.OPS) == sorted(documented)
    # dispatch registered each of them as backend "triton", gated by the backend's check
    # (or the op's own, e.g. the fused kernels' row-size limit)
    for op in documented:
        entry = dispatch.table[op]["triton"]
        assert entry.fn is T.OPS[op]
        assert entry.why_not(torch.empty(2, 3)) is None  # interpreter mode: CPU tensors run


def test_why_not_gates_device_and_dtype(monkeypatch):
    assert T.why_not_tensor(torch.zeros(2, 3)) is None  # on DEVICE (CPU in the interpreter)
    assert "dtype" in T.why_not_tensor(torch.zeros(2, 3, dtype=torch.int32))
    assert "torch.Tensor" in T.why_not_tensor([1.0])
    # kernels compiled for a GPU cannot take CPU tensors: the reason says so and how to fix it
    monkeypatch.setattr(T._common, "INTERPRET", False)
    reason = T.why_not_tensor(torch.zeros(2, 3, device="cpu"))
    assert "CUDA" in reason and "TRITON_INTERPRET" in reason


def test_dispatch_routes_to_triton_when_it_can_run():
    from normkit import dispatch

    x = torch.zeros(2, 3, 4)
    assert dispatch.table["lrn_fwd"]["triton"].fn is T.lrn_fwd
    assert dispatch.resolve("lrn_fwd", x, "triton") == "triton"
    if DEVICE == "cpu":  # auto never prefers the interpreter for CPU tensors
        assert dispatch.resolve("lrn_fwd", x, "auto") != "triton"


def test_numel_limit_is_named():
    class Huge(torch.Tensor):
        pass

    x = torch.zeros(1).as_subclass(Huge)
    x.numel = lambda: 2**31  # the int32 indexing limit, without the memory
    reason = T.why_not_tensor(x)
    assert reason is not None and "int32" in reason and str(2**31) in reason


@pytest.mark.parametrize("rows,cols", [(1, 1), (5, 33), (64, 32), (130, 70), (528, 100)])
def test_column_sum_adds_every_partial_row(rows, cols):
    # the second stage of every weight/bias gradient: tiles of rows x columns with ragged edges
    from normkit.ops.triton._common import column_sum

    src = randn(rows, cols, seed=rows + cols).to(torch.float32)
    expect = src.double().sum(0)
    got = column_sum(src, torch.float32)
    assert got.shape == (cols,) and got.dtype == torch.float32
    scale = src.double().abs().sum(0).max().item()
    assert (got.double() - expect).abs().max().item() <= 4 * rows * 6e-8 * scale
    assert torch.equal(column_sum(src, torch.float32), got)  # same order every call
    empty = column_sum(src[:0], torch.float32)
    assert torch.equal(empty, torch.zeros(cols, dtype=torch.float32, device=src.device))


def test_no_atomics_anywhere():
    src = "".join(p.read_text() for p in (ROOT / "src/normkit/ops/triton").glob("*.py"))
    assert "tl.atomic" not in src  # docs/design.md section 6: deterministic partials, no atomics


def test_env_at_startup_routes_functional_through_triton():
    """TRITON_INTERPRET=1 at process start: dispatch registers runnable kernels for CPU."""
    code = (
        "import torch, torch.nn.functional as F\n"
        "from normkit import dispatch\n"
        "from normkit.functional import local_response_norm\n"
        "x = torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)\n"
        "y = local_response_norm(x, 3, 0.3, 0.75, 1.2, backend='triton')\n"
        "assert dispatch.last_backend['lrn_fwd'] == 'triton'\n"
        "xr = x.detach().clone().requires_grad_(True)\n"
        "yr = F.local_response_norm(xr, 3, 0.3, 0.75, 1.2)\n"
        "g = torch.randn_like(y); y.backward(g); yr.backward(g)\n"
        "assert dispatch.last_backend['lrn_bwd'] == 'triton'\n"
        "print(float((y - yr).abs().max()), float((x.grad - xr.grad).abs().max()))\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT / "src"))
    env.pop("NORMKIT_BACKEND", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    err_y, err_dx = map(float, out.stdout.split())
    assert err_y < 1e-12 and err_dx < 1e-12


def _compile_check(*flags):
    """benchmarks/triton_compile_check.py in a fresh process without the interpreter."""
    try:
        importlib.import_module("triton.backends.nvidia")
    except ImportError:
        pytest.skip("this triton build has no NVIDIA backend to compile for")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT / "src")
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/triton_compile_check.py"), *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "kernel configurations compiled for sm_90a" in out.stdout


def test_every_kernel_compiles_for_h100():
    """Triton's real compiler (not the interpreter) lowers each kernel to sm_90a PTX/cubin."""
    _compile_check("--quick")


@pytest.mark.slow
def test_every_kernel_configuration_compiles_for_h100():
    """Every dtype x option combination the launchers produce compiles for sm_90a."""
    _compile_check()


# --- LRN --------------------------------------------------------------------------------

# (back, ahead): torch n=5, torch n=4 (back 2 ahead 1), ONNX n=4 (back 1 ahead 2),
# chainer even n=4 (n+1 taps), TF default r=5 (11 taps, wider than C=7), size 1
ACROSS_WINDOWS = [(2, 2), (2, 1), (1, 2), (5, 5), (0, 0)]
BETAS = [0.75, 0.5, 1.0, 0.6]


def _lrn_case(x, dy, back, ahead, alpha, beta, k, within, dtype, what):
    region = "within" if within else "across"
    spec = CanonicalLRN(region, back + ahead + 1, back, ahead, alpha, beta, k)
    x, dy = x.to(dtype), dy.to(dtype)
    ref_y = lrn_forward(x.double().cpu().numpy(), spec)
    ref_dx = lrn_backward(x.double().cpu().numpy(), dy.double().cpu().numpy(), spec)
    y = T.lrn_fwd(x, back, ahead, alpha, beta, k, within)
    dx = T.lrn_bwd(x, dy, back, ahead, alpha, beta, k, within)
    assert y.dtype == dtype and dx.dtype == dtype and y.shape == x.shape
    assert_matches_reference(y, ref_y, dtype, what=f"{what} y")
    assert_matches_reference(dx, ref_dx, dtype, what=f"{what} dx")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("window", ACROSS_WINDOWS, ids=str)
def test_lrn_across_matches_reference(dtype, window, blocks):
    back, ahead = window
    x = randn(2, 7, 3, 5, seed=11)
    dy = randn(2, 7, 3, 5, seed=12)
    _lrn_case(x, dy, back, ahead, 0.3, 0.75, 1.2, False, dtype, f"across {window}")


@pytest.mark.parametrize("beta", BETAS)
def test_lrn_beta_specialisations(beta):
    x, dy = randn(2, 6, 9, seed=13), randn(2, 6, 9, seed=14)  # rank 3
    _lrn_case(x, dy, 2, 2, 0.4, beta, 0.8, False, torch.float32, f"beta {beta}")
    _lrn_case(
        x.reshape(1, 2, 6, 9),
        dy.reshape(1, 2, 6, 9),
        1,
        1,
        0.4,
        beta,
        0.8,
        True,
        torch.float32,
        f"within beta {beta}",
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("window", [(1, 1), (1, 0), (0, 1), (2, 2)], ids=str)
def test_lrn_within_matches_reference(dtype, window, blocks):
    back, ahead = window
    x = randn(1, 2, 5, 6, seed=15)
    dy = randn(1, 2, 5, 6, seed=16)
    _lrn_case(x, dy, back, ahead, 0.2, 0.75, 1.0, True, dtype, f"within {window}")


def test_lrn_rank5_and_single_channel():
    _lrn_case(
        randn(2, 5, 2, 3, 2, seed=17),
        randn(2, 5, 2, 3, 2, seed=18),
        2,
        1,
        0.3,
        0.75,
        1.0,
        False,
        torch.float32,
        "rank 5",
    )
    _lrn_case(
        randn(2, 1, 4, 4, seed=19),
        randn(2, 1, 4, 4, seed=20),
        2,
        2,
        0.3,
        0.75,
        1.0,
        False,
        torch.float32,
        "C=1",
    )


def test_lrn_loud_channel_loses_nothing():
    """One channel 1000x its neighbours: direct window sums keep the quiet ones exact."""
    x = randn(2, 9, 4, 4, seed=3, dtype=torch.float64)
    x[:, 4] *= 1000.0
    dy = randn(2, 9, 4, 4, seed=21)
    _lrn_case(x, dy, 2, 2, 1e-4 / 5, 0.75, 1.0, False, torch.float32, "loud channel")


def test_lrn_fp16_beyond_square_overflow():
    """|x| = 300 in float16: x^2 = 9e4 overflows float16; squaring in float32 must not."""
    x = (randn(2, 6, 3, 3, seed=22) * 300).clamp(-300, 300)
    dy = randn(2, 6, 3, 3, seed=23)
    _lrn_case(x, dy, 2, 2, 1e-4 / 5, 0.75, 1.0, False, torch.float16, "fp16 300")
    assert torch.isfinite(T.lrn_fwd(x.half(), 2, 2, 1e-4 / 5, 0.75, 1.0, False)).all()


def test_lrn_l2_normalisation_identity():
    """k = 0, alpha = 1, beta = 1/2, a window covering every channel: x / ||x||_C (source
    document 5)."""
    x = randn(2, 5, 3, 3, seed=24, dtype=torch.float32)
    y = T.lrn_fwd(x, 4, 4, 1.0, 0.5, 0.0, False)
    expected = x.double() / x.double().norm(dim=1, keepdim=True)  # hand formula, float64
    assert_matches_reference(y, expected, torch.float32, what="L2 normalisation")


def test_lrn_empty_and_errors():
    empty = torch.zeros(0, 4, 3, 3)
    assert T.lrn_fwd(empty, 2, 2, 1e-4, 0.75, 1.0, False).shape == empty.shape
    assert T.lrn_bwd(empty, empty, 2, 2, 1e-4, 0.75, 1.0, True).shape == empty.shape
    with pytest.raises(ValueError, match="4-D"):
        T.lrn_fwd(torch.zeros(2, 3, 4), 1, 1, 1e-4, 0.75, 1.0, True)
    with pytest.raises(ValueError, match="back=-1"):
        T.lrn_fwd(torch.zeros(2, 3, 4), -1, 1, 1e-4, 0.75, 1.0, False)
    with pytest.raises(ValueError, match="dy shape"):
        T.lrn_bwd(torch.zeros(2, 3, 4), torch.zeros(2, 3), 1, 1, 1e-4, 0.75, 1.0, False)


def test_lrn_every_layout():
    """channels_last, strided and transposed views give the contiguous answer."""
    x = randn(2, 5, 3, 4, seed=27, dtype=torch.float32)
    dy = randn(2, 5, 3, 4, seed=28, dtype=torch.float32)
    for name, xl in hostile.layouts(x.cpu()):
        _lrn_case(xl.to(DEVICE), dy, 2, 1, 0.3, 0.75, 1.0, False, torch.float32, name)


def test_functional_and_autograd_through_dispatch():
    """normkit.functional with backend='triton': forward and backward match torch's LRN."""
    from normkit import dispatch
    from normkit.functional import local_response_norm

    x = randn(2, 6, 3, 3, seed=29).requires_grad_(True)
    xr = x.detach().clone().requires_grad_(True)
    y = local_response_norm(x, 4, 0.3, 0.75, 1.2, backend="triton")  # even size
    assert dispatch.last_backend["lrn_fwd"] == "triton"
    yr = F.local_response_norm(xr, 4, 0.3, 0.75, 1.2)
    dy = randn(2, 6, 3, 3, seed=30)
    y.backward(dy)
    yr.backward(dy)
    assert dispatch.last_backend["lrn_bwd"] == "triton"
    assert_matches_reference(y, yr, torch.float64, what="y vs torch")
    assert_matches_reference(x.grad, xr.grad, torch.float64, what="dx vs torch")


def test_lrn_non_contiguous_input():
    x = randn(2, 3, 4, 7, seed=25, dtype=torch.float32).transpose(2, 3)  # (2, 3, 7, 4) view
    dy = randn(2, 3, 7, 4, seed=26, dtype=torch.float32)
    _lrn_case(x, dy, 1, 1, 0.3, 0.75, 1.0, False, torch.float32, "non-contiguous")


# --- LayerNorm / RMSNorm --------------------------------------------------------------


def _ref_layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)  # (M, 1)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # (M, 1) biased, two-pass
    y = (x - mean) / torch.sqrt(var + eps)
    y = y * w if w is not None else y
    return y + b if b is not None else y


def _ref_rms_norm(x, w, eps):
    y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    return y * w if w is not None else y


def _affine(d, dtype, seed, affine=True):
    if not affine:
        return None, None
    return (1 + 0.5 * randn(d, seed=seed)).to(dtype), (0.5 * randn(d, seed=seed + 1)).to(dtype)


# mean 1e4 only where 1e4 + N(0, 1) is representable (float16/bfloat16 spacing there: 8 / 64)
LN_CASES = [(d, (5, 37), 0.0) for d in DTYPES] + [
    (d, (3, 40), 1e4) for d in (torch.float32, torch.float64)
]


@pytest.mark.parametrize(
    "dtype,shape,mean", LN_CASES, ids=[f"{d}-{'mean1e4' if m else 'randn'}" for d, _, m in LN_CASES]
)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_layer_norm_matches_float64(dtype, affine, shape, mean, blocks):
    m, d = shape
    x = randn(m, d, seed=31, mean=mean).to(dtype)
    dy = randn(m, d, seed=32).to(dtype)
    w, b = _affine(d, dtype, 33, affine)
    eps = 1e-5
    f64 = [t.double() if t is not None else None for t in (x, w, b)]
    ref_y, (ref_dx, ref_dw, ref_db) = _grads(lambda *a: _ref_layer_norm(*a, eps), f64, dy.double())
    if not affine:
        ref_db = dy.double().sum(0)  # dbias = column sums of dy, always returned
    peer_y, (peer_dx, peer_dw, peer_db) = _peer(
        lambda: _grads(lambda xx, ww, bb: F.layer_norm(xx, (d,), ww, bb, eps), [x, w, b], dy)
    ) or (None, (None, None, None))
    y, mean_out, rstd = T.layer_norm_fwd(x, w, b, eps)
    dx, dw, db = T.layer_norm_bwd(dy, x, mean_out, rstd, w)
    ref_mean = x.double().mean(-1)
    ref_rstd = 1 / torch.sqrt(((x.double() - ref_mean[:, None]) ** 2).mean(-1) + eps)
    stats = torch.float64 if dtype == torch.float64 else torch.float32
    assert mean_out.dtype == stats and rstd.dtype == stats
    assert_matches_reference(mean_out, ref_mean, stats, what="mean")
    assert_matches_reference(rstd, ref_rstd, stats, what="rstd")
    _check(y, ref_y, dtype, peer_y, "y")
    _check(dx, ref_dx, dtype, peer_dx, "dx")
    _check(dw, ref_dw, dtype, peer_dw, "dweight")
    _check(db, ref_db, dtype, peer_db if affine else None, "dbias")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_rms_norm_matches_float64(dtype, affine, blocks):
    m, d = 4, 33
    x = randn(m, d, seed=41, mean=0.3).to(dtype)
    dy = randn(m, d, seed=42).to(dtype)
    w, _ = _affine(d, dtype, 43, affine)
    eps = 1e-6
    ref_y, (ref_dx, ref_dw) = _grads(
        lambda *a: _ref_rms_norm(*a, eps),
        [x.double(), w.double() if w is not None else None],
        dy.double(),
    )
    peer_y, (peer_dx, peer_dw) = _peer(
        lambda: _grads(lambda xx, ww: F.rms_norm(xx, (d,), ww, eps), [x, w], dy)
    ) or (None, (None, None))
    y, rstd = T.rms_norm_fwd(x, w, eps)
    dx, dw = T.rms_norm_bwd(dy, x, rstd, w)
    ref_rstd = 1 / torch.sqrt((x.double() ** 2).mean(-1) + eps)
    assert_matches_reference(rstd, ref_rstd, rstd.dtype, what="rstd")
    _check(y, ref_y, dtype, peer_y, "y")
    _check(dx, ref_dx, dtype, peer_dx, "dx")
    _check(dw, ref_dw, dtype, peer_dw, "dweight")


def test_rms_norm_is_layer_norm_without_centering():
    x = randn(3, 20, seed=44, dtype=torch.float32)
    x = x - x.mean(-1, keepdim=True)  # zero-mean rows: the two must agree
    y_rms, _ = T.rms_norm_fwd(x, None, 1e-5)
    y_ln, _, _ = T.layer_norm_fwd(x, None, None, 1e-5)
    assert_matches_reference(y_rms, y_ln.double(), torch.float32, what="RMS vs LN")


def test_layer_norm_errors_and_empty():
    with pytest.raises(ValueError, match="2-D"):
        T.layer_norm_fwd(torch.zeros(2, 3, 4), None, None, 1e-5)
    with pytest.raises(ValueError, match=r"weight shape \(4,\) must be \(D,\) = \(3,\)"):
        T.layer_norm_fwd(torch.zeros(2, 3), torch.ones(4), None, 1e-5)
    y, mean, rstd = T.layer_norm_fwd(torch.zeros(0, 3), torch.ones(3), None, 1e-5)
    assert y.shape == (0, 3) and mean.shape == (0,)
    dx, dw, db = T.layer_norm_bwd(torch.zeros(0, 3), torch.zeros(0, 3), mean, rstd, torch.ones(3))
    assert dx.shape == (0, 3)
    assert torch.equal(dw, torch.zeros(3)) and torch.equal(db, torch.zeros(3))


def test_layer_norm_constant_row():
    """Zero variance: rstd = 1/sqrt(eps), y = bias exactly."""
    x = torch.full((2, 8), 3.0)
    b = torch.arange(8.0)
    y, mean, rstd = T.layer_norm_fwd(x, None, b, 1e-5)
    assert torch.equal(y, b.expand(2, 8))
    assert torch.allclose(rstd, torch.full((2,), 1e-5**-0.5))


# --- GroupNorm / InstanceNorm ----------------------------------------------------------


def _ref_group_norm(x, w, b, groups, eps):
    n, c, length = x.shape
    xg = x.reshape(n, groups, -1)  # (N, G, C/G * L)
    mean = xg.mean(-1, keepdim=True)
    var = ((xg - mean) ** 2).mean(-1, keepdim=True)
    y = ((xg - mean) / torch.sqrt(var + eps)).reshape(n, c, length)
    y = y * w[:, None] if w is not None else y
    return y + b[:, None] if b is not None else y


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("groups", [1, 3, 6], ids=lambda g: f"G{g}")
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_group_norm_matches_float64(dtype, groups, affine, blocks):
    n, c, length = 3, 6, 7
    x = randn(n, c, length, seed=51).to(dtype)
    dy = randn(n, c, length, seed=52).to(dtype)
    w, b = _affine(c, dtype, 53, affine)
    eps = 1e-5
    f64 = [t.double() if t is not None else None for t in (x, w, b)]
    ref_y, (ref_dx, ref_dw, ref_db) = _grads(
        lambda *a: _ref_group_norm(*a, groups, eps), f64, dy.double()
    )
    if not affine:
        ref_db = dy.double().sum((0, 2))
    peer_y, (peer_dx, peer_dw, peer_db) = _peer(
        lambda: _grads(lambda xx, ww, bb: F.group_norm(xx, groups, ww, bb, eps), [x, w, b], dy)
    ) or (None, (None, None, None))
    y, mean, rstd = T.group_norm_fwd(x, w, b, groups, eps)
    assert mean.shape == (n, groups) and rstd.shape == (n, groups)
    dx, dw, db = T.group_norm_bwd(dy, x, mean, rstd, w, groups)
    _check(y, ref_y, dtype, peer_y, "y")
    _check(dx, ref_dx, dtype, peer_dx, "dx")
    _check(dw, ref_dw, dtype, peer_dw, "dweight")
    _check(db, ref_db, dtype, peer_db if affine else None, "dbias")


def test_group_norm_hostile_mean_and_loud_channel():
    x = randn(2, 4, 9, seed=54, mean=1e4)
    x[:, 1] = x[:, 1] * 1000.0  # one loud channel inside a group
    x = x.float()
    dy = randn(2, 4, 9, seed=55).float()
    ref_y, (ref_dx,) = _grads(
        lambda xx: _ref_group_norm(xx, None, None, 2, 1e-5), [x.double()], dy.double()
    )
    peer_y, (peer_dx,) = _grads(lambda xx: F.group_norm(xx, 2, None, None, 1e-5), [x], dy)
    y, mean, rstd = T.group_norm_fwd(x, None, None, 2, 1e-5)
    dx, dw, db = T.group_norm_bwd(dy, x, mean, rstd, None, 2)
    _check(y, ref_y, torch.float32, peer_y, "y")
    _check(dx, ref_dx, torch.float32, peer_dx, "dx")
    assert dw is None


def test_group_norm_identities():
    """GroupNorm(C) == instance norm; GroupNorm(1) == LayerNorm over (C, L)."""
    x = randn(2, 4, 5, seed=56, dtype=torch.float32)
    y_in, _, _ = T.group_norm_fwd(x, None, None, 4, 1e-5)
    assert_matches_reference(
        y_in, F.instance_norm(x.double(), eps=1e-5), torch.float32, what="instance norm"
    )
    y_g1, _, _ = T.group_norm_fwd(x, None, None, 1, 1e-5)
    y_ln, _, _ = T.layer_norm_fwd(x.reshape(2, 20), None, None, 1e-5)
    assert_matches_reference(y_g1, y_ln.double().reshape(2, 4, 5), torch.float32, what="G=1")


def test_group_norm_errors():
    msg = r"num_channels \(6\) must be divisible by num_groups \(4\)"
    with pytest.raises(ValueError, match=msg):
        T.group_norm_fwd(torch.zeros(2, 6, 3), None, None, 4, 1e-5)
    with pytest.raises(ValueError, match="3-D"):
        T.group_norm_fwd(torch.zeros(2, 6), None, None, 2, 1e-5)


# --- BatchNorm ----------------------------------------------------------------------------


def _ref_batch_norm(x, w, b, eps):
    mean = x.mean((0, 2), keepdim=True)  # (1, C, 1)
    var = ((x - mean) ** 2).mean((0, 2), keepdim=True)  # biased
    y = (x - mean) / torch.sqrt(var + eps)
    y = y * w[:, None] if w is not None else y
    return y + b[:, None] if b is not None else y


def _bn_triton(x, w, b, dy, eps):
    mean, var = T.batch_norm_stats(x)
    rstd = 1.0 / torch.sqrt(var + eps)
    y = T.batch_norm_apply(x, mean, rstd, w, b)
    sum_dy, sum_dy_xhat = T.batch_norm_bwd_reduce(dy, x, mean, rstd)
    dx = T.batch_norm_bwd_apply(dy, x, mean, rstd, w, sum_dy, sum_dy_xhat, x.shape[0] * x.shape[2])
    return mean, var, y, dx, sum_dy_xhat, sum_dy


BN_CASES = [(d, s, 0.0) for d in DTYPES for s in ((4, 3, 9), (5, 2, 1))] + [
    (d, (3, 2, 20), 1e4) for d in (torch.float32, torch.float64)
]


@pytest.mark.parametrize(
    "dtype,shape,mean",
    BN_CASES,
    ids=[f"{d}-{s}-{'mean1e4' if m else 'randn'}" for d, s, m in BN_CASES],
)
def test_batch_norm_matches_float64(dtype, shape, mean, blocks):
    c = shape[1]
    x = randn(*shape, seed=61, mean=mean).to(dtype)
    dy = randn(*shape, seed=62).to(dtype)
    w, b = _affine(c, dtype, 63, True)
    eps = 1e-5
    f64 = [t.double() for t in (x, w, b)]
    ref_y, (ref_dx, ref_dw, ref_db) = _grads(lambda *a: _ref_batch_norm(*a, eps), f64, dy.double())
    peer_y, (peer_dx, peer_dw, peer_db) = _peer(
        lambda: _grads(
            lambda xx, ww, bb: F.batch_norm(xx, None, None, ww, bb, True, 0.1, eps), [x, w, b], dy
        )
    ) or (None, (None, None, None))
    mean_out, var, y, dx, dw, db = _bn_triton(x, w, b, dy, eps)
    stats = torch.float64 if dtype == torch.float64 else torch.float32
    # BatchNorm's mean is float64 for every input (docs/ops.md); held to the stats floor
    assert mean_out.dtype == torch.float64 and var.dtype == stats
    x64 = x.double()
    assert_matches_reference(mean_out, x64.mean((0, 2)), stats, what="mean")
    assert_matches_reference(var, x64.var((0, 2), unbiased=False), stats, what="var")
    _check(y, ref_y, dtype, peer_y, "y")
    _check(dx, ref_dx, dtype, peer_dx, "dx")
    # sum_dy_xhat / sum_dy are float32 statistics (= dweight / dbias before the cast)
    _check(dw, ref_dw, None, None if peer_dw is None else peer_dw.to(stats), "dweight")
    _check(db, ref_db, None, None if peer_db is None else peer_db.to(stats), "dbias")


def test_batch_norm_identity_with_matching_affine():
    """gamma = sqrt(var + eps), beta = mean returns the input (source document 4)."""
    x = randn(6, 3, 5, seed=64, dtype=torch.float32, mean=2.0)
    mean, var = T.batch_norm_stats(x)
    y = T.batch_norm_apply(x, mean, 1 / torch.sqrt(var + 1e-5), torch.sqrt(var + 1e-5), mean)
    assert_matches_reference(y, x.double(), torch.float32, what="identity")


def test_batch_norm_no_weight_and_eval_path():
    x = randn(3, 4, 5, seed=65, dtype=torch.float32)
    running_mean, running_var = torch.rand(4), torch.rand(4) + 0.5
    rstd = 1 / torch.sqrt(running_var + 1e-5)
    y = T.batch_norm_apply(x, running_mean, rstd, None, None)
    expected = F.batch_norm(
        x.double(), running_mean.double(), running_var.double(), training=False, eps=1e-5
    )
    assert_matches_reference(y, expected, torch.float32, what="eval")
    dy = randn(3, 4, 5, seed=66, dtype=torch.float32)
    mean, var, _, dx, _, _ = _bn_triton(x, None, None, dy, 1e-5)
    _, (ref_dx,) = _grads(
        lambda xx: _ref_batch_norm(xx, None, None, 1e-5), [x.double()], dy.double()
    )
    assert_matches_reference(dx, ref_dx, torch.float32, what="dx without weight")


def test_batch_norm_errors_and_empty():
    with pytest.raises(ValueError, match="3-D"):
        T.batch_norm_stats(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="at least one value per channel"):
        T.batch_norm_stats(torch.zeros(0, 3, 4))
    with pytest.raises(ValueError, match="count must be > 0"):
        z = torch.zeros(1, 2, 1)
        T.batch_norm_bwd_apply(
            z, z, torch.zeros(2), torch.ones(2), None, torch.zeros(2), torch.zeros(2), 0
        )
    empty = torch.zeros(0, 3, 4)
    assert T.batch_norm_apply(empty, torch.zeros(3), torch.ones(3), None, None).shape == empty.shape
    s1, s2 = T.batch_norm_bwd_reduce(empty, empty, torch.zeros(3), torch.ones(3))
    assert torch.equal(s1, torch.zeros(3)) and torch.equal(s2, torch.zeros(3))


# --- float64 gradcheck through small autograd wrappers ---------------------------------


class _LayerNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b):
        y, mean, rstd = T.layer_norm_fwd(x, w, b, 1e-5)
        ctx.save_for_backward(x, w, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w, mean, rstd = ctx.saved_tensors
        return T.layer_norm_bwd(dy.contiguous(), x, mean, rstd, w)


class _GroupNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b):
        y, mean, rstd = T.group_norm_fwd(x, w, b, 2, 1e-5)
        ctx.save_for_backward(x, w, mean, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w, mean, rstd = ctx.saved_tensors
        return T.group_norm_bwd(dy.contiguous(), x, mean, rstd, w, 2)


class _RMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        y, rstd = T.rms_norm_fwd(x, w, 1e-5)
        ctx.save_for_backward(x, w, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w, rstd = ctx.saved_tensors
        return T.rms_norm_bwd(dy.contiguous(), x, rstd, w)


class _BatchNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b):
        mean, var = T.batch_norm_stats(x)
        rstd = 1.0 / torch.sqrt(var + 1e-5)
        ctx.save_for_backward(x, w, mean, rstd)
        return T.batch_norm_apply(x, mean, rstd, w, b)

    @staticmethod
    def backward(ctx, dy):
        x, w, mean, rstd = ctx.saved_tensors
        dy = dy.contiguous()
        s1, s2 = T.batch_norm_bwd_reduce(dy, x, mean, rstd)
        dx = T.batch_norm_bwd_apply(dy, x, mean, rstd, w, s1, s2, x.shape[0] * x.shape[2])
        return dx, s2, s1


class _LRNFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, within):
        ctx.save_for_backward(x)
        ctx.within = within
        return T.lrn_fwd(x, 2, 1, 0.3, 0.75, 1.2, within)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        return T.lrn_bwd(x, dy.contiguous(), 2, 1, 0.3, 0.75, 1.2, ctx.within), None


def _leaf(*shape, seed):
    return randn(*shape, seed=seed).requires_grad_(True)


def test_gradcheck_float64_every_op():
    assert torch.autograd.gradcheck(
        _LayerNormFn.apply, (_leaf(2, 5, seed=71), _leaf(5, seed=72), _leaf(5, seed=73))
    )
    assert torch.autograd.gradcheck(_RMSNormFn.apply, (_leaf(2, 5, seed=74), _leaf(5, seed=75)))
    assert torch.autograd.gradcheck(
        _GroupNormFn.apply, (_leaf(2, 4, 2, seed=76), _leaf(4, seed=77), _leaf(4, seed=78))
    )
    assert torch.autograd.gradcheck(
        _BatchNormFn.apply, (_leaf(3, 2, 2, seed=79), _leaf(2, seed=80), _leaf(2, seed=81))
    )
    assert torch.autograd.gradcheck(_LRNFn.apply, (_leaf(1, 5, 2, 2, seed=82), False))
    assert torch.autograd.gradcheck(_LRNFn.apply, (_leaf(1, 1, 4, 3, seed=83), True))


# --- longer cases (python -m pytest -m slow) ------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_wide_rows_1023(dtype):
    """Odd widths: a row of 1023 and an LRN plane 1023 wide (many masked lanes)."""
    x, dy = randn(3, 1023, seed=91).to(dtype), randn(3, 1023, seed=92).to(dtype)
    ref_y, (ref_dx, _, _) = _grads(
        lambda *a: _ref_layer_norm(*a, 1e-5), [x.double(), None, None], dy.double()
    )
    y, mean, rstd = T.layer_norm_fwd(x, None, None, 1e-5)
    dx, _, _ = T.layer_norm_bwd(dy, x, mean, rstd, None)
    _check(y, ref_y, dtype, None, "y")
    _check(dx, ref_dx, dtype, None, "dx")
    _lrn_case(
        randn(2, 5, 3, 1023, seed=93),
        randn(2, 5, 3, 1023, seed=94),
        2,
        2,
        1e-4 / 5,
        0.75,
        1.0,
        False,
        dtype,
        "wide spatial",
    )


@pytest.mark.slow
def test_gpu_validate_script_smoke(tmp_path):
    """benchmarks/gpu_validate.py --smoke: validation passes, every bench case builds, CSV."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/gpu_validate.py"),
            "--smoke",
            "--out",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    csvs = list(tmp_path.glob("gpu_validate_smoke_*.csv"))
    assert len(csvs) == 1
    text = csvs[0].read_text()
    assert "validate,layer_norm,dweight,bfloat16" in text and "\nbench,lrn across" in text
    assert "validation: 84/84 passed" in out.stdout
