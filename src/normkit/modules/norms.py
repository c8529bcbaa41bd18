"""Drop-in twins of torch.nn's normalization layers, backed by normkit's kernels.

Each class subclasses its torch counterpart (``normkit.BatchNorm2d`` is a
``torch.nn.BatchNorm2d``, hence a ``torch.nn.modules.batchnorm._BatchNorm``), so
code that groups parameters or freezes layers by ``isinstance`` treats them as
torch's. Constructor (names, order, defaults, ``device``/``dtype``, the
keyword-only ``bias``), parameters, buffers, state_dict keys, ``_version``,
``reset_parameters``/``reset_running_stats``, ``load_state_dict`` of old
checkpoints and ``repr`` are torch's own, so a state_dict moves between
``torch.nn.BatchNorm2d`` and ``normkit.BatchNorm2d`` either way. Each module's ``forward`` is
one call into :mod:`normkit.functional`, except that ``BatchNorm*d``, ``LayerNorm``,
``GroupNorm`` and ``RMSNorm`` first try ``_fast_forward``: on a small float32 input (CPU
or CUDA; float16/bfloat16 too on CUDA) with their own, well-shaped parameters they call
:mod:`normkit._native` directly (the path ``functional`` would take) without its per-call
argument checks; the ``backend`` attribute (``"auto"``) picks the kernels.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Optional, Sequence, Union

import torch
from torch import nn
from torch.nn import init
from torch.nn.parameter import Parameter

from .. import _native
from .. import functional as F
from .._validation import check_groups
from ._sync_check import check_ranks_agree

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "SyncBatchNorm",
    "LayerNorm",
    "GroupNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "RMSNorm",
    "ChannelRMSNorm",
]

_shape_t = Union[int, Sequence[int], torch.Size]


@functools.lru_cache(maxsize=None)
def _takes_bias(base: type) -> bool:
    """Whether ``base.__init__`` of this torch accepts ``bias=`` (GroupNorm and the
    BatchNorms take it in recent releases, not in torch 2.11)."""
    return "bias" in inspect.signature(base.__init__).parameters


def _bias_kwarg(base: type, bias: bool) -> dict:
    """``bias=`` for ``base.__init__`` where this torch accepts it; older torch builds the
    bias and the caller drops it with :func:`_drop_bias`."""
    return {"bias": bias} if _takes_bias(base) else {}


def _drop_bias(module: nn.Module, base: type, bias: bool) -> None:
    """``bias=False`` on a torch whose constructor has no ``bias``: no bias parameter."""
    if not bias and not _takes_bias(base) and getattr(module, "bias", None) is not None:
        module.bias = None


def _init_with_bias(module: nn.Module, init, base: type, bias: bool, *args) -> None:
    """``init(*args)`` (the bound ``super().__init__`` of torch's ``base``), with ``bias=``
    where this torch's constructor takes it and the bias dropped where it does not: the
    keyword-only ``bias`` on every torch."""
    init(*args, **_bias_kwarg(base, bias))
    _drop_bias(module, base, bias)


def _register_affine(
    module: nn.Module, shape, enabled: bool, bias: Optional[bool], factory: dict
) -> None:
    """Register ``weight`` and ``bias`` of ``shape`` exactly as torch lays them out.

    Disabled parameters are registered as ``None`` (so state_dict keys match torch);
    ``bias=None`` means the layer has no bias slot at all (RMSNorm).
    """
    module.register_parameter(
        "weight", Parameter(torch.empty(shape, **factory)) if enabled else None
    )
    if bias is not None:
        module.register_parameter(
            "bias", Parameter(torch.empty(shape, **factory)) if enabled and bias else None
        )


def _reset_affine(module: nn.Module) -> None:
    """weight <- 1, bias <- 0 where they exist."""
    if module.weight is not None:
        init.ones_(module.weight)
    if getattr(module, "bias", None) is not None:
        init.zeros_(module.bias)


_FLOAT32_EPS = torch.finfo(torch.float32).eps  # RMSNorm's eps=None on a float32 input
_ONE = torch.ones((), dtype=torch.long)  # added to num_batches_tracked (a 0-dim CPU tensor
# adds to a tensor on any device; half the cost of adding the Python int 1)


class _BatchNorm(nn.modules.batchnorm._BatchNorm):
    """torch's ``_BatchNorm`` (constructor, parameters, buffers, state_dict, repr) with
    normkit's forward."""

    backend = "auto"  # class default; assign on an instance to pick kernels

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        # torch's own signature; bias= also on a torch whose constructor lacks it (2.11)
        _init_with_bias(
            self,
            super().__init__,
            nn.modules.batchnorm._BatchNorm,
            bias,
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device,
            dtype,
        )

    def _factor_and_mode(self):
        """(momentum factor, use batch stats) following torch's rules, counting the batch."""
        factor = 0.0 if self.momentum is None else self.momentum
        counter = self._buffers.get("num_batches_tracked")
        if self.training and self.track_running_stats and counter is not None:
            counter.add_(_ONE)
            # momentum=None: cumulative moving average over every batch seen
            factor = 1.0 / float(counter) if self.momentum is None else self.momentum
        # eval without running stats (track_running_stats=False) uses the batch's
        buffers = self._buffers
        use_batch = self.training or (
            buffers.get("running_mean") is None and buffers.get("running_var") is None
        )
        return factor, use_batch

    def _buffers_for_call(self):
        tracked = not self.training or self.track_running_stats
        return (self.running_mean if tracked else None, self.running_var if tracked else None)

    def _check_channels(self, input: torch.Tensor) -> None:
        if input.size(1) != self.num_features:
            raise ValueError(
                f"{type(self).__name__}: expected {self.num_features} channels "
                f"(num_features) on dim 1, got input of shape "
                f"{tuple(input.shape)}"
            )

    def _fast_forward(self, input: torch.Tensor) -> Optional[torch.Tensor]:
        """The size-aware native path without the functional layer's per-call checks, for
        a call whose arguments are this module's own: a plain float32 CPU or CUDA input
        (float16/bfloat16 too on CUDA) with C = num_features, parameters and buffers of
        shape (C,), and everything ``normkit._native.chooses`` asks. None for any other
        call, which then takes the full path (and its error messages)."""
        shape = input.shape
        if len(shape) < 2 or shape[1] != self.num_features:
            return None
        params, buffers = self._parameters, self._buffers
        weight, bias = params.get("weight"), params.get("bias")
        tracked = not self.training or self.track_running_stats
        rm = buffers.get("running_mean") if tracked else None
        rv = buffers.get("running_var") if tracked else None
        c = shape[1]
        for t in (weight, bias, rm, rv):
            if t is not None and t.shape != (c,):
                return None
        use_batch = self.training or (rm is None and rv is None)
        if (rm is None) != (rv is None) or (
            use_batch and (not self.eps > 0.0 or input.numel() == c)
        ):
            return None
        if not _native.module_takes("batch_norm", input, self.backend, rm, rv, weight, bias):
            return None
        if use_batch and rm is not None and not input.is_cpu:
            # CUDA moves the running mean ahead of torch's update, which needs momentum < 1
            # (the CPU check holds for any momentum); momentum=None takes the full path
            momentum = self.momentum
            if momentum is None or not momentum < 1.0:
                return None
        factor, use_batch = self._factor_and_mode()
        if use_batch:
            return _native.batch_norm_train(input, rm, rv, weight, bias, factor, self.eps)
        return _native.batch_norm_eval(input, rm, rv, weight, bias, self.eps)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if type(input) is torch.Tensor:
            out = self._fast_forward(input)
            if out is not None:
                return out
        self._check_channels(input)
        factor, use_batch = self._factor_and_mode()
        running_mean, running_var = self._buffers_for_call()
        return F.batch_norm(
            input,
            running_mean,
            running_var,
            self.weight,
            self.bias,
            use_batch,
            factor,
            self.eps,
            backend=self.backend,
        )


def _rank_error(name: str, allowed: str, input) -> ValueError:
    return ValueError(
        f"{name}: expected {allowed} input (got {input.dim()}D input of shape {tuple(input.shape)})"
    )


class BatchNorm1d(_BatchNorm, nn.BatchNorm1d):
    r"""Batch normalization over a 2-D (N, C) or 3-D (N, C, L) input.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Statistics per channel over N (and L); biased variance to normalize,
    unbiased variance into ``running_var``.

    Args:
        num_features: C.
        eps: Default 1e-5.
        momentum: running-stat factor; None for a cumulative average. Default 0.1.
        affine: learnable weight and bias. Default True.
        track_running_stats: keep running stats (used in eval). Default True.
        device, dtype: factory kwargs.
        bias: keyword-only; learn the bias when affine. Default True.

    Shape:
        (N, C) or (N, C, L); output the same.

    Example::

        >>> BatchNorm1d(4)(torch.randn(8, 4)).shape
        torch.Size([8, 4])
    """

    def _check_input_dim(self, input):
        if input.dim() not in (2, 3):
            raise _rank_error("BatchNorm1d", "2D or 3D", input)


class BatchNorm2d(_BatchNorm, nn.BatchNorm2d):
    r"""Batch normalization over a 4-D (N, C, H, W) input.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Args:
        as :class:`BatchNorm1d`.

    Shape:
        (N, C, H, W); output the same (channels_last inputs are accepted).

    Example::

        >>> BatchNorm2d(3)(torch.randn(2, 3, 5, 5)).shape
        torch.Size([2, 3, 5, 5])
    """

    def _check_input_dim(self, input):
        if input.dim() != 4:
            raise _rank_error("BatchNorm2d", "4D", input)


class BatchNorm3d(_BatchNorm, nn.BatchNorm3d):
    r"""Batch normalization over a 5-D (N, C, D, H, W) input.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Args:
        as :class:`BatchNorm1d`.

    Shape:
        (N, C, D, H, W); output the same.

    Example::

        >>> BatchNorm3d(3)(torch.randn(2, 3, 2, 4, 4)).shape
        torch.Size([2, 3, 2, 4, 4])
    """

    def _check_input_dim(self, input):
        if input.dim() != 5:
            raise _rank_error("BatchNorm3d", "5D", input)


class SyncBatchNorm(_BatchNorm):
    r"""Batch normalization with statistics over every process of a process group.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    where E and Var span the batches of all ranks. Unlike
    ``torch.nn.SyncBatchNorm`` it runs on CPU tensors (gloo) as well as CUDA
    (NCCL): one ``all_gather`` forward, one ``all_reduce`` backward, ranks may
    hold unequal batches (even none). Every rank ends with identical running
    stats. In eval, without an initialized process group, or with world size 1
    it is plain :class:`BatchNorm2d` math and communicates nothing.

    It is a ``torch.nn.modules.batchnorm._BatchNorm`` (so BatchNorm ``isinstance``
    checks hold) but deliberately *not* a ``torch.nn.SyncBatchNorm``:
    ``DistributedDataParallel`` rejects every ``nn.SyncBatchNorm`` in a CPU model
    ("SyncBatchNorm layers only work with GPU modules"), which would forbid the
    gloo/CPU training this layer exists for. Constructor, buffers, state_dict and
    repr are ``nn.SyncBatchNorm``'s.

    Args:
        num_features, eps, momentum, affine, track_running_stats: as :class:`BatchNorm1d`.
        process_group: group to synchronise over. Default None (the world).
        device, dtype: factory kwargs.
        bias: keyword-only. Default True.

    Shape:
        (N, C, *); output the same.

    Example::

        >>> model = SyncBatchNorm.convert_sync_batchnorm(model)  # doctest: +SKIP
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group=None,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device,
            dtype,
            bias=bias,
        )
        self.process_group = process_group

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise _rank_error("SyncBatchNorm", "at least 2D", input)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if input.size(1) == 0:
            raise ValueError(
                "SyncBatchNorm: the number of input channels must be non-zero, "
                f"got shape {tuple(input.shape)}"
            )
        self._check_channels(input)
        if not self.training:  # eval never communicates, even on batch statistics
            return super().forward(input)
        world = F._sync_world(self.process_group)
        compiling = torch.compiler.is_compiling()
        if world > 1 and not compiling:
            # a tiny exchange before any state changes: mismatched ranks would abort (gloo)
            # or hang (NCCL) in the data collective
            check_ranks_agree(input, self.process_group, world)
        factor, use_batch = self._factor_and_mode()
        running_mean, running_var = self._buffers_for_call()
        if world > 1 and compiling:
            # traced: this call graph-breaks (fullgraph=False) and then runs eagerly,
            # agreement check included; fullgraph=True fails naming _EAGER_ONLY
            return _checked_sync_batch_norm(
                input,
                running_mean,
                running_var,
                self.weight,
                self.bias,
                factor,
                self.eps,
                self.process_group,
                self.backend,
            )
        return F.sync_batch_norm(
            input,
            running_mean,
            running_var,
            self.weight,
            self.bias,
            use_batch,
            factor,
            self.eps,
            self.process_group,
            backend=self.backend,
        )

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group=None) -> nn.Module:
        """Replace every BatchNorm (torch's or normkit's) in ``module`` by this class.

        Parameters and buffers are shared, not copied; train/eval mode is kept.
        If ``module`` itself is a BatchNorm, the new layer is returned.
        """
        out = module
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            out = cls(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                process_group,
                bias=module.bias is not None,
            )
            if module.affine:
                with torch.no_grad():
                    out.weight = module.weight
                    out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
            out.backend = getattr(module, "backend", "auto")
            if hasattr(module, "qconfig"):
                out.qconfig = module.qconfig
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return out


_EAGER_ONLY = (
    "SyncBatchNorm over several processes is eager-only: torch.compile cannot "
    "trace its collectives; compile with fullgraph=False (the sync step then runs "
    "eagerly), or convert to BatchNorm for a single process"
)


@torch.compiler.disable(reason=_EAGER_ONLY)
def _checked_sync_batch_norm(
    input, running_mean, running_var, weight, bias, factor, eps, process_group, backend
):
    """``F.sync_batch_norm`` preceded by the rank-agreement check, for compiled models:
    never traced, so under fullgraph=False the graph breaks here and both run eagerly."""
    world = F._sync_world(process_group)
    if world > 1:
        check_ranks_agree(input, process_group, world)
    return F.sync_batch_norm(
        input,
        running_mean,
        running_var,
        weight,
        bias,
        True,
        factor,
        eps,
        process_group,
        backend=backend,
    )


class _InstanceNorm(nn.modules.instancenorm._InstanceNorm):
    """torch's ``_InstanceNorm`` (constructor, buffers, state_dict, old-checkpoint
    handling, repr) with normkit's forward."""

    backend = "auto"
    _no_batch_dim = 0
    _allowed = ""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        # torch's own signature; bias= also on a torch whose constructor lacks it (2.11)
        _init_with_bias(
            self,
            super().__init__,
            nn.modules.instancenorm._InstanceNorm,
            bias,
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device,
            dtype,
        )

    def _get_no_batch_dim(self):
        return self._no_batch_dim

    def _check_input_dim(self, input):
        if input.dim() not in (self._no_batch_dim, self._no_batch_dim + 1):
            raise _rank_error(type(self).__name__, self._allowed, input)

    def _instance_norm(self, input):
        return F.instance_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
            backend=self.backend,
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        feature_dim = input.dim() - self._no_batch_dim
        if input.size(feature_dim) != self.num_features:
            if self.affine:
                raise ValueError(
                    f"{type(self).__name__}: expected input's size at "
                    f"dim={feature_dim} to match num_features "
                    f"({self.num_features}), but got: {input.size(feature_dim)}."
                )
            warnings.warn(
                f"input's size at dim={feature_dim} does not match num_features. "
                "You can silence this warning by not passing in num_features, "
                "which is not used because affine=False",
                stacklevel=2,
            )
        if input.dim() == self._no_batch_dim:  # unbatched: add and drop a batch dim
            return self._instance_norm(input.unsqueeze(0)).squeeze(0)
        return self._instance_norm(input)


_INSTANCE_DOC = r"""Instance normalization over a {rank} input: per sample and channel.

    .. math:: y = \frac{{x - \mathrm{{E}}[x]}}{{\sqrt{{\mathrm{{Var}}[x] + \epsilon}}}}
              \gamma + \beta

    Computed as group norm with one group per channel. As torch: ``affine`` and
    ``track_running_stats`` default to False; with running stats tracked, eval
    normalizes with them; ``momentum=None`` leaves them unchanged.

    Args:
        num_features: C.
        eps: Default 1e-5.
        momentum: Default 0.1.
        affine: Default False.
        track_running_stats: Default False.
        device, dtype: factory kwargs.
        bias: keyword-only. Default True.

    Shape:
        {shapes}; output the same.

    Example::

        >>> {name}(3, affine=True)(torch.randn({example})).shape  # doctest: +SKIP
    """


class InstanceNorm1d(_InstanceNorm, nn.InstanceNorm1d):
    __doc__ = _INSTANCE_DOC.format(
        rank="2-D or 3-D", shapes="(N, C, L) or (C, L)", name="InstanceNorm1d", example="2, 3, 7"
    )
    _no_batch_dim = 2
    _allowed = "2D or 3D"


class InstanceNorm2d(_InstanceNorm, nn.InstanceNorm2d):
    __doc__ = _INSTANCE_DOC.format(
        rank="3-D or 4-D",
        shapes="(N, C, H, W) or (C, H, W)",
        name="InstanceNorm2d",
        example="2, 3, 5, 5",
    )
    _no_batch_dim = 3
    _allowed = "3D or 4D"


class InstanceNorm3d(_InstanceNorm, nn.InstanceNorm3d):
    __doc__ = _INSTANCE_DOC.format(
        rank="4-D or 5-D",
        shapes="(N, C, D, H, W) or (C, D, H, W)",
        name="InstanceNorm3d",
        example="2, 3, 2, 4, 4",
    )
    _no_batch_dim = 4
    _allowed = "4D or 5D"


class LayerNorm(nn.LayerNorm):
    r"""Layer normalization over the trailing ``normalized_shape`` dims.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \odot \gamma + \beta

    Args:
        normalized_shape: int or shape of the trailing dims.
        eps: Default 1e-5.
        elementwise_affine: learnable weight (and bias) of shape ``normalized_shape``.
            Default True.
        bias: learn the bias when elementwise_affine. Default True.
        device, dtype: factory kwargs.

    Shape:
        (*, *normalized_shape); output the same.

    Example::

        >>> LayerNorm(8)(torch.randn(4, 8)).shape
        torch.Size([4, 8])
    """

    backend = "auto"

    def _fast_forward(self, input: torch.Tensor) -> Optional[torch.Tensor]:
        """The size-aware native path without the functional layer's per-call checks (see
        ``BatchNorm2d._fast_forward``); None for any other call."""
        shape = self.normalized_shape
        k = len(shape)
        if input.dim() < k or input.shape[input.dim() - k :] != shape or not self.eps >= 0.0:
            return None
        params = self._parameters
        weight, bias = params.get("weight"), params.get("bias")
        for t in (weight, bias):
            if t is not None and t.shape != shape:
                return None
        if not _native.module_takes("layer_norm", input, self.backend, weight, bias):
            return None
        return _native.layer_norm(input, shape, weight, bias, float(self.eps))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if type(input) is torch.Tensor:
            out = self._fast_forward(input)
            if out is not None:
                return out
        return F.layer_norm(
            input, self.normalized_shape, self.weight, self.bias, self.eps, backend=self.backend
        )


class GroupNorm(nn.GroupNorm):
    r"""Group normalization: per sample, over groups of C/G channels and all of space.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    ``GroupNorm(1, C)`` is layer norm over (C, *) with a per-channel affine;
    ``GroupNorm(C, C)`` is instance norm.

    Args:
        num_groups: G, dividing num_channels.
        num_channels: C.
        eps: Default 1e-5.
        affine: per-channel weight and bias. Default True.
        device, dtype: factory kwargs.
        bias: keyword-only. Default True.

    Shape:
        (N, C, *); output the same.

    Example::

        >>> GroupNorm(2, 6)(torch.randn(3, 6, 4, 4)).shape
        torch.Size([3, 6, 4, 4])
    """

    backend = "auto"

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
    ) -> None:
        # checked before torch's constructor so the message names the fix
        check_groups(num_channels, num_groups)
        init = super().__init__
        _init_with_bias(
            self, init, nn.GroupNorm, bias, num_groups, num_channels, eps, affine, device, dtype
        )

    def _fast_forward(self, input: torch.Tensor) -> Optional[torch.Tensor]:
        """The size-aware native path without the functional layer's per-call checks (see
        ``BatchNorm2d._fast_forward``): a dense (contiguous or channels-last) input of
        more than one value per group; None for any other call."""
        shape = input.shape
        c = self.num_channels
        if len(shape) < 2 or shape[1] != c or not self.eps >= 0.0:
            return None
        if (c // self.num_groups) * (input.numel() // (shape[0] * c) if shape[0] else 0) <= 1:
            return None
        params = self._parameters
        weight, bias = params.get("weight"), params.get("bias")
        for t in (weight, bias):
            if t is not None and t.shape != (c,):
                return None
        if not _native.module_takes("group_norm", input, self.backend, weight, bias) or (
            not _native.dense(input)
        ):
            return None
        return _native.group_norm(input, self.num_groups, weight, bias, float(self.eps))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if type(input) is torch.Tensor:
            out = self._fast_forward(input)
            if out is not None:
                return out
        if input.dim() >= 2 and input.size(1) != self.num_channels:
            raise ValueError(
                f"GroupNorm: expected {self.num_channels} channels on dim 1, got "
                f"input of shape {tuple(input.shape)}"
            )
        return F.group_norm(
            input, self.num_groups, self.weight, self.bias, self.eps, backend=self.backend
        )


class RMSNorm(nn.RMSNorm):
    r"""Root-mean-square normalization over the trailing ``normalized_shape`` dims.

    .. math:: y = \frac{x}{\sqrt{\mathrm{E}[x^2] + \epsilon}} \odot \gamma

    Args:
        normalized_shape: int or shape of the trailing dims.
        eps: Default None: ``torch.finfo`` eps of the compute dtype (float32
            for half inputs), as torch.
        elementwise_affine: learnable weight of shape ``normalized_shape``. Default True.
        device, dtype: factory kwargs.

    Shape:
        (*, *normalized_shape); output the same.

    Example::

        >>> RMSNorm([2, 3])(torch.randn(4, 2, 3)).shape
        torch.Size([4, 2, 3])
    """

    backend = "auto"

    def _fast_forward(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The size-aware native path without the functional layer's per-call checks (see
        ``BatchNorm2d._fast_forward``); None for any other call."""
        shape = self.normalized_shape
        k = len(shape)
        eps = self.eps
        if eps is None:  # float32's: torch's compute dtype, also for half inputs (CUDA)
            eps = _FLOAT32_EPS
        if x.dim() < k or x.shape[x.dim() - k :] != shape or not eps >= 0.0:
            return None
        weight = self._parameters.get("weight")
        if weight is not None and weight.shape != shape:
            return None
        if not _native.module_takes("rms_norm", x, self.backend, weight):
            return None
        return _native.rms_norm(x, shape, weight, float(eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if type(x) is torch.Tensor:
            out = self._fast_forward(x)
            if out is not None:
                return out
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps, backend=self.backend)


class ChannelRMSNorm(nn.Module):
    r"""RMS normalization across the channels of each position of an (N, C, *) feature map.

    .. math:: y_{n,c,p} = \gamma_c \frac{x_{n,c,p}}{\sqrt{\frac{1}{C}\sum_{c'} x_{n,c',p}^2
              + \epsilon}}

    This is :class:`RMSNorm` ``(C)`` applied at every spatial position (the
    channel dim moved last), the convolutional form used by ``create_norm("rms")``.
    It has no torch counterpart.

    Args:
        num_channels: C.
        eps: Default None (as :class:`RMSNorm`).
        affine: per-channel weight. Default True.
        device, dtype: factory kwargs.

    Shape:
        (N, C, *); output the same.

    Example::

        >>> ChannelRMSNorm(8)(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 8, 4, 4])
    """

    def __init__(
        self,
        num_channels: int,
        eps: Optional[float] = None,
        affine: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        self.backend = "auto"
        _register_affine(self, num_channels, affine, None, {"device": device, "dtype": dtype})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight <- 1."""
        _reset_affine(self)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() < 2 or input.size(1) != self.num_channels:
            raise ValueError(
                f"ChannelRMSNorm: expected an (N, {self.num_channels}, *) input, "
                f"got shape {tuple(input.shape)}"
            )
        return F.channel_rms_norm(input, self.weight, self.eps, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.affine}"
