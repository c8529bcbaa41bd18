"""``normkit.create_norm``: one registry of the normalizations a conv net can use.

Each entry maps a name to a builder ``(num_channels, **kwargs) -> nn.Module`` for a
(N, C, H, W) feature map; adding a normalization is one entry in :data:`NORMS`.

======================  ==================================================================
name                    layer
======================  ==================================================================
``none``                ``nn.Identity()``
``lrn``                 LRN across channels, Caffe AlexNet's ``norm1``/``norm2``: Caffe
                        convention, local_size=5, alpha=1e-4 (divided by 5), beta=0.75, k=1
``lrn-within``          Caffe ``WITHIN_CHANNEL`` LRN as in Caffe's CIFAR-10 "full" model:
                        local_size=3 (a 3x3 box), alpha=5e-5 (divided by 9), beta=0.75
``batch``               ``BatchNorm2d(C)``
``sync-batch``          ``SyncBatchNorm(C)`` (CPU/gloo and CUDA/NCCL)
``group``               ``GroupNorm(G, C)``, G = the largest divisor of C not above 32
                        (``num_groups=`` overrides)
``layer``               ``GroupNorm(1, C)``: layer norm over (C, H, W) per sample with a
                        per-channel affine (LayerNorm's usual meaning for conv features)
``instance``            ``InstanceNorm2d(C, affine=True)``
``rms``                 ``ChannelRMSNorm(C)``: RMS over the C channels at each (h, w), with
                        a per-channel weight
``frn``                 ``FilterResponseNorm2d(C)``: FRN + TLU (Singh & Krishnan 2020)
``ws-group``            ``GroupNorm`` as ``group``; the ``ws-`` prefix asks for
                        weight-standardized convolutions (:func:`create_conv` builds
                        ``WSConv2d`` for it): BiT's WS + GN
======================  ==================================================================

Weight Standardization is not a layer after the conv but a change of the conv itself,
so ``create_norm`` cannot build it; a network builder asks :func:`create_conv` for the
conv that goes with a normalization name (``WSConv2d`` for names starting with ``ws-``,
``nn.Conv2d`` otherwise) and :func:`create_norm` for the norm. ``create_norm("ws-group")``
alone is just the GroupNorm.
"""

from __future__ import annotations

from typing import Callable, Dict

from torch import nn

from .families import default_num_groups, norm_builders
from .modules import WSConv2d

__all__ = ["NORMS", "create_norm", "create_conv", "default_num_groups"]


# the create_norm table is assembled from the family registry (normkit.families)
NORMS: Dict[str, Callable[..., nn.Module]] = norm_builders()

WS_PREFIX = "ws-"


def create_norm(name: str, num_channels: int, **kwargs) -> nn.Module:
    """Build the normalization ``name`` for a (N, ``num_channels``, H, W) feature map.

    Args:
        name: one of :data:`NORMS` (see the module docstring for what each is).
        num_channels: C.
        **kwargs: passed to the layer (e.g. ``eps=``, ``momentum=``, ``num_groups=``).

    Returns:
        an ``nn.Module`` mapping (N, C, H, W) to the same shape.

    Example::

        >>> create_norm("group", 48)
        GroupNorm(24, 48, eps=1e-05, affine=True, bias=True)
    """
    if name not in NORMS:
        raise ValueError(
            f"create_norm: unknown normalization {name!r}; choose one of {sorted(NORMS)}"
        )
    if isinstance(num_channels, bool) or not isinstance(num_channels, int) or num_channels < 1:
        raise ValueError(f"create_norm: num_channels must be a positive int, got {num_channels!r}")
    return NORMS[name](num_channels, **kwargs)


def create_conv(norm: str, in_channels: int, out_channels: int, kernel_size, **kwargs) -> nn.Module:
    """The conv layer that goes with the normalization ``norm`` (see the module docstring).

    Args:
        norm: a :data:`NORMS` name; ``ws-*`` names give ``WSConv2d``, the others ``nn.Conv2d``.
        in_channels, out_channels, kernel_size, **kwargs: ``nn.Conv2d``'s arguments
            (``eps=`` too for ``WSConv2d``).

    Example::

        >>> type(create_conv("ws-group", 3, 8, 3)).__name__
        'WSConv2d'
    """
    if norm not in NORMS:
        raise ValueError(
            f"create_conv: unknown normalization {norm!r}; choose one of {sorted(NORMS)}"
        )
    cls = WSConv2d if norm.startswith(WS_PREFIX) else nn.Conv2d
    return cls(in_channels, out_channels, kernel_size, **kwargs)
