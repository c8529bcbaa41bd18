"""``normkit.convert``: swap a model's normalization layers for normkit's, in place.

Three kinds of layers are converted:

1. torch's own classes (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, ``InstanceNorm1d/2d/3d``,
   ``LayerNorm``, ``GroupNorm``, ``RMSNorm``, ``LocalResponseNorm``);
2. subclasses of those whose ``forward`` (and the methods it calls) are inherited:
   they compute exactly what their torch base computes;
3. common third-party classes, recognised by module, class name and attributes
   (their packages are never imported): timm ``LayerNorm``, ``LayerNorm2d``,
   ``BatchNormAct2d``, ``GroupNorm1``; torchvision ``LayerNorm2d``,
   ``FrozenBatchNorm2d``; Hugging Face Llama-family ``*RMSNorm``, Gemma's
   ``(1 + weight)`` RMSNorm and ``T5LayerNorm`` (:mod:`normkit.modules.compat`).

Anything else is left alone; a layer that looks like a normalization (its class name
contains ``Norm``) but is not known is listed in the report with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Type

import torch
from torch import nn

from . import modules as M
from .families import torch_converters
from .modules import compat as C

__all__ = ["convert", "CONVERTERS", "ConvertReport"]

log = logging.getLogger(__name__)


# torch class -> builder of the normkit twin, from the family registry (normkit.families).
# Twins are constructed on "meta": every tensor is then replaced by the original's, so
# nothing is allocated and optimizers keep their params.
CONVERTERS: Dict[Type[nn.Module], Callable[[nn.Module], nn.Module]] = torch_converters()

# methods a torch norm's forward calls: a subclass overriding any of them computes
# something of its own, so it is not converted
_FORWARD_METHODS = (
    "forward",
    "_check_input_dim",
    "_get_no_batch_dim",
    "_handle_no_batch_input",
    "_apply_instance_norm",
    "_check_non_zero_input_channels",
)

_NORMKIT_TYPES = tuple(getattr(M, name) for name in M.__all__) + (
    C.LayerNorm2d,
    C.BatchNormAct2d,
    C.FrozenBatchNorm2d,
    C.HFRMSNorm,
)


@dataclass
class ConvertReport:
    """What :func:`convert` did: ``converted`` rows ``(path, from_class, to_class)`` and
    ``left`` rows ``(path, class, reason)`` (paths as in ``named_modules``; ``""`` is the
    root). ``str(report)`` is a readable table."""

    converted: List[Tuple[str, str, str]] = field(default_factory=list)
    left: List[Tuple[str, str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"normkit.convert: {len(self.converted)} converted, {len(self.left)} left"]
        lines += [f"  converted {p or '<root>'}: {a} -> {b}" for p, a, b in self.converted]
        lines += [f"  left      {p or '<root>'}: {a} ({why})" for p, a, why in self.left]
        return "\n".join(lines)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _torch_base(module: nn.Module) -> Optional[Type[nn.Module]]:
    """The nearest torch class in CONVERTERS among ``module``'s bases."""
    for klass in type(module).__mro__:
        if klass in CONVERTERS:
            return klass
    return None


def _overrides(module: nn.Module, base: type) -> List[str]:
    return [
        name
        for name in _FORWARD_METHODS
        if hasattr(base, name) and getattr(type(module), name) is not getattr(base, name)
    ]


def _share(new: nn.Module, old: nn.Module) -> nn.Module:
    """Give ``new`` the original's tensors, mode and hooks."""
    for name, param in old._parameters.items():
        new._parameters[name] = param
    for name, buf in old._buffers.items():
        if name in new._buffers or name not in new._parameters:
            new._buffers[name] = buf
    new.train(old.training)
    # hooks registered on the original keep firing on its replacement
    new._forward_pre_hooks.update(old._forward_pre_hooks)
    new._forward_hooks.update(old._forward_hooks)
    if hasattr(old, "qconfig"):
        new.qconfig = old.qconfig
    return new


def _twin(module: nn.Module, base: Optional[type] = None) -> nn.Module:
    return _share(CONVERTERS[base or type(module)](module), module)


# --- third-party classes, by their documented behaviour --------------------------------


def _package(module: nn.Module) -> str:
    return type(module).__module__.split(".")[0]


def _plain_params(module: nn.Module, names) -> bool:
    return (
        set(module._parameters) == set(names)
        and not module._modules
        and all(
            module._parameters[n] is not None and module._parameters[n].dim() == 1 for n in names
        )
    )


def _timm_fast_norm(module: nn.Module) -> Optional[str]:
    # timm's fast_norm path casts to the autocast dtype itself: different under autocast
    if getattr(module, "_fast_norm", False) or getattr(module, "fast_norm", False):
        return "timm fast_norm is enabled (it computes in the autocast dtype)"
    return None


def _timm_layer_norm(m):
    return _timm_fast_norm(m) or (None, lambda: _twin(m, nn.LayerNorm))


def _layer_norm_2d(m):
    if _package(m) == "timm" and _timm_fast_norm(m):
        return _timm_fast_norm(m)
    if len(m.normalized_shape) != 1:
        return "LayerNorm2d with a multi-dim normalized_shape"
    new = C.LayerNorm2d(
        m.normalized_shape[0], m.eps, m.elementwise_affine, m.bias is not None, device="meta"
    )
    return None, lambda: _share(new, m)


def _timm_bn_act(m):
    drop, act = getattr(m, "drop", None), getattr(m, "act", None)
    if not isinstance(drop, nn.Module) or not isinstance(act, nn.Module):
        return "BatchNormAct2d without drop/act submodules"
    if set(m._modules) - {"drop", "act"}:
        return f"BatchNormAct2d with extra submodules {sorted(set(m._modules) - {'drop', 'act'})}"

    def build():
        new = C.BatchNormAct2d(
            m.num_features,
            m.eps,
            m.momentum,
            m.affine,
            m.track_running_stats,
            act=act,
            drop=drop,
            device="meta",
        )
        return _share(new, m)

    return None, build


def _timm_group_norm(m):
    return _timm_fast_norm(m) or (None, lambda: _twin(m, nn.GroupNorm))


def _frozen_bn(m):
    names = ("weight", "bias", "running_mean", "running_var")
    if (
        m._parameters
        or m._modules
        or not all(isinstance(m._buffers.get(n), torch.Tensor) for n in names)
    ):
        return "FrozenBatchNorm2d without exactly its four buffers"
    new = C.FrozenBatchNorm2d(m.weight.numel(), float(getattr(m, "eps", 1e-5)), device="meta")
    return None, lambda: _share(new, m)


def _hf_rms(mode: str, eps_attr: str):
    def rule(m):
        if not _plain_params(m, ("weight",)):
            return "unexpected parameters or submodules for this Hugging Face norm"
        if not hasattr(m, eps_attr):
            return f"no {eps_attr} attribute"
        new = C.HFRMSNorm(m.weight.numel(), float(getattr(m, eps_attr)), mode, device="meta")
        return None, lambda: _share(new, m)

    return rule


_LLAMA_STYLE = (
    "LlamaRMSNorm",
    "MistralRMSNorm",
    "MixtralRMSNorm",
    "Qwen2RMSNorm",
    "Qwen2MoeRMSNorm",
    "Qwen3RMSNorm",
    "Qwen3MoeRMSNorm",
    "Phi3RMSNorm",
)
_GEMMA_STYLE = ("GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm")
_T5_STYLE = ("T5LayerNorm", "MT5LayerNorm", "LongT5LayerNorm", "UMT5LayerNorm")

# (package, class name) -> rule: returns a reason to leave it, or (None, builder)
THIRD_PARTY: Dict[Tuple[str, str], Callable] = {
    ("timm", "LayerNorm"): _timm_layer_norm,
    ("timm", "LayerNorm2d"): _layer_norm_2d,
    ("timm", "BatchNormAct2d"): _timm_bn_act,
    ("timm", "GroupNorm1"): _timm_group_norm,
    ("torchvision", "LayerNorm2d"): _layer_norm_2d,
    ("torchvision", "FrozenBatchNorm2d"): _frozen_bn,
}
THIRD_PARTY.update(
    {("transformers", n): _hf_rms("llama", "variance_epsilon") for n in _LLAMA_STYLE}
)
THIRD_PARTY.update({("transformers", n): _hf_rms("gemma", "eps") for n in _GEMMA_STYLE})
THIRD_PARTY.update({("transformers", n): _hf_rms("t5", "variance_epsilon") for n in _T5_STYLE})


def _plan(module: nn.Module):
    """(builder, None) to convert ``module``, (None, reason) to leave it, (None, None)
    when it is not a normalization layer at all."""
    klass = type(module)
    if isinstance(module, _NORMKIT_TYPES):
        return None, None  # already normkit's
    rule = THIRD_PARTY.get((_package(module), klass.__name__))
    if rule is not None:
        out = rule(module)
        if isinstance(out, str):
            return None, out
        return out[1], None
    if klass in CONVERTERS:
        return (lambda: _twin(module)), None
    base = _torch_base(module)
    if base is not None:
        own = _overrides(module, base)
        if own:
            return None, (
                f"subclass of {_qualname(base)} with its own {', '.join(own)}: "
                "normkit cannot know what it computes"
            )
        if module._modules:
            return None, f"subclass of {_qualname(base)} with submodules"
        return (lambda: _inherit(module, base)), None
    if "Norm" in klass.__name__:
        return None, "unknown normalization class (not converted, computes as before)"
    return None, None


def _inherit(module: nn.Module, base: type) -> nn.Module:
    new = _twin(module, base)
    # attributes a subclass added (plain Python values) travel with it
    for key, value in vars(module).items():
        if not key.startswith("_") and key not in vars(new) and key != "training":
            setattr(new, key, value)
    return new


def _walk(module: nn.Module, path: str, report: ConvertReport) -> Optional[nn.Module]:
    build, reason = _plan(module)
    if build is not None:
        new = build()
        report.converted.append((path, _qualname(type(module)), _qualname(type(new))))
        # a converted layer keeps its children (BatchNormAct2d's act): walk them too
        for name, child in list(new.named_children()):
            replaced = _walk(child, f"{path}.{name}" if path else name, report)
            if replaced is not None:
                setattr(new, name, replaced)
        return new
    if reason is not None:
        report.left.append((path, _qualname(type(module)), reason))
    for name, child in list(module.named_children()):
        replaced = _walk(child, f"{path}.{name}" if path else name, report)
        if replaced is not None:
            setattr(module, name, replaced)
    return None


def convert(model: nn.Module, *, return_report: bool = False):
    """Replace the normalization layers of ``model`` by normkit's, in place.

    Converts torch's norm classes, subclasses of them whose forward is inherited, and
    the third-party classes listed in :mod:`normkit.convert` (recognised without
    importing their packages) to normkit layers that compute the same values and
    gradients. The new layers share the original Parameter and buffer objects (same
    device, dtype, values; an optimizer built before the call keeps working), the
    train/eval mode and forward hooks. Unknown classes are left alone. The report
    is logged at INFO level on the ``normkit.convert`` logger.

    Args:
        model: any ``nn.Module``.
        return_report: also return a :class:`ConvertReport`. Default False.

    Returns:
        ``model`` (modified in place), or the new layer when ``model`` itself is
        converted; with ``return_report=True`` a tuple ``(model, report)``.

    Example::

        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
        >>> net, report = convert(net, return_report=True)
        >>> report.converted
        [('1', 'torch.nn.modules.batchnorm.BatchNorm2d', 'normkit.modules.norms.BatchNorm2d')]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: expected an nn.Module, got {type(model).__name__}")
    report = ConvertReport()
    replaced = _walk(model, "", report)
    out = replaced if replaced is not None else model
    log.info("%s", report)
    return (out, report) if return_report else out
