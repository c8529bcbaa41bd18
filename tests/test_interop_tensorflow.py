"""TensorFlow LRN import: parameters; GraphDef text/binary without TF; real TF when installed."""

import importlib.util
import os

import numpy as np
import pytest
import torch

from normkit.interop import lrn_from_tensorflow, lrn_layers_from_tensorflow
from normkit.interop.tf_import import read_tf_lrn

from hostile import randn

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "tf_lrn_graph.pbtxt")
HAVE_TF = importlib.util.find_spec("tensorflow") is not None


def tf_lrn_numpy(x, depth_radius, bias, alpha, beta):
    """TensorFlow's documented formula, NHWC, written out in float64."""
    c = x.shape[-1]
    sq = np.zeros_like(x)
    for d in range(c):
        lo, hi = max(0, d - depth_radius), min(c, d + depth_radius + 1)
        sq[..., d] = np.sum(x[..., lo:hi] ** 2, axis=-1)
    return x / (bias + alpha * sq) ** beta


def test_parameters_follow_tensorflow_formula():
    lrn = lrn_from_tensorflow(depth_radius=2, bias=1.5, alpha=0.01, beta=0.6)
    x = randn(2, 3, 4, 9, seed=1)  # NHWC
    expected = tf_lrn_numpy(x.numpy(), 2, 1.5, 0.01, 0.6)
    np.testing.assert_allclose(lrn(x).numpy(), expected, rtol=1e-12, atol=1e-14)


def test_seed_000_tensorflow_example():
    # source document 1: tf.nn.local_response_normalization(ones([2, 2, 3, 3]), 1, 0, 1, 1);
    # hand calculation: edge channels see 2 ones -> 1/2, the middle one sees 3 -> 1/3
    y = lrn_from_tensorflow(1, 0.0, 1.0, 1.0)(torch.ones(2, 2, 3, 3, dtype=torch.float64))
    assert y[0, 0, 0].tolist() == pytest.approx([0.5, 1 / 3, 0.5], rel=1e-12)


def test_defaults_and_conversions():
    lrn = lrn_from_tensorflow()  # TF's defaults: depth_radius 5, bias 1, alpha 1, beta 0.5
    assert lrn.spec.width == 11 and lrn.spec.alpha == 1.0 and lrn.spec.beta == 0.5
    alexnet = lrn_from_tensorflow(2, 1.0, 2e-05, 0.75)
    assert alexnet.to_onnx() == pytest.approx({"size": 5, "alpha": 1e-4, "beta": 0.75, "bias": 1.0})
    nchw = lrn_from_tensorflow(2, 1.0, 2e-05, 0.75, channel_dim=1)
    x = randn(2, 7, 3, 3, seed=2)
    assert torch.allclose(nchw(x), alexnet(x.movedim(1, -1)).movedim(-1, 1), rtol=1e-12)


def test_bad_parameters():
    with pytest.raises(ValueError, match="depth_radius"):
        lrn_from_tensorflow(depth_radius=-1)
    with pytest.raises(TypeError, match="depth_radius"):
        lrn_from_tensorflow(depth_radius=2.5)


def test_graphdef_text_fixture():
    layers = lrn_layers_from_tensorflow(FIXTURE)
    assert list(layers) == ["norm1", "lrn_defaults", "block/inner_lrn"]
    norm1 = layers["norm1"]
    assert norm1.to_tensorflow() == {"depth_radius": 2, "bias": 1.0, "alpha": 2e-05, "beta": 0.75}
    assert norm1.channel_dim == -1
    defaults = layers["lrn_defaults"].to_tensorflow()
    assert defaults == {"depth_radius": 5, "bias": 1.0, "alpha": 1.0, "beta": 0.5}
    inner = read_tf_lrn(FIXTURE)[2]
    assert (inner.depth_radius, inner.alpha, inner.beta) == (1, 0.5, 0.5)
    # the same text passed directly
    assert list(lrn_layers_from_tensorflow(open(FIXTURE).read())) == list(layers)


def _graphdef_classes():
    """GraphDef/NodeDef/AttrValue built with the protobuf library from their field numbers."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(
        name="nk_test_graph.proto", package="nktest", syntax="proto3"
    )

    def message(name, fields, nested=()):
        msg = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
        for n in nested:
            msg.nested_type.add().CopyFrom(n)
        return msg

    opt, rep = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message(
        "AttrValue",
        [
            ("s", 2, F.TYPE_BYTES, opt, None),
            ("i", 3, F.TYPE_INT64, opt, None),
            ("f", 4, F.TYPE_FLOAT, opt, None),
            ("b", 5, F.TYPE_BOOL, opt, None),
            ("type", 6, F.TYPE_INT32, opt, None),
        ],
    )
    entry = descriptor_pb2.DescriptorProto(name="AttrEntry")
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(
        name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=".nktest.AttrValue"
    )
    entry.options.map_entry = True
    message(
        "NodeDef",
        [
            ("name", 1, F.TYPE_STRING, opt, None),
            ("op", 2, F.TYPE_STRING, opt, None),
            ("input", 3, F.TYPE_STRING, rep, None),
            ("attr", 5, F.TYPE_MESSAGE, rep, ".nktest.NodeDef.AttrEntry"),
        ],
        nested=[entry],
    )
    message("OpDef", [("name", 1, F.TYPE_STRING, opt, None)])
    message(
        "FunctionDef",
        [
            ("signature", 1, F.TYPE_MESSAGE, opt, ".nktest.OpDef"),
            ("node_def", 3, F.TYPE_MESSAGE, rep, ".nktest.NodeDef"),
        ],
    )
    message("FunctionDefLibrary", [("function", 1, F.TYPE_MESSAGE, rep, ".nktest.FunctionDef")])
    message(
        "GraphDef",
        [
            ("node", 1, F.TYPE_MESSAGE, rep, ".nktest.NodeDef"),
            ("library", 2, F.TYPE_MESSAGE, opt, ".nktest.FunctionDefLibrary"),
        ],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("nktest.GraphDef"))


def test_binary_graphdef_without_tensorflow(tmp_path):
    GraphDef = _graphdef_classes()
    g = GraphDef()
    ph = g.node.add(name="input", op="Placeholder")
    ph.attr["dtype"].type = 1
    lrn = g.node.add(name="norm1", op="LRN", input=["input"])
    lrn.attr["depth_radius"].i = 2
    lrn.attr["alpha"].f = 2e-05
    lrn.attr["beta"].f = 0.75
    lrn.attr["bias"].f = 2.0
    lrn.attr["T"].type = 1
    fn = g.library.function.add()
    fn.signature.name = "block"
    inner = fn.node_def.add(name="inner", op="LRN")
    inner.attr["depth_radius"].i = 3
    data = g.SerializeToString()
    path = tmp_path / "graph.pb"
    path.write_bytes(data)
    for source in (str(path), path, data):
        layers = lrn_layers_from_tensorflow(source)
        assert list(layers) == ["norm1", "block/inner"]
        assert layers["norm1"].to_tensorflow() == {
            "depth_radius": 2,
            "bias": 2.0,
            "alpha": 2e-05,
            "beta": 0.75,
        }
        assert layers["block/inner"].spec.width == 7


def test_bad_graphs():
    with pytest.raises(ValueError, match="unknown attr"):
        lrn_layers_from_tensorflow(
            'node { name: "a" op: "LRN" attr { key: "radius" value { i: 2 } } }'
        )
    with pytest.raises(ValueError, match="depth_radius must be an int"):
        lrn_layers_from_tensorflow(
            'node { name: "a" op: "LRN" attr { key: "depth_radius" value { f: 2.0 } } }'
        )
    with pytest.raises(ValueError, match="line 1"):
        lrn_layers_from_tensorflow('node { name: "a" op: "LRN" ')
    with pytest.raises(TypeError):
        lrn_layers_from_tensorflow(3.5)
    with pytest.raises(FileNotFoundError):
        lrn_layers_from_tensorflow("missing_graph.pb")
    with pytest.raises(ValueError):
        lrn_layers_from_tensorflow(b"\x0a\xff\xff\xff")  # truncated binary


@pytest.mark.skipif(not HAVE_TF, reason="tensorflow is not installed (optional peer)")
def test_real_tensorflow_graph_and_values(tmp_path):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([2, 4, 4, 9], tf.float32)])
    def net(x):
        y = tf.nn.local_response_normalization(x, depth_radius=2, bias=1.5, alpha=0.01, beta=0.6)
        return tf.nn.local_response_normalization(y, depth_radius=1)

    layers = list(lrn_layers_from_tensorflow(net).values())
    assert len(layers) == 2
    assert layers[0].to_tensorflow() == pytest.approx(
        {"depth_radius": 2, "bias": 1.5, "alpha": 0.01, "beta": 0.6}
    )
    x = randn(2, 4, 4, 9, dtype=torch.float32, seed=3)
    expected = net(tf.constant(x.numpy())).numpy()
    got = layers[1](layers[0](x.double())).numpy()
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)
    graph_def = net.get_concrete_function().graph.as_graph_def(add_shapes=True)
    assert len(lrn_layers_from_tensorflow(graph_def)) == 2
    assert len(lrn_layers_from_tensorflow(graph_def.SerializeToString())) == 2
    # files written by TensorFlow itself, read back by normkit's own readers
    for as_text, name in ((True, "g.pbtxt"), (False, "g.pb")):
        tf.io.write_graph(graph_def, str(tmp_path), name, as_text=as_text)
        from_file = list(lrn_layers_from_tensorflow(str(tmp_path / name)).values())
        assert [m.spec for m in from_file] == [m.spec for m in layers]
