r"""Fused residual add + RMSNorm / LayerNorm and the modulated (adaLN) LayerNorm.

One module holds the three layers of each op above the kernels, on the pattern of
:mod:`.library` (custom ops with fake implementations, so ``torch.compile`` keeps
each kernel as one graph node), :mod:`.autograd` (Functions with analytic
backward) and :mod:`.functional` (checks, export path, entry points). The
functions are re-exported by :mod:`normkit.functional`. Math and backward:
:mod:`normkit.reference.fused` and docs/fused-norms.md.

Outputs of the Functions are fresh tensors, never autograd views, so in-place ops
on ``y`` and ``h`` work. The add-norm Functions save ``h`` (an output) for the
backward, as flash-attention's and Liger's fused layers do: modifying ``h`` in place
and then back-propagating through the norm raises torch's usual "modified by an
inplace operation" error instead of returning a wrong gradient.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch

from . import _export_path as _xp
from . import _native, dispatch
from ._validation import FLOATS as _FLOATS
from .autograd import AddLayerNormFunction, AddRMSNormFunction, ModulatedLayerNormFunction
from .ops import schema

__all__ = ["add_rms_norm", "add_layer_norm", "modulated_layer_norm"]

# the ops each function resolves a backend for, once (functional.py keeps its own the same way)
_ADD_RMS_OPS = schema.ops_of("add_rms_norm")
_ADD_LN_OPS = schema.ops_of("add_layer_norm")
_MODULATED_OPS = schema.ops_of("modulated_layer_norm")

Tensor = torch.Tensor


def _cdt(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --- functional ----------------------------------------------------------------------------


def _check_tensor(name: str, what: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(
            f"{name}: {what} must be a torch.Tensor, got {type(t).__name__}; "
            "convert with torch.as_tensor(v, dtype=torch.float32)"
        )
    if t.dtype not in _FLOATS:
        raise TypeError(
            f"{name}: {what} dtype must be floating point (float16, bfloat16, "
            f"float32, float64), got {t.dtype}; cast with .float()"
        )


def _check_param(name: str, what: str, t, shape) -> None:
    if t is None:
        return
    _check_tensor(name, what, t)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(
            f"{name}: {what} must have shape {tuple(shape)} (normalized_shape), "
            f"got {tuple(t.shape)}; create it with the layer's size"
        )


def _check_eps(name: str, eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0.0:
        raise ValueError(f"{name}: eps must be a non-negative float, got {eps!r}")
    return float(eps)


def _shape(name: str, normalized_shape, x: Tensor) -> tuple:
    if isinstance(normalized_shape, int):
        shape = (normalized_shape,)
    else:
        try:
            shape = tuple(int(d) for d in normalized_shape)
        except TypeError:
            raise TypeError(
                f"{name}: normalized_shape must be an int or a sequence of ints, "
                f"got {type(normalized_shape).__name__}"
            ) from None
    k = len(shape)
    if k == 0 or x.dim() < k or tuple(x.shape[x.dim() - k :]) != shape:
        raise ValueError(
            f"{name}: normalized_shape={list(shape)} must equal the trailing dims "
            f"of x, got x of shape {tuple(x.shape)}; pass "
            f"normalized_shape=x.shape[-{max(k, 1)}:]"
        )
    return shape


def _check_add_inputs(name: str, x, residual, normalized_shape, weight, bias):
    _check_tensor(name, "x", x)
    if residual is not None:
        _check_tensor(name, "residual", residual)
        if residual.shape != x.shape:
            raise ValueError(
                f"{name}: residual must have x's shape {tuple(x.shape)}, got "
                f"{tuple(residual.shape)}; the residual stream and the sublayer "
                "output are added elementwise (no broadcasting)"
            )
        if residual.device != x.device:
            raise ValueError(
                f"{name}: residual is on {residual.device} but x on {x.device}; "
                "move both to one device"
            )
    shape = _shape(name, normalized_shape, x)
    _check_param(name, "weight", weight, shape)
    _check_param(name, "bias", bias, shape)
    return shape


def _composite_add(x, residual, residual_in_fp32):
    """h in its dtype and in the compute dtype, with plain torch ops."""
    hdt = schema.h_dtype({"x": x, "residual": residual, "residual_in_fp32": residual_in_fp32})
    cdt = _cdt(hdt)
    # a copy when there is no residual: h is a new tensor, never x itself
    h32 = x.to(cdt, copy=True) if residual is None else x.to(cdt) + residual.to(cdt)
    return h32.to(hdt), h32


def _dims(shape) -> tuple:
    return tuple(range(-len(shape), 0))


def add_rms_norm(
    x: Tensor,
    residual: Optional[Tensor],
    normalized_shape: Union[int, Sequence[int]],
    weight: Optional[Tensor] = None,
    eps: Optional[float] = None,
    *,
    offset: float = 0.0,
    residual_in_fp32: bool = False,
    backend: str = "auto",
) -> Tuple[Tensor, Tensor]:
    r"""Fused residual add and RMS normalization: returns ``(y, h)``.

    .. math:: h = x + r, \qquad
              y = \frac{h}{\sqrt{\langle h^2 \rangle + \epsilon}} \odot (\text{offset} + w)

    The mean is over the trailing ``normalized_shape`` dims. ``h`` is the new residual
    stream of a pre-norm block, ``y`` the sublayer's input. One read of x and residual,
    one write of y and h (cpu/triton backends).

    Args:
        x: (*, *normalized_shape) tensor (the sublayer output).
        residual: tensor of x's shape, or None (then h = x, as a fresh tensor).
        normalized_shape: int or sequence, the trailing shape.
        weight: tensor of shape ``normalized_shape`` or None (no scale). Default None.
        eps: Default None: ``torch.finfo`` eps of the compute dtype (float32 for
            float16/bfloat16/float32 input, float64 for float64), as torch's rms_norm.
        offset: keyword-only, added to weight: 1.0 gives Gemma's ``x * (1 + w)``
            (zero-centred gamma). Needs a weight. Default 0.0.
        residual_in_fp32: keyword-only, return h in float32 for float16/bfloat16
            inputs (the residual stream keeps full precision). Default False: h has
            the promoted dtype of x and residual.
        backend: keyword-only, ``"auto"``, ``"torch"``, ``"cpu"`` or ``"triton"``.

    Shape:
        y like x (x's dtype); h like x (dtype described above).

    Example::

        >>> y, h = add_rms_norm(torch.tensor([[1.0, 2.0]]), torch.tensor([[2.0, 2.0]]), 2,
        ...                     eps=0.0)
        >>> h, y
        (tensor([[3., 4.]]), tensor([[0.8485, 1.1314]]))
    """
    name = "add_rms_norm"
    shape = _check_add_inputs(name, x, residual, normalized_shape, weight, None)
    hdt = schema.h_dtype({"x": x, "residual": residual, "residual_in_fp32": residual_in_fp32})
    if eps is None:
        eps = torch.finfo(_cdt(hdt)).eps
    eps = _check_eps(name, eps)
    if offset != 0.0 and weight is None:
        raise ValueError(
            f"{name}: offset ({offset}) scales (offset + weight) and needs a "
            "weight; pass a weight or offset=0.0"
        )
    w = None if weight is None else (weight + offset if offset != 0.0 else weight)
    if _xp.exporting() or x.numel() == 0:
        h, h32 = _composite_add(x, residual, residual_in_fp32)
        rstd = torch.rsqrt(h32.pow(2).mean(_dims(shape), keepdim=True) + eps)
        y = h32 * rstd
        if w is not None:
            y = y * w.to(y.dtype)
        return y.to(x.dtype), h
    if _native.takes_fused(name, x, backend, residual, w):
        return _native.add_rms_norm(x, residual, shape, w, eps)
    backends = dispatch.resolve_all(_ADD_RMS_OPS, x, backend)
    return AddRMSNormFunction.apply(
        x,
        residual,
        None if w is None else w.reshape(-1),
        eps,
        bool(residual_in_fp32),
        backends,
        math.prod(shape),
    )


def add_layer_norm(
    x: Tensor,
    residual: Optional[Tensor],
    normalized_shape: Union[int, Sequence[int]],
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    *,
    residual_in_fp32: bool = False,
    backend: str = "auto",
) -> Tuple[Tensor, Tensor]:
    r"""Fused residual add and layer normalization: returns ``(y, h)``.

    .. math:: h = x + r, \qquad y = w \odot \frac{h - \mu}{\sqrt{\sigma^2 + \epsilon}} + b

    Args:
        x: (*, *normalized_shape) tensor.
        residual: tensor of x's shape, or None (then h = x, as a fresh tensor).
        normalized_shape: int or sequence, the trailing shape.
        weight, bias: tensors of shape ``normalized_shape`` or None. Default None.
        eps: Default 1e-5.
        residual_in_fp32: keyword-only, as :func:`add_rms_norm`. Default False.
        backend: keyword-only, as :func:`add_rms_norm`.

    Shape:
        y and h like x.

    Example::

        >>> y, h = add_layer_norm(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 1.0]]), 2,
        ...                       eps=0.0)
        >>> y
        tensor([[-1.,  1.]])
    """
    name = "add_layer_norm"
    shape = _check_add_inputs(name, x, residual, normalized_shape, weight, bias)
    eps = _check_eps(name, eps)
    if _xp.exporting() or x.numel() == 0:
        h, h32 = _composite_add(x, residual, residual_in_fp32)
        y = torch.nn.functional.layer_norm(
            h32,
            shape,
            None if weight is None else weight.to(h32.dtype),
            None if bias is None else bias.to(h32.dtype),
            eps,
        )
        return y.to(x.dtype), h
    if _native.takes_fused(name, x, backend, residual, weight, bias):
        return _native.add_layer_norm(x, residual, shape, weight, bias, eps)
    backends = dispatch.resolve_all(_ADD_LN_OPS, x, backend)
    return AddLayerNormFunction.apply(
        x,
        residual,
        None if weight is None else weight.reshape(-1),
        None if bias is None else bias.reshape(-1),
        eps,
        bool(residual_in_fp32),
        backends,
        math.prod(shape),
    )


def modulated_layer_norm(
    x: Tensor, shift: Tensor, scale: Tensor, eps: float = 1e-6, *, backend: str = "auto"
) -> Tensor:
    r"""LayerNorm without affine, modulated per sample (DiT's adaLN): fused.

    .. math:: y_{n,t} = \frac{x_{n,t} - \mu_{n,t}}{\sqrt{\sigma^2_{n,t} + \epsilon}}
              \odot (1 + \text{scale}_n) + \text{shift}_n

    Statistics over the last dim D; shift and scale broadcast over the tokens.

    Args:
        x: (N, T, D) tensor (any (N, *, D) works: the middle dims are tokens).
        shift, scale: (N, D) tensors, usually from a conditioning vector
            (:class:`normkit.AdaLayerNorm`).
        eps: Default 1e-6 (DiT's).
        backend: keyword-only, as :func:`add_rms_norm`.

    Shape:
        output like x.

    Example::

        >>> modulated_layer_norm(torch.tensor([[[1.0, 3.0]]]), torch.ones(1, 2),
        ...                      torch.tensor([[1.0, 0.0]]), eps=0.0)
        tensor([[[-1.,  2.]]])
    """
    name = "modulated_layer_norm"
    _check_tensor(name, "x", x)
    _check_tensor(name, "shift", shift)
    _check_tensor(name, "scale", scale)
    if x.dim() < 2:
        raise ValueError(
            f"{name}: x must be (N, T, D), got shape {tuple(x.shape)}; add a "
            "token dim with x.unsqueeze(1)"
        )
    want = (x.shape[0], x.shape[-1])
    for what, t in (("shift", shift), ("scale", scale)):
        if tuple(t.shape) != want:
            raise ValueError(
                f"{name}: {what} must have shape (N, D) = {want} for x of shape "
                f"{tuple(x.shape)}, got {tuple(t.shape)}; one row per sample"
            )
        if t.device != x.device:
            raise ValueError(
                f"{name}: {what} is on {t.device} but x on {x.device}; move both to one device"
            )
    eps = _check_eps(name, eps)
    if _xp.exporting() or x.numel() == 0:
        cdt = _cdt(x.dtype)
        bshape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        x_hat = torch.nn.functional.layer_norm(x.to(cdt), (x.shape[-1],), None, None, eps)
        y = x_hat * (1.0 + scale.to(cdt).reshape(bshape)) + shift.to(cdt).reshape(bshape)
        return y.to(x.dtype)
    if _native.takes_fused(name, x, backend, shift, scale):
        return _native.modulated_layer_norm(x, shift, scale, eps)
    backends = dispatch.resolve_all(_MODULATED_OPS, x, backend)
    return ModulatedLayerNormFunction.apply(x, shift, scale, eps, backends)
