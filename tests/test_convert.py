"""normkit.convert against the original torch model, and normkit.create_norm's registry."""

import copy

import pytest
import torch
from torch import nn

import normkit
from normkit.factory import NORMS, default_num_groups

import model_zoo as mz
from hostile import randn
from tolerance import assert_matches_reference


def _group_norm_without_bias(groups, channels):
    """``nn.GroupNorm(..., bias=False)``; torch 2.11's has no ``bias=``: the bias removed."""
    try:
        return nn.GroupNorm(groups, channels, bias=False)
    except TypeError:
        layer = nn.GroupNorm(groups, channels)
        layer.bias = None
        return layer


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.LocalResponseNorm(3, 1e-2, 0.75, 2.0),
            nn.Conv2d(8, 8, 3, padding=1),
            _group_norm_without_bias(2, 8),
            nn.InstanceNorm2d(8, affine=True, track_running_stats=True),
            nn.SyncBatchNorm(8, momentum=None),
        )
        self.head = nn.ModuleDict(
            {
                "ln": nn.LayerNorm([8, 4, 4]),
                "rms": nn.RMSNorm(4, eps=1e-4),
                "bn1": nn.BatchNorm1d(8, affine=False),
            }
        )
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
        outs.append((y.detach(), xx.grad, {n: p.grad.clone() for n, p in model.named_parameters()}))
        opt.step()
    return outs


@pytest.mark.parametrize("train", [True, False])
def test_convert_matches_original_outputs_and_gradients(train):
    torch.manual_seed(0)
    original = Net().double().train(train)
    twin = copy.deepcopy(original)
    converted = normkit.convert(twin)
    assert converted is twin
    kinds = {
        type(m).__module__.split(".")[0] for m in converted.modules() if "Norm" in type(m).__name__
    }
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


def test_convert_root_norm_returns_twin_and_subclasses_by_their_forward():
    class MyBN(nn.BatchNorm2d):  # inherits torch's forward: computes BatchNorm2d
        tag = "mine"

    class OwnForward(nn.BatchNorm2d):  # computes something else
        def forward(self, x):
            return super().forward(x) * 2

    class OwnCheck(nn.BatchNorm2d):  # forward inherited, but a method it calls is not
        def _check_input_dim(self, x):
            pass

    twin = normkit.convert(nn.LayerNorm(5))
    assert type(twin) is normkit.LayerNorm
    custom = nn.Sequential(MyBN(3), OwnForward(3), OwnCheck(3))
    custom[0].note = "kept"
    _, report = normkit.convert(custom, return_report=True)
    assert type(custom[0]) is normkit.BatchNorm2d and custom[0].note == "kept"
    assert type(custom[1]) is OwnForward and type(custom[2]) is OwnCheck
    assert [(p, c.rsplit(".", 1)[1]) for p, c, _ in report.converted] == [("0", "MyBN")]
    reasons = {p: why for p, _, why in report.left}
    assert "own forward" in reasons["1"] and "own _check_input_dim" in reasons["2"]
    lrn = normkit.convert(nn.LocalResponseNorm(4, 1e-3, 0.5, 2.0))
    x = randn(2, 7, 3, 3, seed=2)
    assert (lrn(x) - nn.functional.local_response_norm(x, 4, 1e-3, 0.5, 2.0)).abs().max() < 1e-12
    with pytest.raises(TypeError, match="expected an nn.Module"):
        normkit.convert("not a module")


def test_convert_twice_is_a_no_op_and_report_is_logged(caplog):
    model = nn.Sequential(nn.BatchNorm1d(3), mz.UnknownNorm(3))
    with caplog.at_level("INFO", logger="normkit.convert"):
        normkit.convert(model)
    assert "1 converted, 1 left" in caplog.text
    first = model[0]
    _, report = normkit.convert(model, return_report=True)
    assert model[0] is first and report.converted == []
    assert [(p, why) for p, _, why in report.left] == [
        ("1", "unknown normalization class (not converted, computes as before)")
    ]
    assert "left      1: model_zoo.UnknownNorm" in str(report)


# --- third-party classes, by their documented behaviour (look-alikes in model_zoo.py) ----

THIRD_PARTY = [
    ("timm LayerNorm", lambda: mz.TimmLayerNorm(6), (3, 4, 6), normkit.LayerNorm),
    ("timm LayerNorm2d", lambda: mz.TimmLayerNorm2d(6), (2, 6, 3, 4), normkit.LayerNorm2d),
    ("timm GroupNorm1", lambda: mz.TimmGroupNorm1(6), (2, 6, 3, 4), normkit.GroupNorm),
    (
        "timm BatchNormAct2d",
        lambda: mz.TimmBatchNormAct2d(6, act_layer=nn.Hardswish, inplace=False),
        (4, 6, 3, 3),
        normkit.BatchNormAct2d,
    ),
    (
        "timm BatchNormAct2d momentum None",
        lambda: mz.TimmBatchNormAct2d(6, momentum=None, apply_act=False),
        (4, 6, 3, 3),
        normkit.BatchNormAct2d,
    ),
    (
        "torchvision LayerNorm2d",
        lambda: mz.TVLayerNorm2d(6, eps=1e-6),
        (2, 6, 3, 4),
        normkit.LayerNorm2d,
    ),
    (
        "torchvision FrozenBatchNorm2d",
        lambda: mz.TVFrozenBatchNorm2d(6, eps=1e-3),
        (2, 6, 3, 4),
        normkit.FrozenBatchNorm2d,
    ),
    ("HF LlamaRMSNorm", lambda: mz.LlamaRMSNorm(6, eps=1e-5), (2, 3, 6), normkit.HFRMSNorm),
    ("HF GemmaRMSNorm", lambda: mz.GemmaRMSNorm(6), (2, 3, 6), normkit.HFRMSNorm),
    ("HF T5LayerNorm", lambda: mz.T5LayerNorm(6), (2, 3, 6), normkit.HFRMSNorm),
]


def _grads(model, x, dy):
    x = x.detach().clone().requires_grad_(True)
    y = model(x)
    (y * dy.to(y.dtype)).sum().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", THIRD_PARTY, ids=[c[0] for c in THIRD_PARTY])
def test_third_party_norms_convert_to_the_same_computation(case, dtype):
    _, make, shape, expected = case
    torch.manual_seed(0)
    ref = mz.randomize(make(), 5).double()
    theirs = copy.deepcopy(ref).to(dtype)
    ours = copy.deepcopy(theirs)
    ours, report = normkit.convert(ours, return_report=True)
    assert type(ours) is expected, report
    assert report.converted[0][0] == "" and report.left == []
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x, dy = randn(*shape, seed=1), randn(*shape, seed=2)
    results = [
        _grads(m, x.to(m_dtype), dy)
        for m, m_dtype in ((ref, torch.float64), (theirs, dtype), (ours, dtype))
    ]
    (y_r, dx_r, g_r), (y_t, dx_t, g_t), (y_o, dx_o, g_o) = results
    assert y_o.dtype == y_t.dtype
    assert_matches_reference(y_o, y_r, dtype, y_t)
    assert_matches_reference(dx_o, dx_r, dtype, dx_t, what="dx")
    for name in g_r:
        assert_matches_reference(g_o[name], g_r[name], dtype, g_t[name], what=name)
    # running stats updated like the original's (or untouched)
    for (k, r), (_, t), (_, o) in zip(
        ref.state_dict().items(), theirs.state_dict().items(), ours.state_dict().items()
    ):
        if r.is_floating_point():
            assert_matches_reference(o, r, dtype, t, what=k)
        else:
            assert torch.equal(o, t), k


def test_hf_rmsnorm_dtype_rules_match_the_originals():
    """Llama: output dtype is promote(input, weight); Gemma: the input's; T5: the weight's
    when half, else float32 for half input."""
    x = randn(2, 6, seed=3).to(torch.bfloat16)
    for make in (mz.LlamaRMSNorm, mz.GemmaRMSNorm, mz.T5LayerNorm):
        for wdtype in (torch.float32, torch.bfloat16):
            theirs = make(6).to(wdtype)
            ours = normkit.convert(copy.deepcopy(theirs))
            assert ours(x).dtype == theirs(x).dtype, (make.__name__, wdtype)
            assert (ours(x).double() - theirs(x).double()).abs().max() < 2e-2


def test_look_alikes_outside_the_real_packages_are_left_alone():
    """Recognition is by package, class name and attributes: a user's own LayerNorm2d
    (same name, unknown module) or a timm LayerNorm on its fast_norm path stays."""

    class LayerNorm2d(nn.LayerNorm):
        def forward(self, x):
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) * 3

    fast = mz.TimmLayerNorm(4)
    fast._fast_norm = True
    odd_llama = mz.LlamaRMSNorm(4)
    odd_llama.extra = nn.Linear(4, 4)  # not the documented layout
    model = nn.Sequential(LayerNorm2d(4), fast, odd_llama)
    _, report = normkit.convert(model, return_report=True)
    assert [type(m) for m in model] == [LayerNorm2d, mz.TimmLayerNorm, mz.LlamaRMSNorm]
    reasons = [why for _, _, why in report.left]
    assert "own forward" in reasons[0]
    assert "fast_norm" in reasons[1]
    assert "unexpected parameters or submodules" in reasons[2]


# --- create_norm --------------------------------------------------------------------


def test_registry_names_are_the_labs_contract():
    assert set(NORMS) == {
        "none",
        "lrn",
        "lrn-within",
        "batch",
        "group",
        "layer",
        "instance",
        "rms",
        "sync-batch",
        "frn",
        "ws-group",
    }


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
    assert [default_num_groups(c) for c in (1, 6, 32, 48, 96, 100, 31)] == [
        1,
        6,
        32,
        24,
        32,
        25,
        31,
    ]
