"""Model-zoo conformance: real model shapes converted with normkit.convert train like the
originals (issue 10 acceptance: training and torch.compile; export is tested elsewhere).

Each model (torchvision-style ResNet BasicBlock/Bottleneck and MobileNetV3 blocks with
in-place ReLU/Hardswish and ``out += identity``, a ViT/BERT pre-norm encoder, timm-,
torchvision- and Hugging Face-style look-alikes) is converted, its normkit layers are
pinned to each available backend, and it is trained a few SGD steps next to the
unconverted model. The float64 original is the reference; the float32 original is
torch's own error in the tolerance policy (``tests/tolerance.py``).
"""

import copy

import pytest
import torch

import normkit
from normkit import dispatch

from hostile import randn
from model_zoo import ZOO, randomize
from tolerance import assert_matches_reference

# the backends that can run every norm op on CPU tensors here
BACKENDS = [
    b
    for b in ("torch", "cpu")
    if all(
        b in dispatch.table[op]
        for op in ("layer_norm_fwd", "rms_norm_fwd", "group_norm_fwd", "batch_norm_stats")
    )
]

# which normkit classes each model must end up with (every norm converted)
EXPECTED = {
    "resnet": {"BatchNorm2d"},
    "mobilenetv3": {"BatchNorm2d"},
    "vit": {"LayerNorm"},
    "vit-timm-layernorm": {"LayerNorm"},
    "convnext-timm": {"BatchNormAct2d", "LayerNorm2d", "GroupNorm"},
    "convnext-torchvision": {"BatchNormAct2d", "LayerNorm2d", "GroupNorm"},
    "detector-torchvision": {"FrozenBatchNorm2d", "LayerNorm2d"},
    "llama": {"HFRMSNorm"},
    "gemma": {"HFRMSNorm"},
    "t5": {"HFRMSNorm"},
}


def _set_backend(model, backend):
    for m in model.modules():
        if type(m).__module__.startswith("normkit."):
            m.backend = backend


def _train(model, x, steps=3, lr=0.05):
    """SGD steps on a fixed loss; per step the loss, input and parameter gradients."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    out = []
    w = None
    for step in range(steps):
        xx = (x * (1.0 + 0.1 * step)).detach().requires_grad_(True)
        y = model(xx)
        if w is None:
            w = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view(y.shape)
        loss = (y * w.to(y.dtype)).sum() + 0.1 * y.square().sum()
        opt.zero_grad()
        loss.backward()
        out.append(
            {
                "loss": loss.detach(),
                "dx": xx.grad.clone(),
                **{
                    f"grad:{n.removeprefix('_orig_mod.')}": p.grad.clone()
                    for n, p in model.named_parameters()
                    if p.grad is not None
                },
            }
        )
        opt.step()
    return out


def _buffers(model):
    return {n: b for n, b in model.named_buffers() if b.is_floating_point()}


def _converted(name, dtype, backend, seed=0):
    build, shape = ZOO[name]
    torch.manual_seed(seed)
    original = randomize(build(), seed + 1).to(dtype)
    twin = copy.deepcopy(original)
    converted, report = normkit.convert(twin, return_report=True)
    _set_backend(converted, backend)
    return original, converted, report, shape


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(ZOO))
def test_converted_model_trains_like_the_original(name, backend):
    ref_model, _, _, shape = _converted(name, torch.float64, backend)
    torch32, ours, report, _ = _converted(name, torch.float32, backend)
    kinds = {type(m).__name__ for m in ours.modules() if type(m).__module__.startswith("normkit")}
    assert kinds == EXPECTED[name], report
    assert report.left == []
    # no norm-like module of the original survives unconverted
    assert not [
        m
        for m in ours.modules()
        if "Norm" in type(m).__name__ and not type(m).__module__.startswith("normkit")
    ]
    x = randn(*shape, seed=7)
    ref = _train(ref_model, x)
    theirs = _train(torch32, x.float())
    mine = _train(ours, x.float())
    for step, (r, t, o) in enumerate(zip(ref, theirs, mine, strict=True)):
        assert r.keys() == o.keys(), step
        for key in r:
            assert_matches_reference(
                o[key], r[key], torch.float32, t[key], what=f"{name}/{backend} step {step} {key}"
            )
    ref_buf, t_buf, o_buf = _buffers(ref_model), _buffers(torch32), _buffers(ours)
    assert ref_buf.keys() == o_buf.keys()
    for key in ref_buf:
        assert_matches_reference(
            o_buf[key],
            ref_buf[key],
            torch.float32,
            t_buf[key],
            what=f"{name}/{backend} buffer {key}",
        )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(ZOO))
def test_converted_model_float64_equals_the_original(name, backend):
    """In float64 the converted model is the original up to float64 rounding (Hugging
    Face norms compute in float32 by design, and so does their normkit twin)."""
    original, ours, _, shape = _converted(name, torch.float64, backend)
    x = randn(*shape, seed=8)
    for r, o in zip(_train(original, x), _train(ours, x), strict=True):
        for key in r:
            tol = 1e-5 if name in ("llama", "gemma", "t5") else 1e-9
            scale = max(1.0, float(r[key].abs().max()))
            assert (o[key] - r[key]).abs().max() <= tol * scale, (name, key)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(ZOO))
def test_converted_model_compiles_fullgraph(name, backend):
    _, ours, _, shape = _converted(name, torch.float32, backend)
    eager = copy.deepcopy(ours)
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)  # graph break = error
    x = randn(*shape, seed=9, dtype=torch.float32)
    runs = zip(_train(eager, x, steps=2), _train(compiled, x, steps=2), strict=True)
    for step, (e, c) in enumerate(runs):
        for key in e:
            scale = max(1.0, float(e[key].abs().max()))
            assert (c[key] - e[key]).abs().max() <= 1e-5 * scale, (name, step, key)
    mine = _buffers(ours)
    assert mine.keys() == _buffers(eager).keys()
    for key, b in _buffers(eager).items():
        assert (mine[key] - b).abs().max() <= 1e-5, key
