"""The family registry: each normalization family of normkit, declared once.

A :class:`Family` lists everything the rest of the package needs to know about one kind
of normalization, so that adding a normalization is one entry here (plus its ops in
:mod:`normkit.ops.schema`, its kernels, reference and docs page):

* ``classes``: its public layer classes;
* ``norms``: the ``create_norm`` names it provides, ``{name: builder(C, **kwargs)}``
  for an (N, C, H, W) feature map (:mod:`normkit.factory`, the lab's ``--norms``);
* ``lab``: which of those names the lab's default comparison trains;
* ``converts``: ``{torch class: builder of the normkit twin}`` (:func:`normkit.convert`);
* ``export``: ``{class: export rule name}``, the rule :func:`normkit.interop.export_onnx`
  applies to that class (a class not listed exports through its own forward, whose
  functional calls compute with plain torch ops while an exporter traces);
* ``bench``: the ``normkit bench --layers`` cases that time it;
* ``doc``: the docs page with its math.

Readers: ``factory.NORMS``, ``convert.CONVERTERS``, ``interop.export``'s registry,
``bench``'s layer list, the lab's default norms and the tests
(``tests/test_families.py`` fails when a public layer class has no family, or when an
export rule, bench case or docs page named here does not exist).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, Optional, Tuple, Type

from torch import nn

from . import modules as M

__all__ = [
    "Family",
    "FAMILIES",
    "norm_builders",
    "torch_converters",
    "export_rules",
    "bench_layers",
    "lab_norms",
    "family_of",
    "default_num_groups",
]


@dataclass(frozen=True)
class Family:
    """One normalization family (see the module docstring for each field)."""

    name: str
    classes: Tuple[type, ...]
    doc: str
    norms: Mapping[str, Callable[..., nn.Module]] = field(default_factory=dict)
    lab: Tuple[str, ...] = ()
    converts: Mapping[Type[nn.Module], Callable[[nn.Module], nn.Module]] = field(
        default_factory=dict
    )
    export: Mapping[type, str] = field(default_factory=dict)
    bench: Tuple[str, ...] = ()


def default_num_groups(num_channels: int, max_groups: int = 32) -> int:
    """The largest divisor of ``num_channels`` that is at most ``max_groups``."""
    for g in range(min(max_groups, num_channels), 0, -1):
        if num_channels % g == 0:
            return g
    return 1


# --- create_norm builders ---------------------------------------------------------------


def _identity(c: int, **kwargs) -> nn.Module:
    if kwargs:
        raise TypeError(f"create_norm('none') takes no options, got {sorted(kwargs)}")
    return nn.Identity()


def _lrn(c: int, **kwargs) -> nn.Module:
    # Caffe's AlexNet norm1/norm2: local_size 5, alpha 1e-4 (divided by 5), beta 0.75, k 1
    params = dict(local_size=5, alpha=1e-4, beta=0.75, k=1.0)
    params.update(kwargs)
    return M.LocalResponseNorm.from_caffe(**params)


def _lrn_within(c: int, **kwargs) -> nn.Module:
    # Caffe's CIFAR-10 "full" model: a 3x3 box, alpha 5e-5 (divided by 9), beta 0.75
    params = dict(local_size=3, alpha=5e-5, beta=0.75, norm_region="WITHIN_CHANNEL")
    params.update(kwargs)
    return M.LocalResponseNorm.from_caffe(**params)


def _group(c: int, num_groups: int = None, **kwargs) -> nn.Module:
    return M.GroupNorm(default_num_groups(c) if num_groups is None else num_groups, c, **kwargs)


# --- convert builders: built on "meta", then given the original's tensors ---------------


def _batch(cls):
    return lambda m: cls(
        m.num_features,
        m.eps,
        m.momentum,
        m.affine,
        m.track_running_stats,
        device="meta",
        bias=m.bias is not None,
    )


FAMILIES: Tuple[Family, ...] = (
    Family("identity", (), "README.md", norms={"none": _identity}, lab=("none",)),
    Family(
        "lrn",
        (M.LocalResponseNorm,),
        "docs/lrn.md",
        norms={"lrn": _lrn, "lrn-within": _lrn_within},
        lab=("lrn", "lrn-within"),
        converts={
            nn.LocalResponseNorm: lambda m: M.LocalResponseNorm(
                m.size, m.alpha, m.beta, m.k, convention="torch"
            )
        },
        export={M.LocalResponseNorm: "lrn"},
        bench=("lrn",),
    ),
    Family(
        "batch_norm",
        (M.BatchNorm1d, M.BatchNorm2d, M.BatchNorm3d, M.SyncBatchNorm),
        "docs/norms.md",
        norms={
            "batch": lambda c, **kw: M.BatchNorm2d(c, **kw),
            "sync-batch": lambda c, **kw: M.SyncBatchNorm(c, **kw),
        },
        lab=("batch",),
        converts={
            nn.BatchNorm1d: _batch(M.BatchNorm1d),
            nn.BatchNorm2d: _batch(M.BatchNorm2d),
            nn.BatchNorm3d: _batch(M.BatchNorm3d),
            nn.SyncBatchNorm: lambda m: M.SyncBatchNorm(
                m.num_features,
                m.eps,
                m.momentum,
                m.affine,
                m.track_running_stats,
                m.process_group,
                device="meta",
                bias=m.bias is not None,
            ),
        },
        export={
            c: "batch_norm" for c in (M.BatchNorm1d, M.BatchNorm2d, M.BatchNorm3d, M.SyncBatchNorm)
        },
        bench=("batchnorm",),
    ),
    Family(
        "group_norm",
        (M.GroupNorm,),
        "docs/norms.md",
        # "layer": GroupNorm(1, C), layer norm over (C, H, W) with a per-channel affine
        norms={"group": _group, "layer": lambda c, **kw: M.GroupNorm(1, c, **kw)},
        lab=("group", "layer"),
        converts={
            nn.GroupNorm: lambda m: M.GroupNorm(
                m.num_groups,
                m.num_channels,
                m.eps,
                m.affine,
                device="meta",
                bias=m.bias is not None,
            )
        },
        export={M.GroupNorm: "group_norm"},
        bench=("groupnorm",),
    ),
    Family(
        "instance_norm",
        (M.InstanceNorm1d, M.InstanceNorm2d, M.InstanceNorm3d),
        "docs/norms.md",
        norms={"instance": lambda c, **kw: M.InstanceNorm2d(c, **{"affine": True, **kw})},
        lab=("instance",),
        converts={
            nn.InstanceNorm1d: _batch(M.InstanceNorm1d),
            nn.InstanceNorm2d: _batch(M.InstanceNorm2d),
            nn.InstanceNorm3d: _batch(M.InstanceNorm3d),
        },
        export={c: "instance_norm" for c in (M.InstanceNorm1d, M.InstanceNorm2d, M.InstanceNorm3d)},
        bench=("instancenorm",),
    ),
    Family(
        "layer_norm",
        (M.LayerNorm, M.LayerNorm2d),
        "docs/norms.md",
        converts={
            nn.LayerNorm: lambda m: M.LayerNorm(
                m.normalized_shape, m.eps, m.elementwise_affine, m.bias is not None, device="meta"
            )
        },
        export={M.LayerNorm: "layer_norm"},
        bench=("layernorm",),
    ),
    Family(
        "rms_norm",
        (M.RMSNorm, M.ChannelRMSNorm, M.HFRMSNorm),
        "docs/norms.md",
        norms={"rms": lambda c, **kw: M.ChannelRMSNorm(c, **kw)},
        lab=("rms",),
        converts={
            nn.RMSNorm: lambda m: M.RMSNorm(
                m.normalized_shape, m.eps, m.elementwise_affine, device="meta"
            )
        },
        export={M.RMSNorm: "rms_norm", M.ChannelRMSNorm: "channel_rms_norm"},
        bench=("rmsnorm",),
    ),
    Family("third_party_batch_norm", (M.BatchNormAct2d, M.FrozenBatchNorm2d), "docs/norms.md"),
    Family(
        "frn",
        (M.FilterResponseNorm2d,),
        "docs/frn-ws-fold.md",
        norms={"frn": lambda c, **kw: M.FilterResponseNorm2d(c, **kw)},
    ),
    Family(
        "weight_standardization",
        (M.WSConv2d,),
        "docs/frn-ws-fold.md",
        # the norm of "ws-group" is GroupNorm; the WS lives in the conv (create_conv)
        norms={"ws-group": _group},
    ),
    Family("add_rms_norm", (M.AddRMSNorm,), "docs/fused-norms.md", bench=("add_rms_norm",)),
    Family("add_layer_norm", (M.AddLayerNorm,), "docs/fused-norms.md", bench=("add_layer_norm",)),
    Family(
        "modulated_layer_norm",
        (M.AdaLayerNorm,),
        "docs/fused-norms.md",
        bench=("modulated_layer_norm",),
    ),
)


def _merged(attr: str) -> Dict:
    out: Dict = {}
    for fam in FAMILIES:
        for key, value in getattr(fam, attr).items():
            if key in out:
                raise RuntimeError(f"families: {attr} key {key!r} declared twice")
            out[key] = value
    return out


def norm_builders() -> Dict[str, Callable[..., nn.Module]]:
    """``{create_norm name: builder(C, **kwargs)}`` over every family."""
    return _merged("norms")


def torch_converters() -> Dict[Type[nn.Module], Callable[[nn.Module], nn.Module]]:
    """``{torch.nn class: builder of its normkit twin}`` over every family."""
    return _merged("converts")


def export_rules() -> Dict[type, str]:
    """``{normkit class: export rule name}`` for the families that name one."""
    return _merged("export")


def bench_layers() -> Tuple[str, ...]:
    """Every ``normkit bench`` layer case named by a family, in registry order."""
    return tuple(case for fam in FAMILIES for case in fam.bench)


def lab_norms() -> Tuple[str, ...]:
    """The create_norm names the lab's default comparison trains, in registry order."""
    return tuple(name for fam in FAMILIES for name in fam.lab)


def family_of(cls: type) -> Optional[Family]:
    """The family listing ``cls`` (or one of its bases), or None."""
    for fam in FAMILIES:
        if any(issubclass(cls, c) for c in fam.classes):
            return fam
    return None
