"""Modules of the fused residual-add norms and of DiT's adaptive (modulated) LayerNorm.

Math, backward and when to use each: docs/fused-norms.md.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import init
from torch.nn.parameter import Parameter

from ..fused import add_layer_norm, add_rms_norm, modulated_layer_norm

__all__ = ["AddRMSNorm", "AddLayerNorm", "AdaLayerNorm"]


def _dim(name: str, dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"{name}: dim must be a positive int (the feature size), got {dim!r}")
    return dim


class AddRMSNorm(nn.Module):
    r"""Residual add fused with RMSNorm (pre-norm blocks): ``forward(x, residual) -> (y, h)``.

    .. math:: h = x + r, \qquad y = \frac{h}{\sqrt{\langle h^2 \rangle + \epsilon}}
              \odot (\text{offset} + w)

    Args:
        dim: D, the size of the last dim.
        eps: Default None (``torch.finfo`` eps of the compute dtype, as torch's RMSNorm).
        offset: added to the weight; 1.0 is Gemma's zero-centred ``(1 + w)``. The weight
            starts at ``1 - offset`` so the layer starts as plain RMSNorm. Default 0.0.
        residual_in_fp32: keyword-only, keep h in float32 for half inputs. Default False.
        device, dtype: factory kwargs.

    Shape:
        x, residual: (*, D) (residual may be None); y and h: (*, D).

    Example::

        >>> norm = AddRMSNorm(8)
        >>> y, h = norm(torch.randn(2, 8), torch.randn(2, 8))
    """

    def __init__(
        self,
        dim: int,
        eps: Optional[float] = None,
        offset: float = 0.0,
        *,
        residual_in_fp32: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.dim = _dim("AddRMSNorm", dim)
        self.eps = eps
        self.offset = float(offset)
        self.residual_in_fp32 = residual_in_fp32
        self.backend = "auto"
        self.weight = Parameter(torch.empty(dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight <- 1 - offset (initial scale 1)."""
        init.constant_(self.weight, 1.0 - self.offset)

    def forward(
        self, x: torch.Tensor, residual: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        return add_rms_norm(
            x,
            residual,
            self.dim,
            self.weight,
            self.eps,
            offset=self.offset,
            residual_in_fp32=self.residual_in_fp32,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, offset={self.offset}"


class AddLayerNorm(nn.Module):
    r"""Residual add fused with LayerNorm: ``forward(x, residual) -> (y, h)``.

    .. math:: h = x + r, \qquad y = w \odot \frac{h - \mu}{\sqrt{\sigma^2 + \epsilon}} + b

    Args:
        dim: D, the size of the last dim.
        eps: Default 1e-5.
        residual_in_fp32: keyword-only, as :class:`AddRMSNorm`. Default False.
        device, dtype: factory kwargs.

    Shape:
        x, residual: (*, D) (residual may be None); y and h: (*, D).

    Example::

        >>> y, h = AddLayerNorm(8)(torch.randn(2, 8), torch.randn(2, 8))
    """

    def __init__(
        self,
        dim: int,
        eps: float = 1e-5,
        *,
        residual_in_fp32: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.dim = _dim("AddLayerNorm", dim)
        self.eps = eps
        self.residual_in_fp32 = residual_in_fp32
        self.backend = "auto"
        self.weight = Parameter(torch.empty(dim, device=device, dtype=dtype))
        self.bias = Parameter(torch.empty(dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight <- 1, bias <- 0."""
        init.ones_(self.weight)
        init.zeros_(self.bias)

    def forward(
        self, x: torch.Tensor, residual: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        return add_layer_norm(
            x,
            residual,
            self.dim,
            self.weight,
            self.bias,
            self.eps,
            residual_in_fp32=self.residual_in_fp32,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


class AdaLayerNorm(nn.Module):
    r"""DiT's adaptive LayerNorm (adaLN-Zero): shift, scale and gate from a conditioning vector.

    .. math::
        (\text{shift}, \text{scale}, \text{gate}) = \mathrm{Linear}(\mathrm{SiLU}(c)), \quad
        y = \mathrm{LN}(x) \odot (1 + \text{scale}) + \text{shift}

    ``forward(x, c)`` returns ``(y, gate)``: ``y`` is the modulated norm of x (the
    sublayer's input), ``gate`` (N, D) scales the sublayer's output on its way into the
    residual stream, ``x = x + gate[:, None] * block(y)`` (Peebles & Xie 2023, "Scalable
    Diffusion Models with Transformers", section 3.2). With ``zero_init`` the Linear
    starts at zero, so shift = scale = gate = 0: the LayerNorm is plain and every
    gated block starts as the identity (adaLN-Zero).

    Args:
        dim: D, the token feature size.
        cond_dim: size of the conditioning vector c (timestep + class embedding in DiT).
        zero_init: zero the Linear's weight and bias. Default True.
        eps: Default 1e-6 (DiT's).
        device, dtype: factory kwargs.

    Shape:
        x: (N, T, D); c: (N, cond_dim); y: (N, T, D); gate: (N, D).

    Example::

        >>> ada = AdaLayerNorm(8, 4)
        >>> y, gate = ada(torch.randn(2, 5, 8), torch.randn(2, 4))
    """

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        zero_init: bool = True,
        eps: float = 1e-6,
        *,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.dim = _dim("AdaLayerNorm", dim)
        _dim("AdaLayerNorm", cond_dim)
        self.zero_init = zero_init
        self.eps = eps
        self.backend = "auto"
        self.linear = nn.Linear(cond_dim, 3 * dim, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero the Linear (zero_init) or keep torch's default initialization."""
        self.linear.reset_parameters()
        if self.zero_init:
            init.zeros_(self.linear.weight)
            init.zeros_(self.linear.bias)

    def modulation(self, c: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(shift, scale, gate), each (N, D), from the conditioning vector c (N, cond_dim)."""
        if c.dim() != 2 or c.shape[1] != self.linear.in_features:
            raise ValueError(
                f"AdaLayerNorm: c must be (N, cond_dim={self.linear.in_features}),"
                f" got shape {tuple(c.shape)}"
            )
        shift, scale, gate = self.linear(nn.functional.silu(c)).chunk(3, dim=1)
        # the gate gets its own (N, D) storage: as a chunk it would share memory with
        # scale, which the norm saves for backward, and in-place updates of the gate
        # (gate.mul_(...)) would then break the backward pass
        return shift, scale, gate.clone()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        shift, scale, gate = self.modulation(c)
        return modulated_layer_norm(x, shift, scale, self.eps, backend=self.backend), gate

    def extra_repr(self) -> str:
        return f"{self.dim}, cond_dim={self.linear.in_features}, eps={self.eps}"
