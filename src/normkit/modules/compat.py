"""normkit layers with the exact semantics of common third-party normalization classes.

:func:`normkit.convert` replaces the third-party classes below by these, recognising them
by module, class name and attributes without importing their packages. Each forward
calls :mod:`normkit.functional`; around it only the casts and layout moves the original
performs (documented per class), so outputs and gradients match the original.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import functional as F
from .norms import _BatchNorm

__all__ = ["LayerNorm2d", "BatchNormAct2d", "FrozenBatchNorm2d", "HFRMSNorm"]


class LayerNorm2d(nn.LayerNorm):
    r"""Layer normalization over the channels of each position of an (N, C, H, W) map.

    .. math:: y_{n,:,h,w} = \frac{x_{n,:,h,w} - \mathrm{E}_c[x]}{\sqrt{\mathrm{Var}_c[x]
              + \epsilon}} \odot \gamma + \beta

    The "channels-first" LayerNorm of ConvNeXt (timm ``LayerNorm2d``, torchvision
    ``models.convnext.LayerNorm2d``): both permute to NHWC, apply ``layer_norm`` over
    C and permute back; this does the same with normkit's layer norm. A subclass of
    ``nn.LayerNorm``, as the originals.

    Args:
        num_channels: C (``normalized_shape``).
        eps: Default 1e-6 (timm's and torchvision's default).
        elementwise_affine: Default True.
        bias: Default True.
        device, dtype: factory kwargs.

    Shape:
        (N, C, H, W); output the same.

    Example::

        >>> LayerNorm2d(8)(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 8, 4, 4])
    """

    backend = "auto"

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-6,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(num_channels, eps, elementwise_affine, bias, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(
                f"LayerNorm2d: expected a 4-D (N, C, H, W) input, got shape {tuple(x.shape)}"
            )
        y = F.layer_norm(
            x.permute(0, 2, 3, 1),
            self.normalized_shape,
            self.weight,
            self.bias,
            self.eps,
            backend=self.backend,
        )
        return y.permute(0, 3, 1, 2)


class BatchNormAct2d(_BatchNorm, nn.BatchNorm2d):
    r"""Batch normalization followed by a dropout-like module and an activation.

    .. math:: y = \mathrm{act}(\mathrm{drop}(\mathrm{BN}(x)))

    timm's ``BatchNormAct2d`` semantics (BN with torch's running-stat rules, then its
    ``drop`` and ``act`` submodules). :func:`normkit.convert` moves the original's
    ``drop`` and ``act`` modules here unchanged, so in-place activations stay in place.
    An ``nn.BatchNorm2d`` (as timm's) but not a ``normkit.BatchNorm2d``: code keyed
    on normkit's class (the export registry) must not treat it as a bare BatchNorm.

    Args:
        num_features, eps, momentum, affine, track_running_stats: as ``BatchNorm2d``.
        act: activation module. Default None (identity).
        drop: module applied between BN and act. Default None (identity).
        device, dtype: factory kwargs.

    Shape:
        (N, C, H, W); output the same.

    Example::

        >>> m = BatchNormAct2d(4, act=torch.nn.ReLU(inplace=True))
        >>> m(torch.randn(2, 4, 3, 3)).min() >= 0
        tensor(True)
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        act: Optional[nn.Module] = None,
        drop: Optional[nn.Module] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.drop = drop if drop is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


class FrozenBatchNorm2d(nn.Module):
    r"""Batch normalization with fixed statistics and affine (buffers, never trained).

    .. math:: y = \gamma \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

    torchvision ``ops.FrozenBatchNorm2d``: ``weight``, ``bias``, ``running_mean``,
    ``running_var`` are buffers (same state_dict keys; a ``num_batches_tracked`` key
    in a loaded checkpoint is dropped, as torchvision does) and the layer normalizes
    with them in train and eval mode alike. Gradients flow to the input only.

    Args:
        num_features: C.
        eps: Default 1e-5.
        device, dtype: factory kwargs.

    Shape:
        (N, C, *); output the same.

    Example::

        >>> FrozenBatchNorm2d(3)(torch.randn(2, 3, 4, 4)).shape
        torch.Size([2, 3, 4, 4])
    """

    backend = "auto"

    def __init__(self, num_features: int, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features, **factory))
        self.register_buffer("bias", torch.zeros(num_features, **factory))
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            False,
            0.0,
            self.eps,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


_MODES = ("llama", "gemma", "t5")


class HFRMSNorm(nn.Module):
    r"""RMS normalization over the last dim with a Hugging Face model's exact casting.

    .. math:: y = w' \odot \frac{x}{\sqrt{\mathrm{E}[x^2] + \epsilon}}

    computed in float32 whatever the input dtype, then, by ``mode``:

    * ``"llama"`` (``LlamaRMSNorm`` and the classes copied from it): cast the
      normalized value back to the input dtype, then multiply by ``weight``
      (so the output dtype is the promotion of input and weight dtypes);
    * ``"gemma"`` (``GemmaRMSNorm``, Gemma 2/3): multiply by ``1 + weight`` in
      float32, then cast to the input dtype (``weight`` starts at zero);
    * ``"t5"`` (``T5LayerNorm``: RMS, no mean subtraction, no bias): the
      normalized value stays float32 unless ``weight`` is float16/bfloat16, in
      which case it is cast to ``weight``'s dtype; then multiply by ``weight``.

    float64 inputs are computed in float32 too, as the originals do (their
    ``x.to(torch.float32)``); for ``"t5"`` the original multiplies the float64
    input by a float32 ``rsqrt``, here the float32 result is widened, a difference
    of float32 rounding.

    Args:
        hidden_size: size of the last dim.
        eps: Default 1e-6. (``variance_epsilon`` is an alias, as in Llama/T5.)
        mode: ``"llama"`` (default), ``"gemma"`` or ``"t5"``.
        device, dtype: factory kwargs.

    Shape:
        (*, hidden_size); output the same shape.

    Example::

        >>> HFRMSNorm(8, mode="gemma")(torch.randn(2, 8)).shape
        torch.Size([2, 8])
    """

    backend = "auto"

    def __init__(
        self, hidden_size: int, eps: float = 1e-6, mode: str = "llama", device=None, dtype=None
    ) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"HFRMSNorm: mode must be one of {_MODES}, got {mode!r}")
        self.hidden_size = hidden_size
        self.eps = eps
        self.mode = mode
        init = torch.zeros if mode == "gemma" else torch.ones
        self.weight = nn.Parameter(init(hidden_size, device=device, dtype=dtype))

    @property
    def variance_epsilon(self) -> float:
        return self.eps

    @variance_epsilon.setter
    def variance_epsilon(self, value: float) -> None:
        self.eps = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (self.hidden_size,)
        x32 = x.to(torch.float32)
        if self.mode == "gemma":
            y = F.rms_norm(x32, shape, 1.0 + self.weight.float(), self.eps, backend=self.backend)
            return y.to(x.dtype)
        y = F.rms_norm(x32, shape, None, self.eps, backend=self.backend)
        if self.mode == "llama":
            return self.weight * y.to(x.dtype)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            y = y.to(self.weight.dtype)
        elif x.dtype == torch.float64:
            y = y.to(torch.float64)  # the original's float64 * float32 promotes to float64
        return self.weight * y

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}, mode={self.mode!r}"
