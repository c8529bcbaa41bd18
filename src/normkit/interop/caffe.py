"""LRN layers of a Caffe ``.prototxt``, read without Caffe.

Caffe's ``LRNParameter`` (``caffe.proto``)::

    optional uint32 local_size = 1 [default = 5];
    optional float alpha = 2 [default = 1.];
    optional float beta = 3 [default = 0.75];
    enum NormRegion { ACROSS_CHANNELS = 0; WITHIN_CHANNEL = 1; }
    optional NormRegion norm_region = 4 [default = ACROSS_CHANNELS];
    optional float k = 5 [default = 1.];
    optional Engine engine = 6 [default = DEFAULT];   // DEFAULT = 0, CAFFE = 1, CUDNN = 2

Semantics (BVLC ``lrn_layer.cpp``): ``local_size`` must be odd; across channels the
scale is ``k + alpha/n * sum``; within a channel it is ``1 + alpha/n**2 * box_sum``
(``k`` is never read). ``engine: CUDNN`` (and ``DEFAULT`` in a cuDNN build) runs
``CuDNNLCNLayer`` within channels, which honours ``k``.

Three generations of the syntax are read:

* current ``layer { type: "LRN" lrn_param { ... } }``;
* V1 ``layers { type: LRN lrn_param { ... } }`` (an enum, ``LRN = 15``), the syntax of
  the seeds' ``norm1`` example;
* V0 ``layers { layer { type: "lrn" local_size: 5 alpha: ... } }`` (parameters inline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Tuple

from ..modules.lrn import LocalResponseNorm
from . import prototext
from ._source import read_text
from .prototext import Message, Scalar

__all__ = ["CaffeLRN", "read_caffe_lrn", "lrn_layers_from_caffe", "LRN_DEFAULTS"]

# Caffe's LRNParameter defaults, in Caffe's own names
LRN_DEFAULTS = {
    "local_size": 5,
    "alpha": 1.0,
    "beta": 0.75,
    "k": 1.0,
    "norm_region": "ACROSS_CHANNELS",
    "engine": "DEFAULT",
}
_REGIONS = {
    "ACROSS_CHANNELS": "ACROSS_CHANNELS",
    "WITHIN_CHANNEL": "WITHIN_CHANNEL",
    "0": "ACROSS_CHANNELS",
    "1": "WITHIN_CHANNEL",
}
_ENGINES = {
    "DEFAULT": "DEFAULT",
    "CAFFE": "CAFFE",
    "CUDNN": "CUDNN",
    "0": "DEFAULT",
    "1": "CAFFE",
    "2": "CUDNN",
}
_V1_LRN = "15"  # V1LayerParameter.LayerType.LRN
_V0_LRN_FIELDS = ("local_size", "alpha", "beta", "k")


@dataclass(frozen=True)
class CaffeLRN:
    """One LRN layer as written in the prototxt, with Caffe's defaults filled in.

    Attributes:
        name: the layer's ``name`` (or its first ``top``, or ``LRN@line<n>`` when unnamed).
        line: line of the layer's opening ``layer {`` / ``layers {``.
        syntax: ``"layer"``, ``"layers (V1)"`` or ``"layers/layer (V0)"``.
        local_size, alpha, beta, k, norm_region, engine: Caffe's fields.
        explicit: the ``lrn_param`` fields the file sets (the rest are defaults).
        bottom, top: the blobs the layer reads and writes.
    """

    name: str
    line: int
    syntax: str
    local_size: int
    alpha: float
    beta: float
    k: float
    norm_region: str
    engine: str
    explicit: FrozenSet[str]
    bottom: Tuple[str, ...] = ()
    top: Tuple[str, ...] = ()

    @property
    def within(self) -> bool:
        return self.norm_region == "WITHIN_CHANNEL"

    def k_ignored(self, default_engine: str = "caffe") -> bool:
        """True when Caffe never reads this layer's ``k`` (BVLC WITHIN_CHANNEL)."""
        return self.within and self.effective_engine(default_engine) == "caffe"

    def effective_engine(self, default_engine: str = "caffe") -> str:
        """``"caffe"`` or ``"cudnn"``: ``DEFAULT`` means what the build picks."""
        if self.engine == "CUDNN":
            return "cudnn"
        if self.engine == "CAFFE":
            return "caffe"
        return default_engine

    def module(self, default_engine: str = "caffe") -> LocalResponseNorm:
        """The exact :class:`~normkit.LocalResponseNorm` for this layer."""
        return LocalResponseNorm.from_caffe(
            self.local_size,
            self.alpha,
            self.beta,
            self.k,
            self.norm_region,
            engine=self.effective_engine(default_engine),
        )


def _scalar(value, where: str, line: int) -> Scalar:
    if not isinstance(value, Scalar):
        raise ValueError(f"line {line}: {where} must be a value, not a {{ ... }} block")
    return value


def _enum(value: Scalar, table: Dict[str, str], where: str) -> str:
    key = value.text.upper() if value.kind == "ident" else value.text
    if value.kind == "string" or key not in table:
        choices = ", ".join(k for k in table if not k.isdigit())
        raise ValueError(f"line {value.line}: {where} must be one of {choices}, got {value.text!r}")
    return table[key]


def _read_params(params: Message, where: str, allowed) -> Tuple[dict, set]:
    """Caffe's LRN fields out of ``params``; unknown fields are errors, as in Caffe."""
    out = dict(LRN_DEFAULTS)
    explicit = set()
    for name, value in params:
        if name not in allowed:
            continue
        value = _scalar(value, f"{where}.{name}", params.line)
        explicit.add(name)
        out["_line_" + name] = value.line
        if name == "local_size":
            size = value.as_int(f"{where}.local_size")
            if size < 0:
                raise ValueError(f"line {value.line}: {where}.local_size is a uint32, got {size}")
            out[name] = size
        elif name in ("alpha", "beta", "k"):
            out[name] = value.as_float(f"{where}.{name}")
        elif name == "norm_region":
            out[name] = _enum(value, _REGIONS, f"{where}.norm_region")
        elif name == "engine":
            out[name] = _enum(value, _ENGINES, f"{where}.engine")
    return out, explicit


_LRN_PARAM_FIELDS = ("local_size", "alpha", "beta", "norm_region", "k", "engine")


def _layer_name(layer: Message, fallback_line: int) -> Tuple[str, Tuple[str, ...], Tuple[str, ...]]:
    def strings(field):
        vals = []
        for v in layer.all(field):
            v = _scalar(v, field, layer.line)
            vals.append(v.text)
        return tuple(vals)

    names = strings("name")
    bottom, top = strings("bottom"), strings("top")
    name = names[-1] if names else (top[0] if top else f"LRN@line{fallback_line}")
    return name, bottom, top


def _lrn_from_layer(layer: Message, syntax: str) -> Optional[CaffeLRN]:
    """A ``CaffeLRN`` if ``layer`` is an LRN layer, else None."""
    if syntax == "layers/layer (V0)":
        inner = layer.get("layer")
        if not isinstance(inner, Message):
            return None
        type_ = inner.get("type")
        if not isinstance(type_, Scalar) or type_.text.lower() != "lrn":
            return None
        name, _, _ = _layer_name(inner, layer.line)
        _, bottom, top = _layer_name(layer, layer.line)
        where = f"layer {name!r}"
        unknown = [n for n in inner.names() if n not in _V0_LRN_FIELDS + ("name", "type")]
        if unknown:
            raise ValueError(
                f"line {inner.line}: V0 LRN {where} has fields Caffe's LRN does not "
                f"read: {', '.join(unknown)}"
            )
        params, explicit = _read_params(inner, where, _V0_LRN_FIELDS)
    else:
        type_ = layer.get("type")
        if type_ is None:
            return None
        type_ = _scalar(type_, "type", layer.line)
        if syntax == "layer":
            if type_.text != "LRN":
                return None
        elif not (type_.text.upper() == "LRN" or type_.text == _V1_LRN):
            return None
        name, bottom, top = _layer_name(layer, layer.line)
        where = f"LRN layer {name!r}"
        block = layer.all("lrn_param")
        params_msg = Message(line=layer.line)
        for b in block:
            if not isinstance(b, Message):
                raise ValueError(f"line {layer.line}: {where}: lrn_param must be a {{ ... }} block")
            unknown = [n for n in b.names() if n not in _LRN_PARAM_FIELDS]
            if unknown:
                raise ValueError(
                    f"line {b.line}: {where}: lrn_param has no field {unknown[0]!r}; Caffe's "
                    f"LRNParameter fields are {', '.join(_LRN_PARAM_FIELDS)}"
                )
            params_msg.fields.extend(b.fields)  # repeated message fields merge, as in protobuf
        params, explicit = _read_params(params_msg, where + " lrn_param", _LRN_PARAM_FIELDS)
    if params["local_size"] % 2 == 0:
        line = params.get("_line_local_size", layer.line)
        raise ValueError(
            f"line {line}: {where}: local_size must be odd (Caffe refuses even sizes: "
            f"'LRN only supports odd values for local_size'), got {params['local_size']}"
        )
    return CaffeLRN(
        name=name,
        line=layer.line,
        syntax=syntax,
        local_size=params["local_size"],
        alpha=params["alpha"],
        beta=params["beta"],
        k=params["k"],
        norm_region=params["norm_region"],
        engine=params["engine"],
        explicit=frozenset(explicit),
        bottom=bottom,
        top=top,
    )


def read_caffe_lrn(prototxt) -> List[CaffeLRN]:
    """Every LRN layer of a Caffe prototxt, in file order, with Caffe's defaults filled in.

    Args:
        prototxt: a path (``str`` or ``os.PathLike``) or the prototxt text itself.

    Raises:
        ValueError: malformed text, an unknown ``lrn_param`` field, an even ``local_size``
            or two LRN layers with one name; the message names the line.
    """
    text, _ = read_text(prototxt, what="lrn_layers_from_caffe")
    net = prototext.parse(text)
    found: List[CaffeLRN] = []
    seen: Dict[str, int] = {}
    for field, value in net:
        if field not in ("layer", "layers"):
            continue
        if not isinstance(value, Message):
            raise ValueError(f"line {value.line}: {field} must be a {{ ... }} block")
        if field == "layer":
            syntax = "layer"
        elif value.get("layer") is not None:
            syntax = "layers/layer (V0)"
        else:
            syntax = "layers (V1)"
        lrn = _lrn_from_layer(value, syntax)
        if lrn is None:
            continue
        if lrn.name in seen:
            raise ValueError(
                f"line {lrn.line}: a second LRN layer named {lrn.name!r} (the first "
                f"is on line {seen[lrn.name]}); layer names must be unique"
            )
        seen[lrn.name] = lrn.line
        found.append(lrn)
    return found


def lrn_layers_from_caffe(
    prototxt, *, default_engine: str = "caffe"
) -> Dict[str, LocalResponseNorm]:
    """The LRN layers of a Caffe ``.prototxt`` as ``{layer name: LocalResponseNorm}``.

    Each module computes exactly what Caffe computes: ``alpha/local_size`` across
    channels, ``alpha/local_size**2`` in a zero-padded ``local_size x local_size`` box
    within a channel, where BVLC Caffe ignores ``k`` (the constant is 1). No Caffe
    installation is needed.

    Args:
        prototxt: a path or the text itself (current ``layer {}``, V1 ``layers {}`` or
            V0 syntax).
        default_engine: what ``engine: DEFAULT`` (and an absent engine) means:
            ``"caffe"`` (default; a CPU or non-cuDNN build) or ``"cudnn"`` (a cuDNN build,
            whose WITHIN_CHANNEL honours ``k``).

    Returns:
        ``{name: LocalResponseNorm}`` in file order; NCHW modules.

    Example::

        >>> layers = lrn_layers_from_caffe('''layers { name: "norm1" type: LRN
        ...     lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 } }''')
        >>> layers["norm1"].to_onnx()
        {'size': 5, 'alpha': 0.0001, 'beta': 0.75, 'bias': 1.0}
    """
    if default_engine not in ("caffe", "cudnn"):
        raise ValueError(f"default_engine must be 'caffe' or 'cudnn', got {default_engine!r}")
    return {lrn.name: lrn.module(default_engine) for lrn in read_caffe_lrn(prototxt)}
