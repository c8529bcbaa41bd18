"""Input validation shared by :mod:`normkit.functional` and :mod:`normkit.interop`.

A leaf module (it imports only torch and :mod:`normkit.conventions`), so both the eager
functional layer and the ONNX exporter validate LRN inputs the same way without
importing each other.
"""

from __future__ import annotations

import torch

from .conventions import CanonicalLRN

__all__ = ["FLOATS", "check_tensor", "check_channel_dim", "check_lrn_input", "check_groups"]

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, input) -> None:
    """Raise unless ``input`` is a floating-point tensor."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(
            f"{name}: input must be a torch.Tensor, got {type(input).__name__}; "
            "convert with torch.as_tensor(x, dtype=torch.float32)"
        )
    if input.dtype not in FLOATS:
        raise TypeError(
            f"{name}: input dtype must be floating point (float16, bfloat16, "
            f"float32, float64), got {input.dtype}; cast with .float()"
        )


def check_channel_dim(name: str, input: torch.Tensor, channel_dim) -> int:
    """``channel_dim`` made non-negative; raise if it is not a non-batch dim of ``input``."""
    if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
        raise TypeError(f"{name}: channel_dim must be an int, got {type(channel_dim).__name__}")
    if not -input.dim() <= channel_dim < input.dim():
        raise ValueError(
            f"{name}: channel_dim must be in [{-input.dim()}, {input.dim() - 1}] "
            f"for a {input.dim()}-D input, got {channel_dim}"
        )
    channel_dim %= input.dim()
    if channel_dim == 0:
        raise ValueError(
            f"{name}: channel_dim=0 is the batch dim; inputs are (N, C, *) "
            "(channel_dim=1) or (N, *, C) (channel_dim=-1)"
        )
    return channel_dim


def check_lrn_input(name: str, input, spec: CanonicalLRN, channel_dim) -> int:
    """Validate an LRN input (tensor, dtype, rank, channel_dim); the channel dim, >= 1."""
    check_tensor(name, input)
    if spec.region == "across" and input.dim() < 3:
        raise ValueError(
            f"{name}: across-channel LRN needs an input of rank >= 3 (N, C, *), "
            f"got shape {tuple(input.shape)}; add a batch dim with x.unsqueeze(0)"
        )
    if spec.region == "within" and input.dim() != 4:
        raise ValueError(
            f"{name}: within-channel LRN needs a 4-D input (N, C, H, W), got "
            f"shape {tuple(input.shape)}"
        )
    return check_channel_dim(name, input, channel_dim)


def check_groups(num_channels: int, num_groups: int, name: str = "GroupNorm") -> None:
    """Raise unless ``num_groups`` is a positive int dividing ``num_channels``."""
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"{name}: num_groups must be a positive int, got {num_groups!r}")
    if num_channels % num_groups:
        raise ValueError(
            f"{name}: num_channels ({num_channels}) must be divisible by num_groups "
            f"({num_groups}); choose num_groups among the divisors of {num_channels}"
        )
