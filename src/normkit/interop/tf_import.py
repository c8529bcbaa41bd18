"""TensorFlow's LRN: ``tf.nn.local_response_normalization`` parameters and graph ``LRN`` ops.

TensorFlow computes, on NHWC tensors (channels last),

    sqr_sum[a, b, c, d] = sum(input[a, b, c, d - depth_radius : d + depth_radius + 1] ** 2)
    output = input / (bias + alpha * sqr_sum) ** beta

with a raw ``alpha`` (not divided by the window) and a *radius*: the window is
``2 * depth_radius + 1`` channels. Defaults: depth_radius 5 (11 channels), bias 1,
alpha 1, beta 0.5. Two classic porting mistakes follow: writing ``depth_radius`` where
a size is meant (tf2onnx once did), and copying ``alpha`` unscaled into a framework
that divides it by the size.

Graphs are read from a ``tf.Graph``, a ``GraphDef``, a ``tf.function`` (with an
input signature) or a ``ConcreteFunction`` when TensorFlow is installed, and from a
GraphDef file (binary ``.pb`` or text ``.pbtxt``) without it.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Dict, Iterator, List, Tuple

import numpy as np

from ..modules.lrn import LocalResponseNorm
from . import prototext
from .prototext import Message

__all__ = [
    "TfLRN",
    "lrn_from_tensorflow",
    "lrn_layers_from_tensorflow",
    "read_tf_lrn",
    "TF_DEFAULTS",
]

# attr defaults of TensorFlow's LRN op (tensorflow/core/ops/nn_ops.cc)
TF_DEFAULTS = {"depth_radius": 5, "bias": 1.0, "alpha": 1.0, "beta": 0.5}


@dataclass(frozen=True)
class TfLRN:
    """One TensorFlow ``LRN`` op's attributes (defaults filled in)."""

    name: str
    depth_radius: int
    bias: float
    alpha: float
    beta: float
    explicit: frozenset

    def module(self, channel_dim: int = -1) -> LocalResponseNorm:
        return LocalResponseNorm.from_tensorflow(
            self.depth_radius, self.bias, self.alpha, self.beta, channel_dim=channel_dim
        )


def lrn_from_tensorflow(
    depth_radius: int = 5,
    bias: float = 1.0,
    alpha: float = 1.0,
    beta: float = 0.5,
    *,
    channel_dim: int = -1,
) -> LocalResponseNorm:
    """The exact :class:`~normkit.LocalResponseNorm` for ``tf.nn.local_response_normalization``.

    .. math::
        y_d = x_d \\left(bias + \\alpha \\sum_{j=d-r}^{d+r} x_j^2\\right)^{-\\beta}

    Args:
        depth_radius: r, the half-width: the window is ``2r + 1`` channels. Default 5.
        bias: additive constant. Default 1.0.
        alpha: raw scale (not divided by the window). Default 1.0.
        beta: exponent. Default 0.5.
        channel_dim: channel dim of the inputs the module will see. Default -1 (NHWC,
            as TensorFlow); pass 1 to use the layer on NCHW tensors.

    Shape:
        (N, H, W, C) with the default ``channel_dim=-1``.

    Example::

        >>> lrn = lrn_from_tensorflow(depth_radius=2, bias=1.0, alpha=2e-5, beta=0.75)
        >>> lrn.to_caffe()["alpha"]        # Caffe divides by local_size = 5
        0.0001
    """
    return LocalResponseNorm.from_tensorflow(
        depth_radius, bias, alpha, beta, channel_dim=channel_dim
    )


def _f32_decimal(value: float) -> float:
    # TensorFlow stores float attrs as float32; keep the decimal the author wrote
    return float(str(np.float32(value)))


def _make(name: str, attrs: Dict[str, object]) -> TfLRN:
    values = dict(TF_DEFAULTS)
    for key, value in attrs.items():
        if key == "T" or key.startswith("_"):  # dtype, and TF's internal _output_shapes etc.
            continue
        if key not in TF_DEFAULTS:
            raise ValueError(
                f"TensorFlow LRN op {name!r}: unknown attr {key!r}; the LRN op has "
                "depth_radius, bias, alpha, beta and T"
            )
        if key == "depth_radius":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(
                    f"TensorFlow LRN op {name!r}: depth_radius must be an int, got {value!r}"
                )
            if value < 0:
                raise ValueError(
                    f"TensorFlow LRN op {name!r}: depth_radius must be >= 0, got {value}"
                )
        elif not isinstance(value, float):
            raise ValueError(f"TensorFlow LRN op {name!r}: {key} must be a float, got {value!r}")
        values[key] = value if key == "depth_radius" else _f32_decimal(value)
    explicit = frozenset(k for k in attrs if k in TF_DEFAULTS)
    return TfLRN(
        name, values["depth_radius"], values["bias"], values["alpha"], values["beta"], explicit
    )


# --- GraphDef in text format ------------------------------------------------------------


def _text_attr_value(value: Message, where: str):
    for kind, v in value:
        if kind == "i":
            return v.as_int(where)
        if kind == "f":
            return v.as_float(where)
        if kind == "type":
            return v.text
        return v.text if hasattr(v, "text") else v  # other kinds: surfaced as unknown
    raise ValueError(f"line {value.line}: {where} has an empty value")


def _text_nodes(msg: Message, prefix: str = "") -> Iterator[Tuple[str, str, dict]]:
    for field, node in msg:
        if field not in ("node", "node_def") or not isinstance(node, Message):
            continue
        name = node.get("name")
        op = node.get("op")
        name_text = name.text if name is not None else f"node@line{node.line}"
        attrs = {}
        for entry in node.all("attr"):
            key, value = entry.get("key"), entry.get("value")
            if key is None or not isinstance(value, Message):
                raise ValueError(
                    f"line {entry.line}: attr of node {name_text!r} needs a key "
                    "and a value { ... }"
                )
            attrs[key.text] = _text_attr_value(value, f"attr {key.text!r} of {name_text!r}")
        yield prefix + name_text, (op.text if op is not None else ""), attrs
    library = msg.get("library")
    if isinstance(library, Message):
        for fn in library.all("function"):
            sig = fn.get("signature")
            fname = sig.get("name").text if isinstance(sig, Message) and sig.get("name") else "fn"
            yield from _text_nodes(fn, prefix=f"{fname}/")


# --- GraphDef in binary format, decoded without TensorFlow -------------------------------
# Field numbers from tensorflow/core/framework/{graph,node_def,attr_value,function}.proto.


def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint in GraphDef")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes in GraphDef")


def _fields(buf: bytes) -> Iterator[Tuple[int, int, object]]:
    """(field number, wire type, value) of a protobuf message's wire bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
            if len(value) != length:
                raise ValueError("truncated length-delimited field in GraphDef")
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire} in GraphDef")
        yield number, wire, value


def _binary_attr_value(buf: bytes):
    for number, wire, value in _fields(buf):
        if number == 3 and wire == 0:  # int64 i
            return value - (1 << 64) if value >= 1 << 63 else value
        if number == 4 and wire == 5:  # float f
            return struct.unpack("<f", value)[0]
        if number == 6 and wire == 0:  # DataType type
            return f"DataType({value})"
        return ("other", number)
    return ("other", 0)


def _binary_nodes(buf: bytes, node_field: int, prefix: str = ""):
    for number, wire, value in _fields(buf):
        if number == node_field and wire == 2:
            name, op, attrs = "", "", {}
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    name = v.decode("utf-8")
                elif n == 2 and w == 2:
                    op = v.decode("utf-8")
                elif n == 5 and w == 2:  # map<string, AttrValue> entry
                    key, attr = "", b""
                    for en, ew, ev in _fields(v):
                        if en == 1 and ew == 2:
                            key = ev.decode("utf-8")
                        elif en == 2 and ew == 2:
                            attr = ev
                    attrs[key] = _binary_attr_value(attr)
            yield prefix + name, op, attrs
        elif number == 2 and wire == 2 and node_field == 1:  # GraphDef.library
            for fn_number, fn_wire, fn in _fields(value):
                if fn_number == 1 and fn_wire == 2:  # FunctionDef
                    fname = "fn"
                    for sn, sw, sv in _fields(fn):
                        if sn == 1 and sw == 2:  # signature (OpDef), name = 1
                            for on, ow, ov in _fields(sv):
                                if on == 1 and ow == 2:
                                    fname = ov.decode("utf-8")
                    yield from _binary_nodes(fn, 3, prefix=f"{fname}/")


# --- TensorFlow objects ------------------------------------------------------------------


def _tf_graph_def(obj):
    """A GraphDef from a tf object, or None if ``obj`` is not one."""
    if hasattr(obj, "node") and hasattr(obj, "library") and hasattr(obj, "SerializeToString"):
        return obj  # a GraphDef proto (tf.compat.v1.GraphDef)
    if hasattr(obj, "as_graph_def"):  # tf.Graph, FuncGraph
        return obj.as_graph_def()
    if hasattr(obj, "graph") and hasattr(obj.graph, "as_graph_def"):  # ConcreteFunction
        return obj.graph.as_graph_def()
    if hasattr(obj, "get_concrete_function"):  # tf.function
        try:
            concrete = obj.get_concrete_function()
        except (TypeError, ValueError) as exc:
            raise ValueError(
                "lrn_layers_from_tensorflow: a tf.function needs an input_signature "
                "(or pass fn.get_concrete_function(tf.TensorSpec(...)))"
            ) from exc
        return concrete.graph.as_graph_def()
    return None


def _proto_nodes(graph_def) -> Iterator[Tuple[str, str, dict]]:
    def attrs_of(node):
        out = {}
        for key, value in node.attr.items():
            which = value.WhichOneof("value")
            out[key] = {"i": value.i, "f": value.f}.get(which, ("other", which))
        return out

    for node in graph_def.node:
        yield node.name, node.op, attrs_of(node)
    for fn in graph_def.library.function:
        for node in fn.node_def:
            yield f"{fn.signature.name}/{node.name}", node.op, attrs_of(node)


def _nodes(source) -> Iterator[Tuple[str, str, dict]]:
    graph_def = None if isinstance(source, (str, bytes, os.PathLike)) else _tf_graph_def(source)
    if graph_def is not None:
        yield from _proto_nodes(graph_def)
        return
    if isinstance(source, (bytes, bytearray)):
        yield from _binary_nodes(bytes(source), 1)
        return
    if isinstance(source, os.PathLike) or (isinstance(source, str) and os.path.isfile(source)):
        with open(os.fspath(source), "rb") as fh:
            data = fh.read()
        try:
            text = data.decode("utf-8")
            looks_text = text.lstrip().startswith(("node", "#", "versions", "library"))
        except UnicodeDecodeError:
            looks_text = False
        if looks_text:
            yield from _text_nodes(prototext.parse(text))
        else:
            yield from _binary_nodes(data, 1)
        return
    if isinstance(source, str):
        if "node" not in source and "{" not in source:
            raise FileNotFoundError(
                f"lrn_layers_from_tensorflow: {source!r} is not an existing "
                "file and does not look like GraphDef text"
            )
        yield from _text_nodes(prototext.parse(source))
        return
    raise TypeError(
        "lrn_layers_from_tensorflow: expected a tf.Graph, GraphDef, tf.function, "
        "ConcreteFunction, a .pb/.pbtxt path, GraphDef text or GraphDef bytes; got "
        f"{type(source).__name__}"
    )


def read_tf_lrn(source) -> List[TfLRN]:
    """Every ``LRN`` op of a TensorFlow graph (function library included), in order."""
    return [_make(name, attrs) for name, op, attrs in _nodes(source) if op == "LRN"]


def lrn_layers_from_tensorflow(source, *, channel_dim: int = -1) -> Dict[str, LocalResponseNorm]:
    """``{op name: LocalResponseNorm}`` for every ``LRN`` op of a TensorFlow graph.

    Args:
        source: a ``tf.Graph``, ``GraphDef``, ``tf.function`` with an input signature or
            ``ConcreteFunction`` (TensorFlow needed); or, without TensorFlow, a path to a
            GraphDef (binary ``.pb`` or text ``.pbtxt``), GraphDef text, or serialized
            GraphDef bytes. Ops inside the function library are named ``function/op``.
        channel_dim: channel dim of the returned modules. Default -1 (NHWC, as TensorFlow).

    Returns:
        Modules exact to each op: window ``2 * depth_radius + 1``, raw alpha.

    Example::

        >>> text = 'node { name: "lrn" op: "LRN" attr { key: "depth_radius" value { i: 2 } } }'
        >>> lrn_layers_from_tensorflow(text)["lrn"].to_onnx()["size"]
        5
    """
    return {lrn.name: lrn.module(channel_dim) for lrn in read_tf_lrn(source)}
