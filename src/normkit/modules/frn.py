"""``FilterResponseNorm2d``: FRN + TLU (Singh & Krishnan, CVPR 2020)."""

from __future__ import annotations

import torch
from torch import nn

from ..functional import filter_response_norm

__all__ = ["FilterResponseNorm2d"]


class FilterResponseNorm2d(nn.Module):
    r"""Filter Response Normalization with the Thresholded Linear Unit.

    .. math::
        y = \max\Big(\gamma_c \frac{x}{\sqrt{\frac{1}{HW}\sum_{h,w} x^2 + \epsilon}}
            + \beta_c,\ \tau_c\Big)

    Normalizes each (sample, channel) plane by its mean square (no centring, no batch
    statistics: the same in training and evaluation, any batch size); the TLU
    ``max(., tau)`` with a learned threshold replaces the ReLU that would follow.
    With ``learnable_eps`` the epsilon is ``eps + |eps_param|`` as in the paper, with a
    per-channel ``eps_param`` initialised to 1e-4 (not 0: the gradient of ``|.|`` is
    0 there, so a zero start would never move).

    Args:
        num_features: C.
        eps: Default 1e-6 (a lower bound when learned).
        learnable_eps: learn ``eps_param`` (C,). Default False.
        device, dtype: factory kwargs.

    Parameters:
        weight (C,) = 1, bias (C,) = 0, tau (C,) = 0, and eps_param (C,) = 1e-4 if learned.

    Shape:
        (N, C, H, W) -> (N, C, H, W).

    Example::

        >>> FilterResponseNorm2d(8)(torch.randn(2, 8, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-6,
        learnable_eps: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(
                f"FilterResponseNorm2d: num_features must be a positive int, got {num_features!r}"
            )
        if not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(
                f"FilterResponseNorm2d: eps must be a positive float, got {eps!r}; "
                "an all-zero plane would divide by 0"
            )
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = float(eps)
        self.learnable_eps = bool(learnable_eps)
        self.backend = "auto"
        self.weight = nn.Parameter(torch.empty(num_features, **factory))
        self.bias = nn.Parameter(torch.empty(num_features, **factory))
        self.tau = nn.Parameter(torch.empty(num_features, **factory))
        if self.learnable_eps:
            self.eps_param = nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter("eps_param", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight <- 1, bias <- 0, tau <- 0, eps_param <- 1e-4."""
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        nn.init.zeros_(self.tau)
        if self.eps_param is not None:
            nn.init.constant_(self.eps_param, 1e-4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(
                f"FilterResponseNorm2d: expected a 4-D input (N, C, H, W), got "
                f"shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"FilterResponseNorm2d: expected {self.num_features} channels, got "
                f"input shape {tuple(x.shape)}"
            )
        eps = self.eps if self.eps_param is None else self.eps + self.eps_param.abs()
        return filter_response_norm(x, self.weight, self.bias, self.tau, eps, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, learnable_eps={self.learnable_eps}"
