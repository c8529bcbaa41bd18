"""WSConv2d (weight standardization, BiT's formula) against float64 hand computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as torch_F

import normkit
from normkit.lab.model import LabNet
from normkit.reference import group_norm_forward, weight_standardize

from hostile import randn


def test_reference_standardization_by_hand():
    # one filter [1, 2, 3, 6]: mean 3, biased var (4 + 1 + 0 + 9) / 4 = 3.5
    w = np.array([1.0, 2.0, 3.0, 6.0]).reshape(1, 1, 2, 2)
    out = weight_standardize(w, eps=0.5)  # sqrt(3.5 + 0.5) = 2
    assert out.reshape(-1).tolist() == [-1.0, -0.5, 0.0, 1.5]


@pytest.mark.parametrize("groups", [1, 2])
def test_forward_matches_float64_hand_computation(groups):
    torch.manual_seed(0)
    conv = normkit.WSConv2d(4, 6, 3, padding=1, groups=groups, dtype=torch.float64)
    x = randn(2, 4, 5, 5, seed=1)
    w_hat = torch.from_numpy(weight_standardize(conv.weight.detach().numpy(), eps=1e-6))
    # per filter: mean 0, biased variance var / (var + eps) ~ 1
    assert np.allclose(w_hat.mean((1, 2, 3)).numpy(), 0.0, atol=1e-15)
    expected = torch_F.conv2d(x, w_hat, conv.bias, padding=1, groups=groups)
    torch.testing.assert_close(conv(x), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(conv.standardized_weight(), w_hat, rtol=0, atol=1e-13)


def test_float32_matches_float64_within_tolerance():
    torch.manual_seed(1)
    conv = normkit.WSConv2d(3, 5, 3)
    x = randn(2, 3, 6, 6, seed=2, dtype=torch.float32)
    w_hat = weight_standardize(conv.weight.detach().double().numpy())
    expected = torch_F.conv2d(x.double(), torch.from_numpy(w_hat), conv.bias.detach().double())
    assert (conv(x).double() - expected).abs().max() < 1e-5


def test_gradients_gradcheck_float64():
    torch.manual_seed(2)
    conv = normkit.WSConv2d(2, 3, 3, dtype=torch.float64)
    x = randn(1, 2, 4, 4, seed=3).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x_, w_, b_: torch_F.conv2d(x_, normkit.modules.ws.standardize_weight(w_, 1e-6), b_),
        (x, conv.weight, conv.bias),
    )
    # the module's gradient is the one of the formula written out here
    conv(x).sum().backward()
    w = conv.weight.detach().clone().requires_grad_()
    m = w.mean((1, 2, 3), keepdim=True)
    v = ((w - m) ** 2).mean((1, 2, 3), keepdim=True)
    torch_F.conv2d(x.detach(), (w - m) / torch.sqrt(v + 1e-6), conv.bias.detach()).sum().backward()
    torch.testing.assert_close(conv.weight.grad, w.grad, rtol=0, atol=1e-12)


def test_eps_is_inside_the_sqrt_constant_filter_gives_zero():
    conv = normkit.WSConv2d(1, 1, 2, bias=False)
    with torch.no_grad():
        conv.weight.fill_(3.0)  # variance 0: (w - mean) / sqrt(0 + eps) = 0, not NaN
    assert conv.standardized_weight().abs().max().item() == 0.0


def test_half_weights_standardized_in_float32():
    conv = normkit.WSConv2d(3, 4, 3, dtype=torch.bfloat16)
    w_hat = conv.standardized_weight()
    ref = weight_standardize(conv.weight.detach().double().numpy())
    assert w_hat.dtype == torch.bfloat16
    assert np.abs(w_hat.detach().double().numpy() - ref).max() < 1.6e-2 * max(1, np.abs(ref).max())


def test_bad_eps():
    with pytest.raises(ValueError, match="eps must be a positive float"):
        normkit.WSConv2d(1, 1, 1, eps=0.0)


def test_bit_block_ws_with_groupnorm_matches_reference():
    # BiT's pre-activation unit: GN -> ReLU -> WSConv -> GN -> ReLU -> WSConv, + shortcut
    torch.manual_seed(3)
    c = 8
    gn1, gn2 = normkit.GroupNorm(4, c), normkit.GroupNorm(4, c)
    conv1 = normkit.WSConv2d(c, c, 3, padding=1, bias=False)
    conv2 = normkit.WSConv2d(c, c, 3, padding=1, bias=False)
    block = torch.nn.ModuleList([gn1, conv1, gn2, conv2]).double()
    with torch.no_grad():
        for gn in (gn1, gn2):
            gn.weight.normal_()
            gn.bias.normal_()

    def forward(x):
        h = conv1(torch.relu(gn1(x)))
        return x + conv2(torch.relu(gn2(h)))

    x = randn(2, c, 6, 6, seed=4).requires_grad_()
    y = forward(x)
    y.square().sum().backward()

    def ref_gn(v, gn):
        return torch.from_numpy(
            group_norm_forward(
                v.numpy(), 4, gn.weight.detach().numpy(), gn.bias.detach().numpy(), 1e-5
            )[0]
        )

    def ref_conv(v, conv):
        w = torch.from_numpy(weight_standardize(conv.weight.detach().numpy(), 1e-6))
        return torch_F.conv2d(v, w, padding=1)

    xd = x.detach()
    h = ref_conv(torch.relu(ref_gn(xd, gn1)), conv1)
    expected = xd + ref_conv(torch.relu(ref_gn(h, gn2)), conv2)
    torch.testing.assert_close(y.detach(), expected, rtol=0, atol=1e-12)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())


def test_create_norm_and_create_conv_for_the_lab():
    assert isinstance(normkit.create_norm("frn", 8), normkit.FilterResponseNorm2d)
    assert isinstance(normkit.create_norm("ws-group", 8), normkit.GroupNorm)
    assert type(normkit.create_conv("ws-group", 3, 8, 3)) is normkit.WSConv2d
    assert type(normkit.create_conv("group", 3, 8, 3)) is torch.nn.Conv2d
    with pytest.raises(ValueError, match="unknown normalization"):
        normkit.create_conv("nope", 3, 8, 3)
    net = LabNet("ws-group")
    assert all(isinstance(m, normkit.WSConv2d) for m in net.convs())
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    net = LabNet("frn")
    assert not any(isinstance(m, normkit.WSConv2d) for m in net.convs())
    assert net(torch.rand(2, 1, 8, 8)).shape == (2, 10)
