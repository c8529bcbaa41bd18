"""What :mod:`normkit.functional` computes while a model is being exported.

normkit's eager path runs hand-written ``torch.autograd.Function`` s over custom ops
(numba / Triton / torch kernels). No exporter can translate those: the dynamo ONNX
exporter has no ONNX function for ``normkit::*`` ops (``ConversionError``) and the
TorchScript exporter traces into the kernels' Python (``TypeError`` on ``divmod``). So
while exporting, every functional norm instead computes with the plain torch ops that
``torch.nn.functional`` itself uses, which every exporter knows:

* ``torch.onnx.export(..., dynamo=True)`` (the default) and ``torch.export.export``
  (``torch.compiler.is_exporting()``): the ATen graph of ``torch.nn.functional``, so the
  ExportedProgram has no normkit ops, runs without normkit installed and lowers to ONNX
  as torch's own layers do (``RMSNormalization`` at opset >= 23, ``GroupNormalization``
  at opset >= 21, decompositions below that);
* ``torch.onnx.export(..., dynamo=False)`` (``torch.onnx.is_in_onnx_export()`` while
  tracing): the same, except RMSNorm, for which the TorchScript exporter has no symbolic,
  is written out (:func:`rms_norm`).

Why plain ops and not the custom ops for ``torch.export.export``: an ExportedProgram is
meant to be loaded elsewhere (AOTInductor, ExecuTorch, ONNX); custom ops would tie it to
an install of normkit with the same op schemas, and in training mode their running-stat
updates happen outside the graph. The values are torch's: the export path *is* the
``torch.nn`` counterpart's computation.

LRN has no ``torch.nn.functional`` equivalent in every convention, so it is written here
as an explicit decomposition (:func:`lrn_decomposition`). :mod:`normkit.interop.export`
registers a hook (:func:`set_lrn_hook`) that turns expressible LRNs into ONNX ``LRN``
nodes; this module never imports the exporter (no import cycle).

This module imports only torch and :mod:`normkit.conventions`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch
import torch.nn.functional as torch_F

from .conventions import CanonicalLRN

__all__ = [
    "exporting",
    "set_lrn_hook",
    "clamp_window",
    "lrn",
    "lrn_decomposition",
    "batch_norm",
    "layer_norm",
    "group_norm",
    "instance_norm",
    "rms_norm",
]


try:  # the flags torch.onnx.is_in_onnx_export() reads, imported once instead of per call
    from torch.onnx._internal.exporter import _flags as _onnx_flags
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS as _ts_globals

    def _in_onnx_export() -> bool:
        return _ts_globals.in_onnx_export or _onnx_flags._is_onnx_exporting

except ImportError:  # another torch layout: the public (slower) function
    _in_onnx_export = torch.onnx.is_in_onnx_export


def _export_flag() -> bool:
    """``torch.export``'s own flag, read where dynamo is tracing. torch 2.11's dynamo folds
    ``torch.compiler.is_exporting()`` to True under every ``torch.compile`` (later releases
    read the flag), which sent compiled models down the export path; a module attribute
    read is traced as its current value on every release."""
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    return torch.compiler.is_exporting() if flag is None else flag


def exporting() -> bool:
    """True while a model is traced by ``torch.onnx.export`` (either exporter) or
    ``torch.export.export``; False in eager mode and under ``torch.compile``."""
    if torch.compiler.is_compiling():  # dynamo knows the public function, not the flags
        return torch.onnx.is_in_onnx_export() or _export_flag()
    return _in_onnx_export() or torch.compiler.is_exporting()


_LRN_HOOK: Optional[Callable] = None


def set_lrn_hook(fn: Optional[Callable]) -> None:
    """Install ``fn(input, spec, channel_dim) -> Tensor`` as the export-time LRN
    (:mod:`normkit.interop.export` installs its ONNX-``LRN``-node writer on import)."""
    global _LRN_HOOK
    _LRN_HOOK = fn


def clamp_window(spec: CanonicalLRN, x: torch.Tensor) -> CanonicalLRN:
    """``spec`` with its window extents cut to the extent they slide over in ``x``.

    A window reaching more than ``C`` channels (or ``max(H, W)`` pixels within) past its
    centre sums the same values as one reaching exactly that far, so ``back``/``ahead``
    are clamped; ``size`` and the divisor already folded into ``alpha`` are kept, so the
    result is unchanged while a hostile ``size=2**64 + 1`` never reaches a kernel or an
    allocation. ``x`` has channels on dim 1.
    """
    extent = x.shape[1] if spec.region == "across" else max(x.shape[2], x.shape[3])
    if spec.back <= extent and spec.ahead <= extent:
        return spec
    return dataclasses.replace(spec, back=min(spec.back, extent), ahead=min(spec.ahead, extent))


def _window_sum(v: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
    """sum_{j=i-before}^{i+after} v[j] along ``dim``, zero padded: Pad + Slices + Adds."""
    if before == 0 and after == 0:
        return v
    length = v.shape[dim]
    # a window wider than the dim sees at most the whole dim: clamp the pads so a hostile
    # size (2**31 + 1) does not allocate a huge padded tensor; same sum, same divisor
    before, after = min(before, length), min(after, length)
    pad = [0, 0] * (v.dim() - dim)  # F.pad lists the last dim first
    pad[-2], pad[-1] = before, after
    padded = torch_F.pad(v, pad)
    # a direct sum of (before + after + 1) slices: exact in float32 for a channel 1000x
    # louder than its neighbours, where a running or prefix sum cancels
    out = padded.narrow(dim, 0, length)
    for offset in range(1, before + after + 1):
        out = out + padded.narrow(dim, offset, length)
    return out


def lrn_decomposition(x: torch.Tensor, spec: CanonicalLRN) -> torch.Tensor:
    """The canonical LRN written with ops every ONNX runtime has.

    .. math::
        y = x \\cdot (k + \\alpha S)^{-\\beta}, \\quad S = \\text{window sum of } x^2

    Args:
        x: ``(N, C, *)`` across channels, ``(N, C, H, W)`` within; channels on dim 1.
        spec: the canonical LRN.

    Shape:
        output like ``x``. float16/bfloat16 are computed in float32 and cast back.
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    x32 = x if x.dtype == compute else x.to(compute)  # a no-op .to() still traces a Cast
    acc = x32 * x32
    for dim in (2, 3) if spec.region == "within" else (1,):
        acc = _window_sum(acc, spec.back, spec.ahead, dim)
    # constants as tensors of the compute dtype: the dynamo exporter rounds Python scalars
    # through float32 (measured: 6.5e-8 relative error on a float64 model)
    alpha, k, neg_beta = (torch.tensor(v, dtype=compute) for v in (spec.alpha, spec.k, -spec.beta))
    scale = acc * alpha + k
    y = x32 * torch.pow(scale, neg_beta)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def lrn(input: torch.Tensor, spec: CanonicalLRN, channel_dim: int) -> torch.Tensor:
    """Export-time LRN, channels on ``channel_dim`` (already validated, >= 1)."""
    if _LRN_HOOK is not None:
        return _LRN_HOOK(input, spec, channel_dim)
    x = input if channel_dim == 1 else input.movedim(channel_dim, 1)
    y = lrn_decomposition(x, clamp_window(spec, x))
    return y if channel_dim == 1 else y.movedim(1, channel_dim)


def batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps):
    """``torch.nn.functional.batch_norm`` (same running-stat update in training)."""
    return torch_F.batch_norm(
        input, running_mean, running_var, weight, bias, bool(training), float(momentum), float(eps)
    )


def layer_norm(input, normalized_shape, weight, bias, eps):
    """``torch.nn.functional.layer_norm``."""
    return torch_F.layer_norm(input, tuple(normalized_shape), weight, bias, float(eps))


def group_norm(input, num_groups, weight, bias, eps):
    """``torch.nn.functional.group_norm``."""
    return torch_F.group_norm(input, num_groups, weight, bias, float(eps))


def instance_norm(input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps):
    """``torch.nn.functional.instance_norm``."""
    return torch_F.instance_norm(
        input,
        running_mean,
        running_var,
        weight,
        bias,
        bool(use_input_stats),
        float(momentum),
        float(eps),
    )


def rms_norm(input, normalized_shape, weight, eps: float):
    r"""``torch.nn.functional.rms_norm``; written out for the TorchScript exporter.

    .. math:: y = \gamma \odot x / \sqrt{\langle x^2 \rangle + \epsilon}

    ``eps`` is already resolved (normkit's default: the float32 eps for 16-bit input).
    """
    shape = tuple(normalized_shape)
    if not torch.jit.is_tracing():
        return torch_F.rms_norm(input, shape, weight, float(eps))
    # the TorchScript exporter has no aten::rms_norm symbolic; float32 math for 16-bit
    # input as torch's composite does, cast back, then the weight
    compute = torch.float64 if input.dtype == torch.float64 else torch.float32
    x = input if input.dtype == compute else input.to(compute)
    dims = tuple(range(-len(shape), 0))
    eps_t = torch.tensor(float(eps), dtype=compute)
    y = x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps_t)
    y = y if y.dtype == input.dtype else y.to(input.dtype)
    return y * weight if weight is not None else y


def filter_response_norm(x, weight, bias, tau, eps):
    """The same math in differentiable torch ops (export and the reference for autograd)."""
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    view = (1, -1) + (1,) * (x.dim() - 2)
    xc = x.to(cdt)
    dims = tuple(range(2, x.dim()))
    nu2 = (xc * xc).mean(dims, keepdim=True)
    z = xc * torch.rsqrt(nu2 + eps.to(cdt).view(view)) * weight.to(cdt).view(view) + bias.to(
        cdt
    ).view(view)
    return torch.maximum(z, tau.to(cdt).view(view)).to(x.dtype)
