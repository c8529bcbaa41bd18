"""ONNX LRN import: models built here with onnx.helper, run in onnxruntime as the peer."""

import numpy as np
import pytest
import torch

import normkit
from normkit.interop import lrn_from_onnx, lrn_layers_from_onnx
from normkit.reference import lrn_forward

from hostile import randn
from tolerance import assert_matches_reference

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402


def lrn_model(nodes, opset=13):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, None) for n in nodes],
    )
    # IR version 7 (opset 13's): an onnx newer than the installed onnxruntime would write
    # one it cannot load (onnx 1.23's IR 14 against onnxruntime 1.30's 13)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


def run_ort(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


@pytest.mark.parametrize(
    "size,attrs",
    [
        (1, {}),
        (3, {"alpha": 0.5, "beta": 0.6, "bias": 2.0}),
        (5, {}),
        (5, {"alpha": 1e-4, "beta": 0.75}),
        (7, {"bias": 0.5}),
        (11, {"alpha": 3.0}),
    ],
)
def test_odd_sizes_match_onnxruntime(size, attrs):
    node = helper.make_node("LRN", ["x"], ["y"], name="lrn", size=size, **attrs)
    lrn = lrn_from_onnx(node)
    x = randn(2, 9, 4, 3, dtype=torch.float32, seed=size)  # N != C
    (expected,) = run_ort(lrn_model([node]), x.numpy())
    got = lrn(x.double())
    assert_matches_reference(expected, got, torch.float32)  # onnxruntime is float32 only


def test_even_size_keeps_onnx_orientation_hand_calculation():
    # ONNX size 2: window [c, c+1], alpha/size = 1. Hand calculation on x = (1, 2, 3):
    #   c0: 1 / (1 + 1 + 4) = 1/6, c1: 2 / (1 + 4 + 9) = 1/7, c2: 3 / (1 + 9) = 0.3
    node = helper.make_node("LRN", ["x"], ["y"], size=2, alpha=2.0, beta=1.0, bias=1.0)
    lrn = lrn_from_onnx(node)
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).reshape(1, 3, 1, 1)
    assert lrn(x).flatten().tolist() == pytest.approx([1 / 6, 1 / 7, 0.3], rel=1e-12)
    # the trap: torch.nn.LocalResponseNorm(2) looks back instead: 1/2, 1/3, 3/14
    naive = torch.nn.LocalResponseNorm(2, 2.0, 1.0, 1.0)(x).flatten().tolist()
    assert naive == pytest.approx([1 / 2, 1 / 3, 3 / 14], rel=1e-12)


@pytest.mark.parametrize("size", [2, 4, 6])
def test_even_sizes_are_the_mirror_of_torch(size):
    lrn = lrn_from_onnx(helper.make_node("LRN", ["x"], ["y"], size=size, alpha=0.7))
    x = randn(2, 9, 3, 3, seed=size)
    torch_mirror = torch.nn.functional.local_response_norm(x.flip(1), size, 0.7).flip(1)
    assert torch.allclose(lrn(x), torch_mirror, rtol=1e-12, atol=1e-14)
    assert (lrn.spec.back, lrn.spec.ahead) == ((size - 1) // 2, size // 2)


def test_defaults_and_float32_attributes():
    lrn = lrn_from_onnx(helper.make_node("LRN", ["x"], ["y"], size=5))
    assert (lrn.alpha, lrn.beta, lrn.k) == (1e-4, 0.75, 1.0)  # ONNX's defaults
    # stored as float32 (9.99999974737875e-05) but read back as the decimal written
    node = helper.make_node("LRN", ["x"], ["y"], size=5, alpha=1e-4)
    assert lrn_from_onnx(node).alpha == 1e-4
    assert lrn.convention == "onnx"


def test_model_walk_names_subgraphs_and_paths(tmp_path):
    then_branch = helper.make_graph(
        [helper.make_node("LRN", ["x"], ["t"], name="inner", size=3)],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("LRN", ["x"], ["y1"], name="norm1", size=5, alpha=1e-4, beta=0.75),
        helper.make_node("Relu", ["y1"], ["r"]),
        helper.make_node("LRN", ["r"], ["y2"], size=4),  # unnamed: keyed by its output
        helper.make_node("LRN", ["r"], ["y3"], name="norm1", size=3),  # a repeated name
        helper.make_node(
            "Constant", [], ["cond"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True])
        ),
        helper.make_node("If", ["cond"], ["z"], then_branch=then_branch, else_branch=else_branch),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    layers = lrn_layers_from_onnx(model)
    assert list(layers) == ["norm1", "y2", "norm1#2", "inner"]
    assert layers["y2"].spec.ahead == 2 and layers["inner"].spec.width == 3
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    from_path = lrn_layers_from_onnx(str(path))
    assert {k: v.spec for k, v in from_path.items()} == {k: v.spec for k, v in layers.items()}
    assert list(lrn_layers_from_onnx(path)) == list(layers)  # os.PathLike


def test_round_trip_through_export():
    """normkit -> ONNX (export_onnx) -> normkit gives back the same layer."""
    from normkit.interop import export_onnx

    original = normkit.LocalResponseNorm.from_caffe(5, 1e-4, 0.75, 2.0)
    proto = export_onnx(original, (randn(1, 6, 3, 3, dtype=torch.float32),))
    (back,) = lrn_layers_from_onnx(proto).values()
    assert back.spec.width == 5 and back.spec.k == 2.0
    assert back.spec.alpha == pytest.approx(original.spec.alpha, rel=1e-7)
    x = randn(2, 7, 3, 3, seed=4)
    assert_matches_reference(back(x), lrn_forward(x.numpy(), original.spec), torch.float32)


def test_bad_nodes_and_models():
    with pytest.raises(TypeError, match="NodeProto"):
        lrn_from_onnx({"op_type": "LRN"})
    with pytest.raises(ValueError, match="not an ONNX LRN"):
        lrn_from_onnx(helper.make_node("Relu", ["x"], ["y"], name="r"))
    with pytest.raises(ValueError, match="not an ONNX LRN"):
        lrn_from_onnx(helper.make_node("LRN", ["x"], ["y"], domain="com.example", size=3))
    with pytest.raises(ValueError, match="'size' is missing"):
        lrn_from_onnx(helper.make_node("LRN", ["x"], ["y"], alpha=0.1))
    with pytest.raises(ValueError, match="size must be >= 1"):
        lrn_from_onnx(helper.make_node("LRN", ["x"], ["y"], size=0))
    with pytest.raises(ValueError, match="must be a FLOAT"):
        lrn_from_onnx(helper.make_node("LRN", ["x"], ["y"], size=3, alpha="big"))
    with pytest.raises(ValueError, match="must be an INT"):
        lrn_from_onnx(helper.make_node("LRN", ["x"], ["y"], size=3.0))
    with pytest.raises(ValueError, match="unknown attribute"):
        lrn_from_onnx(helper.make_node("LRN", ["x"], ["y"], size=3, radius=1))
    ref = helper.make_node("LRN", ["x"], ["y"], size=3)
    ref.attribute.append(helper.make_attribute_ref("alpha", onnx.AttributeProto.FLOAT))
    ref.attribute[-1].ref_attr_name = "a"
    with pytest.raises(ValueError, match="enclosing function"):
        lrn_from_onnx(ref)
    with pytest.raises(TypeError, match="ModelProto"):
        lrn_layers_from_onnx(42)
    with pytest.raises(FileNotFoundError):
        lrn_layers_from_onnx("missing.onnx")


def test_garbage_file_is_a_value_error(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\xff\xff not a protobuf \x00\x01")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        lrn_layers_from_onnx(str(path))


def test_onnxruntime_rejects_even_sizes_so_normkit_is_the_only_runner():
    """Documents why export decomposes even sizes: onnxruntime refuses the node."""
    node = helper.make_node("LRN", ["x"], ["y"], size=4)
    with pytest.raises(Exception, match="size_ % 2 == 1"):
        run_ort(lrn_model([node]), np.ones((1, 5, 2, 2), np.float32))
