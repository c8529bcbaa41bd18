"""normkit.convert against the original torch model, and normkit.create_norm's registry."""

import copy

import pytest
import torch
from torch import nn

import normkit
from normkit.factory import NORMS, default_num_groups

from hostile import randn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.LocalResponseNorm(3, 1e-2, 0.75, 2.0),
            nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8, bias=False),
            nn.InstanceNorm2d(8, affine=True, track_running_stats=True),
            nn.SyncBatchNorm(8, momentum=None),
        )
        self.head = nn.ModuleDict({"ln": nn.LayerNorm([8, 4, 4]), "rms": nn.RMSNorm(4, eps=1e-4),
                                   "bn1": nn.BatchNorm1d(8, affine=False)})
        self.fc = nn.Linear(8 * 16, 8)

    def forward(self, x):
        x = self.features(x)
        x = self.head["rms"](self.head["ln"](x))
        return self.head["bn1"](self.fc(x.flatten(1)))


def _run(model, x, steps=2):
    outs = []
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        xx = x.clone().requires_grad_(True)
        y = model(xx)
        opt.zero_grad()
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        outs.append((y.detach(), xx.grad, {n: p.grad.clone() for n, p in
                                           model.named_parameters()}))
        opt.step()
    return outs


@pytest.mark.parametrize("train", [True, False])
def test_convert_matches_original_outputs_and_gradients(train):
    torch.manual_seed(0)
    original = Net().double().train(train)
    twin = copy.deepcopy(original)
    converted = normkit.convert(twin)
    assert converted is twin
    kinds = {type(m).__module__.split(".")[0] for m in converted.modules()
             if "Norm" in type(m).__name__}
    assert kinds == {"normkit"}
    x = randn(4, 3, 4, 4, seed=1)
    for (y0, dx0, g0), (y1, dx1, g1) in zip(_run(original, x), _run(converted, x)):
        assert (y0 - y1).abs().max() < 1e-10
        assert (dx0 - dx1).abs().max() < 1e-10
        for name in g0:
            assert (g0[name] - g1[name]).abs().max() < 1e-10, name
    for (k, a), (_, b) in zip(original.state_dict().items(), converted.state_dict().items()):
        assert (a.double() - b.double()).abs().max() < 1e-10, k
    assert all(m.training == train for m in converted.modules())


def test_convert_keeps_parameter_objects_device_dtype_and_hooks():
    bn = nn.BatchNorm2d(4).to(torch.float64).eval()
    seen = []
    bn.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model = nn.Sequential(bn)
    weight, running_mean = bn.weight, bn.running_mean
    normkit.convert(model)
    new = model[0]
    assert type(new) is normkit.BatchNorm2d and not new.training
    assert new.weight is weight and new.running_mean is running_mean
    assert new.weight.dtype == torch.float64 and new.weight.device.type == "cpu"
    model(torch.zeros(2, 4, 1, 1, dtype=torch.float64))
    assert seen == [torch.Size([2, 4, 1, 1])]
    assert repr(new) == repr(bn)


def test_convert_root_norm_returns_twin_and_leaves_subclasses():
    class MyBN(nn.BatchNorm2d):
        pass

    twin = normkit.convert(nn.LayerNorm(5))
    assert type(twin) is normkit.LayerNorm
    custom = nn.Sequential(MyBN(3))
    normkit.convert(custom)
    assert type(custom[0]) is MyBN
    lrn = normkit.convert(nn.LocalResponseNorm(4, 1e-3, 0.5, 2.0))
    x = randn(2, 7, 3, 3, seed=2)
    assert (lrn(x) - nn.functional.local_response_norm(x, 4, 1e-3, 0.5, 2.0)).abs().max() < 1e-12
    with pytest.raises(TypeError, match="expected an nn.Module"):
        normkit.convert("not a module")


# --- create_norm --------------------------------------------------------------------

def test_registry_names_are_the_labs_contract():
    assert set(NORMS) == {"none", "lrn", "lrn-within", "batch", "group", "layer", "instance",
                          "rms", "sync-batch", "frn", "ws-group"}


@pytest.mark.parametrize("name", sorted(NORMS))
def test_every_norm_maps_a_feature_map_to_its_shape_and_trains(name):
    m = normkit.create_norm(name, 12)
    x = randn(3, 12, 5, 5, seed=3, dtype=torch.float32).requires_grad_(True)
    y = m(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all()


def test_create_norm_builds_what_it_documents():
    x = randn(2, 48, 3, 3, seed=4, dtype=torch.float32)
    assert isinstance(normkit.create_norm("none", 48), nn.Identity)
    gn = normkit.create_norm("group", 48)
    assert (gn.num_groups, gn.num_channels) == (24, 48)
    assert normkit.create_norm("group", 64).num_groups == 32
    assert normkit.create_norm("group", 7).num_groups == 7
    assert normkit.create_norm("group", 48, num_groups=4).num_groups == 4
    layer = normkit.create_norm("layer", 48)
    assert (layer.num_groups, layer.num_channels) == (1, 48)
    ln = nn.functional.layer_norm(x, [48, 3, 3])
    assert (layer(x) - ln).abs().max() < 1e-5
    inst = normkit.create_norm("instance", 48)
    assert type(inst) is normkit.InstanceNorm2d and inst.affine
    assert type(normkit.create_norm("batch", 48, momentum=0.5)) is normkit.BatchNorm2d
    assert normkit.create_norm("batch", 48, momentum=0.5).momentum == 0.5
    assert type(normkit.create_norm("sync-batch", 48)) is normkit.SyncBatchNorm
    # caffe AlexNet LRN: alpha 1e-4 over a window of 5 -> coefficient 2e-5, k = 1
    lrn = normkit.create_norm("lrn", 48)
    spec = lrn.spec
    assert (spec.back, spec.ahead, spec.k, spec.beta) == (2, 2, 1.0, 0.75)
    assert spec.alpha == pytest.approx(1e-4 / 5)
    y = nn.functional.local_response_norm(x, 5, 1e-4, 0.75, 1.0)
    assert (lrn(x) - y).abs().max() < 1e-6
    within = normkit.create_norm("lrn-within", 48).spec
    assert within.region == "within" and within.alpha == pytest.approx(5e-5 / 9)
    rms = normkit.create_norm("rms", 48, eps=1e-6)
    expected = x / torch.sqrt(x.square().mean(1, keepdim=True) + 1e-6)
    assert (rms(x) - expected).abs().max() < 1e-5


def test_create_norm_errors():
    with pytest.raises(ValueError, match=r"unknown normalization 'bacth'; choose one of .*'batch'"):
        normkit.create_norm("bacth", 8)
    with pytest.raises(ValueError, match="num_channels must be a positive int"):
        normkit.create_norm("batch", 0)
    with pytest.raises(ValueError, match=r"num_channels \(6\) must be divisible by num_groups"):
        normkit.create_norm("group", 6, num_groups=4)
    with pytest.raises(TypeError, match="takes no options"):
        normkit.create_norm("none", 8, eps=1e-3)


def test_default_num_groups():
    assert [default_num_groups(c) for c in (1, 6, 32, 48, 96, 100, 31)] == [1, 6, 32, 24, 32,
                                                                           25, 31]
