"""ONNX export of normkit layers: standard ONNX operators, whatever the eager kernels are.

normkit's eager path runs hand-written autograd Functions and, where available, numba
or Triton kernels; neither exporter can (or should) trace those. So export never looks
at the eager path. Instead:

* a **registry** maps module classes to *export forwards*: small functions written with
  plain torch ops (or one custom op, below) that compute the same result and that both
  exporters translate into standard ONNX. :func:`export_onnx` swaps them in for the
  duration of an export (per instance, restored afterwards);
* every functional norm computes with plain torch ops while any exporter traces
  (:mod:`normkit._export_path`), so a plain ``torch.onnx.export`` (either exporter) or
  ``torch.export.export`` of any model with normkit layers works too. LRN's export-time
  computation there is a hook this module installs on import
  (:func:`normkit._export_path.set_lrn_hook`): :func:`lrn_export`. The dependency points
  one way, interop -> functional, never back.

LRN becomes an ONNX ``LRN`` node when the layer is expressible as one and
onnxruntime can run it (across channels, a symmetric window i.e. odd width, not
float64): raw-alpha conventions are converted to ONNX's ``alpha``·size, inputs of rank
other than 4 are reshaped to ``(N, C, -1, 1)`` around the node (onnxruntime's CPU LRN
is 4-D only) and float16/bfloat16 are cast to float32 around it. Everything else (even
sizes in either orientation, within-channel boxes, float64) is an explicit
decomposition: Pad, a direct sum of shifted Slices (never a running sum: see the
numerics policy), Mul, Add, Pow.

The ``LRN`` node comes from a custom op ``normkit_onnx::lrn`` with an onnxscript
translation (dynamo exporter, passed as ``custom_translation_table`` by
:func:`export_onnx`) and a symbolic (TorchScript exporter, registered with
``torch.onnx.register_custom_op_symbolic`` the first time it is needed). A direct
``torch.onnx.export(..., dynamo=True)`` cannot be given the translation without the
caller's help, so there LRN is decomposed (correct, just not a single node).
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import types
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Type

import torch
import torch.nn.functional as torch_F
from torch import nn

from .. import _export_path
from .._export_path import _window_sum, lrn_decomposition  # noqa: F401  (public here too)
from .._validation import check_lrn_input
from ..conventions import CanonicalLRN

__all__ = [
    "ExportContext",
    "export_onnx",
    "register_exporter",
    "export_forward_for",
    "lrn_export",
    "lrn_export_graph",
    "lrn_decomposition",
    "EXPORTERS",
    "batch_norm_forward",
    "layer_norm_forward",
    "group_norm_forward",
    "instance_norm_forward",
    "rms_norm_forward",
    "channel_rms_norm_forward",
    "lrn_forward",
]

_OP_NAMESPACE = "normkit_onnx"
# torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET in torch 2.13 (private, so copied)
_TORCHSCRIPT_MAX_OPSET = 20
_LRN_OP = f"{_OP_NAMESPACE}::lrn"


@dataclass(frozen=True)
class ExportContext:
    """What the export forwards may rely on during one :func:`export_onnx` call.

    Attributes:
        opset: the ONNX opset being written (None: the exporter's default).
        exporter: ``"dynamo"`` (torch.export + onnxscript) or ``"torchscript"`` (legacy).
        lrn_nodes: whether ``normkit_onnx::lrn`` will be translated to an ONNX ``LRN`` node.
    """

    opset: Optional[int]
    exporter: str
    lrn_nodes: bool = True


_ACTIVE: contextvars.ContextVar[Optional[ExportContext]] = contextvars.ContextVar(
    "normkit_onnx_export", default=None
)


def _current_context() -> ExportContext:
    """The active :func:`export_onnx` context, or what a direct torch.onnx.export allows."""
    ctx = _ACTIVE.get()
    if ctx is not None:
        return ctx
    if torch.jit.is_tracing():  # the TorchScript exporter: symbolics are global
        _register_torchscript_symbolic()
        return ExportContext(None, "torchscript", True)
    return ExportContext(None, "dynamo", False)


# --- the LRN custom op: eager value, fake value, and its two ONNX translations ------------


def _lrn_eager(x: torch.Tensor, size: int, alpha: float, beta: float, bias: float):
    half = (size - 1) // 2
    spec = CanonicalLRN("across", size, half, half, alpha / size, beta, bias)
    return lrn_decomposition(x, spec)


_lrn_op = None


def _lrn_custom_op():
    """``normkit_onnx::lrn(x, size, alpha, beta, bias)``: ONNX LRN semantics, odd size, 4-D."""
    global _lrn_op
    if _lrn_op is None:
        op = torch.library.custom_op(_LRN_OP, mutates_args=())(_lrn_eager_typed)
        op.register_fake(lambda x, size, alpha, beta, bias: torch.empty_like(x))
        _lrn_op = op
    return _lrn_op


def _lrn_eager_typed(
    x: torch.Tensor, size: int, alpha: float, beta: float, bias: float
) -> torch.Tensor:
    return _lrn_eager(x, size, alpha, beta, bias)


def _lrn_onnxscript(x, size: int, alpha: float, beta: float, bias: float):
    from onnxscript import opset18 as op  # LRN is unchanged since opset 13

    return op.LRN(x, size=size, alpha=alpha, beta=beta, bias=bias)


_symbolic_registered = False


def _register_torchscript_symbolic() -> None:
    global _symbolic_registered
    if _symbolic_registered:
        return
    _lrn_custom_op()

    def symbolic(g, x, size, alpha, beta, bias):
        from torch.onnx import symbolic_helper as sh

        return g.op(
            "LRN",
            x,
            size_i=sh._get_const(size, "i", "size"),
            alpha_f=sh._get_const(alpha, "f", "alpha"),
            beta_f=sh._get_const(beta, "f", "beta"),
            bias_f=sh._get_const(bias, "f", "bias"),
        )

    torch.onnx.register_custom_op_symbolic(_LRN_OP, symbolic, 1)
    _symbolic_registered = True


def _translation_table() -> Dict[Callable, Callable]:
    _lrn_custom_op()
    return {getattr(torch.ops, _OP_NAMESPACE).lrn.default: _lrn_onnxscript}


def _lrn_node(x: torch.Tensor, spec: CanonicalLRN) -> torch.Tensor:
    width = spec.width
    x32 = x if x.dtype == torch.float32 else x.to(torch.float32)
    # onnxruntime's CPU LRN takes 4-D input only; across channels the spatial layout
    # does not matter, so any (N, C, *) is viewed as (N, C, prod(*), 1)
    x4 = x32 if x32.dim() == 4 else x32.reshape(x32.shape[0], x32.shape[1], -1, 1)
    y4 = _lrn_custom_op()(x4, width, spec.alpha * width, spec.beta, spec.k)
    y = y4 if x32.dim() == 4 else y4.reshape(x32.shape)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def lrn_node_expressible(spec: CanonicalLRN, dtype: torch.dtype) -> bool:
    """Whether an ONNX ``LRN`` node computes ``spec`` and onnxruntime runs it."""
    return spec.region == "across" and spec.back == spec.ahead and dtype != torch.float64


def lrn_export_graph(
    x: torch.Tensor, spec: CanonicalLRN, *, lrn_nodes: bool = True
) -> torch.Tensor:
    """The export-time computation of a canonical LRN on ``(N, C, *)`` input.

    An ONNX ``LRN`` node (via ``normkit_onnx::lrn``) when :func:`lrn_node_expressible`
    and ``lrn_nodes``; otherwise :func:`lrn_decomposition`.
    """
    if lrn_nodes and lrn_node_expressible(spec, x.dtype):
        return _lrn_node(x, spec)
    if lrn_node_expressible(spec, x.dtype) and not lrn_nodes and _ACTIVE.get() is None:
        warnings.warn(
            "normkit LRN: a direct torch.onnx.export(..., dynamo=True) cannot emit an "
            "ONNX LRN node, so the layer is written as an equivalent decomposition; "
            "use normkit.interop.export_onnx(...) to get an LRN node",
            stacklevel=3,
        )
    return lrn_decomposition(x, spec)


def lrn_export(input: torch.Tensor, spec: CanonicalLRN, channel_dim: int = 1) -> torch.Tensor:
    """Export-time LRN with channels on ``channel_dim`` (the hook ``functional`` calls)."""
    channel_dim = check_lrn_input("LocalResponseNorm export", input, spec, channel_dim)
    ctx = _current_context()
    x = input if channel_dim == 1 else input.movedim(channel_dim, 1)
    # a window wider than C is a window of C (an ONNX LRN size must fit an int64)
    y = lrn_export_graph(x, _export_path.clamp_window(spec, x), lrn_nodes=ctx.lrn_nodes)
    return y if channel_dim == 1 else y.movedim(1, channel_dim)


# functional's export path calls this for every LRN traced by an exporter
_export_path.set_lrn_hook(lrn_export)


# --- export forwards for every layer family -------------------------------------------------
# Each takes (module, input) and reads torch's attribute names, which normkit's modules
# copy exactly, so the torch.nn classes stand in for them in tests.


def lrn_forward(module, input: torch.Tensor) -> torch.Tensor:
    """normkit.LocalResponseNorm."""
    return lrn_export(input, module.spec, module.channel_dim)


def _bn_stats(module):
    use_batch = (
        module.training
        or not getattr(module, "track_running_stats", True)
        or getattr(module, "running_mean", None) is None
    )
    if use_batch:
        return None, None, True
    return module.running_mean, module.running_var, False


def batch_norm_forward(module, input: torch.Tensor) -> torch.Tensor:
    """BatchNorm1d/2d/3d and SyncBatchNorm: ONNX BatchNormalization (running statistics)."""
    mean, var, batch = _bn_stats(module)
    return torch_F.batch_norm(input, mean, var, module.weight, module.bias, batch, 0.0, module.eps)


def layer_norm_forward(module, input: torch.Tensor) -> torch.Tensor:
    """LayerNorm: ONNX LayerNormalization (opset >= 17)."""
    return torch_F.layer_norm(
        input, tuple(module.normalized_shape), module.weight, module.bias, module.eps
    )


def group_norm_forward(module, input: torch.Tensor) -> torch.Tensor:
    """GroupNorm: ONNX GroupNormalization at opset >= 21 (dynamo), else a decomposition."""
    return torch_F.group_norm(input, module.num_groups, module.weight, module.bias, module.eps)


def _instance_no_batch_dim(module) -> Optional[int]:
    if hasattr(module, "_get_no_batch_dim"):
        return module._get_no_batch_dim()
    name = type(module).__name__
    for spatial in (1, 2, 3):
        if name.endswith(f"{spatial}d"):
            return spatial + 1
    return None


def instance_norm_forward(module, input: torch.Tensor) -> torch.Tensor:
    """InstanceNorm1d/2d/3d: ONNX InstanceNormalization (running statistics if tracked)."""
    unbatched = input.dim() == _instance_no_batch_dim(module)
    x = input.unsqueeze(0) if unbatched else input
    use_input_stats = module.training or not module.track_running_stats
    y = torch_F.instance_norm(
        x,
        module.running_mean,
        module.running_var,
        module.weight,
        module.bias,
        use_input_stats,
        0.0,
        module.eps,
    )
    return y.squeeze(0) if unbatched else y


def _rms_eps(module, input: torch.Tensor) -> float:
    if module.eps is not None:
        return module.eps
    # normkit's default, as torch's: the eps of the compute dtype (float32 for 16-bit input)
    return torch.finfo(torch.float64 if input.dtype == torch.float64 else torch.float32).eps


def rms_norm_forward(module, input: torch.Tensor) -> torch.Tensor:
    """RMSNorm: ONNX RMSNormalization at opset >= 23 (dynamo), else a decomposition."""
    return _export_path.rms_norm(
        input, tuple(module.normalized_shape), module.weight, _rms_eps(module, input)
    )


def channel_rms_norm_forward(module, input: torch.Tensor) -> torch.Tensor:
    """ChannelRMSNorm: RMSNorm over dim 1 of (N, C, *), via a transpose to channels-last."""
    last = input.dim() - 1  # not -1: the TorchScript exporter writes perm=-1 as is
    y = _export_path.rms_norm(
        input.movedim(1, last), (module.num_channels,), module.weight, _rms_eps(module, input)
    )
    return y.movedim(last, 1)


EXPORTERS: Dict[Type[nn.Module], Callable] = {}

# normkit classes wired by name when they exist (helpers build them in parallel); a class
# missing from this install is skipped, so the table never breaks an import
# export rule name (named per class in normkit.families) -> export-time forward
RULES = {
    "lrn": lrn_forward,
    "batch_norm": batch_norm_forward,
    "layer_norm": layer_norm_forward,
    "group_norm": group_norm_forward,
    "instance_norm": instance_norm_forward,
    "rms_norm": rms_norm_forward,
    "channel_rms_norm": channel_rms_norm_forward,
}


def register_exporter(cls: Type[nn.Module], forward: Optional[Callable] = None):
    """Register ``forward(module, *inputs)`` as the export-time forward of ``cls``.

    Usable as a decorator (``@register_exporter(MyNorm)``). Subclasses inherit the entry.
    The function must compute what ``cls.forward`` computes using ops the ONNX exporters
    translate (torch.nn.functional norms, elementwise ops, reductions).
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_exporter: cls must be an nn.Module subclass, got {cls!r}")

    def deco(fn: Callable) -> Callable:
        if not callable(fn):
            raise TypeError(f"register_exporter: forward must be callable, got {fn!r}")
        EXPORTERS[cls] = fn
        return fn

    return deco(forward) if forward is not None else deco


def _register_builtin() -> None:
    from ..families import export_rules

    for cls, rule in export_rules().items():
        if cls not in EXPORTERS:
            EXPORTERS[cls] = RULES[rule]


def export_forward_for(module: nn.Module) -> Optional[Callable]:
    """The registered export forward for ``module``'s class (nearest in the MRO), or None."""
    _register_builtin()
    for cls in type(module).__mro__:
        if cls in EXPORTERS:
            return EXPORTERS[cls]
    return None


@contextlib.contextmanager
def export_mode(model: nn.Module, ctx: ExportContext):
    """Within the block, every registered module of ``model`` runs its export forward."""
    patched = []
    token = _ACTIVE.set(ctx)
    try:
        for module in model.modules():
            fn = export_forward_for(module)
            if fn is None or "forward" in module.__dict__:
                continue
            module.forward = types.MethodType(fn, module)
            patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward
        _ACTIVE.reset(token)


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def export_onnx(
    model: nn.Module,
    args,
    f=None,
    *,
    opset: Optional[int] = None,
    dynamo: bool = True,
    lrn: str = "node",
    input_names=None,
    output_names=None,
    dynamic_shapes=None,
    dynamic_axes=None,
    custom_translation_table=None,
    **kwargs,
):
    """Export a model with normkit layers to standard ONNX operators.

    Every registered layer (``normkit.LocalResponseNorm`` and the other norms, see
    ``docs/interop.md``) is written as ONNX operators onnxruntime runs: an ``LRN`` node
    when the layer is one, ``BatchNormalization``, ``LayerNormalization``,
    ``GroupNormalization`` (opset >= 21), ``InstanceNormalization``,
    ``RMSNormalization`` (opset >= 23), and explicit decompositions otherwise. The model
    is exported in eval mode (its modes are restored afterwards).

    Args:
        model: the ``nn.Module``.
        args: a tensor or tuple of positional inputs.
        f: path to write the ``.onnx`` file to. Default None (only return the model).
        opset: ONNX opset. Default None (the exporter's default; 20 for torch 2.13's dynamo
            exporter). RMSNorm becomes ``RMSNormalization`` at >= 23 and GroupNorm
            ``GroupNormalization`` at >= 21 (dynamo only: the TorchScript exporter stops
            at 20), a decomposition below.
        dynamo: True (default, torch.export + onnxscript) or False (the legacy TorchScript
            exporter).
        lrn: ``"node"`` (default): an ONNX ``LRN`` node wherever the layer is one;
            ``"decompose"``: always the explicit decomposition. onnxruntime's CPU LRN kernel
            keeps a running window sum, which drifts (~0.2% measured) when one channel is
            1000x louder than its neighbours; the decomposition sums each window directly.
        input_names, output_names, dynamic_shapes (dynamo), dynamic_axes (TorchScript):
            passed to ``torch.onnx.export``.
        custom_translation_table: extra dynamo translations, merged with normkit's.
        **kwargs: anything else ``torch.onnx.export`` takes.

    Returns:
        the exported ``onnx.ModelProto``.

    Example::

        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3),
        ...                             normkit.LocalResponseNorm.from_caffe(5, 1e-4, 0.75))
        >>> proto = export_onnx(model, torch.randn(1, 3, 16, 16), "model.onnx")
        >>> [n.op_type for n in proto.graph.node]
        ['Conv', 'LRN']
    """
    import onnx

    if not isinstance(model, nn.Module):
        raise TypeError(f"export_onnx: model must be an nn.Module, got {type(model).__name__}")
    if isinstance(args, torch.Tensor):
        args = (args,)
    if not isinstance(args, tuple):
        raise TypeError(
            f"export_onnx: args must be a tensor or a tuple of inputs, got {type(args).__name__}"
        )
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int)):
        raise TypeError(f"export_onnx: opset must be an int, got {opset!r}")
    if not dynamo and opset is not None and opset > _TORCHSCRIPT_MAX_OPSET:
        raise ValueError(
            f"export_onnx: the TorchScript exporter (dynamo=False) writes opsets up "
            f"to {_TORCHSCRIPT_MAX_OPSET}, got opset={opset}; use dynamo=True (it "
            "writes RMSNormalization at >= 23 and GroupNormalization at >= 21)"
        )
    if lrn not in ("node", "decompose"):
        raise ValueError(f"export_onnx: lrn must be 'node' or 'decompose', got {lrn!r}")
    exporter = "dynamo" if dynamo else "torchscript"
    ctx = ExportContext(opset, exporter, lrn == "node")
    with warnings.catch_warnings():
        # the exporters' own deprecation chatter is not the user's concern here
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
        with _eval_mode(model), export_mode(model, ctx):
            if dynamo:
                table = dict(_translation_table())
                table.update(custom_translation_table or {})
                program = torch.onnx.export(
                    model,
                    args,
                    None,
                    dynamo=True,
                    opset_version=opset,
                    input_names=input_names,
                    output_names=output_names,
                    dynamic_shapes=dynamic_shapes,
                    custom_translation_table=table,
                    verbose=False,
                    **kwargs,
                )
                proto = program.model_proto
            else:
                if custom_translation_table:
                    raise ValueError(
                        "export_onnx: custom_translation_table is for dynamo=True; "
                        "register symbolics for the TorchScript exporter instead"
                    )
                _register_torchscript_symbolic()
                buffer = io.BytesIO()
                torch.onnx.export(
                    model,
                    args,
                    buffer,
                    dynamo=False,
                    opset_version=opset,
                    input_names=input_names,
                    output_names=output_names,
                    dynamic_axes=dynamic_axes,
                    **kwargs,
                )
                proto = onnx.load_model_from_string(buffer.getvalue())
    if f is not None:
        onnx.save(proto, f)
    return proto
