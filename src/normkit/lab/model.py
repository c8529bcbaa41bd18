"""The lab's networks: AlexNet's block (conv -> ReLU -> norm -> overlapping max-pool).

Two depths, both built only from ``normkit.create_norm`` so that adding a
normalization to normkit adds it to the lab:

- ``shallow``: AlexNet's shape shrunk to 8x8 images -- two conv blocks, a
  dropout classifier. On the digits it reaches ~98% with *every*
  normalization and without one (the lab notes in the README), so it shows little.
- ``deep`` (default): six conv layers, no residual connections, same block and
  head. Without normalization its signal shrinks layer by layer under the
  default initialization and plain SGD hardly moves it; that is where the
  documents' claims (vanishing gradients, BN speeds convergence, LRN adds
  little) become visible at this scale.

The normalization sits after the ReLU, where AlexNet put LRN, for every
normalization alike, so that the only difference between two runs is the norm.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import nn

import normkit

DEPTHS = {
    # (out_channels, pool after this conv?) per conv layer
    "shallow": ((32, True), (64, True)),
    "deep": ((32, False), (32, True), (64, False), (64, True), (64, False), (64, True)),
}
KERNEL = {"shallow": (5, 3), "deep": (3,) * 6}


def _pooled(size: int) -> int:
    # MaxPool2d(kernel_size=3, stride=2, padding=1): AlexNet's overlapping pool (3 > 2)
    return (size + 2 - 3) // 2 + 1


class LabNet(nn.Module):
    """conv -> ReLU -> norm [-> max-pool 3/2] blocks, then dropout -> fc -> ReLU -> dropout -> fc.

    Args:
        norm: a ``normkit.create_norm`` name ("none", "lrn", "batch", ...).
        in_channels: image channels. Default 1.
        num_classes: classes. Default 10.
        image_size: (H, W) of the input. Default (8, 8).
        depth: ``"deep"`` (6 conv layers, default) or ``"shallow"`` (2).
        norm_kwargs: extra keyword arguments for ``create_norm``.
        dropout: dropout probability in the classifier head. Default 0.2 (AlexNet used
            0.5 on 4096-wide layers; on this 64-feature head 0.5 stalls GN/LN).
        hidden: width of the hidden fully-connected layer. Default 128.

    Shape:
        input (N, in_channels, H, W) -> logits (N, num_classes).

    Example::

        >>> net = LabNet("batch")
        >>> net(torch.rand(4, 1, 8, 8)).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        norm: str,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: Sequence[int] = (8, 8),
        depth: str = "deep",
        norm_kwargs: Optional[Dict] = None,
        dropout: float = 0.2,
        hidden: int = 128,
    ):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {depth!r}")
        self.norm_name = norm
        h, w = (int(s) for s in image_size)
        layers = []
        c = in_channels
        for (out, pool), k in zip(DEPTHS[depth], KERNEL[depth]):
            # create_conv: WSConv2d for ws-* norms, nn.Conv2d otherwise
            layers += [
                normkit.create_conv(norm, c, out, k, padding=k // 2),
                nn.ReLU(inplace=False),
                normkit.create_norm(norm, out, **dict(norm_kwargs or {})),
            ]
            if pool:
                layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
                h, w = _pooled(h), _pooled(w)
            c = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c * h * w, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def convs(self):
        """The conv layers in order (for hooks: the ICS experiment reads their outputs)."""
        return [m for m in self.features if isinstance(m, nn.Conv2d)]


def build_model(
    norm: str,
    *,
    seed: int,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: Sequence[int] = (8, 8),
    depth: str = "deep",
    norm_kwargs: Optional[Dict] = None,
    dropout: float = 0.2,
) -> LabNet:
    """A :class:`LabNet` whose conv and linear weights depend only on ``seed``.

    The weights are re-drawn after construction, layer by layer from one seeded
    generator state, so two models with different normalizations start from the
    same conv/linear initialization even if a norm's constructor drew random
    numbers.
    """
    net = LabNet(norm, in_channels, num_classes, image_size, depth, norm_kwargs, dropout)
    torch.manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            # torch's default init: the setting the lab notes in the README measured
            m.reset_parameters()
    return net
