"""The size-aware ``auto``: torch's native kernel on small CPU tensors (normkit._native).

The switch may only be taken where torch's kernel meets normkit's accuracy contract.
Unshifted, it does not: the first test measures torch's float32 layer/group/batch norm
at mean 1e4 against the float64 reference and finds errors far above the float32 floor.
Every other test runs normkit's ``auto`` path (which takes the native route for these
sizes, as ``dispatch.last_backend`` shows) against the float64 reference with the floor
alone (``torch_same_dtype=None``: no credit for torch's own error), outputs and every
gradient, at mean 0 and 1e4.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import normkit
import normkit.functional as NF
from normkit import _native, dispatch
from normkit._native import NATIVE
from normkit.ops import schema
from normkit.reference import norms as R

from hostile import randn
from tolerance import ATOL, assert_matches_reference

F32 = torch.float32


# the native path runs on CUDA tensors too; a machine with a GPU checks it there
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
KERNEL = {"cpu": "cpu", "cuda": "triton"}  # the backend auto's kernel path takes


def _np(t):
    return t.detach().cpu().double().numpy()


def _err_over_scale(ours, ref):
    ref = np.asarray(ref)
    return float(np.max(np.abs(_np(ours) - ref)) / max(1.0, np.max(np.abs(ref))))


def test_torch_kernels_unshifted_miss_the_float32_floor_at_mean_1e4():
    # why the shift exists: torch subtracts a float32 mean rounded at 1e4 (ulp ~ 1e-3)
    x = randn(16, 64, dtype=F32, seed=1, mean=1e4)
    ref_ln = R.layer_norm_forward(_np(x), (64,))[0]
    assert _err_over_scale(TF.layer_norm(x, (64,)), ref_ln) > 50 * ATOL[F32]
    x4 = randn(4, 8, 6, 6, dtype=F32, seed=2, mean=1e4)
    ref_gn = R.group_norm_forward(_np(x4), 2)[0]
    assert _err_over_scale(TF.group_norm(x4, 2), ref_gn) > 50 * ATOL[F32]
    ref_bn = R.batch_norm_forward(_np(x4))[0]
    assert _err_over_scale(TF.batch_norm(x4, None, None, training=True), ref_bn) > 50 * ATOL[F32]


def _grads(y, dy, *ts):
    y.backward(dy)
    return [None if t is None else t.grad for t in ts]


def _leaf(t):
    return None if t is None else t.detach().clone().requires_grad_()


MEANS = (0.0, 1e4)


def _counted(monkeypatch, op: str) -> list:
    """Replace ``torch.<op>`` for the test with a wrapper that appends to the returned list
    on every call (how many kernel calls the native path made)."""
    calls = []
    real = getattr(torch, op)

    def counting(*args, **kwargs):
        calls.append(op)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, op, counting)
    return calls


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mean", MEANS)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_native_path_meets_the_floor(device, mean, affine):
    dtype = F32
    x = _leaf(randn(6, 5, 32, dtype=dtype, seed=3, mean=mean, device=device))
    w = _leaf(randn(32, dtype=dtype, seed=4, device=device)) if affine else None
    b = _leaf(randn(32, dtype=dtype, seed=5, device=device)) if affine else None
    dy = randn(6, 5, 32, dtype=dtype, seed=6, device=device)
    y = NF.layer_norm(x, (32,), w, b, 1e-5)
    assert dispatch.last_backend["layer_norm_fwd"] == "native"
    gx, gw, gb = _grads(y, dy, x, w, b)
    wn = None if w is None else _np(w)
    bn = None if b is None else _np(b)
    ref_y = R.layer_norm_forward(_np(x), (32,), wn, bn)[0]
    ref_dx, ref_dw, ref_db = R.layer_norm_backward(_np(x), _np(dy), (32,), wn, bn)
    assert_matches_reference(y, ref_y, dtype, what="y")
    assert_matches_reference(gx, ref_dx, dtype, what="dx")
    if affine:
        assert_matches_reference(gw, ref_dw, dtype, what="dweight")
        assert_matches_reference(gb, ref_db, dtype, what="dbias")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mean", MEANS)
def test_layer_norm_native_path_over_two_trailing_dims(device, mean):
    x = _leaf(randn(3, 4, 5, dtype=F32, seed=7, mean=mean, device=device))
    w, b = (
        _leaf(randn(4, 5, seed=8, dtype=F32, device=device)),
        _leaf(randn(4, 5, seed=9, dtype=F32, device=device)),
    )
    dy = randn(3, 4, 5, dtype=F32, seed=10, device=device)
    y = NF.layer_norm(x, (4, 5), w, b)
    assert dispatch.last_backend["layer_norm_fwd"] == "native"
    gx, gw, gb = _grads(y, dy, x, w, b)
    ref_dx, ref_dw, ref_db = R.layer_norm_backward(_np(x), _np(dy), (4, 5), _np(w), _np(b))
    assert_matches_reference(y, R.layer_norm_forward(_np(x), (4, 5), _np(w), _np(b))[0], F32)
    assert_matches_reference(gx, ref_dx, F32, what="dx")
    assert_matches_reference(gw, ref_dw, F32, what="dweight")
    assert_matches_reference(gb, ref_db, F32, what="dbias")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mean", MEANS)
@pytest.mark.parametrize("groups", [1, 2, 8])  # 8 = instance norm's grouping
def test_group_norm_native_path_meets_the_floor(device, mean, groups):
    x = _leaf(randn(3, 8, 5, 5, dtype=F32, seed=11, mean=mean, device=device))
    w, b = (
        _leaf(randn(8, dtype=F32, seed=12, device=device)),
        _leaf(randn(8, dtype=F32, seed=13, device=device)),
    )
    dy = randn(3, 8, 5, 5, dtype=F32, seed=14, device=device)
    y = NF.group_norm(x, groups, w, b)
    assert dispatch.last_backend["group_norm_fwd"] == "native"
    gx, gw, gb = _grads(y, dy, x, w, b)
    ref_dx, ref_dw, ref_db = R.group_norm_backward(_np(x), _np(dy), groups, _np(w), _np(b))
    assert_matches_reference(y, R.group_norm_forward(_np(x), groups, _np(w), _np(b))[0], F32)
    assert_matches_reference(gx, ref_dx, F32, what="dx")
    assert_matches_reference(gw, ref_dw, F32, what="dweight")
    assert_matches_reference(gb, ref_db, F32, what="dbias")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mean", MEANS)
def test_instance_norm_native_path_meets_the_floor(device, mean):
    x = _leaf(randn(2, 4, 7, 3, dtype=F32, seed=15, mean=mean, device=device))
    dy = randn(2, 4, 7, 3, dtype=F32, seed=16, device=device)
    m = normkit.InstanceNorm2d(4, affine=True).to(device).to(device).to(device).to(device)
    with torch.no_grad():
        m.weight.copy_(randn(4, dtype=F32, seed=17, device=device))
        m.bias.copy_(randn(4, dtype=F32, seed=18, device=device))
    y = m(x)
    assert dispatch.last_backend["group_norm_fwd"] == "native"
    gx, gw, gb = _grads(y, dy, x, m.weight, m.bias)
    w, b = _np(m.weight), _np(m.bias)
    ref_dx, ref_dw, ref_db = R.instance_norm_backward(_np(x), _np(dy), w, b)
    assert_matches_reference(y, R.instance_norm_forward(_np(x), w, b)[0], F32)
    assert_matches_reference(gx, ref_dx, F32, what="dx")
    assert_matches_reference(gw, ref_dw, F32, what="dweight")
    assert_matches_reference(gb, ref_db, F32, what="dbias")


@pytest.mark.parametrize("device", DEVICES)
def test_rms_norm_native_path_meets_the_floor(device):
    x = _leaf(randn(5, 3, 24, dtype=F32, seed=19, mean=3.0, device=device))
    w = _leaf(randn(24, dtype=F32, seed=20, device=device))
    dy = randn(5, 3, 24, dtype=F32, seed=21, device=device)
    y = NF.rms_norm(x, (24,), w, 1e-6)
    assert dispatch.last_backend["rms_norm_fwd"] == "native"
    gx, gw = _grads(y, dy, x, w)
    ref_dx, ref_dw = R.rms_norm_backward(_np(x), _np(dy), (24,), _np(w), 1e-6)
    assert_matches_reference(y, R.rms_norm_forward(_np(x), (24,), _np(w), 1e-6)[0], F32)
    assert_matches_reference(gx, ref_dx, F32, what="dx")
    assert_matches_reference(gw, ref_dw, F32, what="dweight")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mean", MEANS)
@pytest.mark.parametrize("momentum", [0.1, 0.9, None])
def test_batch_norm_native_training_steps_and_running_stats(device, mean, momentum):
    m = normkit.BatchNorm2d(6, momentum=momentum).to(device).to(device)
    with torch.no_grad():
        m.weight.copy_(randn(6, dtype=F32, seed=22, device=device))
        m.bias.copy_(randn(6, dtype=F32, seed=23, device=device))
    rm, rv = np.zeros(6), np.ones(6)
    for step in range(1, 4):
        x = _leaf(randn(4, 6, 3, 3, dtype=F32, seed=30 + step, mean=mean, device=device))
        dy = randn(4, 6, 3, 3, dtype=F32, seed=40 + step, device=device)
        y = m(x)
        # momentum=None: the first batch has factor 1; on CUDA it takes the kernel path
        # (the shifted native path needs momentum < 1), on the CPU torch's checked kernel
        first = momentum is None and step == 1 and device != "cpu"
        expect = KERNEL[device] if first else "native"
        assert dispatch.last_backend["batch_norm_stats"] == expect
        m.weight.grad = m.bias.grad = None
        gx, gw, gb = _grads(y, dy, x, m.weight, m.bias)
        w, b = _np(m.weight), _np(m.bias)
        ref_y, mean_b, var_b = R.batch_norm_forward(_np(x), w, b)
        ref_dx, ref_dw, ref_db = R.batch_norm_backward(_np(x), _np(dy), w, b)
        assert_matches_reference(y, ref_y, F32)
        assert_matches_reference(gx, ref_dx, F32, what="dx")
        assert_matches_reference(gw, ref_dw, F32, what="dweight")
        assert_matches_reference(gb, ref_db, F32, what="dbias")
        rm, rv = R.running_stats_update(rm, rv, mean_b, var_b, 4 * 9, momentum, step)
        # the running mean is a float32 buffer: compare relative to its own size
        assert_matches_reference(m.running_mean, rm, F32, what="running_mean")
        assert_matches_reference(m.running_var, rv, F32, what="running_var")
    m.eval()
    x = _leaf(randn(4, 6, 3, 3, dtype=F32, seed=50, mean=mean, device=device))
    dy = randn(4, 6, 3, 3, dtype=F32, seed=51, device=device)
    y = m(x)
    assert dispatch.last_backend["batch_norm_apply"] == "native"
    (gx,) = _grads(y, dy, x)
    rm64, rv64 = _np(m.running_mean), _np(m.running_var)
    w = _np(m.weight)
    ref = R.batch_norm_eval_forward(_np(x), rm64, rv64, w, _np(m.bias))
    assert_matches_reference(y, ref, F32)
    assert_matches_reference(gx, _np(dy) * (w / np.sqrt(rv64 + 1e-5))[:, None, None], F32)


def _check_bn_training_step(m, x, dy, y, rm, rv, momentum, step):
    """One training step ``y = m(x)`` of a BatchNorm2d with its initial weight 1 and bias 0:
    y, the gradients and the layer's running statistics against the float64 reference;
    returns the reference running statistics ``(rm, rv)`` after this step."""
    c = x.shape[1]
    m.weight.grad = m.bias.grad = None
    gx, gw, gb = _grads(y, dy, x, m.weight, m.bias)
    ref_y, mean_b, var_b = R.batch_norm_forward(_np(x))
    ref_dx, ref_dw, ref_db = R.batch_norm_backward(_np(x), _np(dy), np.ones(c), np.zeros(c))
    assert_matches_reference(y, ref_y, F32, what=f"y, step {step}")
    assert_matches_reference(gx, ref_dx, F32, what=f"dx, step {step}")
    assert_matches_reference(gw, ref_dw, F32, what=f"dweight, step {step}")
    assert_matches_reference(gb, ref_db, F32, what=f"dbias, step {step}")
    count = x.numel() // c
    rm, rv = R.running_stats_update(rm, rv, mean_b, var_b, count, momentum, step)
    assert_matches_reference(m.running_mean, rm, F32, what=f"running_mean, step {step}")
    assert_matches_reference(m.running_var, rv, F32, what=f"running_var, step {step}")
    return rm, rv


@pytest.mark.parametrize("momentum", [0.1, 0.9])
def test_cpu_batch_norm_off_centre_layer_shifts_first_after_its_first_redo(monkeypatch, momentum):
    # data at mean 1e4: the first call runs torch's kernel and redoes the off-centre call
    # (two kernel calls) and marks the layer; its next calls shift the input first and one
    # kernel call does (the check still passes). Outputs, gradients and running stats
    # stay on the float64 reference
    calls = _counted(monkeypatch, "native_batch_norm")
    m = normkit.BatchNorm2d(6, momentum=momentum)
    rm, rv = np.zeros(6), np.ones(6)
    for step in range(1, 5):
        x = _leaf(randn(4, 6, 3, 3, dtype=F32, seed=170 + step, mean=1e4))
        dy = randn(4, 6, 3, 3, dtype=F32, seed=180 + step)
        calls.clear()
        y = m(x)
        assert dispatch.last_backend["batch_norm_stats"] == NATIVE
        assert len(calls) == (2 if step == 1 else 1), step
        rm, rv = _check_bn_training_step(m, x, dy, y, rm, rv, momentum, step)


def test_cpu_batch_norm_shift_mark_runs_out_and_the_layer_asks_again(monkeypatch):
    # batches at mean 20 (std 1) with momentum 0.01, so the running statistics stay
    # centred (|running_mean| * rstd < 1.5): only the batches show the layer off centre. A
    # redone call marks the layer: the next SHIFT_FIRST_CALLS (2 here) calls shift first
    # (one kernel call each), then an unshifted call asks again (a redo: two calls)
    monkeypatch.setattr(_native, "SHIFT_FIRST_CALLS", 2)
    calls = _counted(monkeypatch, "native_batch_norm")
    momentum = 0.01
    m = normkit.BatchNorm2d(5, momentum=momentum)
    rm, rv = np.zeros(5), np.ones(5)
    for step, expected_calls in enumerate([2, 1, 1, 2, 1, 1], start=1):
        x = _leaf(randn(3, 5, 4, 4, dtype=F32, seed=190 + step, mean=20.0))
        dy = randn(3, 5, 4, 4, dtype=F32, seed=200 + step)
        calls.clear()
        y = m(x)
        assert dispatch.last_backend["batch_norm_stats"] == NATIVE
        assert len(calls) == expected_calls, step
        rm, rv = _check_bn_training_step(m, x, dy, y, rm, rv, momentum, step)
        # the running statistics pass the evaluation check: they never predict these calls
        assert np.max(np.abs(rm) / np.sqrt(rv + m.eps)) < _native.CENTRED_MAX


def test_cpu_batch_norm_shift_marks_leave_with_their_layer_and_stay_off_copies():
    # a mark is keyed by the layer's running_mean through a weak reference: deleting the
    # layer drops it, a deepcopy starts unmarked, and nothing is stored on the buffer
    # (a tensor attribute would be pickled into the user's checkpoints)
    import copy
    import gc
    import pickle

    x = randn(2, 3, 4, 4, dtype=F32, seed=210, mean=50.0)
    before = len(_native._SHIFT_FIRST)
    m = normkit.BatchNorm2d(3)
    m(x)  # off centre: redone, marked
    assert len(_native._SHIFT_FIRST) == before + 1
    assert _native._SHIFT_FIRST[id(m.running_mean)][0]() is m.running_mean
    assert not m.running_mean.__dict__
    twin = copy.deepcopy(m)
    assert id(twin.running_mean) not in _native._SHIFT_FIRST
    restored = pickle.loads(pickle.dumps(m.state_dict()))
    assert not restored["running_mean"].__dict__
    del m, twin
    gc.collect()
    assert len(_native._SHIFT_FIRST) == before


def test_batch_norm_called_twice_before_backward_like_torch():
    # siamese use: torch allows two forwards through one BN before backward
    x = randn(8, 4, dtype=F32, seed=60).requires_grad_()
    for make in (torch.nn.BatchNorm1d, normkit.BatchNorm1d):
        m = make(4)
        (m(x).sum() + m(x * 2).pow(2).sum()).backward()
        assert x.grad is not None
    assert dispatch.last_backend["batch_norm_stats"] == "native"


def test_outputs_take_in_place_ops_in_training():
    x = randn(2, 4, 3, 3, dtype=F32, seed=61).requires_grad_()
    for m in (normkit.BatchNorm2d(4), normkit.GroupNorm(2, 4), normkit.InstanceNorm2d(4)):
        y = m(x)
        y += 1.0  # torchvision's `out += identity`, then `relu(inplace=True)`
        y.relu_()
        y.sum().backward()
    ln = normkit.LayerNorm(3)
    y = ln(x)
    y.mul_(2.0)
    y.sum().backward()
    assert dispatch.last_backend["layer_norm_fwd"] == "native"


@pytest.mark.parametrize("grad", [False, True])
def test_the_switch_follows_the_size_threshold_of_the_call_kind(grad):
    n = _native.THRESHOLDS["layer_norm"][1 if grad else 0]
    below = torch.randn(n // 64 - 1, 64).requires_grad_(grad)
    NF.layer_norm(below, (64,))
    assert dispatch.last_backend["layer_norm_fwd"] == "native"
    at = torch.randn(-(-n // 64), 64).requires_grad_(grad)
    NF.layer_norm(at, (64,))  # numel == threshold: the kernel
    assert dispatch.last_backend["layer_norm_fwd"] == "cpu"
    # a weight that needs its gradient makes the call a training call
    w = torch.ones(64, requires_grad=True)
    n_grad = _native.THRESHOLDS["layer_norm"][1]
    NF.layer_norm(torch.randn(n_grad // 64 - 1, 64), (64,), w)
    assert dispatch.last_backend["layer_norm_fwd"] == "native"
    NF.layer_norm(torch.randn(-(-n_grad // 64), 64), (64,), w)
    assert dispatch.last_backend["layer_norm_fwd"] == "cpu"


def test_the_switch_follows_request_env_and_dtype(monkeypatch):
    small = torch.randn(4, 64)
    NF.layer_norm(small, (64,), backend="cpu")  # an explicit backend is obeyed
    assert dispatch.last_backend["layer_norm_fwd"] == "cpu"
    NF.layer_norm(small.half(), (64,))  # half precision: no native switch
    assert dispatch.last_backend["layer_norm_fwd"] == "cpu"
    NF.layer_norm(small.double(), (64,))  # nor float64 (its 1e-12 floor: see _native)
    assert dispatch.last_backend["layer_norm_fwd"] == "cpu"
    NF.layer_norm(small, (64,), torch.ones(64, dtype=torch.float64))  # mixed dtypes
    assert dispatch.last_backend["layer_norm_fwd"] == "cpu"
    monkeypatch.setenv(dispatch.ENV_VAR, "cpu")
    NF.layer_norm(small, (64,))
    assert dispatch.last_backend["layer_norm_fwd"] == "cpu"


def test_env_override_is_read_on_every_call_set_and_unset(monkeypatch):
    # the fast reader of $NORMKIT_BACKEND sees os.environ's assignments and deletions at
    # once, as os.environ.get does (it replaced a per-call os.environ.get)
    small = torch.randn(4, 64)
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert dispatch.env_backend() is None
    NF.layer_norm(small, (64,))
    assert dispatch.last_backend["layer_norm_fwd"] == _native.NATIVE
    os.environ[dispatch.ENV_VAR] = "torch"  # plain assignment, not through monkeypatch
    try:
        assert dispatch.env_backend() == "torch" == os.environ.get(dispatch.ENV_VAR)
        NF.layer_norm(small, (64,))
        assert dispatch.last_backend["layer_norm_fwd"] == "torch"
    finally:
        del os.environ[dispatch.ENV_VAR]
    assert dispatch.env_backend() is None
    NF.layer_norm(small, (64,))
    assert dispatch.last_backend["layer_norm_fwd"] == _native.NATIVE
    monkeypatch.setenv(dispatch.ENV_VAR, "auto")  # "auto" keeps the size switch
    NF.layer_norm(small, (64,))
    assert dispatch.last_backend["layer_norm_fwd"] == _native.NATIVE


def test_env_reader_falls_back_to_os_environ_get(monkeypatch):
    # where os.environ lacks CPython's private store the public lookup is used
    from normkit import _env

    class Plain(dict):
        pass

    monkeypatch.setattr(os, "environ", Plain({dispatch.ENV_VAR: "cpu"}))
    read = _env.reader(dispatch.ENV_VAR)
    assert read() == "cpu"
    os.environ[dispatch.ENV_VAR] = "torch"
    assert read() == "torch"
    del os.environ[dispatch.ENV_VAR]
    assert read() is None


def test_thresholds_cover_each_family_the_functional_layer_switches():
    families = {"layer_norm", "rms_norm", "group_norm", "instance_norm", "batch_norm"}
    families |= {"add_rms_norm", "add_layer_norm", "modulated_layer_norm"}
    assert set(_native.THRESHOLDS) == set(_native.CUDA_THRESHOLDS) == families
    for pair in _native.THRESHOLDS.values():
        assert len(pair) == 2 and all(isinstance(v, int) and v > 64 for v in pair)


def test_channels_last_inputs_keep_the_kernel_paths_layout():
    x = randn(2, 8, 5, 5, dtype=F32, seed=62, mean=50.0)
    x = x.contiguous(memory_format=torch.channels_last)
    cases = (
        (lambda b: NF.batch_norm(x, None, None, training=True, backend=b), "batch_norm_stats"),
        (lambda b: NF.instance_norm(x, backend=b), "group_norm_fwd"),
        (lambda b: NF.group_norm(x, 8, backend=b), "group_norm_fwd"),
        (lambda b: NF.group_norm(x, 2, backend=b), "group_norm_fwd"),
    )
    for i, (call, op) in enumerate(cases):
        kernel = call("cpu")
        auto = call("auto")
        # a grouped shift would reshape (copy): channels-last GroupNorm(G < C) stays a kernel
        assert dispatch.last_backend[op] == ("cpu" if i == 3 else "native"), i
        assert auto.stride() == kernel.stride(), i
    assert NF.batch_norm(x, None, None, training=True).stride() == (
        torch.nn.functional.batch_norm(x, None, None, training=True).stride()
    )


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_kernel_paths_meet_the_floor_at_mean_1e4(backend, training):
    # the kernel paths carry BatchNorm's mean in float64 (docs/ops.md): no torch leniency
    if backend not in dispatch.table["batch_norm_apply"]:
        pytest.skip(f"backend {backend} not registered here")
    # triton runs on CUDA tensors, or on CPU tensors in its interpreter
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    device = "cuda" if backend == "triton" and not interpreted else "cpu"
    x = _leaf(randn(4, 6, 3, 3, dtype=F32, seed=70, mean=1e4, device=device))
    w = _leaf(randn(6, dtype=F32, seed=71, device=device))
    b = _leaf(randn(6, dtype=F32, seed=72, device=device))
    dy = randn(4, 6, 3, 3, dtype=F32, seed=73, device=device)
    rm = (randn(6, dtype=torch.float64, seed=74, device=device) + 1e4).float()
    rv = (torch.rand(6, generator=torch.Generator().manual_seed(75)) + 0.5).to(device)
    y = NF.batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5, backend=backend)
    assert dispatch.last_backend["batch_norm_apply"] == backend
    gx, gw, gb = _grads(y, dy, x, w, b)
    if training:
        ref_y = R.batch_norm_forward(_np(x), _np(w), _np(b))[0]
        ref_dx, ref_dw, ref_db = R.batch_norm_backward(_np(x), _np(dy), _np(w), _np(b))
    else:
        rm64, rv64 = _np(rm), _np(rv)
        ref_y = R.batch_norm_eval_forward(_np(x), rm64, rv64, _np(w), _np(b))
        a = (_np(w) / np.sqrt(rv64 + 1e-5))[:, None, None]
        ref_dx = _np(dy) * a
        x_hat = (_np(x) - rm64[:, None, None]) / np.sqrt(rv64 + 1e-5)[:, None, None]
        ref_dw = (_np(dy) * x_hat).sum((0, 2, 3))
        ref_db = _np(dy).sum((0, 2, 3))
    assert_matches_reference(y, ref_y, F32)
    assert_matches_reference(gx, ref_dx, F32, what="dx")
    assert_matches_reference(gw, ref_dw, F32, what="dweight")
    assert_matches_reference(gb, ref_db, F32, what="dbias")


@pytest.mark.parametrize("backend", ["auto", "cpu", "torch"])
def test_batch_norm_with_one_running_buffer_is_refused_clearly(backend):
    x = randn(4, 3, 2, 2, dtype=F32, seed=80)
    with pytest.raises(ValueError, match="running_mean and running_var must both"):
        NF.batch_norm(x, torch.zeros(3), None, training=True, backend=backend)
    with pytest.raises(ValueError, match="running_mean and running_var must both"):
        NF.batch_norm(x, None, torch.ones(3), training=True, backend=backend)


HALF = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_on_the_cpu_keeps_normkits_kernels(dtype):
    x = randn(4, 16, dtype=dtype, seed=80)
    NF.layer_norm(x, (16,))
    assert dispatch.last_backend["layer_norm_fwd"] != "native"


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU: half precision takes torch's kernel on CUDA only",
)
@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_on_cuda_is_torchs_own_kernel(dtype):
    # the half-precision contract is "within 2x torch's error in that dtype": torch's kernel,
    # unshifted, is what runs, so outputs and gradients are torch's bit for bit
    x = randn(8, 32, 5, 5, dtype=dtype, seed=81, mean=3.0, device="cuda")
    w = randn(32, dtype=dtype, seed=82, device="cuda")
    b = randn(32, dtype=dtype, seed=83, device="cuda")
    dy = randn(8, 32, 5, 5, dtype=dtype, seed=84, device="cuda")
    cases = [
        ("layer_norm_fwd", lambda F, x: F.layer_norm(x, (5,), w[:5], b[:5])),
        ("group_norm_fwd", lambda F, x: F.group_norm(x, 4, w, b)),
        ("rms_norm_fwd", lambda F, x: F.rms_norm(x, (5,), w[:5])),
        ("batch_norm_stats", lambda F, x: F.batch_norm(x, None, None, w, b, True)),
    ]
    for op, call in cases:
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours = call(NF, xa)
        assert dispatch.last_backend[op] == "native", op
        theirs = call(TF, xb)
        ours.backward(dy)
        theirs.backward(dy)
        assert torch.equal(ours, theirs), op
        assert torch.equal(xa.grad, xb.grad), op


# --- the CPU check: torch's kernel as it is when centred, redone when not ------------------

_CHECKED_OPS = {  # family -> (torch function _native calls, call through normkit)
    "layer_norm": ("native_layer_norm", lambda x, w, b: NF.layer_norm(x, (32,), w, b)),
    "group_norm": ("native_group_norm", lambda x, w, b: NF.group_norm(x, 2, w, b)),
    "instance_norm": (
        "native_group_norm",
        lambda x, w, b: NF.instance_norm(x, None, None, w, b, use_input_stats=True),
    ),
    "batch_norm": (
        "native_batch_norm",
        lambda x, w, b: NF.batch_norm(x, None, None, w, b, training=True),
    ),
}


def _reference(family, x, dy, w, b):
    x, dy, w, b = _np(x), _np(dy), _np(w), _np(b)
    if family == "layer_norm":
        return R.layer_norm_forward(x, (32,), w, b)[0], R.layer_norm_backward(x, dy, (32,), w, b)
    if family == "group_norm":
        return R.group_norm_forward(x, 2, w, b)[0], R.group_norm_backward(x, dy, 2, w, b)
    if family == "instance_norm":
        return R.instance_norm_forward(x, w, b)[0], R.instance_norm_backward(x, dy, w, b)
    return R.batch_norm_forward(x, w, b)[0], R.batch_norm_backward(x, dy, w, b)


@pytest.mark.parametrize("family", list(_CHECKED_OPS))
@pytest.mark.parametrize("offset", [2.0, 8.0, 1e4])  # ~|mean| * rstd; CENTRED_MAX is 4
def test_cpu_check_keeps_torchs_result_when_centred_and_redoes_it_off_centre(
    monkeypatch, family, offset
):
    op, call = _CHECKED_OPS[family]
    calls = _counted(monkeypatch, op)
    shape = (6, 5, 32) if family == "layer_norm" else (4, 6, 5, 7)
    c = 32 if family == "layer_norm" else 6
    x = _leaf(randn(*shape, dtype=F32, seed=70, mean=offset))
    w, b = _leaf(randn(c, dtype=F32, seed=71)), _leaf(randn(c, dtype=F32, seed=72))
    dy = randn(*shape, dtype=F32, seed=73)
    y = call(x, w, b)
    assert dispatch.last_backend[schema.ops_of(family.replace("instance", "group"))[0]] == NATIVE
    # one kernel call when every |mean| * rstd is within CENTRED_MAX, a second otherwise
    assert len(calls) == (1 if offset < _native.CENTRED_MAX else 2)
    gx, gw, gb = _grads(y, dy, x, w, b)
    ref_y, (ref_dx, ref_dw, ref_db) = _reference(family, x, dy, w, b)
    assert_matches_reference(y, ref_y, F32)
    assert_matches_reference(gx, ref_dx, F32, what="dx")
    assert_matches_reference(gw, ref_dw, F32, what="dweight")
    assert_matches_reference(gb, ref_db, F32, what="dbias")


def _check_cases():
    # (mean, rstd) pairs: sizes 1 to 1000, products below, at and above CENTRED_MAX, NaN
    # and inf in one element, signs mixed
    gen = torch.Generator().manual_seed(5)
    k = _native.CENTRED_MAX
    for n in (1, 3, 64, 1000):
        for top in (0.5 * k, k, 1.001 * k, 50.0):
            mean = torch.randn(n, generator=gen)
            rstd = torch.rand(n, generator=gen) + 0.5
            mean = mean / (mean * rstd).abs().max() * top  # the largest |mean * rstd| ~ top
            yield mean, rstd
        for bad in (float("nan"), float("inf"), -float("inf")):
            mean, rstd = torch.randn(n, generator=gen), torch.rand(n, generator=gen)
            mean[n // 2] = bad
            yield mean, rstd
            yield rstd, mean.abs()  # the bad value in the other argument


@pytest.mark.parametrize("compiled", [True, False])
def test_cpu_check_gives_the_formulas_verdict(monkeypatch, compiled):
    # _native._centred and _eval_centred run a compiled loop over the statistics' data
    # (compiled=False: the torch ops used without numba); the verdict must be the one the
    # formula in this test gives, NaN and inf included
    k = _native.CENTRED_MAX
    if compiled:
        assert _native._loops()[0] is not None  # numba is installed: the loop is what runs
    else:
        monkeypatch.setattr(_native, "_LOOPS", (None, None))
    for mean, rstd in _check_cases():
        expected = bool((mean * rstd).abs().max() <= k)  # NaN: max is NaN, the test fails
        assert _native._centred(mean, rstd) is expected, (mean, rstd)
        # a (2, n/2)-shaped view of the same values, as layer norm's (rows, 1) statistics
        if mean.numel() % 2 == 0:
            assert _native._centred(mean.view(2, -1), rstd.view(2, -1)) is expected
        # non-contiguous statistics take the torch formula, with the same verdict
        doubled = torch.stack([mean, mean], 1)[:, 0]
        assert not doubled.is_contiguous() or doubled.numel() == 1
        assert _native._centred(doubled, rstd) is expected
        # evaluation: |rm| * rsqrt(rv + eps) <= K, with rv = 1 / rstd**2 - eps
        eps = 1e-5
        rm, rv = mean, (1.0 / rstd.double() ** 2 - eps).float()
        margin = rv.double() - rm.double() ** 2 / k**2  # the test's float64 form
        want = bool(margin.min() >= -eps)
        assert _native._eval_centred(rm, rv, eps) is want, (rm, rv)


_FUNC_LAYERS = {  # name -> (module, input shape, float64 forward, float64 dx)
    "layer_norm": (
        lambda: normkit.LayerNorm(32),
        (6, 32),
        lambda x: R.layer_norm_forward(x, (32,))[0],
        lambda x, dy: R.layer_norm_backward(x, dy, (32,))[0],
    ),
    "group_norm": (
        lambda: normkit.GroupNorm(2, 6),
        (4, 6, 5),
        lambda x: R.group_norm_forward(x, 2)[0],
        lambda x, dy: R.group_norm_backward(x, dy, 2)[0],
    ),
    "batch_norm": (  # no running statistics: torch.func cannot update buffers in place
        lambda: normkit.BatchNorm1d(6, track_running_stats=False),
        (8, 6),
        lambda x: R.batch_norm_forward(x)[0],
        lambda x, dy: R.batch_norm_backward(x, dy)[0],
    ),
}


@pytest.mark.parametrize("mean", MEANS)
@pytest.mark.parametrize("name", list(_FUNC_LAYERS))
def test_torch_func_grad_and_vmap_through_the_native_path(name, mean):
    # torch.func wraps every tensor: the CPU check has no data address to read, and vmap
    # refuses host reads, so while a transform is active the native path takes the shift.
    # grad and vmap then run as on torch's own layers, within the float64 contract
    from torch.func import grad, vmap

    build, shape, forward, backward = _FUNC_LAYERS[name]
    m = build()
    x = randn(*shape, dtype=F32, seed=160, mean=mean)
    dy = randn(*shape, dtype=F32, seed=161)
    dx = grad(lambda v: (m(v) * dy).sum())(x)
    assert dispatch.last_backend[schema.ops_of(name)[0]] == NATIVE
    assert_matches_reference(dx, backward(_np(x), _np(dy)), F32, what="dx under grad")
    # forward mode: with weight 1 and bias 0 these layers' Jacobians are symmetric
    # (rstd * (I - 1 1^T / n - x_hat x_hat^T / n) per set of shared statistics), so the
    # tangent the jvp pushes forward is the reference backward applied to it
    tangent = torch.func.jvp(m, (x,), (dy,))[1]
    assert_matches_reference(tangent, backward(_np(x), _np(dy)), F32, what="jvp")
    if name == "batch_norm":  # statistics over the batch: vmap over samples would change them
        return
    y = vmap(lambda xi: m(xi.unsqueeze(0)).squeeze(0))(x)  # one sample at a time
    assert_matches_reference(y, forward(_np(x)), F32, what="y under vmap")


def test_batch_norm_with_running_stats_inside_a_transform_names_the_way_out():
    # training BatchNorm would update its buffers in place, which torch.func refuses (torch's
    # layer too); normkit says so, and the way out it names (torch.func's
    # replace_all_batch_norm_modules_) then gives the per-sample statistics of float64
    from torch.func import replace_all_batch_norm_modules_, vmap

    m = torch.nn.Sequential(normkit.BatchNorm1d(6))
    x = randn(4, 3, 6, dtype=F32, seed=163, mean=1e4)  # 4 samples of a (3, 6) batch each
    with pytest.raises(RuntimeError, match="running statistics inside a torch.func"):
        vmap(m)(x)
    replace_all_batch_norm_modules_(m)
    y = vmap(m)(x)
    ref = np.stack([R.batch_norm_forward(_np(xi))[0] for xi in x])
    assert_matches_reference(y, ref, F32, what="y under vmap")


_IN_TRANSFORM = {  # kernel-path calls inside a transform: (transform, function of x)
    "lrn under grad": ("grad", lambda v: NF.local_response_norm(v, 3).sum()),
    "explicit backend under grad": (
        "grad",
        lambda v: NF.layer_norm(v, (3,), backend="torch").sum(),
    ),
    "float64 under vmap": ("vmap", lambda v: NF.layer_norm(v.double(), (3,))),
}


@pytest.mark.parametrize("case", list(_IN_TRANSFORM))
def test_kernel_path_inside_a_torch_func_transform_is_refused_with_the_way_out(case):
    # normkit's autograd.Functions lack functorch's setup_context: torch would refuse them
    # with its own message; normkit's says which calls do work and what to do instead
    from torch import func

    transform, fn = _IN_TRANSFORM[case]
    x = randn(2, 4, 3, 3, dtype=F32, seed=162)
    with pytest.raises(RuntimeError, match="torch.func transform.*THRESHOLDS"):
        getattr(func, transform)(fn)(x)
    fn(x)  # outside a transform the same call runs


@pytest.mark.parametrize("seed", range(3))
def test_torchs_kernels_at_the_centred_limit_stay_within_half_the_floor(seed):
    # why CENTRED_MAX = 4: torch's own float32 CPU kernels, unshifted, on rows / groups /
    # channels whose mean is 4 standard deviations from 0, against the float64 reference
    # (benchmarks/native_centred.py tabulates other offsets)
    k = _native.CENTRED_MAX
    x = randn(8, 64, 16, 16, dtype=F32, seed=80 + seed, mean=k)
    dy = randn(8, 64, 16, 16, dtype=F32, seed=90 + seed)
    w, b = randn(64, dtype=F32, seed=100 + seed), randn(64, dtype=F32, seed=110 + seed)
    xr = randn(64, 768, dtype=F32, seed=120 + seed, mean=k)
    dyr = randn(64, 768, dtype=F32, seed=130 + seed)
    wr, br = randn(768, dtype=F32, seed=140 + seed), randn(768, dtype=F32, seed=150 + seed)
    cases = {
        "layer_norm": (
            lambda x, w, b: torch.native_layer_norm(x, (768,), w, b, 1e-5),
            (xr, dyr, wr, br),
            lambda x, dy, w, b: (
                R.layer_norm_forward(x, (768,), w, b)[0],
                *R.layer_norm_backward(x, dy, (768,), w, b),
            ),
        ),
        "group_norm": (
            lambda x, w, b: torch.native_group_norm(x, w, b, 8, 64, 256, 8, 1e-5),
            (x, dy, w, b),
            lambda x, dy, w, b: (
                R.group_norm_forward(x, 8, w, b)[0],
                *R.group_norm_backward(x, dy, 8, w, b),
            ),
        ),
        "batch_norm": (
            lambda x, w, b: torch.native_batch_norm(x, w, b, None, None, True, 0.1, 1e-5),
            (x, dy, w, b),
            lambda x, dy, w, b: (
                R.batch_norm_forward(x, w, b)[0],
                *R.batch_norm_backward(x, dy, w, b),
            ),
        ),
    }
    for family, (run, (xx, dd, ww, bb), ref) in cases.items():
        leaves = [_leaf(t) for t in (xx, ww, bb)]
        y, mean, rstd = run(*leaves)
        assert float((mean * rstd).detach().abs().max()) == pytest.approx(k, rel=0.1), family
        y.backward(dd)
        refs = ref(_np(xx), _np(dd), _np(ww), _np(bb))
        for what, got, want in zip(("y", "dx", "dw", "db"), (y, *[t.grad for t in leaves]), refs):
            scale = max(1.0, float(np.max(np.abs(want))))
            err = float(np.max(np.abs(_np(got) - want))) / scale
            assert err <= 0.5 * ATOL[F32], f"{family} {what}: {err:.3g} relative"


def _module_pairs():
    yield "bn", lambda: normkit.BatchNorm2d(6), (4, 6, 5, 5)
    yield "bn-cma", lambda: normkit.BatchNorm2d(6, momentum=None), (4, 6, 5, 5)
    yield "bn-no-affine", lambda: normkit.BatchNorm1d(6, affine=False), (8, 6)
    yield "bn-untracked", lambda: normkit.BatchNorm3d(6, track_running_stats=False), (2, 6, 3, 3, 3)
    yield "ln", lambda: normkit.LayerNorm((5, 8)), (3, 4, 5, 8)
    yield "ln-no-bias", lambda: normkit.LayerNorm(8, bias=False), (3, 8)
    yield "gn", lambda: normkit.GroupNorm(3, 6), (2, 6, 4, 4)
    yield "gn-no-affine", lambda: normkit.GroupNorm(2, 6, affine=False), (2, 6, 7)
    yield "rms", lambda: normkit.RMSNorm(8), (3, 5, 8)
    yield "rms-eps-no-affine", lambda: normkit.RMSNorm((4, 8), 1e-3, False), (3, 4, 8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name, make, shape", list(_module_pairs()))
@pytest.mark.parametrize("mean", MEANS)
def test_module_fast_path_gives_the_functional_paths_bits(name, make, shape, mean, device):
    # the modules' _fast_forward skips the functional layer's checks; the result, the
    # gradients and the buffers must be exactly those of the functional call
    fast, full = make().to(device), make().to(device)
    full.load_state_dict(fast.state_dict())
    full._fast_forward = lambda input: None  # force the full path on this instance
    for step in range(3):
        for m in (fast, full):
            m.train(step < 2)
        x = randn(*shape, dtype=F32, seed=200 + step, mean=mean, device=device)
        outs, took = [], []
        for m in (fast, full):
            xi = _leaf(x)
            y = m(xi)
            took.append(dispatch.last_backend[next(iter(_family_ops(m)))])
            y.backward(randn(*shape, dtype=F32, seed=210 + step, device=device))
            outs.append((y, xi.grad, [p.grad for p in m.parameters()]))
        # on CUDA a training batch norm with momentum=None takes the kernel path (the
        # shifted native path needs momentum < 1); both modules must take the same one
        cma_on_cuda = device == "cuda" and name == "bn-cma" and step < 2
        assert took == ([took[1]] * 2 if cma_on_cuda else [NATIVE, NATIVE]), took
        (y0, g0, p0), (y1, g1, p1) = outs
        assert torch.equal(y0, y1) and torch.equal(g0, g1)
        assert all(torch.equal(a, b) for a, b in zip(p0, p1))
        for (k0, b0), (k1, b1) in zip(fast.named_buffers(), full.named_buffers()):
            assert k0 == k1 and torch.equal(b0, b1), k0


def _family_ops(m):
    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
        return schema.ops_of("batch_norm")
    if isinstance(m, torch.nn.LayerNorm):
        return schema.ops_of("layer_norm")
    if isinstance(m, torch.nn.RMSNorm):
        return schema.ops_of("rms_norm")
    return schema.ops_of("group_norm")


def test_module_fast_path_leaves_bad_state_to_the_full_paths_errors():
    bn = normkit.BatchNorm2d(4)
    bn.weight = torch.nn.Parameter(torch.ones(5))  # replaced with the wrong size
    with pytest.raises(ValueError, match="weight must have shape"):
        bn(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="expected 4 channels"):
        normkit.BatchNorm2d(4)(torch.randn(2, 3, 3, 3))
    ln = normkit.LayerNorm(8)
    with pytest.raises(ValueError):
        ln(torch.randn(2, 7))
    gn = normkit.GroupNorm(2, 4)
    with pytest.raises(ValueError, match="expected 4 channels"):
        gn(torch.randn(2, 6, 3))


def test_a_jit_trace_records_the_shift_not_the_checks_verdict():
    # traced on centred data, run on data at mean 1e4: a frozen "centred" verdict would
    # hand torch's unshifted kernel a 1e4 mean (off by ~1e-4); the trace takes the shift
    m = torch.nn.Sequential(normkit.LayerNorm(16), normkit.GroupNorm(2, 4)).eval()
    x = randn(4, 4, 16, dtype=F32, seed=300)
    with pytest.warns(Warning):  # torch.jit.trace is deprecated in torch 2.13
        traced = torch.jit.trace(m, x, check_trace=False)
    x4 = randn(4, 4, 16, dtype=F32, seed=301, mean=1e4)
    ref = R.layer_norm_forward(_np(x4), (16,), _np(m[0].weight), _np(m[0].bias))[0]
    ref = R.group_norm_forward(ref, 2, _np(m[1].weight), _np(m[1].bias))[0]
    assert_matches_reference(traced(x4), ref, F32)


# --- the fused residual add + norm ---------------------------------------------------------


def _fused_case(fn, mean, residual=True, offset=0.0, device="cpu"):
    """One add_rms_norm / add_layer_norm call through auto (float32, (6, 5, 32)): its
    outputs and gradients, torch's float32 composite's, and the float64 reference's."""
    from normkit import reference as RF

    shape, d = (6, 5, 32), 32
    x = randn(*shape, dtype=F32, seed=400, mean=mean, device=device)
    r = randn(*shape, dtype=F32, seed=401, device=device) if residual else None
    w = randn(d, dtype=F32, seed=402, device=device)
    b = randn(d, dtype=F32, seed=403, device=device)
    dy = randn(*shape, dtype=F32, seed=404, device=device)
    dh = randn(*shape, dtype=F32, seed=405, device=device)
    leaves = [_leaf(t) for t in (x, r, w, b)]
    peers = [_leaf(t) for t in (x, r, w, b)]
    lx, lr, lw, lb = leaves
    px, pr, pw, pb = peers
    ph = px.clone() if pr is None else px + pr
    a = [None if t is None else _np(t) for t in (x, r, w, b, dy, dh)]
    if fn == "rms":
        y, h = NF.add_rms_norm(lx, lr, d, lw, 1e-6, offset=offset)
        py = TF.rms_norm(ph, (d,), pw + offset, 1e-6)
        refs = RF.add_rms_norm_forward(a[0], a[1], a[2], 1e-6, offset)
        grads = RF.add_rms_norm_backward(a[0], a[1], a[4], a[5], a[2], 1e-6, offset)
        leaves, peers = leaves[:3], peers[:3]
    else:
        y, h = NF.add_layer_norm(lx, lr, d, lw, lb, 1e-5)
        py = TF.layer_norm(ph, (d,), pw, pb, 1e-5)
        refs = RF.add_layer_norm_forward(a[0], a[1], a[2], a[3], 1e-5)
        grads = RF.add_layer_norm_backward(a[0], a[1], a[4], a[5], a[2], a[3], 1e-5)
    took = dispatch.last_backend[f"add_{'rms' if fn == 'rms' else 'layer'}_norm_fwd"]
    torch.autograd.backward((y, h), (dy, dh))
    torch.autograd.backward((py, ph), (dy, dh))
    return took, (y, h), (py, ph), refs, leaves, peers, grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fn", ["rms", "ln"])
@pytest.mark.parametrize("mean", MEANS)
@pytest.mark.parametrize("residual", [True, False])
def test_small_fused_add_norm_takes_torchs_ops_within_the_contract(fn, mean, residual, device):
    # below the thresholds auto runs torch's add and norm (the layer norm checked or
    # shifted): the values and every gradient meet the float64 reference under the
    # policy, with torch's own float32 composite as the peer
    took, (y, h), (py, ph), refs, leaves, peers, grads = _fused_case(
        fn, mean, residual, offset=1.0 if fn == "rms" else 0.0, device=device
    )
    assert took == NATIVE
    if not residual:
        assert h.data_ptr() != leaves[0].data_ptr()  # h is a fresh tensor, never x
    assert not y._is_view() and not h._is_view()
    assert_matches_reference(y, refs[0], F32, py, "y")
    assert_matches_reference(h, refs[1], F32, ph, "h")
    for what, ours, peer, ref in zip(("dx", "dr", "dw", "db"), leaves, peers, grads):
        if ours is None:
            continue
        assert_matches_reference(ours.grad, ref, F32, peer.grad, what)


def test_fused_add_norm_above_the_threshold_or_not_float32_takes_the_kernels(monkeypatch):
    monkeypatch.setitem(_native.THRESHOLDS, "add_rms_norm", (1, 1))
    monkeypatch.setitem(_native.THRESHOLDS, "add_layer_norm", (1, 1))
    for fn in ("rms", "ln"):
        took, (y, _), _, refs, *_ = _fused_case(fn, 0.0)
        assert took == "cpu", fn
        assert_matches_reference(y, refs[0], F32, None, "y")
    monkeypatch.undo()
    x = randn(4, 16, seed=410)  # float64
    NF.add_rms_norm(x, x, 16)
    assert dispatch.last_backend["add_rms_norm_fwd"] == "cpu"
    x32, r64 = randn(4, 16, seed=411, dtype=F32), randn(4, 16, seed=412)  # promoted
    NF.add_layer_norm(x32, r64, 16)
    assert dispatch.last_backend["add_layer_norm_fwd"] == "cpu"
    NF.add_layer_norm(x32, x32, 16, backend="torch")
    assert dispatch.last_backend["add_layer_norm_fwd"] == "torch"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mean", MEANS)
def test_small_modulated_layer_norm_takes_torchs_ops_within_the_contract(mean, device):
    from normkit import reference as RF

    shape = (3, 7, 48)
    x = randn(*shape, dtype=F32, seed=420, mean=mean, device=device)
    shift = randn(3, 48, dtype=F32, seed=421, device=device)
    scale = randn(3, 48, dtype=F32, seed=422, std=0.3, device=device)
    dy = randn(*shape, dtype=F32, seed=423, device=device)
    ours = [_leaf(t) for t in (x, shift, scale)]
    peer = [_leaf(t) for t in (x, shift, scale)]
    y = NF.modulated_layer_norm(*ours, 1e-6)
    assert dispatch.last_backend["modulated_layer_norm_fwd"] == NATIVE
    assert not y._is_view() and y.shape == shape
    px, ps, pc = peer
    py = TF.layer_norm(px, (48,), eps=1e-6) * (1 + pc[:, None]) + ps[:, None]
    y.backward(dy)
    py.backward(dy)
    a = [_np(t) for t in (x, shift, scale, dy)]
    ref = RF.modulated_layer_norm_forward(a[0], a[1], a[2], 1e-6)
    grads = RF.modulated_layer_norm_backward(a[0], a[1], a[2], a[3], 1e-6)
    assert_matches_reference(y, ref, F32, py, "y")
    for what, o, p, g in zip(("dx", "dshift", "dscale"), ours, peer, grads):
        assert_matches_reference(o.grad, g, F32, p.grad, what)
    # half precision, float64 and an explicit backend keep the kernels
    NF.modulated_layer_norm(x.double(), shift.double(), scale.double())
    assert dispatch.last_backend["modulated_layer_norm_fwd"] != NATIVE
    NF.modulated_layer_norm(x, shift, scale, backend="torch")
    assert dispatch.last_backend["modulated_layer_norm_fwd"] == "torch"
