"""``LocalResponseNorm``: one module for every framework's LRN."""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from .. import functional as F
from ..conventions import CanonicalLRN, canonicalize, from_canonical, get_convention


class LocalResponseNorm(nn.Module):
    r"""Local Response Normalization exact to a framework's convention.

    .. math::
        y_c = x_c \left(k + \frac{\alpha}{D} \sum_{j=c-B}^{c+A} x_j^2\right)^{-\beta}

    With the default ``convention="torch"`` this is a drop-in for
    :class:`torch.nn.LocalResponseNorm` (same arguments, same output). Use the
    constructors :meth:`from_caffe`, :meth:`from_tensorflow` and
    :meth:`from_onnx` to take another framework's parameters with its own
    names and defaults, and :meth:`to_caffe` / :meth:`to_tensorflow` /
    :meth:`to_onnx` for the way back.

    Unlike normkit's other layers this class is deliberately *not* a subclass of
    :class:`torch.nn.LocalResponseNorm`: its ``size``/``alpha``/``k`` are in the
    meaning of ``convention`` (TensorFlow's raw alpha, Caffe's WITHIN_CHANNEL box,
    NHWC via ``channel_dim``), and many of these layers have no torch equivalent
    at all. Code that recognises ``nn.LocalResponseNorm`` by ``isinstance`` and
    re-computes it as ``F.local_response_norm(x, m.size, m.alpha, m.beta, m.k)``
    (fusers, exporters) would then compute something else, silently.

    Args:
        size: window size in the convention's meaning.
        alpha: scale in the convention's meaning. Default 1e-4.
        beta: exponent. Default 0.75.
        k: additive constant. Default 1.0.
        region: ``"across"`` (default) or ``"within"``.
        convention: see :mod:`normkit.conventions`. Default ``"torch"``.
        channel_dim: channel dim of the input. Default 1.

    Attributes:
        spec: the :class:`~normkit.conventions.CanonicalLRN` this layer computes.
        backend: ``"auto"`` (default), ``"torch"``, ``"cpu"`` or ``"triton"``.

    Shape:
        (N, C, *) across channels, (N, C, H, W) within (with ``channel_dim``
        moved accordingly); output has the input's shape.

    Example::

        >>> lrn = LocalResponseNorm.from_caffe(local_size=5, alpha=1e-4, beta=0.75)
        >>> lrn(torch.randn(2, 96, 27, 27)).shape
        torch.Size([2, 96, 27, 27])
    """

    __constants__ = ["size", "alpha", "beta", "k"]

    def __init__(
        self,
        size: int,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float = 1.0,
        *,
        region: str = "across",
        convention: str = "torch",
        channel_dim: int = 1,
    ):
        super().__init__()
        self.spec: CanonicalLRN = canonicalize(
            size, alpha, beta, k, region=region, convention=convention
        )
        self.size = size
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.k = float(k)
        self.region = region
        self.convention = get_convention(convention).name
        self.channel_dim = channel_dim
        self.backend = "auto"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.lrn_canonical(input, self.spec, channel_dim=self.channel_dim, backend=self.backend)

    def extra_repr(self) -> str:
        text = f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
        if self.region != "across":
            text += f", region={self.region!r}"
        if self.convention != "torch":
            text += f", convention={self.convention!r}"
        if self.channel_dim != 1:
            text += f", channel_dim={self.channel_dim}"
        return text

    # -- constructors with each framework's own names and defaults --------------------

    @classmethod
    def from_caffe(
        cls,
        local_size: int = 5,
        alpha: float = 1.0,
        beta: float = 0.75,
        k: float = 1.0,
        norm_region: str = "ACROSS_CHANNELS",
        *,
        engine: str = "caffe",
    ) -> "LocalResponseNorm":
        """Caffe's ``LRN`` layer (``lrn_param``), NCHW.

        ``engine="caffe"`` (default) reproduces BVLC Caffe, whose WITHIN_CHANNEL
        ignores ``k``; ``engine="cudnn"`` honours it.
        """
        regions = {
            "ACROSS_CHANNELS": "across",
            "WITHIN_CHANNEL": "within",
            0: "across",
            1: "within",
        }
        key = norm_region.upper() if isinstance(norm_region, str) else norm_region
        if key not in regions:
            raise ValueError(
                "Caffe norm_region must be 'ACROSS_CHANNELS' or 'WITHIN_CHANNEL', "
                f"got {norm_region!r}"
            )
        engines = {"caffe": "caffe", "default": "caffe", "cudnn": "caffe-cudnn"}
        if engine.lower() not in engines:
            raise ValueError(f"Caffe engine must be 'caffe' or 'cudnn', got {engine!r}")
        return cls(
            local_size, alpha, beta, k, region=regions[key], convention=engines[engine.lower()]
        )

    @classmethod
    def from_tensorflow(
        cls,
        depth_radius: int = 5,
        bias: float = 1.0,
        alpha: float = 1.0,
        beta: float = 0.5,
        *,
        channel_dim: int = -1,
    ) -> "LocalResponseNorm":
        """``tf.nn.local_response_normalization`` (raw alpha, radius), NHWC by default."""
        if isinstance(depth_radius, bool) or not isinstance(depth_radius, int):
            raise TypeError(f"depth_radius must be an int, got {type(depth_radius).__name__}")
        if depth_radius < 0:
            raise ValueError(
                f"depth_radius must be >= 0, got {depth_radius}; the window is "
                "2 * depth_radius + 1 channels"
            )
        return cls(
            2 * depth_radius + 1,
            alpha,
            beta,
            bias,
            convention="tensorflow",
            channel_dim=channel_dim,
        )

    @classmethod
    def from_onnx(
        cls, size: int, alpha: float = 1e-4, beta: float = 0.75, bias: float = 1.0
    ) -> "LocalResponseNorm":
        """ONNX ``LRN`` (also cuDNN, oneDNN): alpha/size, even sizes look ahead."""
        return cls(size, alpha, beta, bias, convention="onnx")

    def to_convention(self, convention: str) -> Dict[str, float]:
        """This layer's parameters in ``convention``'s own names (raises if inexpressible)."""
        return from_canonical(self.spec, convention)

    def to_caffe(self) -> Dict[str, object]:
        """Caffe ``lrn_param`` fields (``norm_region`` included)."""
        engine = "caffe"
        if self.spec.region == "within" and self.spec.k != 1.0:
            engine = "caffe-cudnn"
        params = dict(from_canonical(self.spec, engine))
        params["norm_region"] = (
            "ACROSS_CHANNELS" if self.spec.region == "across" else "WITHIN_CHANNEL"
        )
        if engine == "caffe-cudnn":
            params["engine"] = "CUDNN"
        return params

    def to_tensorflow(self) -> Dict[str, float]:
        """``tf.nn.local_response_normalization`` arguments (depth_radius, bias, alpha, beta)."""
        return from_canonical(self.spec, "tensorflow")

    def to_onnx(self) -> Dict[str, float]:
        """ONNX ``LRN`` attributes (size, alpha, beta, bias)."""
        return from_canonical(self.spec, "onnx")
