r"""Filter Response Normalization + TLU: custom ops, autograd Function and the functional.

The layer is FRN followed by the Thresholded Linear Unit (Singh & Krishnan, CVPR 2020)::

    y = max(weight * x / sqrt(mean_{H,W}(x^2) + eps) + bias, tau)

Backends (:mod:`normkit.dispatch`): ``torch`` (:mod:`normkit.ops.torch_frn`), ``cpu``
(numba, :mod:`normkit.ops.cpu.frn`) and ``triton`` (:mod:`normkit.ops.triton.frn`).
The ops are ``normkit::frn_fwd`` / ``normkit::frn_bwd`` custom ops with fake
implementations, so ``torch.compile(fullgraph=True)`` keeps each kernel as one graph node.
While exporting (``torch.compiler.is_exporting()`` or ``torch.onnx.is_in_onnx_export()``)
the functional computes with plain torch ops, which both ONNX exporters translate.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch.autograd.function import once_differentiable

from . import dispatch
from .library import _fresh, _like, _op
from .ops import torch_frn

__all__ = ["filter_response_norm", "FilterResponseNormFunction", "frn_fwd", "frn_bwd"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _register() -> None:
    dispatch.register("frn_fwd", "torch", torch_frn.frn_fwd)
    dispatch.register("frn_bwd", "torch", torch_frn.frn_bwd)
    try:
        from .ops import cpu
        from .ops.cpu import frn as cpu_frn
    except ImportError:  # numba missing: no cpu backend
        pass
    else:
        dispatch.register("frn_fwd", "cpu", cpu_frn.frn_fwd, cpu.why_not)
        dispatch.register("frn_bwd", "cpu", cpu_frn.frn_bwd, cpu.why_not)
    try:
        from .ops import triton as triton_ops
        from .ops.triton import frn as triton_frn
    except ImportError:  # triton missing: no triton backend
        return
    dispatch.register("frn_fwd", "triton", triton_frn.frn_fwd, triton_ops.why_not_tensor)
    dispatch.register("frn_bwd", "triton", triton_frn.frn_bwd, triton_ops.why_not_tensor)


_register()


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@_op("frn_fwd")
def frn_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, tau: torch.Tensor,
            eps: torch.Tensor, backend: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """FRN + TLU of (N, C, L) -> (y, rstd (N, C)) on the resolved ``backend``."""
    y, rstd = dispatch.call("frn_fwd", backend, x, weight, bias, tau, eps)
    rstd = rstd.to(_stats_dtype(x)).reshape(x.shape[0], x.shape[1]).contiguous()
    return (_fresh(_like(x, y), x, weight, bias, tau, eps),
            _fresh(rstd, x, weight, bias, tau, eps))


@frn_fwd.register_fake
def _frn_fwd_fake(x, weight, bias, tau, eps, backend):
    return torch.empty_like(x), x.new_empty((x.shape[0], x.shape[1]), dtype=_stats_dtype(x))


@_op("frn_bwd")
def frn_bwd(dy: torch.Tensor, x: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor,
            bias: torch.Tensor, tau: torch.Tensor, backend: str
            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias, dtau, deps); the last four (C,) in the statistics dtype."""
    dx, *grads = dispatch.call("frn_bwd", backend, dy, x, rstd, weight, bias, tau)
    c = x.shape[1]
    ins = (dy, x, rstd, weight, bias, tau)
    grads = [_fresh(g.to(_stats_dtype(x)).reshape(c).contiguous(), *ins) for g in grads]
    return (_fresh(_like(x, dx), *ins), *grads)


@frn_bwd.register_fake
def _frn_bwd_fake(dy, x, rstd, weight, bias, tau, backend):
    c = x.shape[1]
    return (torch.empty_like(x),) + tuple(x.new_empty((c,), dtype=_stats_dtype(x))
                                          for _ in range(4))


class FilterResponseNormFunction(torch.autograd.Function):
    """FRN + TLU of (N, C, L); saves x, rstd (N, C), weight, bias and tau (never y).

    Outputs are fresh tensors, not views of an input, so in-place ops on them work.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, tau, eps, backends: dict):
        y, rstd = frn_fwd(x, weight, bias, tau, eps, backends["frn_fwd"])
        ctx.save_for_backward(x, rstd, weight, bias, tau)
        ctx.backend = backends["frn_bwd"]
        ctx.dtypes = tuple(t.dtype for t in (weight, bias, tau, eps))
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, rstd, weight, bias, tau = ctx.saved_tensors
        dx, *grads = frn_bwd(dy, x, rstd, weight, bias, tau, ctx.backend)
        grads = [g.to(dt) if need else None
                 for g, dt, need in zip(grads, ctx.dtypes, ctx.needs_input_grad[1:5])]
        return (dx if ctx.needs_input_grad[0] else None, *grads, None)


def _exporting() -> bool:
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def _param(name: str, t, c: int, fill: float, like: torch.Tensor) -> torch.Tensor:
    if t is None:
        return torch.full((c,), fill, dtype=like.dtype if like.dtype == torch.float64
                          else torch.float32, device=like.device)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"filter_response_norm: {name} must be a torch.Tensor or None, got "
                        f"{type(t).__name__}")
    if t.numel() != c:
        raise ValueError(f"filter_response_norm: {name} must have {c} elements (one per "
                         f"channel), got shape {tuple(t.shape)}; create it with shape ({c},)")
    return t.reshape(c)


def _composite(x, weight, bias, tau, eps):
    """The same math in differentiable torch ops (export and the reference for autograd)."""
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    view = (1, -1) + (1,) * (x.dim() - 2)
    xc = x.to(cdt)
    dims = tuple(range(2, x.dim()))
    nu2 = (xc * xc).mean(dims, keepdim=True)
    z = xc * torch.rsqrt(nu2 + eps.to(cdt).view(view)) * weight.to(cdt).view(view) \
        + bias.to(cdt).view(view)
    return torch.maximum(z, tau.to(cdt).view(view)).to(x.dtype)


def filter_response_norm(input: torch.Tensor, weight: Optional[torch.Tensor] = None,
                         bias: Optional[torch.Tensor] = None, tau: Optional[torch.Tensor] = None,
                         eps: Union[float, torch.Tensor] = 1e-6, *,
                         backend: str = "auto") -> torch.Tensor:
    r"""Filter Response Normalization followed by the Thresholded Linear Unit.

    .. math::
        \nu^2_{n,c} = \frac{1}{HW}\sum_{h,w} x_{n,c,h,w}^2, \qquad
        y = \max\Big(\gamma_c \frac{x}{\sqrt{\nu^2_{n,c} + \epsilon_c}} + \beta_c,\ \tau_c\Big)

    (Singh & Krishnan, CVPR 2020). Per sample and channel, no centring, no batch
    dependence. float16/bfloat16 inputs are computed in float32.

    Args:
        input: (N, C, H, W) (any rank >= 3: the mean is over every dim after C).
        weight, bias: (C,) gamma and beta; None means 1 and 0. Default None.
        tau: (C,) TLU threshold; None means no TLU (plain FRN). Default None.
        eps: positive float, or a (C,) tensor (the module passes ``eps + |eps_l|`` when
            eps is learned; its gradient flows). Default 1e-6.
        backend: ``"auto"``, ``"torch"``, ``"cpu"`` or ``"triton"`` (keyword-only).

    Shape:
        output like the input (channels_last stays channels_last).

    Example::

        >>> x = torch.randn(2, 3, 4, 4)
        >>> y = filter_response_norm(x, tau=torch.zeros(3))
        >>> bool((y >= 0).all())
        True
    """
    name = "filter_response_norm"
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name}: input must be a torch.Tensor, got {type(input).__name__}")
    if input.dtype not in _FLOATS:
        raise TypeError(f"{name}: input dtype must be floating point, got {input.dtype}; "
                        "cast with .float()")
    if input.dim() < 3:
        raise ValueError(f"{name}: expected an input of rank >= 3 (N, C, H, W), got shape "
                         f"{tuple(input.shape)}; add a batch dim with x.unsqueeze(0)")
    n, c = input.shape[:2]
    weight = _param("weight", weight, c, 1.0, input)
    bias = _param("bias", bias, c, 0.0, input)
    tau = _param("tau", tau, c, float("-inf"), input)
    if isinstance(eps, torch.Tensor):
        eps_t = _param("eps", eps, c, 0.0, input)
    else:
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
            raise ValueError(f"{name}: eps must be a positive float, got {eps!r}; FRN divides "
                             "by sqrt(mean(x^2) + eps), which is 0 on an all-zero plane")
        eps_t = torch.full((c,), float(eps), dtype=weight.dtype, device=input.device)
    if _exporting():
        return _composite(input, weight, bias, tau, eps_t)
    if input.numel() == 0:
        return _composite(input, weight, bias, tau, eps_t)
    x = input.reshape(n, c, -1)
    backends = {op: dispatch.resolve(op, x, backend) for op in ("frn_fwd", "frn_bwd")}
    y = FilterResponseNormFunction.apply(x, weight, bias, tau, eps_t, backends)
    return y.reshape(input.shape)
