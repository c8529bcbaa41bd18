"""LRN nodes of an ONNX model as exact :class:`~normkit.LocalResponseNorm` modules.

ONNX ``LRN`` (opsets 1 and 13): ``size`` (required), ``alpha`` (default 1e-4),
``beta`` (0.75), ``bias`` (1.0); ``y = x / (bias + alpha/size * sum)**beta`` over
channels ``c - floor((size-1)/2) .. c + ceil((size-1)/2)``. For an even size the
window looks one channel further *ahead* than behind, the mirror image of
``torch.nn.LocalResponseNorm``; a converter that maps the node straight to torch's
module (onnx2torch does) is wrong for every even size. The modules returned here use
``convention="onnx"`` and keep ONNX's window.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Tuple

import numpy as np

from ..modules.lrn import LocalResponseNorm

__all__ = ["OnnxLRN", "lrn_from_onnx", "lrn_layers_from_onnx", "read_onnx_lrn"]

_DEFAULTS = {"alpha": 1e-4, "beta": 0.75, "bias": 1.0}


@dataclass(frozen=True)
class OnnxLRN:
    """One ONNX LRN node's attributes (defaults filled in) and where it sits."""

    name: str
    size: int
    alpha: float
    beta: float
    bias: float
    explicit: frozenset
    graph: str  # "main", or the path of the subgraph / function holding the node

    def module(self) -> LocalResponseNorm:
        return LocalResponseNorm.from_onnx(self.size, self.alpha, self.beta, self.bias)


def _f32_decimal(value: float) -> float:
    # ONNX stores float attributes as float32; the shortest decimal that rounds to the
    # same float32 is what the model's author wrote (1e-4, not 9.99999974737875e-05)
    return float(str(np.float32(value)))


def _attributes(node) -> Tuple[dict, set]:
    from onnx import AttributeProto

    what = f"ONNX LRN node {node.name!r}" if node.name else "ONNX LRN node"
    values, explicit = {}, set()
    for attr in node.attribute:
        if attr.ref_attr_name:
            raise ValueError(
                f"{what}: attribute {attr.name} refers to the enclosing function's "
                f"attribute {attr.ref_attr_name!r}; its value is only known once the "
                "function is called (inline the model with onnx.inliner first)"
            )
        if attr.name == "size":
            if attr.type != AttributeProto.INT:
                raise ValueError(
                    f"{what}: attribute size must be an INT, got "
                    f"{AttributeProto.AttributeType.Name(attr.type)}"
                )
            values["size"] = int(attr.i)
        elif attr.name in _DEFAULTS:
            if attr.type != AttributeProto.FLOAT:
                raise ValueError(
                    f"{what}: attribute {attr.name} must be a FLOAT, got "
                    f"{AttributeProto.AttributeType.Name(attr.type)}"
                )
            values[attr.name] = _f32_decimal(attr.f)
        else:
            raise ValueError(
                f"{what}: unknown attribute {attr.name!r}; ONNX LRN has size, alpha, beta and bias"
            )
        explicit.add(attr.name)
    if "size" not in values:
        raise ValueError(f"{what}: the required attribute 'size' is missing")
    if values["size"] < 1:
        raise ValueError(f"{what}: size must be >= 1, got {values['size']}")
    for key, default in _DEFAULTS.items():
        values.setdefault(key, default)
    return values, explicit


def _check_node(node) -> None:
    from onnx import NodeProto

    if not isinstance(node, NodeProto):
        raise TypeError(
            f"lrn_from_onnx: expected an onnx.NodeProto, got {type(node).__name__}; "
            "for a whole model use lrn_layers_from_onnx(model)"
        )
    if node.op_type != "LRN" or node.domain not in ("", "ai.onnx"):
        domain = f"{node.domain}::" if node.domain else ""
        raise ValueError(
            f"lrn_from_onnx: node {node.name!r} is a {domain}{node.op_type}, not an ONNX LRN node"
        )


def lrn_from_onnx(node) -> LocalResponseNorm:
    """The exact :class:`~normkit.LocalResponseNorm` for an ONNX ``LRN`` node.

    .. math::
        y_c = x_c \\left(bias + \\frac{\\alpha}{size}
              \\sum_{j=c-\\lfloor (size-1)/2 \\rfloor}^{c+\\lceil (size-1)/2 \\rceil} x_j^2
              \\right)^{-\\beta}

    Args:
        node: an ``onnx.NodeProto`` with ``op_type == "LRN"``. Missing attributes take
            ONNX's defaults (alpha 1e-4, beta 0.75, bias 1.0); ``size`` is required.

    Returns:
        ``LocalResponseNorm(size, alpha, beta, bias, convention="onnx")``: for an even
        size the window keeps ONNX's orientation (one more channel ahead).

    Example::

        >>> from onnx import helper
        >>> lrn = lrn_from_onnx(helper.make_node("LRN", ["x"], ["y"], size=4))
        >>> (lrn.spec.back, lrn.spec.ahead)
        (1, 2)
    """
    _check_node(node)
    values, _ = _attributes(node)
    return LocalResponseNorm.from_onnx(
        values["size"], values["alpha"], values["beta"], values["bias"]
    )


def _walk(graph, where: str) -> Iterator[Tuple[object, str]]:
    from onnx import AttributeProto

    for node in graph.node:
        yield node, where
        for attr in node.attribute:
            label = f"{where}/{node.name or node.op_type}.{attr.name}"
            if attr.type == AttributeProto.GRAPH:
                yield from _walk(attr.g, label)
            elif attr.type == AttributeProto.GRAPHS:
                for i, sub in enumerate(attr.graphs):
                    yield from _walk(sub, f"{label}[{i}]")


def _load(model):
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"lrn_layers_from_onnx: no such file {path!r}")
        try:
            # external weights are irrelevant to LRN attributes: do not load them
            return onnx.load(path, load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError and friends
            raise ValueError(
                f"lrn_layers_from_onnx: {path!r} is not a readable ONNX model "
                f"({type(exc).__name__}: {exc})"
            ) from exc
    raise TypeError(
        f"lrn_layers_from_onnx: expected an onnx.ModelProto or a path, got {type(model).__name__}"
    )


def read_onnx_lrn(model) -> List[OnnxLRN]:
    """Every ONNX LRN node of ``model`` (main graph, subgraphs, local functions), in order.

    Unnamed nodes are named after their first output; repeated names get ``#2``, ``#3``.
    """
    proto = _load(model)
    found: List[OnnxLRN] = []
    names: Dict[str, int] = {}
    sources = [(proto.graph, "main")] + [
        (f, f"function {f.domain}::{f.name}") for f in proto.functions
    ]
    for graph, where in sources:
        for node, holder in _walk(graph, where):
            if node.op_type != "LRN" or node.domain not in ("", "ai.onnx"):
                continue
            values, explicit = _attributes(node)
            name = node.name or (node.output[0] if node.output else "LRN")
            if name in names:
                names[name] += 1
                name = f"{name}#{names[name]}"
            else:
                names[name] = 1
            found.append(
                OnnxLRN(
                    name,
                    values["size"],
                    values["alpha"],
                    values["beta"],
                    values["bias"],
                    frozenset(explicit),
                    holder,
                )
            )
    return found


def lrn_layers_from_onnx(model) -> Dict[str, LocalResponseNorm]:
    """``{node name: LocalResponseNorm}`` for every ``LRN`` node of an ONNX model.

    Args:
        model: an ``onnx.ModelProto`` or a path to a ``.onnx`` file. Nodes in
            subgraphs (If/Loop/Scan bodies) and model-local functions are included.

    Returns:
        Modules in graph order, each exact to its node (see :func:`lrn_from_onnx`);
        unnamed nodes are keyed by their first output.

    Example::

        >>> layers = lrn_layers_from_onnx("alexnet.onnx")   # doctest: +SKIP
        >>> layers["norm1"]                                  # doctest: +SKIP
        LocalResponseNorm(5, alpha=0.0001, beta=0.75, k=1.0, convention='onnx')
    """
    return {lrn.name: lrn.module() for lrn in read_onnx_lrn(model)}
