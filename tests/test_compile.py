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
    x = randn(2, 3, 8, 8, seed=2, dtype=torch.float32).contiguous(
        memory_format=torch.channels_last)
    _compiled_matches_eager("aot_eager", net, x)


def test_custom_op_schema_and_fake_tensor():
    x = randn(2, 6, 3, 3, seed=3, dtype=torch.float32)
    torch.library.opcheck(torch.ops.normkit.lrn_fwd.default, (x, 2, 2, 0.1, 0.75, 1.0, False,
                                                               "cpu"))
    dy = randn(2, 6, 3, 3, seed=4, dtype=torch.float32)
    torch.library.opcheck(torch.ops.normkit.lrn_bwd.default,
                          (x, dy, 2, 2, 0.1, 0.75, 1.0, False, "cpu"))
    # outputs keep the strides the fake op promises, even for a permuted dense input
    xt = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2).transpose(2, 3)
    y = library.lrn_fwd(xt, 2, 2, 0.1, 0.75, 1.0, False, "cpu")
    assert y.stride() == torch.empty_like(xt).stride()


@pytest.mark.slow
def test_fullgraph_inductor():
    torch.manual_seed(0)
    _compiled_matches_eager("inductor", _Net(), randn(2, 3, 8, 8, seed=0, dtype=torch.float32))
