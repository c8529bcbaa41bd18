"""torch.compile(fullgraph=True) through normkit's LRN (custom ops, issue 4.1)."""

import pytest
import torch

import normkit
from normkit import dispatch, library

from hostile import randn
from tolerance import max_err


class _Net(torch.nn.Module):
    def __init__(self, **lrn_kwargs):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.lrn = normkit.LocalResponseNorm(5, **lrn_kwargs)

    def forward(self, x):
        return self.lrn(torch.relu(self.conv(x)))


def _tol(ref) -> float:
    """1e-5, relative for gradients larger than 1: eager takes torch's native kernel on
    small tensors (normkit._native) while the compiled graph keeps normkit's custom ops,
    two float32 computations of the same sums."""
    return 1e-5 * max(1.0, float(ref.abs().max()))


def _compiled_matches_eager(compile_backend, net, x):
    dy = randn(*net(x).shape, seed=1, dtype=x.dtype)
    eager_y = net(x)
    eager_y.backward(dy)
    eager_g = net.conv.weight.grad.clone()
    net.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(net, backend=compile_backend, fullgraph=True)  # graph break = error
    y = compiled(x)
    y.backward(dy)
    assert max_err(y, eager_y) < 1e-6
    assert max_err(net.conv.weight.grad, eager_g) < 1e-5
    assert dispatch.last_backend["lrn_bwd"] in ("cpu", "torch")


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_fullgraph_aot_eager(backend, monkeypatch):
    monkeypatch.setenv("NORMKIT_BACKEND", backend)
    torch.manual_seed(0)
    _compiled_matches_eager("aot_eager", _Net(), randn(2, 3, 8, 8, seed=0, dtype=torch.float32))
    assert dispatch.last_backend["lrn_fwd"] == backend


def test_fullgraph_aot_eager_channels_last_tensorflow_preset():
    torch.manual_seed(0)
    net = _Net(convention="onnx")
    x = randn(2, 3, 8, 8, seed=2, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
    _compiled_matches_eager("aot_eager", net, x)


def test_custom_op_schema_and_fake_tensor():
    x = randn(2, 6, 3, 3, seed=3, dtype=torch.float32)
    torch.library.opcheck(
        torch.ops.normkit.lrn_fwd.default, (x, 2, 2, 0.1, 0.75, 1.0, False, "cpu")
    )
    dy = randn(2, 6, 3, 3, seed=4, dtype=torch.float32)
    torch.library.opcheck(
        torch.ops.normkit.lrn_bwd.default, (x, dy, 2, 2, 0.1, 0.75, 1.0, False, "cpu")
    )
    # outputs keep the strides the fake op promises, even for a permuted dense input
    xt = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2).transpose(2, 3)
    y = library.lrn_fwd(xt, 2, 2, 0.1, 0.75, 1.0, False, "cpu")
    assert y.stride() == torch.empty_like(xt).stride()


@pytest.mark.slow
def test_fullgraph_inductor():
    torch.manual_seed(0)
    _compiled_matches_eager("inductor", _Net(), randn(2, 3, 8, 8, seed=0, dtype=torch.float32))


# --- batch / layer / group / instance / RMS norm (custom ops normkit::*_fwd/_bwd, BN split) ---

import copy  # noqa: E402

from normkit import functional as F  # noqa: E402


def _conv(dims, norm):
    conv = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[dims](3, 4, 3, padding=1)
    return torch.nn.Sequential(conv, norm)


def _linear(norm):
    return torch.nn.Sequential(torch.nn.Linear(3, 8), norm)


# name -> (model factory, input shape); inputs have 3 features/channels on dim 1 or -1
_FAMILIES = {
    "BatchNorm1d": (lambda: _linear(normkit.BatchNorm1d(8)), (6, 3)),
    "BatchNorm2d": (lambda: _conv(2, normkit.BatchNorm2d(4)), (2, 3, 5, 5)),
    "BatchNorm3d": (lambda: _conv(3, normkit.BatchNorm3d(4, momentum=None)), (2, 3, 3, 3, 3)),
    "LayerNorm": (lambda: _linear(normkit.LayerNorm(8)), (2, 5, 3)),
    "GroupNorm": (lambda: _conv(2, normkit.GroupNorm(2, 4)), (2, 3, 5, 5)),
    "InstanceNorm1d": (
        lambda: _conv(1, normkit.InstanceNorm1d(4, affine=True, track_running_stats=True)),
        (2, 3, 7),
    ),
    "InstanceNorm2d": (lambda: _conv(2, normkit.InstanceNorm2d(4)), (2, 3, 5, 5)),
    "InstanceNorm3d": (lambda: _conv(3, normkit.InstanceNorm3d(4, affine=True)), (2, 3, 3, 3, 3)),
    "RMSNorm": (lambda: _linear(normkit.RMSNorm(8)), (2, 5, 3)),
    "ChannelRMSNorm": (lambda: _conv(2, normkit.ChannelRMSNorm(4)), (2, 3, 5, 5)),
}


def _step(run, model, x, dy_seed):
    """One forward+backward of ``run`` (model or its compiled form): output, grads."""
    model.zero_grad()
    y = run(x)
    y.backward(randn(*y.shape, seed=dy_seed, dtype=y.dtype))
    return y.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def _check_compiled_family(family, train, steps=2):
    make, shape = _FAMILIES[family]
    torch.manual_seed(0)
    eager = make().train(train)
    model = copy.deepcopy(eager)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # graph break = error
    for step in range(steps):
        x = randn(*shape, seed=10 + step, dtype=torch.float32)
        y_ref, g_ref = _step(eager, eager, x, 20 + step)
        dispatch.last_backend.clear()
        y, g = _step(compiled, model, x, 20 + step)
        assert dispatch.last_backend, "the compiled model ran no normkit op"
        assert max_err(y, y_ref) < 1e-5, (family, step)
        for k in g_ref:
            assert max_err(g[k], g_ref[k]) < _tol(g_ref[k]), (family, step, k)
        for (k, b), b_ref in zip(model.named_buffers(), eager.buffers()):
            assert torch.equal(b, b_ref) or max_err(b, b_ref) < 1e-6, (family, step, k)
    return model


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("family", sorted(_FAMILIES))
def test_fullgraph_norm_layers_match_eager(family, backend, monkeypatch):
    monkeypatch.setenv("NORMKIT_BACKEND", backend)
    _check_compiled_family(family, train=True)
    assert set(dispatch.last_backend.values()) == {backend}


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("family", ["BatchNorm1d", "BatchNorm2d", "InstanceNorm1d"])
def test_fullgraph_eval_with_running_stats(family, backend, monkeypatch):
    monkeypatch.setenv("NORMKIT_BACKEND", backend)
    model = _check_compiled_family(family, train=False, steps=1)
    norm = model[1]
    assert torch.equal(norm.running_mean, torch.zeros(4 if family != "BatchNorm1d" else 8))


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_fullgraph_batchnorm_running_stats_equal_torch(backend, monkeypatch):
    """After two compiled training steps the buffers are torch.nn.BatchNorm2d's."""
    monkeypatch.setenv("NORMKIT_BACKEND", backend)
    ours, ref = normkit.BatchNorm2d(3, momentum=0.3), torch.nn.BatchNorm2d(3, momentum=0.3)
    torch._dynamo.reset()
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)
    for step in range(2):
        x = randn(4, 3, 5, 5, seed=30 + step, dtype=torch.float32, mean=2.0, std=3.0)
        y, y_ref = compiled(x), ref(x)
        assert max_err(y, y_ref) < 1e-5
    assert max_err(ours.running_mean, ref.running_mean) < 1e-6
    assert max_err(ours.running_var, ref.running_var) < 1e-5
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 2
    ours.eval(), ref.eval()
    x = randn(2, 3, 5, 5, seed=40, dtype=torch.float32)
    assert max_err(compiled(x), ref(x)) < 1e-5


def test_fullgraph_batchnorm_functional_without_affine_float64():
    def f(x):
        return F.batch_norm(x, None, None, training=True).sin()

    x = randn(3, 4, 6, seed=50).requires_grad_()
    torch._dynamo.reset()
    y = torch.compile(f, backend="aot_eager", fullgraph=True)(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    x_ref = x.detach().clone().requires_grad_()
    y_ref = torch.nn.functional.batch_norm(x_ref, None, None, training=True).sin()
    (g_ref,) = torch.autograd.grad(y_ref.sum(), x_ref)
    assert y.dtype == torch.float64
    assert max_err(y, y_ref) < 1e-12 and max_err(g, g_ref) < 1e-12


def test_sync_batch_norm_multi_process_is_eager_only(monkeypatch):
    """With a world of 2 the collectives cannot be traced: fullgraph fails at once with
    the reason (no hang, no collective attempted)."""
    monkeypatch.setattr(F, "_sync_world", lambda group: 2)
    model = normkit.SyncBatchNorm(4)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with pytest.raises(Exception, match="eager-only"):
        compiled(randn(2, 4, 3, seed=60, dtype=torch.float32))


def test_sync_batch_norm_single_process_compiles():
    """Without a process group SyncBatchNorm is BatchNorm and compiles fullgraph."""
    ours, ref = normkit.SyncBatchNorm(4), torch.nn.BatchNorm1d(4)
    torch._dynamo.reset()
    x = randn(5, 4, 3, seed=61, dtype=torch.float32)
    y = torch.compile(ours, backend="aot_eager", fullgraph=True)(x)
    assert max_err(y, ref(x)) < 1e-5
    assert max_err(ours.running_var, ref.running_var) < 1e-6


_W = randn(6, seed=70, dtype=torch.float32)
_B = randn(6, seed=71, dtype=torch.float32)


def _opcheck_cases():
    x2 = randn(4, 6, seed=72, dtype=torch.float32)  # (M, D)
    x3 = randn(2, 6, 5, seed=73, dtype=torch.float32)  # (N, C, L)
    x64 = randn(2, 6, 5, seed=74)
    ops = torch.ops.normkit
    m, r = library.layer_norm_fwd(x2, None, None, 1e-5, "torch")[1:]
    (rr,) = library.rms_norm_fwd(x2, _W, 1e-5, "torch")[1:]
    gm, gr = library.group_norm_fwd(x3, _W, _B, 3, 1e-5, "torch")[1:]
    bm, bv = library.batch_norm_stats(x64, "torch")
    brs = torch.rsqrt(bv + 1e-5)
    s1, s2 = library.batch_norm_bwd_reduce(x64, x64, bm, brs, "torch")
    return [
        (ops.layer_norm_fwd, (x2, _W, _B, 1e-5, "cpu")),
        (ops.layer_norm_bwd, (x2, x2, m, r, None, "torch")),
        (ops.rms_norm_fwd, (x2, None, 1e-5, "torch")),
        (ops.rms_norm_bwd, (x2, x2, rr, _W, "cpu")),
        (ops.group_norm_fwd, (x3, None, _B, 3, 1e-5, "cpu")),
        (ops.group_norm_bwd, (x3, x3, gm, gr, _W, 3, "torch")),
        (ops.batch_norm_stats, (x64, "cpu")),
        (ops.batch_norm_apply, (x64, bm, brs, None, None, "torch")),
        (ops.batch_norm_bwd_reduce, (x64, x64, bm, brs, "cpu")),
        (ops.batch_norm_bwd_apply, (x64, x64, bm, brs, _W.double(), s1, s2, 10, "cpu")),
    ]


def test_norm_custom_ops_opcheck():
    for op, args in _opcheck_cases():
        torch.library.opcheck(
            op.default,
            args,
            test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
        )


def test_norm_custom_ops_none_weight_gradients_are_empty_and_autograd_gives_none():
    x = randn(4, 6, seed=80, dtype=torch.float32)
    y, mean, rstd = library.layer_norm_fwd(x, None, None, 1e-5, "torch")
    assert mean.dtype == rstd.dtype == torch.float32 and mean.shape == (4,)
    dx, dweight, dbias = library.layer_norm_bwd(x, x, mean, rstd, None, "torch")
    assert dweight.shape == (0,) and dbias.shape == (6,) and dx.shape == x.shape
    xg = x.clone().requires_grad_()
    F.layer_norm(xg, [6]).sum().backward()
    assert xg.grad is not None
    assert (
        library.group_norm_fwd(randn(2, 4, 3, seed=81), None, None, 2, 1e-5, "cpu")[1].dtype
        == torch.float64
    )


@pytest.mark.slow
def test_fullgraph_inductor_norm_layers():
    for family in ("BatchNorm2d", "LayerNorm", "GroupNorm", "RMSNorm"):
        make, shape = _FAMILIES[family]
        torch.manual_seed(0)
        eager = make()
        model = copy.deepcopy(eager)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="inductor", fullgraph=True)
        x = randn(*shape, seed=90, dtype=torch.float32)
        y_ref, g_ref = _step(eager, eager, x, 91)
        y, g = _step(compiled, model, x, 91)
        assert max_err(y, y_ref) < 1e-5, family
        for k in g_ref:
            assert max_err(g[k], g_ref[k]) < 1e-4, (family, k)


def _sync_compile_worker(rank, world, init_file, out_dir):
    import datetime
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    torch.manual_seed(0)
    eager = torch.nn.Sequential(torch.nn.Conv1d(2, 3, 3, padding=1), normkit.SyncBatchNorm(3))
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, backend="aot_eager")  # fullgraph=False: sync runs eagerly
    out = {}
    for name, run, params in (("eager", eager, eager), ("compiled", compiled, model)):
        x = randn(2 + rank, 2, 5, seed=rank, dtype=torch.float32)
        y, grads = _step(run, params, x, 100 + rank)
        out[name] = (y, grads, [b.clone() for b in params.buffers()])
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def test_sync_batch_norm_two_processes_compiled_without_fullgraph_runs_eagerly():
    """fullgraph=False: dynamo breaks the graph at the sync step, the collectives run
    eagerly and every rank's outputs, gradients and running stats equal eager ones."""
    import os
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(
            _sync_compile_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True
        )
        results = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2)]
    for res in results:
        (y_e, g_e, b_e), (y_c, g_c, b_c) = res["eager"], res["compiled"]
        assert max_err(y_c, y_e) < 1e-5
        for k in g_e:
            assert max_err(g_c[k], g_e[k]) < _tol(g_e[k]), k
        for b, b_ref in zip(b_c, b_e):
            assert max_err(b, b_ref) < 1e-6
    # the statistics spanned both ranks: identical running stats on each
    assert torch.equal(results[0]["compiled"][2][0], results[1]["compiled"][2][0])


def test_eager_fast_path_equals_the_custom_op_and_tracers_see_the_op():
    """Plain eager calls skip the custom-op dispatcher; results, strides and the recorded
    backend are the op's, and under a fake-tensor mode the fake kernel answers."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = randn(4, 6, 3, seed=95, dtype=torch.float32).transpose(1, 2).contiguous().transpose(1, 2)
    dispatch.last_backend.clear()
    direct = library.group_norm_fwd(x, _W, None, 2, 1e-5, "cpu")
    assert dispatch.last_backend == {"group_norm_fwd": "cpu"}
    through_op = torch.ops.normkit.group_norm_fwd.default(x, _W, None, 2, 1e-5, "cpu")
    for a, b in zip(direct, through_op):
        assert torch.equal(a, b) and a.stride() == b.stride() and a.dtype == b.dtype
    assert direct[0].stride() == x.stride()  # y follows torch.empty_like(x)
    with FakeTensorMode() as mode:
        fx = mode.from_tensor(x)
        y, mean, rstd = library.group_norm_fwd(fx, None, None, 2, 1e-5, "cpu")
    assert y.shape == x.shape and mean.shape == rstd.shape == (4, 2)
    assert mean.dtype == torch.float32


@pytest.mark.parametrize("family", ["BatchNorm2d", "LayerNorm"])
def test_fullgraph_dynamic_shapes(family):
    """dynamic=True: one graph with symbolic sizes serves batches of several sizes."""
    make, shape = _FAMILIES[family]
    torch.manual_seed(0)
    eager = make()
    model = copy.deepcopy(eager)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=True)
    for step, n in enumerate((2, 3, 5)):
        x = randn(n, *shape[1:], seed=96 + step, dtype=torch.float32)
        y_ref, g_ref = _step(eager, eager, x, 97 + step)
        y, g = _step(compiled, model, x, 97 + step)
        assert max_err(y, y_ref) < 1e-5
        for k in g_ref:
            assert max_err(g[k], g_ref[k]) < _tol(g_ref[k]), (step, k)
    for b, b_ref in zip(model.buffers(), eager.buffers()):
        assert max_err(b, b_ref) < 1e-6


class _InplaceBlock(torch.nn.Module):
    """torchvision's BasicBlock ending: ``out = norm(conv(x)); out += identity; relu_(out)``."""

    def __init__(self, norm):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.norm = norm
        self.relu = torch.nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.norm(self.conv(x))
        out += x
        return self.relu(out)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: normkit.BatchNorm2d(4),
        lambda: normkit.GroupNorm(2, 4),
        lambda: normkit.LocalResponseNorm(3),
    ],
    ids=["BatchNorm2d", "GroupNorm", "LocalResponseNorm"],
)
def test_fullgraph_inplace_ops_after_normkit_layers(make, backend, monkeypatch):
    # eager torch.nn peer: the same block with torch's layer (same initial weights)
    monkeypatch.setenv("NORMKIT_BACKEND", backend)
    torch.manual_seed(0)
    ours = _InplaceBlock(make())
    peer_norm = {
        "BatchNorm2d": torch.nn.BatchNorm2d(4),
        "GroupNorm": torch.nn.GroupNorm(2, 4),
        "LocalResponseNorm": torch.nn.LocalResponseNorm(3),
    }[type(ours.norm).__name__]
    theirs = _InplaceBlock(peer_norm)
    theirs.load_state_dict(ours.state_dict())
    torch._dynamo.reset()
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)  # graph break = error
    x = randn(2, 4, 5, 5, seed=3, dtype=torch.float32)
    dy = randn(2, 4, 5, 5, seed=4, dtype=torch.float32)
    y, y_ref = compiled(x), theirs(x)
    y.backward(dy)
    y_ref.backward(dy)
    assert max_err(y, y_ref) < 1e-5
    for (k, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert max_err(p.grad, q.grad) < 1e-4, k
