"""``torch.nn.functional``-style entry points.

Signatures follow torch where torch has the op; normkit's extras are
keyword-only (``convention=``, ``region=``, ``channel_dim=``, ``backend=``).
"""

from __future__ import annotations

import torch

from . import dispatch
from .autograd import LocalResponseNormFunction
from .conventions import CanonicalLRN, canonicalize

__all__ = ["local_response_norm", "lrn_canonical"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_tensor(name: str, input) -> None:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name}: input must be a torch.Tensor, got {type(input).__name__}; "
                        "convert with torch.as_tensor(x, dtype=torch.float32)")
    if input.dtype not in _FLOATS:
        raise TypeError(f"{name}: input dtype must be floating point (float16, bfloat16, "
                        f"float32, float64), got {input.dtype}; cast with .float()")


def _check_channel_dim(name: str, input: torch.Tensor, channel_dim) -> int:
    if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
        raise TypeError(f"{name}: channel_dim must be an int, got {type(channel_dim).__name__}")
    if not -input.dim() <= channel_dim < input.dim():
        raise ValueError(f"{name}: channel_dim must be in [{-input.dim()}, {input.dim() - 1}] "
                         f"for a {input.dim()}-D input, got {channel_dim}")
    channel_dim %= input.dim()
    if channel_dim == 0:
        raise ValueError(f"{name}: channel_dim=0 is the batch dim; inputs are (N, C, *) "
                         "(channel_dim=1) or (N, *, C) (channel_dim=-1)")
    return channel_dim


def lrn_canonical(input: torch.Tensor, spec: CanonicalLRN, *, channel_dim: int = 1,
                  backend: str = "auto") -> torch.Tensor:
    """Apply an LRN already in canonical form (see :mod:`normkit.conventions`)."""
    name = "local_response_norm"
    _check_tensor(name, input)
    if spec.region == "across" and input.dim() < 3:
        raise ValueError(f"{name}: across-channel LRN needs an input of rank >= 3 (N, C, *), "
                         f"got shape {tuple(input.shape)}; add a batch dim with x.unsqueeze(0)")
    if spec.region == "within" and input.dim() != 4:
        raise ValueError(f"{name}: within-channel LRN needs a 4-D input (N, C, H, W), got "
                         f"shape {tuple(input.shape)}")
    channel_dim = _check_channel_dim(name, input, channel_dim)
    if torch.onnx.is_in_onnx_export():
        # exporters get standard ONNX ops, never the eager kernels (lazy: onnx machinery
        # is only needed while exporting)
        from .interop.export import lrn_export
        return lrn_export(input, spec, channel_dim)
    if input.numel() == 0:
        return input.clone()
    x = input if channel_dim == 1 else input.movedim(channel_dim, 1)
    chosen = dispatch.resolve("lrn_fwd", x, backend)
    y = LocalResponseNormFunction.apply(x, spec.back, spec.ahead, spec.alpha, spec.beta,
                                        spec.k, spec.region == "within", chosen)
    return y if channel_dim == 1 else y.movedim(1, channel_dim)


def local_response_norm(input: torch.Tensor, size: int, alpha: float = 1e-4,
                        beta: float = 0.75, k: float = 1.0, *, region: str = "across",
                        convention: str = "torch", channel_dim: int = 1,
                        backend: str = "auto") -> torch.Tensor:
    r"""Local Response Normalization, exact to the chosen framework's convention.

    .. math::
        y_c = x_c \left(k + \frac{\alpha}{D} \sum_{j=c-B}^{c+A} x_j^2\right)^{-\beta}

    with zero padding outside the channel range and ``D`` (1, ``size`` or
    ``size**2``), the window ``B``/``A`` and the role of ``k`` taken from
    ``convention`` (see ``docs/conventions.md``).

    Args:
        input: tensor of rank >= 3 with channels on ``channel_dim``
            (within-channel: rank 4).
        size: window size in the convention's meaning (``tensorflow``: pass
            ``2 * depth_radius + 1``).
        alpha: scale, in the convention's meaning (raw for ``tensorflow``,
            ``alexnet``, ``chainer``; divided by ``size`` for the others). Default 1e-4.
        beta: exponent. Default 0.75.
        k: additive constant (``bias`` in TensorFlow/ONNX). Default 1.0. Ignored
            by Caffe's WITHIN_CHANNEL (``convention="caffe"``, ``region="within"``).
        region: ``"across"`` channels (default) or ``"within"`` a channel
            (a ``size x size`` spatial box).
        convention: ``torch`` (default), ``onnx``, ``caffe``, ``caffe-cudnn``,
            ``tensorflow``, ``paddle``, ``mxnet``, ``chainer``, ``alexnet``,
            ``cuda-convnet`` or an alias.
        channel_dim: the channel dim (1 for NCHW, -1 for NHWC). Default 1.
        backend: ``"auto"``, ``"torch"``, ``"cpu"`` or ``"triton"``.

    Shape:
        output has the shape and dtype of ``input``. float16/bfloat16 are
        computed in float32.

    Example::

        >>> x = torch.ones(2, 2, 3, 3)            # NHWC, as in seed 000
        >>> y = local_response_norm(x, 3, 1.0, 1.0, 0.0, convention="tensorflow",
        ...                         channel_dim=-1)
        >>> y[0, 0, 0]
        tensor([0.5000, 0.3333, 0.5000])
    """
    spec = canonicalize(size, alpha, beta, k, region=region, convention=convention)
    return lrn_canonical(input, spec, channel_dim=channel_dim, backend=backend)
