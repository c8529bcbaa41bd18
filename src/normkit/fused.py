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
from torch.autograd.function import once_differentiable

from . import dispatch
from .library import _op
from .ops.torch_fused import h_dtype

__all__ = ["add_rms_norm", "add_layer_norm", "modulated_layer_norm"]

Tensor = torch.Tensor
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _cdt(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --- custom ops ----------------------------------------------------------------------------
# Every output is a fresh contiguous tensor and never an autograd view (a Function
# whose output is a view forbids in-place ops on it).

def _own(t: Tensor) -> Tensor:
    if not t.is_contiguous():
        t = t.contiguous()
    return t.detach() if t._base is not None else t


def _fresh(t: Tensor, *inputs) -> Tensor:
    ptr = t.untyped_storage().data_ptr()
    if any(i is not None and i.untyped_storage().data_ptr() == ptr for i in inputs):
        t = t.clone()
    return _own(t)


def _stat(t: Tensor, shape, dtype, *inputs) -> Tensor:
    return _fresh(t.to(dtype).reshape(shape), *inputs)


def _wgrad(g, weight, like: Tensor, *inputs) -> Tensor:
    if weight is None or g is None:
        return like.new_empty((0,), dtype=like.dtype if weight is None else weight.dtype)
    return _fresh(g.to(weight.dtype).reshape(weight.shape), weight, *inputs)


@_op("add_rms_norm_fwd")
def add_rms_norm_fwd(x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor], eps: float,
                     residual_in_fp32: bool, backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """Rows (M, D) -> (y, h, rstd (M,)), h = x + residual, y = RMSNorm(h) * weight."""
    y, h, rstd = dispatch.call("add_rms_norm_fwd", backend, x, residual, weight, eps,
                               residual_in_fp32)
    hdt = h_dtype(x, residual, residual_in_fp32)
    return (_fresh(y, x, residual, weight), _fresh(h.to(hdt), x, residual, weight),
            _stat(rstd, (x.shape[0],), _cdt(hdt), x, residual, weight))


@add_rms_norm_fwd.register_fake
def _add_rms_norm_fwd_fake(x, residual, weight, eps, residual_in_fp32, backend):
    hdt = h_dtype(x, residual, residual_in_fp32)
    return (x.new_empty(x.shape), x.new_empty(x.shape, dtype=hdt),
            x.new_empty((x.shape[0],), dtype=_cdt(hdt)))


@_op("add_rms_norm_bwd")
def add_rms_norm_bwd(dy: Tensor, dh: Optional[Tensor], h: Tensor, rstd: Tensor,
                     weight: Optional[Tensor], backend: str) -> Tuple[Tensor, Tensor]:
    """(dsum (M, D) in h's dtype, dweight); dsum = dx = dresidual; dweight (0,) without weight."""
    dsum, dweight = dispatch.call("add_rms_norm_bwd", backend, dy, dh, h, rstd, weight)
    return (_fresh(dsum.to(h.dtype), dy, dh, h, weight),
            _wgrad(dweight, weight, h, dy, dh))


@add_rms_norm_bwd.register_fake
def _add_rms_norm_bwd_fake(dy, dh, h, rstd, weight, backend):
    dw = h.new_empty((0,)) if weight is None else weight.new_empty(weight.shape)
    return h.new_empty(h.shape), dw


@_op("add_layer_norm_fwd")
def add_layer_norm_fwd(x: Tensor, residual: Optional[Tensor], weight: Optional[Tensor],
                       bias: Optional[Tensor], eps: float, residual_in_fp32: bool,
                       backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rows (M, D) -> (y, h, mean (M,), rstd (M,)), y = LayerNorm(x + residual)."""
    y, h, mean, rstd = dispatch.call("add_layer_norm_fwd", backend, x, residual, weight, bias,
                                     eps, residual_in_fp32)
    hdt = h_dtype(x, residual, residual_in_fp32)
    ins = (x, residual, weight, bias)
    return (_fresh(y, *ins), _fresh(h.to(hdt), *ins), _stat(mean, (x.shape[0],), _cdt(hdt), *ins),
            _stat(rstd, (x.shape[0],), _cdt(hdt), *ins))


@add_layer_norm_fwd.register_fake
def _add_layer_norm_fwd_fake(x, residual, weight, bias, eps, residual_in_fp32, backend):
    hdt = h_dtype(x, residual, residual_in_fp32)
    m = x.shape[0]
    return (x.new_empty(x.shape), x.new_empty(x.shape, dtype=hdt),
            x.new_empty((m,), dtype=_cdt(hdt)), x.new_empty((m,), dtype=_cdt(hdt)))


@_op("add_layer_norm_bwd")
def add_layer_norm_bwd(dy: Tensor, dh: Optional[Tensor], h: Tensor, mean: Tensor, rstd: Tensor,
                       weight: Optional[Tensor], backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """(dsum, dweight, dbias (D,)); dbias in the weight's dtype (h's without weight)."""
    dsum, dweight, dbias = dispatch.call("add_layer_norm_bwd", backend, dy, dh, h, mean, rstd,
                                         weight)
    bdt = h.dtype if weight is None else weight.dtype
    return (_fresh(dsum.to(h.dtype), dy, dh, h, weight), _wgrad(dweight, weight, h, dy, dh),
            _stat(dbias, (h.shape[1],), bdt, dy, dh, h, weight))


@add_layer_norm_bwd.register_fake
def _add_layer_norm_bwd_fake(dy, dh, h, mean, rstd, weight, backend):
    dw = h.new_empty((0,)) if weight is None else weight.new_empty(weight.shape)
    bdt = h.dtype if weight is None else weight.dtype
    return h.new_empty(h.shape), dw, h.new_empty((h.shape[1],), dtype=bdt)


@_op("modulated_layer_norm_fwd")
def modulated_layer_norm_fwd(x: Tensor, shift: Tensor, scale: Tensor, eps: float,
                             backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """x (N, T, D), shift/scale (N, D) -> (y, mean (N, T), rstd (N, T))."""
    y, mean, rstd = dispatch.call("modulated_layer_norm_fwd", backend, x, shift, scale, eps)
    shape = tuple(x.shape[:2])
    return (_fresh(y.to(x.dtype), x, shift, scale),
            _stat(mean, shape, _cdt(x.dtype), x, shift, scale),
            _stat(rstd, shape, _cdt(x.dtype), x, shift, scale))


@modulated_layer_norm_fwd.register_fake
def _modulated_layer_norm_fwd_fake(x, shift, scale, eps, backend):
    shape = tuple(x.shape[:2])
    return (x.new_empty(x.shape), x.new_empty(shape, dtype=_cdt(x.dtype)),
            x.new_empty(shape, dtype=_cdt(x.dtype)))


@_op("modulated_layer_norm_bwd")
def modulated_layer_norm_bwd(dy: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, scale: Tensor,
                             backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """(dx, dshift (N, D), dscale (N, D)); dshift/dscale in scale's dtype."""
    dx, dshift, dscale = dispatch.call("modulated_layer_norm_bwd", backend, dy, x, mean, rstd,
                                       scale)
    ins = (dy, x, mean, rstd, scale)
    return (_fresh(dx.to(x.dtype), *ins), _stat(dshift, scale.shape, scale.dtype, *ins),
            _stat(dscale, scale.shape, scale.dtype, *ins))


@modulated_layer_norm_bwd.register_fake
def _modulated_layer_norm_bwd_fake(dy, x, mean, rstd, scale, backend):
    return x.new_empty(x.shape), scale.new_empty(scale.shape), scale.new_empty(scale.shape)


# --- autograd Functions --------------------------------------------------------------------

def _cast(g, like):
    return None if like is None or g is None else g.to(like.dtype)


def _flat(t, d: int):
    return None if t is None else t.reshape(-1, d).contiguous()


def _input_grads(ctx, dsum):
    """dx and dresidual: the same values (h = x + residual), each in its input's dtype."""
    xdt, rdt = ctx.dtypes
    dsum = dsum.reshape(ctx.shape)
    return dsum.to(xdt), None if rdt is None else dsum.to(rdt)


class AddRMSNormFunction(torch.autograd.Function):
    """h = x + residual, y = RMSNorm(h) * weight over the last dim (D = weight's or
    ``d``); saves h, rstd, weight. Takes and returns x's shape (outputs never views)."""

    @staticmethod
    def forward(ctx, x, residual, weight, eps: float, residual_in_fp32: bool, backends: dict,
                d: int):
        y, h, rstd = add_rms_norm_fwd(x.reshape(-1, d), _flat(residual, d), weight, eps,
                                      residual_in_fp32, backends["add_rms_norm_fwd"])
        ctx.save_for_backward(h, rstd, weight)
        ctx.shape = x.shape
        ctx.backend = backends["add_rms_norm_bwd"]
        ctx.dtypes = (x.dtype, None if residual is None else residual.dtype)
        ctx.set_materialize_grads(False)  # dh is None when h is not used
        return _own(y.reshape(x.shape)), _own(h.reshape(x.shape))

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh):
        h, rstd, weight = ctx.saved_tensors
        dy = torch.zeros_like(h, dtype=ctx.dtypes[0]) if dy is None else _flat(dy, h.shape[1])
        dsum, dweight = add_rms_norm_bwd(dy, _flat(dh, h.shape[1]), h, rstd, weight, ctx.backend)
        return _input_grads(ctx, dsum) + (_cast(dweight, weight), None, None, None, None)


class AddLayerNormFunction(torch.autograd.Function):
    """h = x + residual, y = LayerNorm(h) over the last d features; saves h, mean, rstd,
    weight. Takes and returns x's shape (outputs never views)."""

    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps: float, residual_in_fp32: bool,
                backends: dict, d: int):
        y, h, mean, rstd = add_layer_norm_fwd(x.reshape(-1, d), _flat(residual, d), weight,
                                              bias, eps, residual_in_fp32,
                                              backends["add_layer_norm_fwd"])
        ctx.save_for_backward(h, mean, rstd, weight, bias)
        ctx.shape = x.shape
        ctx.backend = backends["add_layer_norm_bwd"]
        ctx.dtypes = (x.dtype, None if residual is None else residual.dtype)
        ctx.set_materialize_grads(False)
        return _own(y.reshape(x.shape)), _own(h.reshape(x.shape))

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, dh):
        h, mean, rstd, weight, bias = ctx.saved_tensors
        dy = torch.zeros_like(h, dtype=ctx.dtypes[0]) if dy is None else _flat(dy, h.shape[1])
        dsum, dweight, dbias = add_layer_norm_bwd(dy, _flat(dh, h.shape[1]), h, mean, rstd,
                                                  weight, ctx.backend)
        return _input_grads(ctx, dsum) + (_cast(dweight, weight), _cast(dbias, bias), None,
                                          None, None, None)


class ModulatedLayerNormFunction(torch.autograd.Function):
    """y = LN(x) (1 + scale) + shift for x (N, T, D); saves x, mean, rstd, scale."""

    @staticmethod
    def forward(ctx, x, shift, scale, eps: float, backends: dict):
        x3 = x.reshape(x.shape[0], -1, x.shape[-1])
        y, mean, rstd = modulated_layer_norm_fwd(x3, shift, scale, eps,
                                                 backends["modulated_layer_norm_fwd"])
        ctx.save_for_backward(x3, mean, rstd, scale)
        ctx.shape = x.shape
        ctx.backend = backends["modulated_layer_norm_bwd"]
        ctx.shift_dtype = shift.dtype
        return _own(y.reshape(x.shape))

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, mean, rstd, scale = ctx.saved_tensors
        dx, dshift, dscale = modulated_layer_norm_bwd(dy.reshape(x.shape).contiguous(), x, mean,
                                                      rstd, scale, ctx.backend)
        return dx.reshape(ctx.shape), dshift.to(ctx.shift_dtype), dscale, None, None


# --- functional ----------------------------------------------------------------------------

def _exporting() -> bool:
    """True under torch.export / the dynamo ONNX exporter / the TorchScript ONNX exporter:
    the exported graph then holds plain torch ops, not normkit's custom ops."""
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def _check_tensor(name: str, what: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: {what} must be a torch.Tensor, got {type(t).__name__}; "
                        "convert with torch.as_tensor(v, dtype=torch.float32)")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name}: {what} dtype must be floating point (float16, bfloat16, "
                        f"float32, float64), got {t.dtype}; cast with .float()")


def _check_param(name: str, what: str, t, shape) -> None:
    if t is None:
        return
    _check_tensor(name, what, t)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: {what} must have shape {tuple(shape)} (normalized_shape), "
                         f"got {tuple(t.shape)}; create it with the layer's size")


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
            raise TypeError(f"{name}: normalized_shape must be an int or a sequence of ints, "
                            f"got {type(normalized_shape).__name__}") from None
    k = len(shape)
    if k == 0 or x.dim() < k or tuple(x.shape[x.dim() - k:]) != shape:
        raise ValueError(f"{name}: normalized_shape={list(shape)} must equal the trailing dims "
                         f"of x, got x of shape {tuple(x.shape)}; pass "
                         f"normalized_shape=x.shape[-{max(k, 1)}:]")
    return shape


def _check_add_inputs(name: str, x, residual, normalized_shape, weight, bias):
    _check_tensor(name, "x", x)
    if residual is not None:
        _check_tensor(name, "residual", residual)
        if residual.shape != x.shape:
            raise ValueError(f"{name}: residual must have x's shape {tuple(x.shape)}, got "
                             f"{tuple(residual.shape)}; the residual stream and the sublayer "
                             "output are added elementwise (no broadcasting)")
        if residual.device != x.device:
            raise ValueError(f"{name}: residual is on {residual.device} but x on {x.device}; "
                             "move both to one device")
    shape = _shape(name, normalized_shape, x)
    _check_param(name, "weight", weight, shape)
    _check_param(name, "bias", bias, shape)
    return shape


def _composite_add(x, residual, residual_in_fp32):
    """h in its dtype and in the compute dtype, with plain torch ops."""
    hdt = h_dtype(x, residual, residual_in_fp32)
    cdt = _cdt(hdt)
    # a copy when there is no residual: h is a new tensor, never x itself
    h32 = x.to(cdt, copy=True) if residual is None else x.to(cdt) + residual.to(cdt)
    return h32.to(hdt), h32


def _dims(shape) -> tuple:
    return tuple(range(-len(shape), 0))


def add_rms_norm(x: Tensor, residual: Optional[Tensor],
                 normalized_shape: Union[int, Sequence[int]], weight: Optional[Tensor] = None,
                 eps: Optional[float] = None, *, offset: float = 0.0,
                 residual_in_fp32: bool = False,
                 backend: str = "auto") -> Tuple[Tensor, Tensor]:
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
    hdt = h_dtype(x, residual, residual_in_fp32)
    if eps is None:
        eps = torch.finfo(_cdt(hdt)).eps
    eps = _check_eps(name, eps)
    if offset != 0.0 and weight is None:
        raise ValueError(f"{name}: offset ({offset}) scales (offset + weight) and needs a "
                         "weight; pass a weight or offset=0.0")
    w = None if weight is None else (weight + offset if offset != 0.0 else weight)
    if _exporting() or x.numel() == 0:
        h, h32 = _composite_add(x, residual, residual_in_fp32)
        rstd = torch.rsqrt(h32.pow(2).mean(_dims(shape), keepdim=True) + eps)
        y = h32 * rstd
        if w is not None:
            y = y * w.to(y.dtype)
        return y.to(x.dtype), h
    backends = {op: dispatch.resolve(op, x, backend)
                for op in ("add_rms_norm_fwd", "add_rms_norm_bwd")}
    return AddRMSNormFunction.apply(x, residual, None if w is None else w.reshape(-1), eps,
                                    bool(residual_in_fp32), backends, math.prod(shape))


def add_layer_norm(x: Tensor, residual: Optional[Tensor],
                   normalized_shape: Union[int, Sequence[int]], weight: Optional[Tensor] = None,
                   bias: Optional[Tensor] = None, eps: float = 1e-5, *,
                   residual_in_fp32: bool = False,
                   backend: str = "auto") -> Tuple[Tensor, Tensor]:
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
    if _exporting() or x.numel() == 0:
        h, h32 = _composite_add(x, residual, residual_in_fp32)
        y = torch.nn.functional.layer_norm(
            h32, shape, None if weight is None else weight.to(h32.dtype),
            None if bias is None else bias.to(h32.dtype), eps)
        return y.to(x.dtype), h
    backends = {op: dispatch.resolve(op, x, backend)
                for op in ("add_layer_norm_fwd", "add_layer_norm_bwd")}
    return AddLayerNormFunction.apply(x, residual,
                                      None if weight is None else weight.reshape(-1),
                                      None if bias is None else bias.reshape(-1), eps,
                                      bool(residual_in_fp32), backends, math.prod(shape))


def modulated_layer_norm(x: Tensor, shift: Tensor, scale: Tensor, eps: float = 1e-6, *,
                         backend: str = "auto") -> Tensor:
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
        raise ValueError(f"{name}: x must be (N, T, D), got shape {tuple(x.shape)}; add a "
                         "token dim with x.unsqueeze(1)")
    want = (x.shape[0], x.shape[-1])
    for what, t in (("shift", shift), ("scale", scale)):
        if tuple(t.shape) != want:
            raise ValueError(f"{name}: {what} must have shape (N, D) = {want} for x of shape "
                             f"{tuple(x.shape)}, got {tuple(t.shape)}; one row per sample")
        if t.device != x.device:
            raise ValueError(f"{name}: {what} is on {t.device} but x on {x.device}; move both "
                             "to one device")
    eps = _check_eps(name, eps)
    if _exporting() or x.numel() == 0:
        cdt = _cdt(x.dtype)
        bshape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        x_hat = torch.nn.functional.layer_norm(x.to(cdt), (x.shape[-1],), None, None, eps)
        y = x_hat * (1.0 + scale.to(cdt).reshape(bshape)) + shift.to(cdt).reshape(bshape)
        return y.to(x.dtype)
    backends = {op: dispatch.resolve(op, x, backend)
                for op in ("modulated_layer_norm_fwd", "modulated_layer_norm_bwd")}
    return ModulatedLayerNormFunction.apply(x, shift, scale, eps, backends)
