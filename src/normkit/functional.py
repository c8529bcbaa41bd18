"""``torch.nn.functional``-style entry points.

Signatures follow torch where torch has the op; normkit's extras are
keyword-only (``convention=``, ``region=``, ``channel_dim=``, ``backend=``).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from . import _export_path as _xp  # plain torch ops while torch.onnx / torch.export trace
from . import _native, dispatch
from ._validation import FLOATS as _FLOATS
from ._validation import check_channel_dim as _check_channel_dim  # noqa: F401
from ._validation import check_groups, check_lrn_input
from ._validation import check_tensor as _check_tensor
from .autograd import (
    BatchNormFunction,
    FilterResponseNormFunction,
    GroupNormFunction,
    LayerNormFunction,
    LocalResponseNormFunction,
    RMSNormFunction,
    SyncBatchNormFunction,
    batch_norm_batch_stats,
    update_running_stats,
)
from .conventions import CanonicalLRN, canonicalize
from .ops import schema

__all__ = ["local_response_norm", "lrn_canonical"]
__all__ += [
    "batch_norm",
    "sync_batch_norm",
    "layer_norm",
    "group_norm",
    "instance_norm",
    "rms_norm",
    "channel_rms_norm",
]


def lrn_canonical(
    input: torch.Tensor, spec: CanonicalLRN, *, channel_dim: int = 1, backend: str = "auto"
) -> torch.Tensor:
    """Apply an LRN already in canonical form (see :mod:`normkit.conventions`)."""
    channel_dim = check_lrn_input("local_response_norm", input, spec, channel_dim)
    if _xp.exporting():  # export: standard ops, never the eager kernels
        return _xp.lrn(input, spec, channel_dim)
    if input.numel() == 0:
        return input.clone()
    # hostile sizes (2**64 + 1) never reach a kernel: the window is clamped to the tensor
    spec = _xp.clamp_window(spec, input if channel_dim == 1 else input.movedim(channel_dim, 1))
    backends = _backends(_LRN_OPS, input, backend)
    # the Function moves the channel dim itself: its output is never an autograd view
    return LocalResponseNormFunction.apply(
        input,
        spec.back,
        spec.ahead,
        spec.alpha,
        spec.beta,
        spec.k,
        spec.region == "within",
        backends,
        channel_dim,
    )


def local_response_norm(
    input: torch.Tensor,
    size: int,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 1.0,
    *,
    region: str = "across",
    convention: str = "torch",
    channel_dim: int = 1,
    backend: str = "auto",
) -> torch.Tensor:
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

        >>> x = torch.ones(2, 2, 3, 3)            # NHWC, as in source document 1
        >>> y = local_response_norm(x, 3, 1.0, 1.0, 0.0, convention="tensorflow",
        ...                         channel_dim=-1)
        >>> y[0, 0, 0]
        tensor([0.5000, 0.3333, 0.5000])
    """
    spec = canonicalize(size, alpha, beta, k, region=region, convention=convention)
    return lrn_canonical(input, spec, channel_dim=channel_dim, backend=backend)


# --- batch / layer / group / instance / RMS norm ----------------------------------------
#
# Each function validates, reshapes the user's tensor to the op layout (rows (M, D) or
# (N, C, L)), resolves one backend per op and makes one autograd call. Signatures are
# torch.nn.functional's; ``backend`` is keyword-only.

_BN_OPS = schema.ops_of("batch_norm")
_LN_OPS = schema.ops_of("layer_norm")
_RMS_OPS = schema.ops_of("rms_norm")
_GN_OPS = schema.ops_of("group_norm")
_LRN_OPS = schema.ops_of("lrn")
_FRN_OPS = schema.ops_of("frn")


def _backends(ops, x: torch.Tensor, backend: str) -> dict:
    return dispatch.resolve_all(ops, x, backend)


def _check_param(name: str, what: str, t, shape) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: {what} must be a torch.Tensor or None, got {type(t).__name__}")
    if t.numel() != math.prod(shape) or (len(shape) > 1 and tuple(t.shape) != tuple(shape)):
        raise ValueError(
            f"{name}: {what} must have shape {tuple(shape)} to match the input, "
            f"got {tuple(t.shape)}; create it with the layer's size"
        )


def _check_rank(name: str, input: torch.Tensor, min_rank: int) -> None:
    if input.dim() < min_rank:
        raise ValueError(
            f"{name}: expected an input of rank >= {min_rank} (N, C, *), got "
            f"shape {tuple(input.shape)}; add a batch dim with x.unsqueeze(0)"
        )


def _check_eps(name: str, eps, strict: bool) -> None:
    if strict and not eps > 0.0:
        raise ValueError(f"{name}: eps must be positive during training, got {eps}")
    if not eps >= 0.0:
        raise ValueError(f"{name}: eps must be non-negative, got {eps}")


def _verify_more_than_one(name: str, shape, per_value: int) -> None:
    if per_value == 1:
        raise ValueError(
            f"{name}: expected more than 1 value per channel when training, got "
            f"input size {list(shape)}; use a batch of more than one sample "
            "(or spatial size > 1), or evaluation mode"
        )


def _empty_result(input, weight, bias, view_shape):
    """Output for an input with no elements, still connected to weight and bias
    (their gradients come out as zeros, as torch's do)."""
    out = input.clone()
    if weight is not None:
        out = out * weight.view(view_shape)
    if bias is not None:
        out = out + bias.view(view_shape)
    return out


def _bn_prepare(name, input, running_mean, running_var, weight, bias, training, momentum, eps):
    _check_tensor(name, input)
    _check_rank(name, input, 2)
    c = input.shape[1]
    for what, t in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        _check_param(name, what, t, (c,))
    if (running_mean is None) != (running_var is None):
        raise ValueError(
            f"{name}: running_mean and running_var must both be tensors or both be None, "
            f"got running_mean={'None' if running_mean is None else 'a tensor'} and "
            f"running_var={'None' if running_var is None else 'a tensor'}; pass both buffers "
            "or neither"
        )
    if momentum is None:
        raise TypeError(
            f"{name}: momentum must be a float; modules turn momentum=None into "
            "the cumulative factor 1 / num_batches_tracked before calling"
        )
    _check_eps(name, eps, strict=training)
    if training:
        _verify_more_than_one(name, input.shape, input.numel() // max(c, 1) if c else 0)
    elif running_mean is None or running_var is None:
        raise ValueError(
            f"{name}: evaluation mode (training=False) needs running_mean and "
            "running_var; pass them or use training=True"
        )


def batch_norm(
    input: torch.Tensor,
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    r"""Batch normalization over every dim but the channel dim 1.

    .. math::
        y = \gamma_c \frac{x - \mu_c}{\sqrt{\sigma^2_c + \epsilon}} + \beta_c

    In training ``mu``/``sigma^2`` are the batch's (biased variance) and the
    running stats, when given, become ``(1 - momentum) running + momentum *
    batch`` with the unbiased variance; in evaluation they are the running
    stats. Statistics are computed in float32 (float64 for float64 input) by
    two passes.

    Args:
        input: (N, C, *) tensor.
        running_mean, running_var: (C,) buffers or None (updated in place in training).
        weight, bias: (C,) or None. Default None.
        training: use batch statistics. Default False.
        momentum: running-stat factor. Default 0.1.
        eps: added to the variance. Default 1e-5.
        backend: ``"auto"``, ``"torch"``, ``"cpu"`` or ``"triton"`` (keyword-only).

    Shape:
        output has the input's shape and dtype.

    Example::

        >>> x = torch.randn(8, 3, 4, 4)
        >>> y = batch_norm(x, None, None, training=True)
        >>> y.mean((0, 2, 3)).abs().max() < 1e-6
        tensor(True)
    """
    name = "batch_norm"
    _bn_prepare(name, input, running_mean, running_var, weight, bias, training, momentum, eps)
    if _xp.exporting():  # export: torch's ops (see normkit._export_path)
        return _xp.batch_norm(
            input, running_mean, running_var, weight, bias, training, momentum, eps
        )
    if input.numel() == 0:  # torch leaves the running stats alone on an empty batch
        return _empty_result(input, weight, bias, (1, -1) + (1,) * (input.dim() - 2))
    if _native.chooses(
        "batch_norm", input, backend, running_mean, running_var, weight, bias
    ) and _native.takes_batch_norm(input, training, running_mean, momentum):
        c = input.shape[1]  # small: torch's kernel (see normkit._native)
        weight, bias = _shaped(weight, (c,)), _shaped(bias, (c,))
        if training:
            return _native.batch_norm_train(
                input, running_mean, running_var, weight, bias, float(momentum), float(eps)
            )
        rm, rv = _shaped(running_mean, (c,)), _shaped(running_var, (c,))
        return _native.batch_norm_eval(input, rm, rv, weight, bias, float(eps))
    x = input.reshape(input.shape[0], input.shape[1], math.prod(input.shape[2:]))
    backends = _backends(_BN_OPS, x, backend)
    if training:
        mean, var = batch_norm_batch_stats(x, backends)
        count = x.shape[0] * x.shape[2]
        # plain torch ops outside the autograd Function: torch.compile traces the buffer
        # update as an in-place op on the module's buffers
        update_running_stats(
            running_mean, running_var, mean, var * (count / (count - 1)), float(momentum)
        )
    else:
        cdt = torch.float64 if input.dtype == torch.float64 else torch.float32
        # the op contract's mean is float64 (a copy: never an alias of the buffer)
        mean = running_mean.to(torch.float64, copy=True)
        var, count = running_var.to(cdt), 0
    rstd = torch.rsqrt(var + float(eps))
    # the Function reshapes input and output itself: its output is never an autograd view
    return BatchNormFunction.apply(input, weight, bias, mean, rstd, bool(training), count, backends)


def _sync_world(process_group) -> int:
    """World size of the group if synchronisation can happen here, else 1."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 1
    group = process_group if process_group is not None else dist.group.WORLD
    return dist.get_world_size(group)


def sync_batch_norm(
    input: torch.Tensor,
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    process_group=None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    r"""Batch normalization with statistics over every process of ``process_group``.

    Same math as :func:`batch_norm` on the concatenation of every rank's batch.
    Works with any ``torch.distributed`` backend (gloo on CPU, NCCL on CUDA):
    one ``all_gather`` forward, one ``all_reduce`` backward. Without an
    initialized process group, with world size 1, or in evaluation it is
    :func:`batch_norm` and communicates nothing. A rank may hold zero samples.

    Args:
        as :func:`batch_norm`, plus ``process_group`` (default: the world).

    Shape:
        (N, C, *); output like the input.

    Example::

        >>> y = sync_batch_norm(torch.randn(4, 3), None, None, training=True)  # no group: BN
    """
    name = "sync_batch_norm"
    world = _sync_world(process_group) if training else 1
    if world == 1:
        return batch_norm(
            input, running_mean, running_var, weight, bias, training, momentum, eps, backend=backend
        )
    if torch.compiler.is_compiling():
        # collectives inside an autograd.Function are not traceable; under
        # fullgraph=False dynamo breaks the graph here and runs this part eagerly
        raise RuntimeError(
            f"{name}: synchronising over {world} processes is eager-only, "
            "torch.compile(fullgraph=True) cannot trace its collectives; compile "
            "with fullgraph=False (the sync step then runs eagerly), or convert "
            "to BatchNorm for a single process"
        )
    _check_tensor(name, input)
    _check_rank(name, input, 2)
    c = input.shape[1]
    if c == 0:
        raise ValueError(
            f"{name}: the number of input channels must be non-zero, got shape {tuple(input.shape)}"
        )
    for what, t in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        _check_param(name, what, t, (c,))
    _check_eps(name, eps, strict=True)
    x = input.reshape(input.shape[0], c, math.prod(input.shape[2:]))
    backends = _backends(_BN_OPS, x, backend)
    return SyncBatchNormFunction.apply(
        input,
        weight,
        bias,
        running_mean,
        running_var,
        float(momentum),
        float(eps),
        process_group,
        world,
        backends,
    )


def _normalized_shape(name: str, normalized_shape) -> tuple:
    if isinstance(normalized_shape, int):
        return (normalized_shape,)
    try:
        shape = tuple(int(d) for d in normalized_shape)
    except TypeError:
        raise TypeError(
            f"{name}: normalized_shape must be an int or a sequence of ints, got "
            f"{type(normalized_shape).__name__}"
        ) from None
    return shape


def _check_trailing(name: str, input: torch.Tensor, shape: tuple) -> None:
    k = len(shape)
    if k == 0 or input.dim() < k or tuple(input.shape[input.dim() - k :]) != shape:
        raise ValueError(
            f"{name}: normalized_shape={list(shape)} must equal the trailing dims "
            f"of the input, got input of shape {tuple(input.shape)}; pass "
            f"normalized_shape=x.shape[-{max(k, 1)}:]"
        )


def _shaped(t: Optional[torch.Tensor], shape: tuple) -> Optional[torch.Tensor]:
    return t if t is None or tuple(t.shape) == shape else t.reshape(shape)


def layer_norm(
    input: torch.Tensor,
    normalized_shape: Union[int, Sequence[int]],
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    r"""Layer normalization over the trailing ``normalized_shape`` dims.

    .. math:: y = \gamma \odot \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

    Args:
        input: (*, *normalized_shape) tensor.
        normalized_shape: int or sequence, the trailing shape.
        weight, bias: tensors of shape ``normalized_shape`` or None. Default None.
        eps: Default 1e-5.
        backend: keyword-only, as :func:`batch_norm`.

    Shape:
        output like the input.

    Example::

        >>> layer_norm(torch.tensor([[1.0, 3.0]]), [2], eps=0.0)
        tensor([[-1.,  1.]])
    """
    name = "layer_norm"
    _check_tensor(name, input)
    shape = _normalized_shape(name, normalized_shape)
    _check_param(name, "weight", weight, shape)
    _check_param(name, "bias", bias, shape)
    _check_eps(name, eps, strict=False)
    _check_trailing(name, input, shape)
    if _xp.exporting():  # export: torch's ops (see normkit._export_path)
        return _xp.layer_norm(input, shape, weight, bias, eps)
    if input.numel() == 0:
        return _empty_result(input, weight, bias, shape)
    if _native.chooses("layer_norm", input, backend, weight, bias):  # small: torch's kernel
        return _native.layer_norm(
            input, shape, _shaped(weight, shape), _shaped(bias, shape), float(eps)
        )
    d = math.prod(shape)
    w = None if weight is None else weight.reshape(-1)
    b = None if bias is None else bias.reshape(-1)
    return LayerNormFunction.apply(input, w, b, float(eps), _backends(_LN_OPS, input, backend), d)


def rms_norm(
    input: torch.Tensor,
    normalized_shape: Union[int, Sequence[int]],
    weight: Optional[torch.Tensor] = None,
    eps: Optional[float] = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    r"""Root-mean-square normalization over the trailing ``normalized_shape`` dims.

    .. math:: y = \gamma \odot \frac{x}{\sqrt{\langle x^2 \rangle + \epsilon}}

    Args:
        input: (*, *normalized_shape) tensor.
        normalized_shape: int or sequence, the trailing shape.
        weight: tensor of shape ``normalized_shape`` or None. Default None.
        eps: Default None: ``torch.finfo`` eps of the compute dtype (float32 for
            float16/bfloat16/float32 input, float64 for float64), as torch does.
        backend: keyword-only, as :func:`batch_norm`.

    Shape:
        output like the input.

    Example::

        >>> rms_norm(torch.tensor([[3.0, 4.0]]), [2], eps=0.0)
        tensor([[0.8485, 1.1314]])
    """
    name = "rms_norm"
    _check_tensor(name, input)
    shape = _normalized_shape(name, normalized_shape)
    _check_param(name, "weight", weight, shape)
    if eps is None:
        eps = torch.finfo(torch.float64 if input.dtype == torch.float64 else torch.float32).eps
    _check_eps(name, eps, strict=False)
    _check_trailing(name, input, shape)
    if _xp.exporting():  # export: torch's ops (see normkit._export_path)
        return _xp.rms_norm(input, shape, weight, eps)
    if input.numel() == 0:
        return _empty_result(input, weight, None, shape)
    if _native.chooses("rms_norm", input, backend, weight):  # small: torch's kernel
        return _native.rms_norm(input, shape, _shaped(weight, shape), float(eps))
    w = None if weight is None else weight.reshape(-1)
    return RMSNormFunction.apply(
        input, w, float(eps), _backends(_RMS_OPS, input, backend), math.prod(shape)
    )


def channel_rms_norm(
    input: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
    eps: Optional[float] = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    r"""RMS normalization over the channel dim 1 of an (N, C, *) input.

    .. math:: y_{n,c,s} = \gamma_c \frac{x_{n,c,s}}{\sqrt{\frac{1}{C}\sum_{c'} x_{n,c',s}^2
              + \epsilon}}

    The same numbers as ``rms_norm(input.movedim(1, -1), (C,), ...).movedim(-1, 1)``,
    but the output is an ordinary tensor, not a view (in-place ops on it are allowed).

    Args:
        input: (N, C, *) tensor.
        weight: (C,) or None. Default None.
        eps: Default None: ``torch.finfo(compute dtype).eps``, as :func:`rms_norm`.
        backend: keyword-only, as :func:`batch_norm`.

    Shape:
        output like the input (with the strides of a channels-last copy).

    Example::

        >>> channel_rms_norm(torch.tensor([[[3.0], [4.0]]]), eps=0.0).flatten()
        tensor([0.8485, 1.1314])
    """
    name = "channel_rms_norm"
    _check_tensor(name, input)
    _check_rank(name, input, 2)
    c = input.shape[1]
    _check_param(name, "weight", weight, (c,))
    if eps is None:
        eps = torch.finfo(torch.float64 if input.dtype == torch.float64 else torch.float32).eps
    _check_eps(name, eps, strict=False)
    if _xp.exporting():  # export: torch's ops; non-negative dims for the TorchScript exporter
        last = input.dim() - 1
        return _xp.rms_norm(input.movedim(1, last), (c,), weight, eps).movedim(last, 1)
    if input.numel() == 0:
        return _empty_result(input, weight, None, (1, -1) + (1,) * (input.dim() - 2))
    return RMSNormFunction.apply(
        input, weight, float(eps), _backends(_RMS_OPS, input, backend), c, 1
    )


def group_norm(
    input: torch.Tensor,
    num_groups: int,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    r"""Group normalization: statistics per sample over groups of C/G channels and all of space.

    .. math:: y_{n,c} = \gamma_c \frac{x_{n,c} - \mu_{n,g(c)}}{\sqrt{\sigma^2_{n,g(c)} +
              \epsilon}} + \beta_c

    Args:
        input: (N, C, *) tensor.
        num_groups: G, must divide C.
        weight, bias: (C,) or None. Default None.
        eps: Default 1e-5.
        backend: keyword-only, as :func:`batch_norm`.

    Shape:
        output like the input.

    Example::

        >>> y = group_norm(torch.randn(2, 6, 5, 5), 3)
    """
    name = "group_norm"
    _check_tensor(name, input)
    _check_rank(name, input, 2)
    n, c = input.shape[:2]
    check_groups(c, num_groups)
    _check_param(name, "weight", weight, (c,))
    _check_param(name, "bias", bias, (c,))
    _check_eps(name, eps, strict=False)
    _verify_more_than_one(name, input.shape, n * (c // num_groups) * math.prod(input.shape[2:]))
    if _xp.exporting():  # export: torch's ops (see normkit._export_path)
        return _xp.group_norm(input, num_groups, weight, bias, eps)
    if input.numel() == 0:
        return _empty_result(input, weight, bias, (1, -1) + (1,) * (input.dim() - 2))
    if _native.chooses("group_norm", input, backend, weight, bias) and (
        num_groups == c or input.is_contiguous()  # the group shift reshapes (a copy otherwise)
    ):  # small: torch's kernel
        return _native.group_norm(
            input, num_groups, _shaped(weight, (c,)), _shaped(bias, (c,)), float(eps)
        )
    return GroupNormFunction.apply(
        input, weight, bias, num_groups, float(eps), _backends(_GN_OPS, input, backend)
    )


def instance_norm(
    input: torch.Tensor,
    running_mean: Optional[torch.Tensor] = None,
    running_var: Optional[torch.Tensor] = None,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    r"""Instance normalization: statistics per sample and channel over all of space.

    .. math:: y_{n,c} = \gamma_c \frac{x_{n,c} - \mu_{n,c}}{\sqrt{\sigma^2_{n,c} + \epsilon}}
              + \beta_c

    Computed as group norm with one group per channel. With running stats and
    ``use_input_stats`` they become ``(1 - momentum) running + momentum *
    (per-instance stats averaged over N)`` (unbiased variance), as torch; with
    ``use_input_stats=False`` the running stats normalize instead.

    Args:
        input: (N, C, *) tensor.
        running_mean, running_var: (C,) or None. Default None.
        weight, bias: (C,) or None. Default None.
        use_input_stats: Default True.
        momentum: Default 0.1.
        eps: Default 1e-5.
        backend: keyword-only, as :func:`batch_norm`.

    Shape:
        output like the input.

    Example::

        >>> y = instance_norm(torch.randn(2, 3, 8, 8))
    """
    name = "instance_norm"
    _check_tensor(name, input)
    _check_rank(name, input, 2)
    n, c = input.shape[:2]
    for what, t in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        _check_param(name, what, t, (c,))
    _check_eps(name, eps, strict=False)
    if _xp.exporting():  # export: torch's ops (see normkit._export_path)
        return _xp.instance_norm(
            input, running_mean, running_var, weight, bias, use_input_stats, momentum, eps
        )
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError(
                f"{name}: use_input_stats=False needs running_mean and "
                "running_var; pass them or use_input_stats=True"
            )
        return batch_norm(
            input, running_mean, running_var, weight, bias, False, momentum, eps, backend=backend
        )
    spatial = math.prod(input.shape[2:])
    if spatial == 1:
        raise ValueError(
            f"{name}: expected more than 1 spatial element when training, got "
            f"input size {list(input.shape)}"
        )
    if input.numel() == 0:
        return _empty_result(input, weight, bias, (1, -1) + (1,) * (input.dim() - 2))
    tracked = running_mean is not None and running_var is not None
    if not tracked and _native.chooses("instance_norm", input, backend, weight, bias):
        return _native.group_norm(input, c, _shaped(weight, (c,)), _shaped(bias, (c,)), float(eps))
    x = input.reshape(n, c, math.prod(input.shape[2:]))
    if tracked:
        # per-instance stats through the same stats core: (1, N*C, L) over (N, L)
        bn_backends = _backends(_BN_OPS, x, backend)
        with torch.no_grad():
            mean, var = batch_norm_batch_stats(x.reshape(1, n * c, -1), bn_backends)
            unbiased = var.view(n, c) * (spatial / (spatial - 1))
            update_running_stats(
                running_mean,
                running_var,
                mean.view(n, c).mean(0),
                unbiased.mean(0),
                float(momentum),
            )
    return GroupNormFunction.apply(
        input, weight, bias, c, float(eps), _backends(_GN_OPS, input, backend)
    )


# --- Filter Response Normalization + TLU ----------------------------------------------


def _frn_param(name: str, t, c: int, fill: float, like: torch.Tensor) -> torch.Tensor:
    if t is None:
        return torch.full(
            (c,),
            fill,
            dtype=like.dtype if like.dtype == torch.float64 else torch.float32,
            device=like.device,
        )
    if not isinstance(t, torch.Tensor):
        raise TypeError(
            f"filter_response_norm: {name} must be a torch.Tensor or None, got {type(t).__name__}"
        )
    if t.numel() != c:
        raise ValueError(
            f"filter_response_norm: {name} must have {c} elements (one per "
            f"channel), got shape {tuple(t.shape)}; create it with shape ({c},)"
        )
    return t.reshape(c)


def filter_response_norm(
    input: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    tau: Optional[torch.Tensor] = None,
    eps: Union[float, torch.Tensor] = 1e-6,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    r"""Filter Response Normalization followed by the Thresholded Linear Unit.

    .. math::
        \nu^2_{n,c} = \frac{1}{HW}\sum_{h,w} x_{n,c,h,w}^2, \qquad
        y = \max\Big(\gamma_c \frac{x}{\sqrt{\nu^2_{n,c} + \epsilon_c}} + \beta_c,\ \tau_c\Big)

    (Singh & Krishnan, CVPR 2020). Per sample and channel, no centring, no batch
    dependence. float16/bfloat16 inputs are computed in float32.

    Args:
        input: (N, C, H, W) (any rank >= 3: the mean is over every dim after C).
        weight, bias: (C,) gamma and beta; None means 1 and 0. Default None.
        tau: (C,) TLU threshold; None means no TLU (plain FRN). Default None.
        eps: positive float, or a (C,) tensor (the module passes ``eps + |eps_l|`` when
            eps is learned; its gradient flows). Default 1e-6.
        backend: ``"auto"``, ``"torch"``, ``"cpu"`` or ``"triton"`` (keyword-only).

    Shape:
        output like the input (channels_last stays channels_last).

    Example::

        >>> x = torch.randn(2, 3, 4, 4)
        >>> y = filter_response_norm(x, tau=torch.zeros(3))
        >>> bool((y >= 0).all())
        True
    """
    name = "filter_response_norm"
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name}: input must be a torch.Tensor, got {type(input).__name__}")
    if input.dtype not in _FLOATS:
        raise TypeError(
            f"{name}: input dtype must be floating point, got {input.dtype}; cast with .float()"
        )
    if input.dim() < 3:
        raise ValueError(
            f"{name}: expected an input of rank >= 3 (N, C, H, W), got shape "
            f"{tuple(input.shape)}; add a batch dim with x.unsqueeze(0)"
        )
    n, c = input.shape[:2]
    weight = _frn_param("weight", weight, c, 1.0, input)
    bias = _frn_param("bias", bias, c, 0.0, input)
    tau = _frn_param("tau", tau, c, float("-inf"), input)
    if isinstance(eps, torch.Tensor):
        eps_t = _frn_param("eps", eps, c, 0.0, input)
    else:
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
            raise ValueError(
                f"{name}: eps must be a positive float, got {eps!r}; FRN divides "
                "by sqrt(mean(x^2) + eps), which is 0 on an all-zero plane"
            )
        eps_t = torch.full((c,), float(eps), dtype=weight.dtype, device=input.device)
    if _xp.exporting() or input.numel() == 0:  # standard ops (export; empty input)
        return _xp.filter_response_norm(input, weight, bias, tau, eps_t)
    backends = _backends(_FRN_OPS, input, backend)
    return FilterResponseNormFunction.apply(input, weight, bias, tau, eps_t, backends)


__all__ += ["filter_response_norm"]


# --- fused residual-add norms and modulated LayerNorm (issue 13; implemented in fused.py) ---
from .fused import add_layer_norm, add_rms_norm, modulated_layer_norm  # noqa: E402

__all__ += ["add_rms_norm", "add_layer_norm", "modulated_layer_norm"]
