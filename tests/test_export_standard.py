"""The standard exporters on models with normkit layers (issue 10 item 6, issue 13 item 6).

A user calls ``torch.onnx.export(model, (x,), path)`` (the dynamo exporter), the legacy
``torch.onnx.export(..., dynamo=False)`` or ``torch.export.export(model, (x,))``; none of
them knows normkit. Every public layer class (iterated from ``normkit.__all__``, so a new
class without a case fails here) and every ``create_norm`` entry is exported, run in
onnxruntime and compared, under the tolerance policy, with its ``torch.nn`` counterpart
(float64 as the reference, float32 as torch's own error) or, for LRN conventions torch
lacks, the float64 reference.

The ONNX exporters decide per op whether a training-mode layer becomes its inference
form (a ``torch.nn.BatchNorm2d`` in training mode exports as its eval-mode
BatchNormalization), so ONNX outputs are compared with torch's own layer, same state
and mode, exported the same way and run in onnxruntime (and, for eval-mode layers, with
the float64 reference); ``torch.export`` keeps the module's mode, so there training-mode
layers are compared in training mode, running statistics included.
"""

import copy
import logging
import warnings

import pytest
import torch
from torch import nn

import normkit
from normkit.conventions import CONVENTIONS, canonicalize
from normkit.interop.export import export_onnx
from normkit.reference import lrn_forward

from hostile import randn
from tolerance import assert_matches_reference

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(autouse=True)
def _quiet_exporters():
    logging.disable(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    logging.disable(logging.NOTSET)


# --- torch counterparts, built from a normkit module's attributes and state ---------------


def _with_state(torch_module, nk_module):
    torch_module.load_state_dict(nk_module.state_dict())
    return torch_module.train(nk_module.training)


def _bn(cls):
    return lambda m: _with_state(
        cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats), m
    )


def _instance(cls):
    return lambda m: _with_state(
        cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats), m
    )


class _ChannelsLast(nn.Module):
    """torch.nn.RMSNorm over dim 1: what normkit.ChannelRMSNorm computes."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        last = x.dim() - 1  # the TorchScript exporter mis-writes movedim(1, -1)
        return self.inner(x.movedim(1, last)).movedim(last, 1)


def _channel_rms(m):
    inner = nn.RMSNorm(m.num_channels, m.eps, m.affine)
    if m.affine:
        inner.weight.data.copy_(m.weight.data)
    return _ChannelsLast(inner)


COUNTERPARTS = {
    "BatchNorm1d": _bn(nn.BatchNorm1d),
    "BatchNorm2d": _bn(nn.BatchNorm2d),
    "BatchNorm3d": _bn(nn.BatchNorm3d),
    # single process: torch's SyncBatchNorm is BatchNorm (and needs a process group in train)
    "SyncBatchNorm": _bn(nn.BatchNorm2d),
    "LayerNorm": lambda m: _with_state(
        nn.LayerNorm(m.normalized_shape, m.eps, m.elementwise_affine, bias=m.bias is not None), m
    ),
    "GroupNorm": lambda m: _with_state(
        nn.GroupNorm(m.num_groups, m.num_channels, m.eps, m.affine), m
    ),
    "InstanceNorm1d": _instance(nn.InstanceNorm1d),
    "InstanceNorm2d": _instance(nn.InstanceNorm2d),
    "InstanceNorm3d": _instance(nn.InstanceNorm3d),
    "RMSNorm": lambda m: _with_state(
        nn.RMSNorm(m.normalized_shape, m.eps, m.elementwise_affine), m
    ),
    "ChannelRMSNorm": _channel_rms,
    "Identity": lambda m: nn.Identity(),
}


def expected(module, x, training):
    """(float64 reference, torch's float32 result or None) for ``module`` on ``x``."""
    if isinstance(module, normkit.LocalResponseNorm):
        return lrn_forward(x.double().numpy(), module.spec, module.channel_dim), None
    peer = COUNTERPARTS[type(module).__name__](module).train(training)
    ref = copy.deepcopy(peer).double()(x.double())
    same = copy.deepcopy(peer)(x)
    return ref.detach(), same.detach()


# --- one case list covering every public layer class ------------------------------------


def _randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if t.dtype.is_floating_point:
                r = torch.rand(t.shape, generator=g, dtype=t.dtype)
                t.copy_(0.5 + r if name.endswith("var") or name == "weight" else r - 0.5)
    return module


def _lrn_cases():
    cases = []
    for convention in sorted(CONVENTIONS):
        for region in ("across", "within"):
            for size in (3, 4):  # odd (an ONNX LRN node where expressible) and even
                try:
                    canonicalize(size, 0.3, 0.75, 1.2, region=region, convention=convention)
                except ValueError:
                    continue
                cases.append(
                    (
                        f"LRN-{convention}-{region}-{size}",
                        normkit.LocalResponseNorm(
                            size, 0.3, 0.75, 1.2, region=region, convention=convention
                        ),
                        (2, 7, 5, 4),
                    )
                )
    cases.append(
        (
            "LRN-nhwc",
            normkit.LocalResponseNorm(5, 0.3, 0.75, 1.2, convention="tensorflow", channel_dim=-1),
            (2, 4, 5, 6),
        )
    )
    cases.append(("LRN-3d-input", normkit.LocalResponseNorm(3), (2, 6, 9)))
    return cases


def class_cases():
    """{public class name: [(label, module, input shape), ...]}."""
    cases = {"LocalResponseNorm": _lrn_cases()}
    for name, shape in (
        ("BatchNorm1d", (4, 3, 6)),
        ("BatchNorm2d", (4, 3, 5, 5)),
        ("BatchNorm3d", (4, 3, 2, 3, 3)),
        ("SyncBatchNorm", (4, 3, 5, 5)),
    ):
        cls = getattr(normkit, name)
        cases[name] = [
            (f"{name}-{mode}", cls(3).train(mode == "train"), shape) for mode in ("train", "eval")
        ]
        cases[name].append((f"{name}-untracked", cls(3, track_running_stats=False).eval(), shape))
    for spatial, shape in ((1, (3, 4, 7)), (2, (3, 4, 5, 5)), (3, (2, 4, 3, 3, 3))):
        name = f"InstanceNorm{spatial}d"
        cls = getattr(normkit, name)
        cases[name] = [
            (f"{name}-plain", cls(4), shape),
            (f"{name}-affine", cls(4, affine=True), shape),
            (f"{name}-tracked-train", cls(4, track_running_stats=True).train(), shape),
            (f"{name}-tracked-eval", cls(4, affine=True, track_running_stats=True).eval(), shape),
            (f"{name}-unbatched", cls(4, affine=True), shape[1:]),
        ]
    cases["LayerNorm"] = [
        ("LayerNorm-last", normkit.LayerNorm(6), (3, 4, 6)),
        ("LayerNorm-2dims", normkit.LayerNorm((4, 6), eps=1e-3), (3, 4, 6)),
        ("LayerNorm-noaffine", normkit.LayerNorm(6, elementwise_affine=False), (5, 6)),
    ]
    cases["GroupNorm"] = [
        ("GroupNorm", normkit.GroupNorm(2, 6), (3, 6, 4, 4)),
        ("GroupNorm-1d", normkit.GroupNorm(3, 6, affine=False), (3, 6, 5)),
    ]
    cases["RMSNorm"] = [
        ("RMSNorm", normkit.RMSNorm(6), (3, 4, 6)),
        ("RMSNorm-eps", normkit.RMSNorm((4, 6), eps=1e-4), (3, 4, 6)),
    ]
    cases["ChannelRMSNorm"] = [("ChannelRMSNorm", normkit.ChannelRMSNorm(4), (2, 4, 5, 5))]
    return cases


def public_layer_classes():
    """Public classes with a torch counterpart: compared here with torch's own export.
    The others (FRN, WSConv2d, the fused and third-party twins) are exported by both
    exporters and torch.export in tests/test_modules.py, against their own eager output."""
    return sorted(
        n
        for n in normkit.__all__
        if isinstance(getattr(normkit, n), type)
        and issubclass(getattr(normkit, n), nn.Module)
        and (n == "LocalResponseNorm" or n in COUNTERPARTS)
    )


def all_cases():
    by_class = class_cases()
    cases = [c for name in public_layer_classes() for c in by_class[name]]
    for name in sorted(normkit.NORMS):
        module = normkit.create_norm(name, 8)
        if type(module).__name__ in COUNTERPARTS or type(module).__name__ == "LocalResponseNorm":
            cases.append((f"create_norm-{name}", module, (2, 8, 6, 6)))
    out = []
    for i, (label, module, shape) in enumerate(cases):
        x = randn(*shape, dtype=torch.float32, seed=100 + i)
        out.append((label, _randomize(module, seed=i), x))
    return out


def test_every_public_layer_class_has_export_cases():
    """Each public class is exported here (against torch's own export) or by the module
    database's export checks (tests/test_modules.py, entries with heavy=True)."""
    from module_db import MODULES

    missing = sorted(set(public_layer_classes()) - set(class_cases()))
    assert not missing, f"public layer classes without a standard-export case: {missing}"
    exported_by_db = {m.cls.__name__ for m in MODULES if m.heavy}
    everything = {
        n
        for n in normkit.__all__
        if isinstance(getattr(normkit, n), type) and issubclass(getattr(normkit, n), nn.Module)
    }
    uncovered = sorted(everything - set(public_layer_classes()) - exported_by_db)
    assert not uncovered, f"public layer classes no export test covers: {uncovered}"


class Many(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, *xs):
        return tuple(layer(x) for layer, x in zip(self.layers, xs))


def run_ort(path_or_proto, inputs):
    data = path_or_proto if isinstance(path_or_proto, bytes) else path_or_proto.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs)}
    return sess.run(None, feeds)


def _no_peer_export(module, dynamo):
    """Layers whose torch counterpart this exporter cannot export: LRN conventions torch
    lacks, and RMSNorm under the TorchScript exporter (no aten::rms_norm symbolic:
    ``torch.onnx.export(torch.nn.RMSNorm(6), ..., dynamo=False)`` raises)."""
    return isinstance(module, normkit.LocalResponseNorm) or (
        not dynamo and type(module).__name__ in ("RMSNorm", "ChannelRMSNorm")
    )


def _peer(module, dynamo):
    if _no_peer_export(module, dynamo):
        return _NoPeer(module)
    return COUNTERPARTS[type(module).__name__](copy.deepcopy(module))


class _NoPeer(nn.Module):
    """Stand-in for a peer the exporter cannot export: returns the input (not compared)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return x


def _export_and_run(modules, xs, path, dynamo):
    if dynamo:
        torch.onnx.export(Many(modules), xs, str(path))  # exactly what users call
    else:
        torch.onnx.export(Many(modules), xs, str(path), dynamo=False)
    proto = onnx.load(str(path))
    domains = {n.domain for n in proto.graph.node}
    assert domains <= {"", "ai.onnx"}, f"non-standard ONNX domains {domains}"
    return run_ort(proto, xs)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo-default", "torchscript"])
def test_plain_torch_onnx_export_of_every_layer_matches_torch_in_onnxruntime(dynamo, tmp_path):
    cases = all_cases()
    xs = tuple(x for _, _, x in cases)
    outputs = _export_and_run(
        [copy.deepcopy(m) for _, m, _ in cases], xs, tmp_path / "normkit.onnx", dynamo
    )
    # torch's own layers, same state and mode, through the same exporter: the exporters
    # choose per op whether a training-mode layer becomes its inference form
    peers = _export_and_run(
        [_peer(m, dynamo) for _, m, _ in cases], xs, tmp_path / "torch.onnx", dynamo
    )
    assert len(outputs) == len(cases)
    for (label, module, x), y, peer_y in zip(cases, outputs, peers):
        if _no_peer_export(module, dynamo):  # no mode dependence: eager reference
            ref, same = expected(module, x, training=False)
            assert_matches_reference(y, ref, torch.float32, torch_same_dtype=same, what=label)
            continue
        assert_matches_reference(y, peer_y, torch.float32, what=f"{label} vs torch in ORT")
        if not module.training:
            ref, same = expected(module, x, training=False)
            assert_matches_reference(y, ref, torch.float32, torch_same_dtype=same, what=label)


def test_torch_export_export_of_every_layer_matches_torch_in_its_mode():
    cases = all_cases()
    modules = [copy.deepcopy(m) for _, m, _ in cases]
    peers = [
        None
        if isinstance(m, normkit.LocalResponseNorm)
        else COUNTERPARTS[type(m).__name__](copy.deepcopy(m))
        for _, m, _ in cases
    ]
    xs = tuple(x for _, _, x in cases)
    program = torch.export.export(Many(modules), xs)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not [t for t in targets if "normkit" in t], targets  # portable: aten ops only
    runnable = program.module()
    outputs = runnable(*xs)
    for (label, module, x), y, _unused in zip(cases, outputs, peers):
        ref, same = expected(module, x, training=module.training)
        assert_matches_reference(y.detach(), ref, torch.float32, torch_same_dtype=same, what=label)
    # training-mode running statistics were updated as torch updates them
    state = runnable.state_dict()
    for i, ((label, module, x), peer) in enumerate(zip(cases, peers)):
        if peer is None or not module.training or getattr(module, "running_mean", None) is None:
            continue
        peer(x)
        for buf in ("running_mean", "running_var"):
            got = state[f"layers.{i}.{buf}"]
            torch.testing.assert_close(got, getattr(peer, buf), msg=f"{label} {buf}")


def test_export_keeps_eager_path_and_compile_untouched():
    # the export branch must not leak into eager or torch.compile: there the custom ops run
    model = normkit.LayerNorm(6)
    x = randn(3, 6, dtype=torch.float32, seed=3)
    seen = []

    def backend(graph_module, example_inputs):
        seen.extend(str(n.target) for n in graph_module.graph.nodes)
        return graph_module.forward

    torch._dynamo.reset()
    torch.compile(model, backend=backend, fullgraph=True)(x)
    # normkit's autograd Function (over its custom ops), not torch's layer_norm
    assert "autograd_function_apply" in seen, seen
    assert not [t for t in seen if "layer_norm" in t], seen


# --- opset rule: RMSNormalization (>= 23), GroupNormalization (>= 21) ----------------------


def _ort_runs_opset(opset):
    """None if onnxruntime here runs ``opset``, else its error message."""
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 (the message is the skip reason)
        return str(e).splitlines()[0]
    return None


class _RmsAndGroup(nn.Module):
    def __init__(self):
        super().__init__()
        self.rms = _randomize(normkit.RMSNorm(6), 1)
        self.chrms = _randomize(normkit.ChannelRMSNorm(6), 2)
        self.gn = _randomize(normkit.GroupNorm(3, 6), 3)

    def forward(self, a, b):
        return self.rms(a), self.chrms(b), self.gn(b)


@pytest.mark.parametrize("opset", [18, 20, 21, 23])
@pytest.mark.parametrize("how", ["export_onnx", "torch.onnx.export"])
def test_opset_rule_for_rms_and_group_norm(opset, how):
    reason = _ort_runs_opset(opset)
    if reason is not None:
        pytest.skip(f"onnxruntime {ort.__version__} cannot load opset {opset}: {reason}")
    model = _RmsAndGroup()
    a = randn(3, 4, 6, dtype=torch.float32, seed=5)
    b = randn(2, 6, 4, 4, dtype=torch.float32, seed=6)
    if how == "export_onnx":
        proto = export_onnx(model, (a, b), opset=opset)
    else:
        proto = torch.onnx.export(model, (a, b), dynamo=True, opset_version=opset).model_proto
    ops = [n.op_type for n in proto.graph.node]
    assert ("RMSNormalization" in ops) == (opset >= 23), (opset, ops)
    assert ("GroupNormalization" in ops) == (opset >= 21), (opset, ops)
    outputs = run_ort(proto, (a, b))
    for module, x, y in zip((model.rms, model.chrms, model.gn), (a, b, b), outputs):
        ref, same = expected(module, x, training=False)
        assert_matches_reference(
            y,
            ref,
            torch.float32,
            torch_same_dtype=same,
            what=f"{type(module).__name__} opset {opset}",
        )


def test_torchscript_exporter_opset_past_20_is_a_clear_error():
    with pytest.raises(ValueError, match=r"TorchScript exporter .* up to 20, got opset=23"):
        export_onnx(
            _RmsAndGroup(),
            (randn(3, 4, 6, dtype=torch.float32), randn(2, 6, 4, 4, dtype=torch.float32)),
            opset=23,
            dynamo=False,
        )


def test_export_onnx_still_writes_lrn_nodes():
    model = nn.Sequential(normkit.LocalResponseNorm.from_caffe(5, 1e-4, 0.75))
    x = randn(1, 8, 4, 4, dtype=torch.float32, seed=9)
    for dynamo in (True, False):
        proto = export_onnx(model, (x,), dynamo=dynamo)
        assert "LRN" in [n.op_type for n in proto.graph.node], dynamo
        y = run_ort(proto, (x,))[0]
        ref = lrn_forward(x.double().numpy(), model[0].spec)
        assert_matches_reference(y, ref, torch.float32, what=f"LRN node dynamo={dynamo}")


def test_functional_does_not_import_interop():
    # issue 12 item 3: functional <-> interop.export was an import cycle
    import ast
    import inspect

    import normkit.functional as functional

    tree = ast.parse(inspect.getsource(functional))
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert imported and not [m for m in imported if "interop" in m], imported


@pytest.mark.parametrize("size", [2**31 + 1, 2**64 + 1])
def test_hostile_lrn_size_exports_as_a_window_of_c(size):
    # a window wider than C sums all C channels; the divisor stays n (alpha / size), so the
    # reference is the same spec with the window cut to C on each side
    import dataclasses

    from normkit._export_path import lrn_decomposition

    spec = canonicalize(size, 0.3, 0.75, 1.2, convention="onnx")
    x = randn(2, 5, 3, 3, dtype=torch.float32, seed=4)
    narrow = dataclasses.replace(spec, back=5, ahead=5)
    y = lrn_decomposition(x, spec)
    assert_matches_reference(y, lrn_forward(x.double().numpy(), narrow), torch.float32)
