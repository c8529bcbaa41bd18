"""Model-zoo blocks converted by normkit.convert export with plain torch.onnx.export (both
exporters) and run in onnxruntime with the unconverted model's outputs.

The expected values are the original (unconverted, torch-only) model's eval outputs in
float32; the yardstick is how far torch's own model moves through the same exporter, under
the suite's policy (tests/tolerance.py): ours may be at most twice as far, plus a floor.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import normkit

from model_zoo import ZOO, randomize

ort = pytest.importorskip("onnxruntime")


def _run(model, x, path, dynamo):
    torch.onnx.export(model, (x,), str(path), dynamo=dynamo)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_converted_model_exports_and_matches_the_original(name, dynamo, tmp_path):
    build, shape = ZOO[name]
    torch.manual_seed(0)
    original = randomize(build(), seed=1).eval()
    converted, report = normkit.convert(copy.deepcopy(original), return_report=True)
    assert report.converted, f"{name}: convert changed nothing"
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        truth = original.double()(x.double()).numpy()
        original.float()
    ours = _run(converted.eval(), x, tmp_path / "ours.onnx", dynamo)
    theirs = _run(original, x, tmp_path / "theirs.onnx", dynamo)
    scale = max(1.0, float(np.abs(truth).max()))
    torch_err = float(np.abs(theirs - truth).max())
    err = float(np.abs(ours - truth).max())
    assert err <= 2 * torch_err + 2e-6 * scale, (name, err, torch_err)
