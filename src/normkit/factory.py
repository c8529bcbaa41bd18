# PLACEHOLDER for the lead to replace at merge: the real ``create_norm`` is built in a
# parallel branch with normkit's own BatchNorm2d/GroupNorm/.../SyncBatchNorm. This stand-in
# exists only so that the lab (which calls ``normkit.create_norm`` and nothing else) can be
# developed and tested before that merge; it maps the same names onto torch.nn modules and
# normkit.LocalResponseNorm.
"""``create_norm(name, num_channels, **kwargs)``: one entry per normalization (placeholder)."""

from __future__ import annotations

import torch
from torch import nn

from .modules import LocalResponseNorm

NORM_NAMES = ("none", "lrn", "lrn-within", "batch", "group", "layer", "instance", "rms",
              "sync-batch")


def _default_groups(num_channels: int) -> int:
    g = min(32, num_channels)
    while num_channels % g:
        g -= 1
    return g


class _ChannelRMSNorm(nn.Module):
    """RMSNorm over the channel dim of (N, C, *): y = x / sqrt(mean_c x^2 + eps) * weight."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))

    def forward(self, x):
        rms = x.pow(2).mean(dim=1, keepdim=True).add(self.eps).rsqrt()
        shape = [1, -1] + [1] * (x.dim() - 2)
        return x * rms * self.weight.view(shape)


class _PlaceholderSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics are reduced over all processes (works with gloo).

    torch.nn.SyncBatchNorm refuses CPU tensors; this stand-in all-reduces the mean first and
    then the centred sum of squares (two passes, no E[x^2]-E[x]^2 cancellation).
    """

    def forward(self, x):
        import torch.distributed as dist
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce
        dims = [0] + list(range(2, x.dim()))
        count = torch.tensor([float(x.numel() // x.shape[1])], dtype=torch.float32)
        dist.all_reduce(count)
        mean = all_reduce(x.float().sum(dims)) / count
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = x.float() - mean.view(shape)
        var = all_reduce(centred.pow(2).sum(dims)) / count
        with torch.no_grad():
            m = self.momentum
            self.num_batches_tracked += 1
            if m is None:
                m = 1.0 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            unbiased = var.detach() * (count / (count - 1).clamp(min=1))
            self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        y = centred * (var + self.eps).rsqrt().view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def create_norm(name: str, num_channels: int, **kwargs) -> nn.Module:
    """Build the normalization ``name`` for ``num_channels`` channels (placeholder)."""
    if name == "none":
        return nn.Identity()
    if name == "lrn":
        return LocalResponseNorm.from_caffe(local_size=5, alpha=1e-4, beta=0.75, k=1.0)
    if name == "lrn-within":
        return LocalResponseNorm.from_caffe(local_size=3, alpha=5e-5, beta=0.75,
                                            norm_region="WITHIN_CHANNEL")
    if name == "batch":
        return nn.BatchNorm2d(num_channels, **kwargs)
    if name == "sync-batch":
        return _PlaceholderSyncBatchNorm(num_channels, **kwargs)
    if name == "group":
        groups = kwargs.pop("num_groups", _default_groups(num_channels))
        return nn.GroupNorm(groups, num_channels, **kwargs)
    if name == "layer":
        return nn.GroupNorm(1, num_channels, **kwargs)
    if name == "instance":
        kwargs.setdefault("affine", True)
        return nn.InstanceNorm2d(num_channels, **kwargs)
    if name == "rms":
        return _ChannelRMSNorm(num_channels, **kwargs)
    raise ValueError(f"create_norm: unknown normalization {name!r}; choose one of "
                     f"{', '.join(NORM_NAMES)}")
