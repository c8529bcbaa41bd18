"""fold_batch_norm: the folded model in eval equals the original in eval; refusals are clear.

The expected values are the original (unfolded) model's outputs computed by torch's own
layers: folding must not change what the model computes.
"""

import warnings

import pytest
import torch
from torch import nn

import normkit
from normkit import fold_batch_norm

from hostile import randn

F64 = torch.float64


def _bn(bn):
    """Non-trivial running statistics and affine (default ones would hide mistakes)."""
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.3, 3.0)
        if bn.weight is not None:
            bn.weight.normal_()
            bn.bias.normal_()
    return bn


def _close(a, b, atol):
    err = (a - b).abs().max().item()
    assert err <= atol * max(1.0, b.abs().max().item()), err


def _bn_count(model):
    return sum(
        isinstance(m, (nn.modules.batchnorm._BatchNorm, normkit.modules.norms._BatchNorm))
        for m in model.modules()
    )


def _mixed_net():
    ln = nn.LayerNorm(100)
    rms = normkit.RMSNorm(6)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
        rms.weight.normal_()
    return nn.Sequential(
        _bn(nn.BatchNorm2d(3)),  # before a conv with reflect padding: exact
        nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect"),
        _bn(nn.BatchNorm2d(8)),  # after that same conv
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 8, 3, groups=4, bias=False), _bn(normkit.BatchNorm2d(8))),
        _bn(nn.BatchNorm2d(8, affine=False)),  # before a grouped, unpadded conv
        nn.Conv2d(8, 4, 1, groups=2),
        nn.Flatten(),
        ln,
        nn.Linear(100, 6),
        _bn(nn.BatchNorm1d(6)),
        rms,
        nn.Linear(6, 3, bias=False),
    )


@pytest.mark.parametrize("fold_norms", [False, True])
def test_float64_folded_equals_original_to_1e12(fold_norms):
    torch.manual_seed(0)
    net = _mixed_net().to(F64).eval()
    x = randn(4, 3, 7, 7, seed=1)
    folded = fold_batch_norm(net, fold_norm_into_linear=fold_norms)
    assert _bn_count(net) == 5 and _bn_count(folded) == 0  # every BN folded, original kept
    _close(folded(x), net(x), 1e-12)
    if fold_norms:
        assert folded[8].weight.eq(1).all() and folded[8].bias.eq(0).all()
        assert folded[11].weight.eq(1).all() and folded[12].bias is not None


def test_float32_folded_within_tolerance():
    torch.manual_seed(1)
    net = _mixed_net().eval()
    x = randn(4, 3, 7, 7, seed=2, dtype=torch.float32)
    folded = fold_batch_norm(net, fold_norm_into_linear=True)
    _close(folded(x), net(x), 1e-4)


@pytest.mark.parametrize(
    "conv, bn, shape",
    [
        (nn.Conv1d(3, 5, 3, padding=2, dilation=2), nn.BatchNorm1d(5), (2, 3, 9)),
        (nn.Conv3d(2, 4, 2, stride=2), nn.BatchNorm3d(4), (2, 2, 4, 4, 4)),
        (nn.Linear(7, 5), nn.BatchNorm1d(5), (3, 7)),
        (nn.Conv2d(4, 6, 3, groups=2, bias=False), normkit.BatchNorm2d(6), (2, 4, 5, 5)),
    ],
)
def test_after_layer_every_dimension(conv, bn, shape):
    torch.manual_seed(2)
    net = nn.Sequential(conv, _bn(bn)).to(F64).eval()
    x = randn(*shape, seed=3)
    folded = fold_batch_norm(net)
    assert isinstance(folded[1], nn.Identity)
    _close(folded(x), net(x), 1e-12)


def test_wsconv_followed_by_bn_becomes_a_plain_conv():
    torch.manual_seed(3)
    net = nn.Sequential(normkit.WSConv2d(3, 4, 3), _bn(nn.BatchNorm2d(4))).to(F64).eval()
    x = randn(2, 3, 6, 6, seed=4)
    folded = fold_batch_norm(net)
    assert type(folded[0]) is nn.Conv2d
    _close(folded(x), net(x), 1e-12)


def test_inplace_and_default_copy():
    net = nn.Sequential(nn.Conv2d(2, 2, 1), _bn(nn.BatchNorm2d(2))).eval()
    fold_batch_norm(net)
    assert isinstance(net[1], nn.BatchNorm2d)  # default: a folded copy
    assert fold_batch_norm(net, inplace=True) is net and isinstance(net[1], nn.Identity)


def test_named_children_outside_a_sequential_are_not_folded():
    class Block(nn.Module):  # ResNet-style: registration order says nothing about data flow
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 1)
            self.bn = _bn(nn.BatchNorm2d(2))

        def forward(self, x):
            return self.bn(self.conv(x))

    net = Block().to(F64).eval()
    x = randn(1, 2, 3, 3, seed=5)
    folded = fold_batch_norm(net)
    assert isinstance(folded.bn, nn.BatchNorm2d)
    _close(folded(x), net(x), 0.0)


@pytest.mark.parametrize(
    "make, match",
    [
        (
            lambda: nn.Sequential(nn.Conv2d(2, 3, 1), _bn(nn.BatchNorm2d(3)).train()),
            r"0\.1 \(BatchNorm2d\) is in training mode",
        ),
        (
            lambda: nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3, track_running_stats=False)),
            r"0\.1 .*no running statistics",
        ),
        (
            lambda: nn.Sequential(nn.Conv2d(2, 3, 1), _bn(nn.BatchNorm1d(3))),
            r"0\.1 \(BatchNorm1d\) next to 0\.0 \(Conv2d\).*expected BatchNorm2d",
        ),
        (
            lambda: nn.Sequential(nn.Conv2d(2, 3, 1), _bn(nn.BatchNorm2d(4))),
            r"0\.1 \(BatchNorm2d\) has num_features=4 but 0\.0 \(Conv2d\) outputs 3",
        ),
        (
            lambda: nn.Sequential(_bn(nn.BatchNorm2d(2)), nn.Conv2d(2, 3, 3, padding=1)),
            r"0\.0 \(BatchNorm2d\) precedes 0\.1, which zero-pads",
        ),
    ],
)
def test_refusals_name_the_path_and_the_reason(make, match):
    net = nn.Sequential(make()).eval()
    if "training" in match:
        net[0][1].train()
    with pytest.raises(ValueError, match="fold_batch_norm: " + match):
        fold_batch_norm(net)


def test_shared_layer_is_refused():
    conv = nn.Conv2d(2, 2, 1)
    net = nn.Sequential(conv, _bn(nn.BatchNorm2d(2)), conv).eval()
    with pytest.raises(ValueError, match="appears more than once"):
        fold_batch_norm(net)


def test_non_strict_warns_and_leaves_the_bn():
    torch.manual_seed(4)
    net = (
        nn.Sequential(_bn(nn.BatchNorm2d(2)), nn.Conv2d(2, 3, 3, padding=1), _bn(nn.BatchNorm2d(3)))
        .to(F64)
        .eval()
    )
    x = randn(2, 2, 5, 5, seed=6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folded = fold_batch_norm(net, strict=False)
    assert any("zero-pads" in str(w.message) for w in caught)
    assert isinstance(folded[0], nn.BatchNorm2d) and isinstance(folded[2], nn.Identity)
    _close(folded(x), net(x), 1e-12)


def test_not_a_module():
    with pytest.raises(TypeError, match="must be an nn.Module"):
        fold_batch_norm(lambda x: x)
