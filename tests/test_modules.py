"""Conformance checks run on every entry of the module database (tests/module_db.py).

Each public layer class goes through the same checks: state_dict round trips (with its
torch counterpart where it has one), repr, pickle, non-contiguous and channels-last
inputs, outputs that are not autograd views (in-place ops after the layer train as the
out-of-place ones do), ``torch.compile(fullgraph=True)``, ``torch.export`` and both
ONNX exporters run in onnxruntime. Expected values come from torch (the twin layer, or
the same computation written out of place) or from the layer's own eager float64 run.
"""

from __future__ import annotations

import copy
import inspect
import io
import pickle

import numpy as np
import pytest
import torch

from module_db import MODULES, public_layer_classes
from tolerance import max_err

IDS = [m.id for m in MODULES]
HEAVY = [m for m in MODULES if m.heavy]
HEAVY_IDS = [m.id for m in HEAVY]


def _flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _seeded(info, dtype=torch.float32, seed=0):
    """The layer with random (not default) parameters and buffers, reproducibly."""
    module = info.build(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((1 + 0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64)))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.2 * torch.randn(b.shape, generator=g, dtype=torch.float64))
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g, dtype=torch.float64) + 0.5)
    return module


def test_every_public_layer_class_has_an_entry():
    covered = {m.cls for m in MODULES}
    missing = [c.__name__ for c in public_layer_classes() if c not in covered]
    assert not missing, f"public layer classes missing from tests/module_db.py: {missing}"


@pytest.mark.parametrize("info", MODULES, ids=IDS)
def test_state_dict_repr_and_pickle(info):
    module = _seeded(info)
    fresh = info.build()
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf))
    for (k, a), (_, b) in zip(module.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k
    twin = info.build_twin()
    if twin is not None:
        assert repr(module) == repr(twin)
        assert list(module.state_dict()) == list(twin.state_dict())
        twin.load_state_dict(module.state_dict())
        module.load_state_dict(twin.state_dict())
    clone = pickle.loads(pickle.dumps(module))
    module.eval()
    clone.eval()
    inputs = info.inputs()
    for a, b in zip(_flat(clone(*inputs)), _flat(module(*inputs))):
        assert torch.equal(a, b)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("info", MODULES, ids=IDS)
def test_non_contiguous_and_channels_last_inputs(info, training):
    module = _seeded(info).train(training)
    inputs = info.inputs()
    x = inputs[0]
    expected = _flat(copy.deepcopy(module)(*inputs))
    # a non-contiguous view with the same values: every other element of a wider tensor
    wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
    wide[..., ::2] = x
    variants = [wide[..., ::2]]
    if info.channels_last and x.dim() == 4:
        variants.append(x.contiguous(memory_format=torch.channels_last))
    for v in variants:
        assert v.stride() != x.stride() and torch.equal(v, x)  # same values, other layout
        got = _flat(copy.deepcopy(module)(v, *inputs[1:]))
        for a, b in zip(got, expected):
            assert a.shape == b.shape
            assert max_err(a, b) <= 1e-5 * max(1.0, float(b.detach().abs().max())), info.id


@pytest.mark.parametrize("info", MODULES, ids=IDS)
def test_outputs_are_not_views_and_in_place_ops_train(info):
    """``y.add_(0.5).relu_()`` after the layer (a residual add, then ``ReLU(inplace=True)``)
    gives the gradients of the out-of-place ``(y + 0.5).relu()``."""
    module = _seeded(info, torch.float64).train()
    twin = copy.deepcopy(module)
    inputs = info.inputs(torch.float64, seed=3)
    x1 = inputs[0].clone().requires_grad_(True)
    x2 = inputs[0].clone().requires_grad_(True)
    outs = _flat(module(x1, *inputs[1:]))
    chosen = range(len(outs)) if info.inplace_outputs is None else info.inplace_outputs
    for i, y in enumerate(outs):
        if i not in info.torch_views:
            assert not y._is_view(), f"{info.id}: output {i} is an autograd view"
    loss_inplace = sum(
        (y.add_(0.5).relu_() ** 2).sum() if i in chosen else (y**2).sum()
        for i, y in enumerate(outs)
    )
    loss_inplace.backward()
    ref_outs = _flat(twin(x2, *inputs[1:]))
    loss_ref = sum(
        ((y + 0.5).relu() ** 2).sum() if i in chosen else (y**2).sum()
        for i, y in enumerate(ref_outs)
    )
    loss_ref.backward()
    assert max_err(x1.grad, x2.grad) <= 1e-12 * max(1.0, float(x2.grad.abs().max()))
    for (n, p), (_, q) in zip(module.named_parameters(), twin.named_parameters()):
        assert max_err(p.grad, q.grad) <= 1e-12 * max(1.0, float(q.grad.abs().max())), n


@pytest.mark.parametrize("info", HEAVY, ids=HEAVY_IDS)
def test_compile_fullgraph_matches_eager(info):
    module = _seeded(info).eval()
    inputs = info.inputs()
    expected = _flat(module(*inputs))
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    for a, b in zip(_flat(compiled(*inputs)), expected):
        assert max_err(a, b) <= 1e-6 * max(1.0, float(b.detach().abs().max()))


@pytest.mark.parametrize("info", HEAVY, ids=HEAVY_IDS)
def test_torch_export_matches_eager(info):
    module = _seeded(info).eval()
    inputs = info.inputs()
    expected = _flat(module(*inputs))
    program = torch.export.export(module, inputs)
    for a, b in zip(_flat(program.module()(*inputs)), expected):
        assert max_err(a, b) <= 1e-5 * max(1.0, float(b.detach().abs().max()))


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("info", HEAVY, ids=HEAVY_IDS)
def test_standard_onnx_export_runs_in_onnxruntime(info, dynamo, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    module = _seeded(info).eval()
    inputs = info.inputs()
    expected = _flat(module(*inputs))
    path = tmp_path / "m.onnx"
    torch.onnx.export(module, inputs, str(path), dynamo=dynamo)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    got = session.run(None, feeds)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        b = b.detach().numpy()
        assert np.abs(a - b).max() <= 1e-4 * max(1.0, float(np.abs(b).max())), info.id


def test_bias_false_on_a_torch_whose_constructor_lacks_bias(monkeypatch):
    # torch 2.11's nn.GroupNorm has no bias= (seen on the GPU machine); normkit builds the
    # layer anyway and bias=False leaves no bias parameter, as on a newer torch
    from torch import nn

    from normkit.modules import norms

    class OldGroupNorm(nn.GroupNorm):
        def __init__(
            self, num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=None
        ):
            super().__init__(num_groups, num_channels, eps, affine, device, dtype)

    assert norms._bias_kwarg(OldGroupNorm, False) == {}
    takes = "bias" in inspect.signature(nn.GroupNorm.__init__).parameters  # torch >= 2.12
    assert norms._bias_kwarg(nn.GroupNorm, False) == ({"bias": False} if takes else {})
    m = OldGroupNorm(2, 4)
    norms._drop_bias(m, OldGroupNorm, False)
    assert m.bias is None and "bias" not in dict(m.named_parameters())
    assert m.weight.shape == (4,)
    x = torch.randn(3, 4, 5)
    torch.testing.assert_close(m(x), torch.nn.functional.group_norm(x, 2, m.weight, None))
    kept = OldGroupNorm(2, 4)
    norms._drop_bias(kept, OldGroupNorm, True)
    assert kept.bias is not None
    for bias in (True, False):
        g = norms.GroupNorm(2, 4, bias=bias)
        assert (g.bias is not None) == bias


def test_bias_false_and_convert_when_no_torch_constructor_takes_bias(monkeypatch):
    # torch 2.11's BatchNorm*d take no bias= either: normkit.convert of torchvision's
    # resnet18 failed there ("_BatchNorm.__init__() got an unexpected keyword argument
    # 'bias'"). With every torch constructor treated as bias-less, normkit's layers still
    # take bias= and convert still builds them
    from torch import nn

    import normkit
    from normkit.modules import norms

    batch_init, group_init = nn.modules.batchnorm._BatchNorm.__init__, nn.GroupNorm.__init__
    instance_init = nn.modules.instancenorm._InstanceNorm.__init__

    def old_batch_init(
        self, num_features, eps=1e-5, momentum=0.1, affine=True, stats=True, device=None, dtype=None
    ):
        batch_init(self, num_features, eps, momentum, affine, stats, device, dtype)

    def old_group_init(self, groups, channels, eps=1e-5, affine=True, device=None, dtype=None):
        group_init(self, groups, channels, eps, affine, device, dtype)

    def old_instance_init(
        self,
        num_features,
        eps=1e-5,
        momentum=0.1,
        affine=False,
        stats=False,
        device=None,
        dtype=None,
    ):
        instance_init(self, num_features, eps, momentum, affine, stats, device, dtype)

    monkeypatch.setattr(nn.modules.batchnorm._BatchNorm, "__init__", old_batch_init)
    monkeypatch.setattr(nn.modules.instancenorm._InstanceNorm, "__init__", old_instance_init)
    monkeypatch.setattr(nn.GroupNorm, "__init__", old_group_init)
    # the real inspection, uncached (the cached one has seen the real constructors)
    monkeypatch.setattr(
        norms, "_takes_bias", lambda base: "bias" in inspect.signature(base.__init__).parameters
    )
    with pytest.raises(TypeError, match="bias"):  # the stand-in is as strict as torch 2.11
        nn.BatchNorm2d(4, bias=False)
    for make in (
        lambda b: normkit.BatchNorm1d(4, bias=b),
        lambda b: normkit.BatchNorm2d(4, bias=b),
        lambda b: normkit.BatchNorm3d(4, bias=b),
        lambda b: normkit.SyncBatchNorm(4, bias=b),
        lambda b: normkit.GroupNorm(2, 4, bias=b),
        lambda b: normkit.InstanceNorm2d(4, affine=True, bias=b),
    ):
        for bias in (True, False):
            m = make(bias)
            assert (m.bias is not None) == bias and m.weight.shape == (4,)
            assert ("bias" in dict(m.named_parameters())) == bias
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.GroupNorm(2, 4),
        nn.InstanceNorm2d(4, affine=True),
    )
    net[1].bias = None  # a zoo layer without a bias
    x = torch.randn(2, 3, 6, 6)
    want = net(x)
    converted, report = normkit.convert(net, return_report=True)
    assert isinstance(converted[1], normkit.BatchNorm2d) and converted[1].bias is None
    assert isinstance(converted[3], normkit.GroupNorm) and converted[3].bias is not None
    assert isinstance(converted[4], normkit.InstanceNorm2d) and converted[4].bias is not None
    assert len(report.converted) == 3
    torch.testing.assert_close(converted(x), want, rtol=1e-5, atol=1e-5)
