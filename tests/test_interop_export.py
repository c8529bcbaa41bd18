"""ONNX export of normkit layers, run in onnxruntime against the float64 reference and torch.

Exports are slow (about a second each with the dynamo exporter), so each test exports one
model holding many layers (one output per layer) and checks every output.
"""

import copy
import logging
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import normkit
from normkit.conventions import CONVENTIONS, canonicalize
from normkit.interop import export as nk_export
from normkit.interop.export import export_onnx, lrn_decomposition, register_exporter
from normkit.reference import lrn_forward

from hostile import randn
from tolerance import ATOL, assert_matches_reference

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

EXPORTERS = [pytest.param(True, id="dynamo"), pytest.param(False, id="torchscript")]


@pytest.fixture(autouse=True)
def _quiet_exporters():
    # the exporters log progress and deprecation notices; the tests look at results
    logging.disable(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


def run_ort(proto, *inputs):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs)}
    return sess.run(None, feeds)


def op_types(proto):
    return [n.op_type for n in proto.graph.node]


def producer(proto, i):
    """op_type of the node computing graph output ``i`` (through Identity nodes)."""
    by_output = {out: n for n in proto.graph.node for out in n.output}
    node = by_output[proto.graph.output[i].name]
    while node.op_type == "Identity":
        node = by_output[node.input[0]]
    return node.op_type


class Many(nn.Module):
    """Applies each layer to the same input; one output per layer."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        return tuple(layer(x) for layer in self.layers)


def _lrn_layers(convention):
    """Every layer of ``convention`` for sizes 1..7 across (and within where it exists)."""
    layers = []
    for region in ("across", "within"):
        for size in range(1, 8):
            try:
                canonicalize(size, 0.3, 0.75, 1.2, region=region, convention=convention)
            except ValueError:
                continue
            layers.append(
                normkit.LocalResponseNorm(
                    size, 0.3, 0.75, 1.2, region=region, convention=convention
                )
            )
    return layers


# --- every LRN preset, odd and even sizes, across and within ----------------------------


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_every_lrn_preset_runs_in_onnxruntime_and_matches(convention, dynamo):
    layers = _lrn_layers(convention)
    model = Many(layers)
    x = randn(2, 7, 5, 4, dtype=torch.float32, seed=11)  # N != C
    proto = export_onnx(model, (x,), dynamo=dynamo)
    outputs = run_ort(proto, x)
    assert len(outputs) == len(layers)
    for layer, y in zip(layers, outputs):
        ref = lrn_forward(x.double().numpy(), layer.spec)
        assert_matches_reference(y, ref, torch.float32, what=repr(layer))
        eager = layer(x)
        assert np.max(np.abs(y - eager.numpy())) <= ATOL[torch.float32] * 4
    for i, layer in enumerate(layers):
        expressible = layer.spec.region == "across" and layer.spec.back == layer.spec.ahead
        assert (producer(proto, i) == "LRN") == expressible, repr(layer)


def test_even_sizes_are_decomposed_not_an_lrn_node():
    # an even torch LRN as an ONNX LRN node would be mirrored (docs/design.md section 2)
    for convention in ("torch", "onnx"):
        proto = export_onnx(
            normkit.LocalResponseNorm(4, convention=convention),
            randn(1, 6, 3, 3, dtype=torch.float32),
        )
        assert "LRN" not in op_types(proto)


def test_raw_alpha_is_converted_to_alpha_times_size():
    # TensorFlow's raw alpha 0.01 over 2r+1 = 5 channels is ONNX alpha 0.05, size 5
    layer = normkit.LocalResponseNorm.from_tensorflow(2, 1.5, 0.01, 0.6, channel_dim=1)
    proto = export_onnx(layer, randn(1, 6, 3, 3, dtype=torch.float32))
    (node,) = [n for n in proto.graph.node if n.op_type == "LRN"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["size"] == 5
    assert attrs["alpha"] == pytest.approx(0.05, rel=1e-6)
    assert attrs["bias"] == pytest.approx(1.5) and attrs["beta"] == pytest.approx(0.6)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_nhwc_rank3_rank5_and_dynamic_batch(dynamo):
    nhwc = normkit.LocalResponseNorm.from_tensorflow(2, 1.0, 0.1, 0.5)  # channel_dim=-1

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.nhwc = nhwc
            self.lrn3 = normkit.LocalResponseNorm(3, 0.2, 0.75, 1.0)
            self.lrn_even = normkit.LocalResponseNorm(4, 0.2, 0.75, 1.0, convention="onnx")
            self.within = normkit.LocalResponseNorm.from_caffe(
                3, 0.5, 0.75, norm_region="WITHIN_CHANNEL"
            )

        def forward(self, a, b, c, d):
            return self.nhwc(a), self.lrn3(b), self.lrn_even(c), self.lrn3(c), self.within(d)

    a = randn(2, 4, 3, 6, dtype=torch.float32, seed=1)
    b = randn(2, 6, 9, dtype=torch.float32, seed=2)
    c = randn(2, 6, 2, 3, 2, dtype=torch.float32, seed=3)
    d = randn(2, 3, 5, 6, dtype=torch.float32, seed=4)
    if dynamo:
        batch, h, w = torch.export.Dim("N"), torch.export.Dim("H"), torch.export.Dim("W")
        dyn = {"dynamic_shapes": ({0: batch}, {0: batch}, {0: batch}, {0: batch, 2: h, 3: w})}
    else:
        dyn = {
            "dynamic_axes": {
                "a": {0: "N"},
                "b": {0: "N"},
                "c": {0: "N"},
                "d": {0: "N", 2: "H", 3: "W"},
            }
        }
    model = Model()
    proto = export_onnx(model, (a, b, c, d), dynamo=dynamo, input_names=["a", "b", "c", "d"], **dyn)
    # a different batch size (and spatial size for the within-channel layer) than traced
    a5, b5, c5 = (randn(5, *t.shape[1:], dtype=torch.float32, seed=9) for t in (a, b, c))
    d5 = randn(5, 3, 7, 4, dtype=torch.float32, seed=10)
    for got, want in zip(run_ort(proto, a5, b5, c5, d5), model(a5, b5, c5, d5)):
        assert got.shape == tuple(want.shape)
        assert np.max(np.abs(got - want.numpy())) <= 4 * ATOL[torch.float32]
    assert op_types(proto).count("LRN") == 3


def test_float16_and_float64_inputs():
    layer = normkit.LocalResponseNorm(5, 0.3, 0.75, 1.2)
    x16 = randn(2, 7, 3, 3, dtype=torch.float16, seed=4)
    proto = export_onnx(layer, (x16,))
    assert "LRN" in op_types(proto)
    (y,) = run_ort(proto, x16)
    assert y.dtype == np.float16
    assert_matches_reference(y, lrn_forward(x16.double().numpy(), layer.spec), torch.float16)
    x64 = randn(2, 7, 3, 3, dtype=torch.float64, seed=5)
    proto = export_onnx(layer, (x64,))
    assert "LRN" not in op_types(proto)  # onnxruntime has no float64 LRN kernel
    (y,) = run_ort(proto, x64)
    assert y.dtype == np.float64
    assert_matches_reference(y, lrn_forward(x64.numpy(), layer.spec), torch.float64)


def test_decompose_mode_is_exact_for_a_loud_channel():
    # onnxruntime's LRN kernel keeps a running sum; the decomposition sums each window
    loud = randn(2, 9, 4, 4, dtype=torch.float64, seed=3)
    loud[:, 4] *= 1000.0
    x = loud.float()
    layer = normkit.LocalResponseNorm(5, 0.3, 0.75, 1.2)
    proto = export_onnx(layer, (x,), lrn="decompose")
    assert "LRN" not in op_types(proto)
    (y,) = run_ort(proto, x)
    assert_matches_reference(y, lrn_forward(x.double().numpy(), layer.spec), torch.float32)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_plain_torch_onnx_export_uses_the_hook(dynamo, tmp_path):
    """torch.onnx.export without export_onnx: the functional hook still writes standard ops."""
    layers = [
        normkit.LocalResponseNorm(5, 0.3, 0.75, 1.2),
        normkit.LocalResponseNorm(4, 0.3, 0.75, 1.2),
    ]

    class Functional(nn.Module):
        def forward(self, x):
            return (
                normkit.functional.local_response_norm(x, 3, 0.5, 0.75, 2.0, convention="onnx") * 2
            )

    model = Many(layers + [Functional()])
    x = randn(2, 7, 3, 3, dtype=torch.float32, seed=6)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=dynamo)
    proto = onnx.load(str(path))
    for got, want in zip(run_ort(proto, x), model(x)):
        assert np.max(np.abs(got - want.numpy())) <= 4 * ATOL[torch.float32]
    # the TorchScript exporter gets LRN nodes from the global symbolic; a direct dynamo
    # export cannot be handed the translation table, so it decomposes
    assert op_types(proto).count("LRN") == (0 if dynamo else 2)


def test_export_does_not_use_the_eager_kernels(monkeypatch):
    """Export must not depend on how the layer computes in eager mode."""
    from normkit import dispatch

    def boom(*args):
        raise AssertionError("an eager LRN kernel ran during export")

    monkeypatch.setitem(dispatch.table["lrn_fwd"], "torch", dispatch.Entry(boom, lambda x: None))
    for name in [n for n in dispatch.table["lrn_fwd"] if n != "torch"]:
        monkeypatch.delitem(dispatch.table["lrn_fwd"], name)
    layer = normkit.LocalResponseNorm(5, 0.3, 0.75, 1.2)
    x = randn(2, 7, 3, 3, dtype=torch.float32, seed=7)
    for dynamo in (True, False):
        proto = export_onnx(layer, (x,), dynamo=dynamo)
        (y,) = run_ort(proto, x)
        assert_matches_reference(y, lrn_forward(x.double().numpy(), layer.spec), torch.float32)


@pytest.mark.parametrize("opset", [18, 23])
def test_lrn_node_at_other_opsets(opset):
    layer = normkit.LocalResponseNorm.from_caffe(5, 1e-4, 0.75)
    x = randn(1, 8, 4, 4, dtype=torch.float32, seed=8)
    proto = export_onnx(layer, (x,), opset=opset)
    assert proto.opset_import[0].version == opset or any(
        o.version == opset for o in proto.opset_import if o.domain in ("", "ai.onnx")
    )
    assert op_types(proto) == ["LRN"]
    (y,) = run_ort(proto, x)
    assert_matches_reference(y, lrn_forward(x.double().numpy(), layer.spec), torch.float32)


def test_decomposition_matches_reference_in_float64():
    for spec in (
        canonicalize(4, 0.3, 0.75, 1.2, convention="torch"),
        canonicalize(6, 0.3, 0.75, 1.2, convention="onnx"),
        canonicalize(3, 0.3, 0.75, 1.2, region="within", convention="caffe"),
        canonicalize(4, 0.3, 0.75, 1.2, region="within", convention="cuda-convnet"),
    ):
        x = randn(2, 7, 5, 4, seed=12)
        assert_matches_reference(
            lrn_decomposition(x, spec), lrn_forward(x.numpy(), spec), torch.float64
        )


# --- bad input -------------------------------------------------------------------------------


def test_export_onnx_rejects_bad_arguments():
    layer = normkit.LocalResponseNorm(3)
    x = randn(1, 4, 2, 2, dtype=torch.float32)
    with pytest.raises(TypeError, match="nn.Module"):
        export_onnx(lambda t: t, (x,))
    with pytest.raises(TypeError, match="tuple"):
        export_onnx(layer, [x])
    with pytest.raises(ValueError, match="'node' or 'decompose'"):
        export_onnx(layer, (x,), lrn="fast")
    with pytest.raises(TypeError, match="opset"):
        export_onnx(layer, (x,), opset="18")
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_exporter(int)


def test_export_restores_the_model():
    layer = normkit.LocalResponseNorm(3)
    bn = nn.BatchNorm2d(4)
    model = nn.Sequential(bn, layer).train()
    export_onnx(model, (randn(2, 4, 3, 3, dtype=torch.float32),))
    assert model.training and bn.training
    assert "forward" not in layer.__dict__


# --- the other layer families, through the registry ----------------------------------------
# normkit's BatchNorm/LayerNorm/... are built in parallel; their torch.nn counterparts with an
# opaque eager forward stand in for them (same attribute names, as normkit copies torch).


def _opaque(base):
    class Opaque(base):
        """torch's module whose eager forward goes through NumPy: no exporter can trace it."""

        def forward(self, x):
            with torch.no_grad():
                y = base.forward(self, torch.from_numpy(x.detach().numpy().copy()))
            return torch.from_numpy(y.numpy().copy())

    Opaque.__name__ = f"Opaque{base.__name__}"
    return Opaque


STANDINS = {
    "BatchNorm1d": (_opaque(nn.BatchNorm1d), nk_export.batch_norm_forward),
    "BatchNorm2d": (_opaque(nn.BatchNorm2d), nk_export.batch_norm_forward),
    "BatchNorm3d": (_opaque(nn.BatchNorm3d), nk_export.batch_norm_forward),
    "LayerNorm": (_opaque(nn.LayerNorm), nk_export.layer_norm_forward),
    "GroupNorm": (_opaque(nn.GroupNorm), nk_export.group_norm_forward),
    "InstanceNorm1d": (_opaque(nn.InstanceNorm1d), nk_export.instance_norm_forward),
    "InstanceNorm2d": (_opaque(nn.InstanceNorm2d), nk_export.instance_norm_forward),
    "InstanceNorm3d": (_opaque(nn.InstanceNorm3d), nk_export.instance_norm_forward),
    "RMSNorm": (_opaque(nn.RMSNorm), nk_export.rms_norm_forward),
}


@pytest.fixture
def standins(monkeypatch):
    for cls, fn in STANDINS.values():
        monkeypatch.setitem(nk_export.EXPORTERS, cls, fn)
    return {name: cls for name, (cls, _) in STANDINS.items()}


def _randomize(module, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
        if getattr(module, "running_mean", None) is not None:
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
    return module.eval()


def _zoo_builders():
    """(family name, build(cls) -> (module, input)) covering every family and its options."""
    f32 = dict(dtype=torch.float32)
    return [
        ("BatchNorm1d", lambda c: (c(6), randn(4, 6, **f32, seed=1))),
        ("BatchNorm1d", lambda c: (c(6, affine=False), randn(4, 6, 5, **f32, seed=2))),
        ("BatchNorm2d", lambda c: (c(6), randn(2, 6, 4, 3, **f32, seed=3))),
        (
            "BatchNorm3d",
            lambda c: (c(6, track_running_stats=False), randn(2, 6, 2, 3, 2, **f32, seed=4)),
        ),
        ("LayerNorm", lambda c: (c([4, 3]), randn(2, 6, 4, 3, **f32, seed=5, mean=1e3))),
        (
            "LayerNorm",
            lambda c: (c(3, elementwise_affine=False, eps=1e-3), randn(2, 6, 3, **f32, seed=6)),
        ),
        ("GroupNorm", lambda c: (c(3, 6), randn(2, 6, 4, 3, **f32, seed=7))),
        ("GroupNorm", lambda c: (c(1, 6, affine=False), randn(2, 6, 5, **f32, seed=8))),
        ("InstanceNorm1d", lambda c: (c(6, affine=True), randn(2, 6, 7, **f32, seed=9))),
        ("InstanceNorm2d", lambda c: (c(6), randn(2, 6, 4, 3, **f32, seed=10))),
        (
            "InstanceNorm2d",
            lambda c: (
                c(6, track_running_stats=True, affine=True),
                randn(2, 6, 4, 3, **f32, seed=11),
            ),
        ),
        ("InstanceNorm3d", lambda c: (c(6, affine=True), randn(2, 6, 2, 3, 2, **f32, seed=12))),
        ("RMSNorm", lambda c: (c([4, 3]), randn(2, 6, 4, 3, **f32, seed=13))),
        (
            "RMSNorm",
            lambda c: (c(3, eps=1e-5, elementwise_affine=False), randn(2, 6, 3, **f32, seed=14)),
        ),
    ]


def _zoo(s):
    """(module, input) pairs built from the class table ``s`` (family name -> class)."""
    return [build(s[name]) for name, build in _zoo_builders()]


class Zoo(nn.Module):
    def __init__(self, modules):
        super().__init__()
        self.mods = nn.ModuleList(modules)

    def forward(self, *xs):
        return tuple(m(x) for m, x in zip(self.mods, xs))


@pytest.mark.parametrize(
    "dynamo,opset",
    [(True, None), (True, 21), (True, 23), (False, 17)],
    ids=["dynamo-default", "dynamo-21", "dynamo-23", "torchscript-17"],
)
def test_every_norm_family_exports_through_the_registry(standins, dynamo, opset):
    pairs = [(_randomize(m, i), x) for i, (m, x) in enumerate(_zoo(standins))]
    model = Zoo([m for m, _ in pairs])
    inputs = tuple(x for _, x in pairs)
    proto = export_onnx(model, inputs, dynamo=dynamo, opset=opset)
    types = set(op_types(proto))
    for (module, x), got in zip(pairs, run_ort(proto, *inputs)):
        # torch's own module is the oracle: float64 for the truth, float32 for the bound
        base = type(module).__mro__[1]
        want32 = base.forward(module, x).detach()
        want64 = base.forward(copy.deepcopy(module).double(), x.double()).detach()
        assert_matches_reference(
            got, want64, torch.float32, torch_same_dtype=want32, what=repr(module)
        )
    assert {"BatchNormalization", "InstanceNormalization"} <= types
    assert ("LayerNormalization" in types) == (opset is None or opset >= 17)
    assert ("GroupNormalization" in types) == (dynamo and opset is not None and opset >= 21)
    assert ("RMSNormalization" in types) == (dynamo and opset == 23)


def test_registry_wires_normkit_classes_that_exist():
    from normkit.families import export_rules

    assert nk_export.export_forward_for(normkit.LocalResponseNorm(3)) is nk_export.lrn_forward
    rules = export_rules()
    assert normkit.LocalResponseNorm in rules
    for cls, rule in rules.items():  # every class the family registry names is wired
        assert nk_export.export_forward_for(object.__new__(cls)) is nk_export.RULES[rule]
        assert nk_export.EXPORTERS[cls] is nk_export.RULES[rule], cls.__name__
    assert nk_export.export_forward_for(nn.ReLU()) is None


def test_scalers_to_module_export():
    """Every normkit.preprocessing scaler's to_module() exports and runs in onnxruntime."""
    from normkit import preprocessing as prep

    rng = np.random.default_rng(0)
    data = rng.uniform(0.5, 5.0, size=(64, 4))
    checked = 0
    for name in dir(prep):
        cls = getattr(prep, name)
        if name.startswith("_") or not (
            isinstance(cls, type) and hasattr(cls, "to_module") and hasattr(cls, "fit")
        ):
            continue
        module = cls().fit(data).to_module()
        x = torch.as_tensor(data[:8], dtype=torch.float32)
        proto = export_onnx(module, (x,))
        (got,) = run_ort(proto, x)
        want = module(x).detach().numpy()
        assert np.max(np.abs(got - want)) <= 1e-5 * max(1.0, np.abs(want).max()), name
        checked += 1
    assert checked > 0, "normkit.preprocessing has no scaler with fit() and to_module()"


def test_real_normkit_norm_classes_export():
    """normkit's own BatchNorm/LayerNorm/GroupNorm/InstanceNorm/RMSNorm, where this build has them.

    They copy torch's signatures, so the stand-in zoo is rebuilt with the real classes; the
    oracle is each module's own eager forward (float64 for the truth, float32 for the bound).
    """
    names = [n for n in STANDINS if isinstance(getattr(normkit, n, None), type)]
    if not names:
        pytest.skip("this build of normkit has no norm modules besides LocalResponseNorm yet")
    classes = {n: getattr(normkit, n) for n in names}
    pairs = []
    for i, (name, build) in enumerate(_zoo_builders()):
        if name not in classes:
            continue
        module, x = build(classes[name])
        pairs.append((_randomize(module, i), x))
    model = Zoo([m for m, _ in pairs])
    inputs = tuple(x for _, x in pairs)
    for dynamo in (True, False):
        proto = export_onnx(model, inputs, dynamo=dynamo)
        for (module, x), got in zip(pairs, run_ort(proto, *inputs)):
            # the policy's yardstick is torch in the same dtype: torch.nn's twin of the module
            # with the same state (normkit's own float32 result is more accurate than torch's
            # at mean 1e3, and onnxruntime's kernels are no better than torch's there)
            want32 = _torch_twin(module, getattr(nn, type(module).__name__))(x).detach()
            want64 = copy.deepcopy(module).double()(x.double()).detach()
            assert_matches_reference(
                got,
                want64,
                torch.float32,
                torch_same_dtype=want32,
                what=f"{module} (dynamo={dynamo})",
            )


def _torch_twin(module, torch_cls):
    """A copy of ``module`` that runs torch.nn's forward (normkit keeps torch's attributes)."""
    twin = copy.deepcopy(module)
    twin.__class__ = torch_cls  # same attributes and state: normkit copies torch's layout
    return twin


def test_direct_dynamo_export_warns_that_lrn_is_decomposed(tmp_path):
    layer = normkit.LocalResponseNorm(5)
    x = randn(1, 6, 3, 3, dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.onnx.export(layer, (x,), str(tmp_path / "m.onnx"), dynamo=True)
    assert any("export_onnx" in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_onnx(layer, (x,))
    assert not any("export_onnx" in str(w.message) for w in caught)
