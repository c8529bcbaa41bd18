"""ONNX export of FRN, WSConv2d and a folded model with both torch exporters, run in
onnxruntime and compared with the float64 reference / the unfolded model."""

import io
import logging
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as torch_F
from torch import nn

import normkit
from normkit.reference import frn_forward, weight_standardize

from hostile import randn
from tolerance import assert_matches_reference

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

EXPORTERS = [pytest.param(True, id="dynamo"), pytest.param(False, id="torchscript")]


@pytest.fixture(autouse=True)
def _quiet_exporters():
    logging.disable(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


def _export_run(model, x, dynamo):
    if dynamo:
        proto = torch.onnx.export(model, (x,), dynamo=True).model_proto
        data = proto.SerializeToString()
    else:
        buf = io.BytesIO()
        torch.onnx.export(model, (x,), buf, dynamo=False)
        data = buf.getvalue()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


class _WsFrn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = normkit.WSConv2d(3, 6, 3, padding=1)
        self.frn = normkit.FilterResponseNorm2d(6, learnable_eps=True)
        with torch.no_grad():
            self.frn.weight.normal_()
            self.frn.bias.normal_()
            self.frn.tau.uniform_(-0.5, 0.5)

    def forward(self, x):
        # the module and the functional (with tau=None: plain FRN) on the same features
        h = self.conv(x)
        return self.frn(h) + normkit.functional.filter_response_norm(h, eps=1e-3)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_wsconv_and_frn_export_match_reference(dynamo):
    torch.manual_seed(0)
    model = _WsFrn().eval()
    x = randn(2, 3, 7, 7, seed=1, dtype=torch.float32)
    out = _export_run(model, x, dynamo)
    # float64 reference: standardized weight, conv, then FRN + TLU and plain FRN
    w = torch.from_numpy(weight_standardize(model.conv.weight.detach().double().numpy()))
    h = torch_F.conv2d(x.double(), w, model.conv.bias.detach().double(), padding=1).numpy()
    frn = model.frn
    eps = 1e-6 + np.abs(frn.eps_param.detach().double().numpy())
    ref = (
        frn_forward(
            h,
            frn.weight.detach().double().numpy(),
            frn.bias.detach().double().numpy(),
            frn.tau.detach().double().numpy(),
            eps,
        )[0]
        + frn_forward(h, eps=1e-3)[0]
    )
    assert_matches_reference(out, ref, torch.float32, what="onnxruntime")
    assert_matches_reference(model(x), ref, torch.float32, what="eager")


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_folded_model_exports_and_matches_the_original(dynamo):
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        normkit.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 1),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.Linear(4 * 25, 5),
        nn.BatchNorm1d(5),
    )
    net.train()
    for _ in range(3):  # real running statistics
        net(randn(8, 3, 5, 5, seed=2, dtype=torch.float32) * 2 + 1)
    net.eval()
    folded = normkit.fold_batch_norm(net)
    x = randn(4, 3, 5, 5, seed=3, dtype=torch.float32)
    out = _export_run(folded, x, dynamo)
    expected = net(x).detach().double().numpy()
    err = np.abs(out - expected).max()
    assert err <= 1e-5 * max(1.0, np.abs(expected).max()), err
