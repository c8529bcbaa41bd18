"""normkit's batch/layer/group/instance/RMS norm against torch.nn and the float64 reference.

Module conformance in the style of PyTorch's test_modules.py: for every layer and
mode, the same training steps on torch's layer and normkit's (outputs, input and
parameter gradients, running stats), eval mode, repr, state_dict both ways, pickle,
factory kwargs, layouts and gradcheck in float64.
"""

import copy
import io
import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import normkit
from normkit import dispatch
from normkit import functional as NF
from normkit.reference import (
    batch_norm_backward,
    batch_norm_forward,
    group_norm_backward,
    group_norm_forward,
    layer_norm_backward,
    layer_norm_forward,
    rms_norm_backward,
    rms_norm_forward,
    running_stats_update,
)

from hostile import layouts, randn
from tolerance import ATOL, assert_matches_reference, max_err


def _no_bias(m, cls: str, *args):
    """``m.<cls>(*args, bias=False)``; where torch's constructor has no ``bias=`` (torch
    2.11's BatchNorm and GroupNorm), torch's layer with its bias removed, which computes
    the same."""
    try:
        return getattr(m, cls)(*args, bias=False)
    except TypeError:
        if m is not nn:
            raise
        layer = getattr(m, cls)(*args)
        layer.bias = None
        return layer


# (id, torch constructor, normkit constructor, input shape)
CASES = [
    ("bn1d-2d", lambda m: m.BatchNorm1d(4), (6, 4)),
    ("bn1d-3d-momentum-none", lambda m: m.BatchNorm1d(3, momentum=None), (4, 3, 5)),
    ("bn2d", lambda m: m.BatchNorm2d(3, eps=1e-3, momentum=0.3), (3, 3, 4, 5)),
    ("bn2d-no-affine", lambda m: m.BatchNorm2d(3, affine=False), (2, 3, 3, 3)),
    ("bn2d-no-bias", lambda m: _no_bias(m, "BatchNorm2d", 3), (2, 3, 3, 3)),
    ("bn2d-untracked", lambda m: m.BatchNorm2d(3, track_running_stats=False), (2, 3, 3, 2)),
    ("bn3d", lambda m: m.BatchNorm3d(2), (2, 2, 3, 2, 3)),
    ("syncbn-no-group", lambda m: m.SyncBatchNorm(3), (4, 3, 2, 2)),
    ("in1d", lambda m: m.InstanceNorm1d(3), (2, 3, 6)),
    ("in1d-unbatched", lambda m: m.InstanceNorm1d(3, affine=True), (3, 6)),
    (
        "in2d-affine-tracked",
        lambda m: m.InstanceNorm2d(3, affine=True, track_running_stats=True),
        (2, 3, 4, 4),
    ),
    (
        "in2d-tracked-momentum-none",
        lambda m: m.InstanceNorm2d(3, momentum=None, track_running_stats=True),
        (2, 3, 3, 3),
    ),
    ("in3d", lambda m: m.InstanceNorm3d(2, affine=True), (2, 2, 2, 3, 3)),
    ("ln-int", lambda m: m.LayerNorm(7), (3, 4, 7)),
    ("ln-shape", lambda m: m.LayerNorm([3, 4, 5], eps=1e-3), (2, 3, 4, 5)),
    ("ln-no-affine", lambda m: m.LayerNorm(6, elementwise_affine=False), (5, 6)),
    ("ln-no-bias", lambda m: m.LayerNorm(6, bias=False), (5, 6)),
    ("gn-1", lambda m: m.GroupNorm(1, 6), (2, 6, 3, 3)),
    ("gn-3", lambda m: m.GroupNorm(3, 6, eps=1e-4), (2, 6, 5)),
    ("gn-c", lambda m: m.GroupNorm(6, 6), (2, 6, 2, 3)),
    ("gn-no-affine", lambda m: m.GroupNorm(2, 4, affine=False), (3, 4, 2, 2)),
    ("gn-no-bias", lambda m: _no_bias(m, "GroupNorm", 2, 4), (3, 4, 2, 2)),
    ("rms-int", lambda m: m.RMSNorm(8), (3, 8)),
    ("rms-shape-eps", lambda m: m.RMSNorm([2, 5], eps=1e-3), (3, 4, 2, 5)),
    ("rms-no-affine", lambda m: m.RMSNorm(5, elementwise_affine=False), (4, 5)),
]
IDS = [c[0] for c in CASES]


def _pair(make, dtype=torch.float64, seed=0):
    """torch's layer and normkit's twin with the same random parameters and running stats."""
    theirs = make(nn).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
        for name, b in theirs.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g, dtype=torch.float64))
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g, dtype=torch.float64) + 0.5)
    ours = make(normkit).to(dtype)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def _step(module, x, dy):
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad()
    y = module(x)
    (y * dy).sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    return y.detach(), x.grad, grads


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_training_steps_and_eval_match_torch(case):
    _, make, shape = case
    theirs, ours = _pair(make)
    for step in range(3):
        x = randn(*shape, seed=10 + step, mean=step * 2.0, std=1.0 + step)
        dy = randn(*shape, seed=20 + step)
        y_t, dx_t, g_t = _step(theirs, x, dy)
        y_o, dx_o, g_o = _step(ours, x, dy)
        assert max_err(y_o, y_t) < 1e-12
        assert max_err(dx_o, dx_t) < 1e-11
        assert g_o.keys() == g_t.keys()
        for name in g_t:
            assert max_err(g_o[name], g_t[name]) < 1e-11, name
        for (name, b_t), (_, b_o) in zip(theirs.state_dict().items(), ours.state_dict().items()):
            assert b_o.dtype == b_t.dtype, name
            assert max_err(b_o, b_t) < 1e-13, (name, step)
    theirs.eval()
    ours.eval()
    x = randn(*shape, seed=30)
    dy = randn(*shape, seed=31)
    y_t, dx_t, g_t = _step(theirs, x, dy)
    y_o, dx_o, g_o = _step(ours, x, dy)
    assert max_err(y_o, y_t) < 1e-12
    assert max_err(dx_o, dx_t) < 1e-11
    for name in g_t:
        assert max_err(g_o[name], g_t[name]) < 1e-11, name


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_repr_state_dict_both_ways_and_pickle(case):
    _, make, shape = case
    theirs, ours = _pair(make, torch.float32, seed=1)
    assert repr(ours) == repr(theirs)
    assert type(ours).__name__ == type(theirs).__name__
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert getattr(ours, "_version", None) == getattr(theirs, "_version", None)
    # normkit -> torch (through a real file round trip)
    fresh = make(nn)
    buf = io.BytesIO()
    torch.save(ours.state_dict(), buf)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    for (k, a), (_, b) in zip(fresh.state_dict().items(), ours.state_dict().items()):
        assert torch.equal(a, b), k
    clone = pickle.loads(pickle.dumps(ours))
    x = randn(*shape, seed=2, dtype=torch.float32)
    ours.eval()
    clone.eval()
    assert torch.equal(clone(x), ours(x))
    assert ours.backend == "auto" and clone.backend == "auto"


def test_old_checkpoint_without_num_batches_tracked_loads():
    bn = normkit.BatchNorm2d(3)
    state = bn.state_dict()
    del state["num_batches_tracked"]
    state._metadata[""]["version"] = 1  # a pre-0.4.1 torch checkpoint
    bn.load_state_dict(state)  # strict: the missing counter is filled with 0
    assert bn.num_batches_tracked.item() == 0
    inst = normkit.InstanceNorm2d(3)
    old = {"running_mean": torch.zeros(3), "running_var": torch.ones(3)}
    with pytest.raises(RuntimeError, match="Unexpected running stats buffer"):
        inst.load_state_dict(old)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_factory_kwargs(case):
    _, make, _ = case
    name = type(make(nn)).__name__
    if name in ("LayerNorm", "RMSNorm"):
        cls = getattr(normkit, name)
        m = cls(make(nn).normalized_shape, device="cpu", dtype=torch.float64)
    else:
        t = make(nn)
        cls = getattr(normkit, name)
        args = (t.num_groups, t.num_channels) if name == "GroupNorm" else (t.num_features,)
        m = cls(*args, device="cpu", dtype=torch.float64)
    for _, t in m.named_parameters():
        assert t.dtype == torch.float64
    for n, b in m.named_buffers():
        assert b.dtype == (torch.long if n == "num_batches_tracked" else torch.float64)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_float64(case, training):
    _, make, shape = case
    _, ours = _pair(make)
    ours.train(training)
    x = randn(*shape, seed=5).requires_grad_(True)
    params = list(ours.parameters())

    def f(x, *ps):
        # route the gradient to the parameters by substituting them for this call
        return torch.func.functional_call(
            ours, dict(zip([n for n, _ in ours.named_parameters()], ps)), (x,)
        )

    inputs = (x,) + tuple(p.detach().clone().requires_grad_(True) for p in params)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda m: m.BatchNorm2d(5), (3, 5, 4, 6)),
        (lambda m: m.GroupNorm(5, 5), (3, 5, 4, 6)),
        (lambda m: m.InstanceNorm2d(5, affine=True), (3, 5, 4, 6)),
        (lambda m: m.LayerNorm(6), (3, 5, 4, 6)),
        (lambda m: m.RMSNorm([4, 6]), (3, 5, 4, 6)),
    ],
)
def test_layouts_give_identical_results(make, shape):
    theirs, ours = _pair(make, torch.float32)
    base = randn(*shape, seed=6, dtype=torch.float32)
    dy = randn(*shape, seed=7, dtype=torch.float32)
    ref_y, ref_dx, ref_g = _step(copy.deepcopy(theirs), base, dy)
    for name, x in layouts(base):
        y, dx, g = _step(copy.deepcopy(ours), x, dy)
        assert y.shape == base.shape
        assert max_err(y, ref_y) < 1e-5, name
        assert max_err(dx, ref_dx) < 1e-4, name
        for k in g:
            assert max_err(g[k], ref_g[k]) < 1e-4, (name, k)
    y_cl = ours(base.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(y_cl, ours(base), atol=1e-6)


# --- functional vs the float64 reference ---------------------------------------------

HOSTILE = [
    ("randn", dict(seed=40)),
    ("mean 1e4", dict(seed=41, mean=1e4)),
    ("mean -300 std 0.1", dict(seed=42, mean=-300.0, std=0.1)),
    ("huge std", dict(seed=43, std=1e3)),
]


@pytest.mark.parametrize("label,kw", HOSTILE)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_functional_matches_reference(label, kw, dtype):
    x64 = randn(2, 6, 5, 7, **kw)
    dy64 = randn(2, 6, 5, 7, seed=99)
    w64, b64 = randn(6, seed=97), randn(6, seed=98)
    x, dy, w, b = (t.to(dtype) for t in (x64, dy64, w64, b64))
    xr = x.double().numpy()  # reference of the rounded input
    dyn, wn, bn = dy.double().numpy(), w.double().numpy(), b.double().numpy()

    def run(fn, *params):
        xx = x.clone().requires_grad_(True)
        ps = [p.clone().requires_grad_(True) for p in params]
        y = fn(xx, *ps)
        (y * dy).sum().backward()
        return [y, xx.grad] + [p.grad for p in ps]

    checks = [
        (
            run(lambda v, w_, b_: NF.batch_norm(v, None, None, w_, b_, True), w, b),
            [batch_norm_forward(xr, wn, bn)[0], *batch_norm_backward(xr, dyn, wn, bn)],
            lambda: run(
                lambda v, w_, b_: torch.nn.functional.batch_norm(v, None, None, w_, b_, True), w, b
            ),
        ),
        (
            run(lambda v, w_, b_: NF.group_norm(v, 3, w_, b_), w, b),
            [group_norm_forward(xr, 3, wn, bn)[0], *group_norm_backward(xr, dyn, 3, wn, bn)],
            lambda: run(lambda v, w_, b_: torch.nn.functional.group_norm(v, 3, w_, b_), w, b),
        ),
        (
            run(lambda v: NF.layer_norm(v, [5, 7])),
            [layer_norm_forward(xr, (5, 7))[0], layer_norm_backward(xr, dyn, (5, 7))[0]],
            lambda: run(lambda v: torch.nn.functional.layer_norm(v, [5, 7])),
        ),
        (
            run(lambda v: NF.rms_norm(v, [7], eps=1e-6)),
            [
                rms_norm_forward(xr, (7,), eps=1e-6)[0],
                rms_norm_backward(xr, dyn, (7,), eps=1e-6)[0],
            ],
            lambda: run(lambda v: torch.nn.functional.rms_norm(v, [7], eps=1e-6)),
        ),
    ]
    for k, (ours, refs, peer) in enumerate(checks):
        theirs = peer()
        for what, o, r, t in zip(("y", "dx", "dweight", "dbias"), ours, refs, theirs):
            if k == 0 and dtype == torch.float32 and what == "y" and abs(kw.get("mean", 0)) > 1:
                # float32 statistics cannot hold the mean closer than half an ulp: at 1e4
                # that is 4.9e-4, i.e. 4.9e-4 * rstd * |w| in y. torch's CPU batch norm
                # keeps its statistics in double and beats this; our contract saves float32.
                _, _, var = batch_norm_forward(xr)
                slack = (
                    0.5
                    * float(np.spacing(np.float32(abs(kw["mean"]))))
                    * float(np.max(np.abs(wn) / np.sqrt(var + 1e-5)))
                )
                assert max_err(o, r) <= 2 * max_err(t, r) + slack, f"{label} {what}"
                continue
            assert_matches_reference(o, r, dtype, torch_same_dtype=t, what=f"{label} {what}")


def test_stats_at_mean_1e4_where_naive_variance_fails():
    # std 1 around 1e4 in float32: E[x^2] - E[x]^2 has resolution ~8 at 1e8 and is garbage;
    # normkit's two-pass stats stay within float32 rounding of the data.
    x = randn(64, 3, 8, 8, seed=50, mean=1e4).float()
    bn = normkit.BatchNorm2d(3, momentum=1.0)
    bn(x)
    ref_mean, ref_var = batch_norm_forward(x.double().numpy())[1:]
    n = x.numel() // 3
    assert max_err(bn.running_mean, ref_mean) < 1e-3
    assert max_err(bn.running_var, ref_var * n / (n - 1)) < 1e-3
    x32 = x.transpose(0, 1).reshape(3, -1)
    naive = (x32 * x32).mean(1) - x32.mean(1) ** 2
    assert max_err(naive, ref_var) > 0.05  # what the one-pass formula would have given
    y = normkit.functional.layer_norm(x.reshape(64, -1), [192])
    ref = layer_norm_forward(x.double().numpy().reshape(64, -1), (192,))[0]
    peer = torch.nn.functional.layer_norm(x.reshape(64, -1), [192])
    assert_matches_reference(y, ref, torch.float32, torch_same_dtype=peer)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("which", ["batch", "group", "layer", "rms", "instance"])
def test_low_precision_within_policy(dtype, which):
    x = randn(4, 6, 5, 5, seed=60, mean=3.0, std=2.0).to(dtype)
    dy = randn(4, 6, 5, 5, seed=61).to(dtype)
    w = randn(6, seed=62).to(dtype)
    xr, dyr, wr = x.double().numpy(), dy.double().numpy(), w.double().numpy()
    fns = {
        "batch": (
            lambda m, v, w_: m.batch_norm(v, None, None, w_, None, True),
            batch_norm_forward(xr, wr)[0],
            batch_norm_backward(xr, dyr, wr),
        ),
        "group": (
            lambda m, v, w_: m.group_norm(v, 2, w_),
            group_norm_forward(xr, 2, wr)[0],
            group_norm_backward(xr, dyr, 2, wr),
        ),
        "instance": (
            lambda m, v, w_: m.instance_norm(v, weight=w_),
            group_norm_forward(xr, 6, wr)[0],
            group_norm_backward(xr, dyr, 6, wr),
        ),
        "layer": (
            lambda m, v, w_: m.layer_norm(v, [5], w_[:5]),
            layer_norm_forward(xr, (5,), wr[:5])[0],
            layer_norm_backward(xr, dyr, (5,), wr[:5]),
        ),
        "rms": (
            lambda m, v, w_: m.rms_norm(v, [5], w_[:5], 1e-5),
            rms_norm_forward(xr, (5,), wr[:5], 1e-5)[0],
            rms_norm_backward(xr, dyr, (5,), wr[:5], 1e-5),
        ),
    }
    fn, ref_y, ref_grads = fns[which]

    def run(module):
        v = x.clone().requires_grad_(True)
        w_ = w.clone().requires_grad_(True)
        y = fn(module, v, w_)
        (y.float() * dy.float()).sum().backward()
        # layer/rms use the first 5 weights of the trailing dim (W = 5)
        return y, v.grad, (w_.grad[:5] if which in ("layer", "rms") else w_.grad)

    y, dx, dw = run(NF)
    assert y.dtype == dtype and dx.dtype == dtype and dw.dtype == dtype
    try:
        peer = run(torch.nn.functional)
    except RuntimeError:  # torch lacks this dtype on CPU: the floor applies
        peer = (None, None, None)
    assert_matches_reference(y, ref_y, dtype, peer[0], "y")
    assert_matches_reference(dx, ref_grads[0], dtype, peer[1], "dx")
    assert_matches_reference(dw, ref_grads[1], dtype, peer[2], "dweight")


def test_running_stats_follow_reference_rule_including_momentum_none():
    bn = normkit.BatchNorm1d(3, momentum=None).double()
    rm, rv = np.zeros(3), np.ones(3)
    for step in range(1, 5):
        x = randn(5, 3, 4, seed=70 + step, mean=step, std=step)
        bn(x)
        _, mean, var = batch_norm_forward(x.numpy())
        rm, rv = running_stats_update(rm, rv, mean, var, 20, None, step)
        np.testing.assert_allclose(bn.running_mean.numpy(), rm, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(bn.running_var.numpy(), rv, rtol=1e-13)
    assert bn.num_batches_tracked.item() == 4


# --- identities ----------------------------------------------------------------------


def test_group_norm_one_group_is_layer_norm_over_c_star():
    x = randn(3, 6, 4, 5, seed=80)
    gn = normkit.GroupNorm(1, 6, affine=False).double()
    ln = normkit.LayerNorm([6, 4, 5], elementwise_affine=False).double()
    assert max_err(gn(x), ln(x)) < 1e-13


def test_group_norm_c_groups_is_affine_instance_norm():
    x = randn(3, 6, 4, 5, seed=81)
    gn = normkit.GroupNorm(6, 6).double()
    inorm = normkit.InstanceNorm2d(6, affine=True).double()
    with torch.no_grad():
        gn.weight.copy_(randn(6, seed=82))
        gn.bias.copy_(randn(6, seed=83))
    inorm.load_state_dict(gn.state_dict())
    assert max_err(gn(x), inorm(x)) < 1e-13


def test_rms_norm_is_layer_norm_without_centring():
    x = randn(4, 9, seed=84, mean=2.0)
    w = randn(9, seed=85)
    # by hand: x / sqrt(mean(x^2) + eps) * w
    by_hand = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * w
    assert max_err(NF.rms_norm(x, [9], w, 1e-5), by_hand) < 1e-13
    centred = x - x.mean(-1, keepdim=True)
    assert (
        max_err(NF.rms_norm(centred, [9], w, 1e-5), NF.layer_norm(centred, [9], w, None, 1e-5))
        < 1e-13
    )


def test_batch_norm_with_gamma_sqrt_var_and_beta_mean_returns_its_input():
    # source document 4: BN can undo itself; with gamma = sqrt(var + eps), beta = mean, y = x
    x = randn(8, 4, 3, 3, seed=86, mean=5.0, std=3.0)
    mean = x.mean((0, 2, 3))
    var = x.var((0, 2, 3), unbiased=False)
    y = NF.batch_norm(x, None, None, torch.sqrt(var + 1e-5), mean, True, 0.1, 1e-5)
    assert max_err(y, x) < 1e-12


def test_channel_rms_norm_normalizes_channels_per_position():
    x = randn(2, 5, 3, 4, seed=87)
    m = normkit.ChannelRMSNorm(5, eps=1e-6).double()
    expected = x / torch.sqrt((x * x).mean(1, keepdim=True) + 1e-6)
    assert max_err(m(x), expected) < 1e-13
    assert max_err(m(x.contiguous(memory_format=torch.channels_last)), expected) < 1e-13


# --- empty batches, eps default, backends ----------------------------------------------


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda m: m.BatchNorm2d(3), (0, 3, 4, 4)),
        (lambda m: m.BatchNorm1d(3), (0, 3)),
        (lambda m: m.GroupNorm(2, 4), (0, 4, 3)),
        (lambda m: m.InstanceNorm2d(3), (0, 3, 4, 4)),  # torch rejects affine or tracked here
        (lambda m: m.LayerNorm(4), (0, 4)),
        (lambda m: m.RMSNorm(4), (0, 4)),
    ],
)
def test_empty_batches_like_torch(make, shape):
    theirs, ours = _pair(make, torch.float32)
    x = torch.zeros(shape)
    dy = torch.zeros(shape)
    y_t, dx_t, g_t = _step(theirs, x, dy)
    y_o, dx_o, g_o = _step(ours, x, dy)
    assert y_o.shape == y_t.shape and dx_o.shape == dx_t.shape
    for k in g_t:
        assert torch.equal(g_o[k], g_t[k]), k
    for (k, a), (_, b) in zip(theirs.state_dict().items(), ours.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_rms_norm_default_eps_is_compute_dtype_eps_like_torch(dtype):
    x = torch.full((2, 4), 1e-4, dtype=dtype)  # eps dominates: the default decides the output
    assert max_err(NF.rms_norm(x, [4]), torch.nn.functional.rms_norm(x, [4])) <= (
        0 if dtype == torch.float64 else 2 * ATOL[dtype]
    )


def test_backend_attribute_and_explicit_backend():
    bn = normkit.BatchNorm2d(3)
    bn.backend = "torch"
    bn(randn(2, 3, 2, 2, dtype=torch.float32))
    assert dispatch.last_backend["batch_norm_apply"] == "torch"
    with pytest.raises(ValueError, match="unknown backend"):
        NF.layer_norm(torch.zeros(2, 3), [3], backend="cuda-magic")


# --- bad input -------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"BatchNorm2d: expected 3 channels .*\(2, 4, 3, 3\)"):
        normkit.BatchNorm2d(3)(torch.zeros(2, 4, 3, 3))
    with pytest.raises(ValueError, match=r"running_mean must have shape \(4,\).*got \(3,\)"):
        NF.batch_norm(torch.zeros(2, 4, 3, 3), torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="expected 4D input"):
        normkit.BatchNorm2d(3)(torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="expected 2D or 3D input"):
        normkit.BatchNorm1d(3)(torch.zeros(2, 3, 3, 3))
    with pytest.raises(
        ValueError,
        match=r"GroupNorm: num_channels \(6\) must be divisible by "
        r"num_groups \(4\)",
    ):
        normkit.GroupNorm(4, 6)
    with pytest.raises(ValueError, match=r"num_channels \(6\) must be divisible"):
        NF.group_norm(torch.zeros(2, 6, 3), 4)
    with pytest.raises(ValueError, match="expected 6 channels"):
        normkit.GroupNorm(3, 6)(torch.zeros(2, 9, 3))
    with pytest.raises(ValueError, match=r"normalized_shape=\[4\] must equal the trailing dims"):
        normkit.LayerNorm(4)(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"normalized_shape=\[2, 5\]"):
        normkit.RMSNorm([2, 5])(torch.zeros(3, 5, 2))
    with pytest.raises(ValueError, match="more than 1 value per channel when training"):
        normkit.BatchNorm2d(3)(torch.zeros(1, 3, 1, 1))
    with pytest.raises(ValueError, match="more than 1 value per channel when training"):
        normkit.BatchNorm1d(3)(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        normkit.InstanceNorm1d(3)(torch.zeros(2, 3, 1))
    with pytest.raises(ValueError, match="expected input's size at dim=1 to match"):
        normkit.InstanceNorm2d(3, affine=True)(torch.zeros(2, 4, 3, 3))
    with pytest.raises(TypeError, match="floating point"):
        normkit.LayerNorm(3)(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="eps must be positive during training"):
        NF.batch_norm(torch.zeros(4, 3), None, None, training=True, eps=0.0)
    with pytest.raises(ValueError, match="needs running_mean"):
        NF.batch_norm(torch.zeros(4, 3), None, None, training=False)
    # one value per channel is fine in eval, as in torch
    bn = normkit.BatchNorm2d(3).eval()
    assert bn(torch.zeros(1, 3, 1, 1)).shape == (1, 3, 1, 1)


def test_instance_norm_warns_on_channel_mismatch_without_affine():
    with pytest.warns(UserWarning, match="does not match num_features"):
        normkit.InstanceNorm2d(3)(torch.randn(2, 4, 3, 3))


def test_untracked_batch_norm_uses_batch_stats_in_eval():
    bn = normkit.BatchNorm2d(3, track_running_stats=False).eval()
    x = randn(4, 3, 2, 2, seed=90, mean=5.0, dtype=torch.float32)
    y = bn(x).detach()
    assert y.mean((0, 2, 3)).abs().max() < 1e-5
    assert math.isclose(float(y.var((0, 2, 3), unbiased=False).mean()), 1.0, rel_tol=1e-3)


def test_normkit_check_norm_cases_all_pass():
    from normkit.check import PROVIDERS, norm_layer_cases

    assert norm_layer_cases in PROVIDERS
    cases = list(norm_layer_cases())
    assert len(cases) >= 20
    assert [c.name for c in cases if c.status != "pass"] == []


# --- every registered backend of the norm ops (cpu/triton register theirs at import) ----

_CPU_BACKENDS = sorted(
    {
        b
        for op in ("layer_norm_fwd", "rms_norm_fwd", "group_norm_fwd", "batch_norm_stats")
        for b in dispatch.table[op]
    }
)


@pytest.mark.parametrize("backend", _CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_each_registered_backend_matches_reference(backend, dtype):
    x = randn(3, 6, 4, 5, seed=95, mean=50.0, std=2.0).to(dtype)
    dy = randn(3, 6, 4, 5, seed=96).to(dtype)
    w = randn(6, seed=94).to(dtype)
    xr, dyr, wr = x.double().numpy(), dy.double().numpy(), w.double().numpy()
    cases = [
        (
            "batch_norm_stats",
            lambda v, w_: NF.batch_norm(v, None, None, w_, None, True, backend=backend),
            batch_norm_forward(xr, wr)[0],
            batch_norm_backward(xr, dyr, wr),
        ),
        (
            "group_norm_fwd",
            lambda v, w_: NF.group_norm(v, 3, w_, backend=backend),
            group_norm_forward(xr, 3, wr)[0],
            group_norm_backward(xr, dyr, 3, wr),
        ),
        (
            "layer_norm_fwd",
            lambda v, w_: NF.layer_norm(v, [5], w_[:5], backend=backend),
            layer_norm_forward(xr, (5,), wr[:5])[0],
            layer_norm_backward(xr, dyr, (5,), wr[:5]),
        ),
        (
            "rms_norm_fwd",
            lambda v, w_: NF.rms_norm(v, [5], w_[:5], 1e-5, backend=backend),
            rms_norm_forward(xr, (5,), wr[:5], 1e-5)[0],
            rms_norm_backward(xr, dyr, (5,), wr[:5], 1e-5),
        ),
    ]
    ran = 0
    for op, fn, ref_y, ref_grads in cases:
        entry = dispatch.table[op].get(backend)
        if entry is None or entry.why_not(x) is not None:
            continue  # this backend does not claim the op for this tensor
        v = x.clone().requires_grad_(True)
        w_ = w.clone().requires_grad_(True)
        y = fn(v, w_)
        (y * dy).sum().backward()
        assert dispatch.last_backend[op] == backend
        dw = w_.grad[:5] if op in ("layer_norm_fwd", "rms_norm_fwd") else w_.grad
        assert_matches_reference(y, ref_y, dtype, what=f"{backend} {op} y")
        assert_matches_reference(v.grad, ref_grads[0], dtype, what=f"{backend} {op} dx")
        assert_matches_reference(dw, ref_grads[1], dtype, what=f"{backend} {op} dweight")
        ran += 1
    if ran == 0:
        assert backend != "torch"
        pytest.skip(f"backend {backend!r} claims none of these ops for {dtype} CPU tensors")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "make",
    [
        lambda m: m.BatchNorm2d(3),
        lambda m: m.GroupNorm(3, 3),
        lambda m: m.LayerNorm(4),
        lambda m: m.RMSNorm(4),
        lambda m: m.InstanceNorm2d(3, affine=True, track_running_stats=True),
    ],
    ids=["bn", "gn", "ln", "rms", "in"],
)
def test_low_precision_modules_train_step_within_policy(dtype, make):
    # oracle: torch's layer in float64 on the same rounded input; peer: torch in `dtype`
    x = randn(4, 3, 4, 4, seed=110, mean=1.0, std=2.0).to(dtype)
    dy = randn(4, 3, 4, 4, seed=111).to(dtype)
    ref = make(nn).double()
    peer = make(nn).to(dtype)
    ours = make(normkit).to(dtype)
    y_ref, dx_ref, _ = _step(ref, x.double(), dy.double())
    y_peer, dx_peer, _ = _step(peer, x, dy)
    y, dx, _ = _step(ours, x, dy)
    assert y.dtype == dtype and dx.dtype == dtype
    assert_matches_reference(y, y_ref, dtype, y_peer, "y")
    assert_matches_reference(dx, dx_ref, dtype, dx_peer, "dx")
    for (name, b_ref), (_, b_peer), (_, b) in zip(
        ref.named_buffers(), peer.named_buffers(), ours.named_buffers()
    ):
        if b.dtype.is_floating_point:
            assert_matches_reference(b, b_ref, dtype, b_peer, name)


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda m: m.BatchNorm1d(4), (5, 4, 1500)),
        (lambda m: m.LayerNorm(1023), (3, 1023)),
        (lambda m: m.GroupNorm(2, 4), (2, 4, 1023)),
        (lambda m: m.RMSNorm(1500), (2, 1500)),
    ],
)
def test_zero_variance_rows_and_odd_widths_match_torch(make, shape):
    theirs, ours = _pair(make, torch.float32, seed=3)
    x = randn(*shape, seed=120, dtype=torch.float32)
    x[0] = 7.0  # a constant sample: zero variance rows/groups, x_hat = 0
    dy = randn(*shape, seed=121, dtype=torch.float32)
    y_t, dx_t, g_t = _step(theirs, x, dy)
    y_o, dx_o, g_o = _step(ours, x, dy)
    assert torch.isfinite(y_o).all() and torch.isfinite(dx_o).all()
    assert max_err(y_o, y_t) < 1e-4
    assert max_err(dx_o, dx_t) < 1e-3 * max(1.0, float(dx_t.abs().max()))
    for k in g_t:
        assert max_err(g_o[k], g_t[k]) < 1e-3 * max(1.0, float(g_t[k].abs().max())), k


# --- random shapes (hypothesis) ----------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 4),
    groups=st.integers(1, 4),
    per_group=st.integers(1, 3),
    length=st.integers(2, 9),
    seed=st.integers(0, 10_000),
    mean=st.sampled_from([0.0, 1e3, -1e4]),
)
def test_random_shapes_match_reference(n, groups, per_group, length, seed, mean):
    c = groups * per_group
    x = randn(n, c, length, seed=seed, mean=mean)
    dy = randn(n, c, length, seed=seed + 1)
    w, b = randn(c, seed=seed + 2), randn(c, seed=seed + 3)
    xn, dyn, wn, bn_ = x.numpy(), dy.numpy(), w.numpy(), b.numpy()
    cases = [
        (
            lambda v, w_, b_: NF.group_norm(v, groups, w_, b_),
            group_norm_forward(xn, groups, wn, bn_)[0],
            group_norm_backward(xn, dyn, groups, wn, bn_),
        )
    ]
    if n * length > 1:
        cases.append(
            (
                lambda v, w_, b_: NF.batch_norm(v, None, None, w_, b_, True),
                batch_norm_forward(xn, wn, bn_)[0],
                batch_norm_backward(xn, dyn, wn, bn_),
            )
        )
    for fn, ref_y, ref_grads in cases:
        v, w_, b_ = (t.clone().requires_grad_(True) for t in (x, w, b))
        y = fn(v, w_, b_)
        (y * dy).sum().backward()
        for what, ours, ref in zip(
            ("y", "dx", "dw", "db"), (y, v.grad, w_.grad, b_.grad), (ref_y,) + tuple(ref_grads)
        ):
            # float64 with |mean|/std up to 1e4: allow 1e4 x the float64 floor
            assert max_err(ours, ref) <= 1e-8 * max(1.0, float(np.abs(ref).max())), what


# --- the op contract of docs/ops.md, for every registered backend -------------------------


def _contract_calls(x, w, b):
    """(op, args, expected output shapes/dtypes) for the norm ops on (N, C=6, L) data."""
    n, c, length = x.shape
    rows = x.reshape(-1, length)
    sdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    return [
        (
            "layer_norm_fwd",
            (rows, None, None, 1e-5),
            [(rows.shape, x.dtype), ((n * c,), sdt), ((n * c,), sdt)],
        ),
        ("rms_norm_fwd", (rows, None, 1e-5), [(rows.shape, x.dtype), ((n * c,), sdt)]),
        ("group_norm_fwd", (x, w, b, 3, 1e-5), [(x.shape, x.dtype), ((n, 3), sdt), ((n, 3), sdt)]),
        # BatchNorm's mean is float64 for every input (docs/ops.md)
        ("batch_norm_stats", (x,), [((c,), torch.float64), ((c,), sdt)]),
    ]


@pytest.mark.parametrize("backend", _CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_op_contract_shapes_dtypes_and_values(backend, dtype):
    x = randn(3, 6, 10, seed=130, mean=3.0).to(dtype)
    dy = randn(3, 6, 10, seed=131).to(dtype)
    w, b = randn(6, seed=132).to(dtype), randn(6, seed=133).to(dtype)
    calls = _contract_calls(x, w, b)
    ran = 0
    for op, args, expected in calls:
        entry = dispatch.table[op].get(backend)
        if entry is None or entry.why_not(args[0]) is not None:
            continue
        ours = dispatch.table[op][backend].fn(*args)
        ref = dispatch.table[op]["torch"].fn(*args)
        assert len(ours) == len(expected), op
        for k, (t, r, (shape, dt)) in enumerate(zip(ours, ref, expected)):
            assert tuple(t.shape) == tuple(shape) and t.dtype == dt, (op, k, t.shape, t.dtype)
            tol = 1e-12 if dtype == torch.float64 else 1e-4 if dtype == torch.float32 else 3e-2
            assert max_err(t, r) <= tol * max(1.0, float(r.abs().max())), (op, k)
        ran += 1
    # backward ops: weight gradients in the weight's dtype, None for a missing weight
    rows = x.reshape(-1, 10)
    y, mean, rstd = dispatch.table["layer_norm_fwd"]["torch"].fn(rows, None, None, 1e-5)
    entry = dispatch.table["layer_norm_bwd"].get(backend)
    if entry is not None and entry.why_not(rows) is None:
        dx, dweight, dbias = entry.fn(dy.reshape(-1, 10), rows, mean, rstd, None)
        assert dx.dtype == dtype and dx.shape == rows.shape and dweight is None
        assert dbias is not None and dbias.shape == (10,)
        ran += 1
    stats = dispatch.table["batch_norm_stats"]["torch"].fn(x)
    rstd_c = torch.rsqrt(stats[1] + 1e-5)
    entry = dispatch.table["batch_norm_bwd_reduce"].get(backend)
    if entry is not None and entry.why_not(x) is None:
        sum_dy, sum_dy_xhat = entry.fn(dy, x, stats[0], rstd_c)
        ref_dy, ref_dy_xhat = dispatch.table["batch_norm_bwd_reduce"]["torch"].fn(
            dy, x, stats[0], rstd_c
        )
        assert sum_dy.shape == (6,) and sum_dy.dtype == stats[1].dtype
        assert max_err(sum_dy, ref_dy) <= 1e-3 and max_err(sum_dy_xhat, ref_dy_xhat) <= 1e-3
        ran += 1
    if ran == 0:
        assert backend != "torch"
        pytest.skip(f"backend {backend!r} claims none of these ops for {dtype} CPU tensors")


# --- outputs are never autograd views: in-place ops on them train like torch (issue 10) ---
#
# torchvision/timm blocks modify a norm's output in place (ReLU(inplace=True),
# ``out += identity``, Hardswish(inplace=True)). A custom Function output that is a view
# of a tensor made inside it (a reshape of the kernel's (M, D) result) cannot be
# modified in place, so every normkit output must be an ordinary tensor. The expected
# gradients come from the same in-place step on torch's layers.


def _within_lrn_peer(x, size=3, alpha=1e-2, beta=0.75):
    # Caffe WITHIN_CHANNEL written with torch ops: scale = 1 + alpha/size^2 * box sum of x^2
    pad = size // 2
    box = nn.functional.avg_pool2d(x * x, size, stride=1, padding=pad, count_include_pad=True)
    return x * (1.0 + alpha * box) ** -beta


class _Moved(nn.Module):
    """torch's channels-first layer applied with channels moved from ``dim`` to 1 (peer)."""

    def __init__(self, inner, dim, to=1):
        super().__init__()
        self.inner, self.dim, self.to = inner, dim, to

    def forward(self, x):
        return self.inner(x.movedim(self.dim, self.to)).movedim(self.to, self.dim)


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


# (id, normkit layer, torch peer, input shape, train mode)
_INPLACE_LAYERS = [
    (
        "lrn-across",
        lambda: normkit.LocalResponseNorm(3, 1e-2),
        lambda: nn.LocalResponseNorm(3, 1e-2),
        (2, 6, 4, 5),
        True,
    ),
    (
        "lrn-within",
        lambda: normkit.LocalResponseNorm(3, 1e-2, region="within", convention="caffe"),
        lambda: _Fn(_within_lrn_peer),
        (2, 3, 5, 4),
        True,
    ),
    (
        "lrn-nhwc",
        lambda: normkit.LocalResponseNorm(3, 1e-2, channel_dim=-1),
        lambda: _Moved(nn.LocalResponseNorm(3, 1e-2), -1),
        (2, 4, 5, 6),
        True,
    ),
    ("bn1d", lambda: normkit.BatchNorm1d(4), lambda: nn.BatchNorm1d(4), (6, 4), True),
    ("bn1d-3d", lambda: normkit.BatchNorm1d(4), lambda: nn.BatchNorm1d(4), (3, 4, 5), True),
    ("bn2d", lambda: normkit.BatchNorm2d(4), lambda: nn.BatchNorm2d(4), (3, 4, 5, 3), True),
    ("bn2d-eval", lambda: normkit.BatchNorm2d(4), lambda: nn.BatchNorm2d(4), (3, 4, 5, 3), False),
    ("bn3d", lambda: normkit.BatchNorm3d(3), lambda: nn.BatchNorm3d(3), (2, 3, 2, 3, 4), True),
    (
        "bn3d-eval",
        lambda: normkit.BatchNorm3d(3),
        lambda: nn.BatchNorm3d(3),
        (2, 3, 2, 3, 4),
        False,
    ),
    ("syncbn", lambda: normkit.SyncBatchNorm(4), lambda: nn.BatchNorm2d(4), (3, 4, 3, 3), True),
    ("ln", lambda: normkit.LayerNorm(6), lambda: nn.LayerNorm(6), (2, 5, 6), True),
    (
        "ln-2d-shape",
        lambda: normkit.LayerNorm([5, 6]),
        lambda: nn.LayerNorm([5, 6]),
        (2, 5, 6),
        True,
    ),
    ("gn", lambda: normkit.GroupNorm(2, 6), lambda: nn.GroupNorm(2, 6), (2, 6, 4, 3), True),
    (
        "in1d",
        lambda: normkit.InstanceNorm1d(3, affine=True),
        lambda: nn.InstanceNorm1d(3, affine=True),
        (2, 3, 7),
        True,
    ),
    (
        "in2d",
        lambda: normkit.InstanceNorm2d(3, affine=True),
        lambda: nn.InstanceNorm2d(3, affine=True),
        (2, 3, 4, 5),
        True,
    ),
    (
        "in3d-tracked",
        lambda: normkit.InstanceNorm3d(3, affine=True, track_running_stats=True),
        lambda: nn.InstanceNorm3d(3, affine=True, track_running_stats=True),
        (2, 3, 2, 3, 4),
        True,
    ),
    ("rms", lambda: normkit.RMSNorm(6), lambda: nn.RMSNorm(6), (2, 5, 6), True),
    (
        "channel-rms",
        lambda: normkit.ChannelRMSNorm(4),
        lambda: _Moved(nn.RMSNorm(4), 1, -1),
        (2, 4, 3, 5),
        True,
    ),
]

_INPLACE_OPS = {
    "relu_": lambda y, r: y.relu_(),
    "add_residual": lambda y, r: y.add_(r),
    "mul_": lambda y, r: y.mul_(r),
    "hardswish_inplace": lambda y, r: nn.functional.hardswish(y, inplace=True),
}

_INPLACE_BACKENDS = ["torch"] + [
    b for b in ("cpu", "triton") if b in dispatch.table["layer_norm_fwd"]
]


def _same_params(ours, theirs, seed):
    g = torch.Generator().manual_seed(seed)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert p.shape == q.shape
        v = torch.rand(p.shape, generator=g, dtype=torch.float64) + 0.5
        with torch.no_grad():
            p.copy_(v)
            q.copy_(v)
    for name, b in ours.named_buffers():
        if name.startswith("running_var"):
            v = torch.rand(b.shape, generator=g, dtype=torch.float64) + 0.5
        elif name.startswith("running_mean"):
            v = torch.randn(b.shape, generator=g, dtype=torch.float64)
        else:
            continue
        b.copy_(v)
        dict(theirs.named_buffers())[name].copy_(v)


# the triton interpreter is slow: one in-place op per layer covers it there
_INPLACE_COMBOS = [
    (op, b)
    for b in _INPLACE_BACKENDS
    for op in sorted(_INPLACE_OPS)
    if b != "triton" or op == "relu_"
]


@pytest.mark.parametrize("op,backend", _INPLACE_COMBOS)
@pytest.mark.parametrize("case", _INPLACE_LAYERS, ids=[c[0] for c in _INPLACE_LAYERS])
def test_inplace_ops_on_outputs_train_like_torch(case, op, backend):
    label, make_ours, make_theirs, shape, train = case
    ours, theirs = make_ours().double(), make_theirs().double()
    ours.backend = backend
    _same_params(ours, theirs, seed=len(label))
    ours.train(train)
    theirs.train(train)
    x = randn(*shape, seed=7 + len(label), dtype=torch.float64)
    r = randn(*shape, seed=8, dtype=torch.float64)
    upstream = randn(*shape, seed=9, dtype=torch.float64)
    results = []
    for layer in (ours, theirs):
        xi = x.clone().requires_grad_()
        y = layer(xi)
        if layer is ours:
            assert y._base is None and not y._is_view(), f"{label}: output is an autograd view"
        out = _INPLACE_OPS[op](y, r)
        (out * upstream).sum().backward()
        results.append(
            (
                out.detach(),
                xi.grad,
                [p.grad for p in layer.parameters()],
                [b.clone() for b in layer.buffers()],
            )
        )
    (y1, gx1, gp1, b1), (y2, gx2, gp2, b2) = results
    assert_matches_reference(y1, y2, torch.float64, what=f"{label} output")
    assert_matches_reference(gx1, gx2, torch.float64, what=f"{label} input grad")
    for a, b in zip(gp1, gp2):
        assert_matches_reference(a, b, torch.float64, what=f"{label} param grad")
    for a, b in zip(b1, b2):
        assert_matches_reference(a, b, torch.float64, what=f"{label} buffer")


@pytest.mark.parametrize("backend", _INPLACE_BACKENDS[:2])
def test_functional_outputs_are_not_views(backend):
    x = randn(3, 4, 5, 2, seed=11, dtype=torch.float32)
    c = torch.ones(4)
    outs = {
        "local_response_norm": NF.local_response_norm(x, 3, backend=backend),
        "local_response_norm-nhwc": NF.local_response_norm(x, 3, channel_dim=-1, backend=backend),
        "batch_norm-train": NF.batch_norm(x, None, None, training=True, backend=backend),
        "batch_norm-eval": NF.batch_norm(x, c * 0, c, training=False, backend=backend),
        "sync_batch_norm": NF.sync_batch_norm(x, None, None, training=True, backend=backend),
        "layer_norm": NF.layer_norm(x, [5, 2], backend=backend),
        "group_norm": NF.group_norm(x, 2, backend=backend),
        "instance_norm": NF.instance_norm(x, backend=backend),
        "rms_norm": NF.rms_norm(x, [2], backend=backend),
        "channel_rms_norm": NF.channel_rms_norm(x, backend=backend),
    }
    for name, y in outs.items():
        assert y.shape == x.shape, name
        assert y._base is None and not y._is_view(), f"{name} returned an autograd view"
    # each output owns its memory: writing into one changes no other and not the input
    before = x.clone()
    for y in outs.values():
        y.zero_()
    assert torch.equal(x, before)
