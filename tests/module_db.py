"""The module database: every public normkit layer class, with how to build and feed it.

In the spirit of PyTorch's ``common_modules``: one :class:`ModuleInfo` per public layer
class (several for classes whose modes differ), and ``tests/test_modules.py`` runs the
same conformance checks on each entry. A public ``nn.Module`` class of ``normkit`` with
no entry here fails ``test_every_public_layer_class_has_an_entry``: adding a layer means
adding it here, and it is then checked like every other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
from torch import nn

import normkit


@dataclass(frozen=True)
class ModuleInfo:
    """How to build one layer and what input it takes.

    ``make(m)`` builds the layer from namespace ``m`` (``normkit`` or ``torch.nn``) when
    ``twin`` is true: the torch counterpart then shares the constructor. Otherwise
    ``make(normkit)`` only. ``inputs(dtype)`` returns the positional inputs of ``forward``.
    """

    id: str
    cls: type
    make: Callable
    shape: Tuple[int, ...]
    twin: bool = True
    channels_last: bool = False  # a 4-D input whose memory format may change
    extra_inputs: Optional[Callable] = None  # (dtype) -> further forward inputs
    heavy: bool = False  # also run the slow checks (compile, export) on this entry
    # outputs that in-place ops may modify before backward (None: all). The fused add-norms
    # save h for their backward, exactly as torch's composite (x + r, then rms_norm) does.
    inplace_outputs: Optional[Tuple[int, ...]] = None
    # outputs that are plain torch views of a normkit result (a permute back to NCHW, a
    # chunk of a Linear): autograd lets in-place ops rebase those, so they need not be fresh
    torch_views: Tuple[int, ...] = ()

    def build(self, dtype=torch.float32) -> nn.Module:
        return self.make(normkit).to(dtype)

    def build_twin(self, dtype=torch.float32) -> Optional[nn.Module]:
        return self.make(nn).to(dtype) if self.twin else None

    def inputs(self, dtype=torch.float32, seed=0):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(*self.shape, generator=g, dtype=torch.float64).to(dtype)
        extra = () if self.extra_inputs is None else tuple(self.extra_inputs(dtype, g))
        return (x,) + extra


MODULES = [
    ModuleInfo(
        "lrn-torch",
        normkit.LocalResponseNorm,
        lambda m: m.LocalResponseNorm(3, alpha=1e-2, beta=0.75, k=1.0),
        (2, 5, 4, 4),
        channels_last=True,
        heavy=True,
    ),
    ModuleInfo(
        "lrn-caffe-within",
        normkit.LocalResponseNorm,
        lambda m: normkit.LocalResponseNorm.from_caffe(3, 1.0, 0.75, norm_region="WITHIN_CHANNEL"),
        (2, 3, 5, 5),
        twin=False,
        channels_last=True,
        heavy=True,
    ),
    ModuleInfo("bn1d", normkit.BatchNorm1d, lambda m: m.BatchNorm1d(4), (6, 4)),
    ModuleInfo(
        "bn2d",
        normkit.BatchNorm2d,
        lambda m: m.BatchNorm2d(3),
        (4, 3, 5, 5),
        channels_last=True,
        heavy=True,
    ),
    ModuleInfo("bn3d", normkit.BatchNorm3d, lambda m: m.BatchNorm3d(2), (2, 2, 3, 2, 3)),
    ModuleInfo(
        "syncbn",
        normkit.SyncBatchNorm,
        lambda m: m.SyncBatchNorm(3),
        (4, 3, 2, 2),
        twin=False,
        heavy=True,
    ),
    ModuleInfo("ln", normkit.LayerNorm, lambda m: m.LayerNorm(7), (3, 4, 7), heavy=True),
    ModuleInfo(
        "gn",
        normkit.GroupNorm,
        lambda m: m.GroupNorm(2, 6),
        (2, 6, 3, 3),
        channels_last=True,
        heavy=True,
    ),
    ModuleInfo(
        "in1d", normkit.InstanceNorm1d, lambda m: m.InstanceNorm1d(3, affine=True), (2, 3, 6)
    ),
    ModuleInfo(
        "in2d-tracked",
        normkit.InstanceNorm2d,
        lambda m: m.InstanceNorm2d(3, affine=True, track_running_stats=True),
        (2, 3, 4, 4),
        channels_last=True,
        heavy=True,
    ),
    ModuleInfo(
        "in3d", normkit.InstanceNorm3d, lambda m: m.InstanceNorm3d(2, affine=True), (2, 2, 2, 3, 3)
    ),
    ModuleInfo("rms", normkit.RMSNorm, lambda m: m.RMSNorm(8), (3, 8), heavy=True),
    ModuleInfo(
        "channel-rms",
        normkit.ChannelRMSNorm,
        lambda m: normkit.ChannelRMSNorm(4),
        (2, 4, 3, 3),
        twin=False,
        channels_last=True,
        heavy=True,
    ),
    ModuleInfo(
        "frn",
        normkit.FilterResponseNorm2d,
        lambda m: normkit.FilterResponseNorm2d(3),
        (2, 3, 4, 4),
        twin=False,
        channels_last=True,
        heavy=True,
    ),
    ModuleInfo(
        "frn-learnable-eps",
        normkit.FilterResponseNorm2d,
        lambda m: normkit.FilterResponseNorm2d(3, learnable_eps=True),
        (2, 3, 4, 4),
        twin=False,
    ),
    ModuleInfo(
        "ws-conv",
        normkit.WSConv2d,
        lambda m: normkit.WSConv2d(3, 4, 3, padding=1),
        (2, 3, 5, 5),
        twin=False,
        channels_last=True,
        heavy=True,
    ),
    # third-party twins (what normkit.convert builds)
    ModuleInfo(
        "layernorm2d",
        normkit.LayerNorm2d,
        lambda m: normkit.LayerNorm2d(4),
        (2, 4, 3, 3),
        twin=False,
        channels_last=True,
        heavy=True,
        torch_views=(0,),
    ),
    ModuleInfo(
        "bn-act",
        normkit.BatchNormAct2d,
        lambda m: normkit.BatchNormAct2d(4, act=nn.SiLU()),
        (3, 4, 3, 3),
        twin=False,
        channels_last=True,
        heavy=True,
    ),
    ModuleInfo(
        "frozen-bn",
        normkit.FrozenBatchNorm2d,
        lambda m: normkit.FrozenBatchNorm2d(4),
        (2, 4, 3, 3),
        twin=False,
        channels_last=True,
        heavy=True,
    ),
    ModuleInfo(
        "hf-rms-llama",
        normkit.HFRMSNorm,
        lambda m: normkit.HFRMSNorm(8),
        (2, 3, 8),
        twin=False,
        heavy=True,
    ),
    ModuleInfo(
        "hf-rms-gemma",
        normkit.HFRMSNorm,
        lambda m: normkit.HFRMSNorm(8, mode="gemma"),
        (2, 3, 8),
        twin=False,
    ),
    # fused and modulated norms (two inputs)
    ModuleInfo(
        "add-rms",
        normkit.AddRMSNorm,
        lambda m: normkit.AddRMSNorm(8),
        (2, 3, 8),
        twin=False,
        heavy=True,
        inplace_outputs=(0,),
        extra_inputs=lambda dt, g: [torch.randn(2, 3, 8, generator=g).to(dt)],
    ),
    ModuleInfo(
        "add-rms-gemma",
        normkit.AddRMSNorm,
        lambda m: normkit.AddRMSNorm(8, offset=1.0),
        (2, 3, 8),
        twin=False,
        inplace_outputs=(0,),
        extra_inputs=lambda dt, g: [torch.randn(2, 3, 8, generator=g).to(dt)],
    ),
    ModuleInfo(
        "add-ln",
        normkit.AddLayerNorm,
        lambda m: normkit.AddLayerNorm(8),
        (2, 3, 8),
        twin=False,
        heavy=True,
        inplace_outputs=(0,),
        extra_inputs=lambda dt, g: [torch.randn(2, 3, 8, generator=g).to(dt)],
    ),
    ModuleInfo(
        "ada-ln",
        normkit.AdaLayerNorm,
        lambda m: normkit.AdaLayerNorm(8, 5, zero_init=False),
        (2, 3, 8),
        twin=False,
        heavy=True,
        extra_inputs=lambda dt, g: [torch.randn(2, 5, generator=g).to(dt)],
    ),
]


def public_layer_classes():
    """Every ``nn.Module`` subclass that ``normkit`` exports at its top level."""
    out = []
    for name in getattr(normkit, "__all__", ()):
        obj = getattr(normkit, name, None)
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            out.append(obj)
    return out
