"""``WSConv2d``: a Conv2d whose filters are standardized before every convolution."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["WSConv2d", "standardize_weight"]


def standardize_weight(weight: torch.Tensor, eps: float) -> torch.Tensor:
    r"""Each output filter ``w[o]`` standardized over all other dims (biased variance).

    .. math:: \hat w_o = \frac{w_o - \mathrm{mean}(w_o)}{\sqrt{\mathrm{var}(w_o) + \epsilon}}

    eps sits inside the square root, as BiT's ``StdConv2d`` (Kolesnikov et al., "Big
    Transfer (BiT)", ECCV 2020; their code uses eps 1e-10, timm's ``StdConv2d`` 1e-6).
    float16/bfloat16 weights are standardized in float32 and cast back.
    """
    cdt = torch.float64 if weight.dtype == torch.float64 else torch.float32
    w = weight.to(cdt)
    dims = tuple(range(1, w.dim()))
    var, mean = torch.var_mean(w, dim=dims, keepdim=True, correction=0)
    return ((w - mean) * torch.rsqrt(var + eps)).to(weight.dtype)


class WSConv2d(nn.Conv2d):
    r"""``nn.Conv2d`` with Weight Standardization (Qiao et al., 2019), as in BiT.

    .. math:: y = \hat W * x + b, \qquad
              \hat W_o = \frac{W_o - \mathrm{mean}(W_o)}{\sqrt{\mathrm{var}(W_o) + \epsilon}}

    over each output filter's (in_channels / groups, kh, kw) values, biased variance,
    eps inside the square root (BiT's formula). The standardization is plain torch ops,
    so autograd differentiates through it and both ONNX exporters translate it. Meant to
    be followed by GroupNorm (BiT: WS + GN instead of BN).

    Args:
        in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
        bias=True, padding_mode='zeros', device=None, dtype=None: as ``nn.Conv2d``.
        eps: Default 1e-6.

    Shape:
        as ``nn.Conv2d``.

    Example::

        >>> conv = WSConv2d(3, 8, 3, padding=1)
        >>> conv(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 8, 16, 16])
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        padding_mode="zeros",
        device=None,
        dtype=None,
        eps: float = 1e-6,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device,
            dtype,
        )
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
            raise ValueError(
                f"WSConv2d: eps must be a positive float, got {eps!r}; a filter "
                "with all-equal values has variance 0"
            )
        self.eps = float(eps)

    def standardized_weight(self) -> torch.Tensor:
        """The weight the convolution uses (differentiable)."""
        return standardize_weight(self.weight, self.eps)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(input, self.standardized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eps={self.eps}"
