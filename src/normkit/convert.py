"""``normkit.convert``: swap torch.nn normalization layers for normkit's, in place."""

from __future__ import annotations

from typing import Callable, Dict, Type

from torch import nn

from . import modules as M

__all__ = ["convert", "CONVERTERS"]


def _batch(cls):
    return lambda m: cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats,
                         device="meta", bias=m.bias is not None)


# torch class -> builder of the normkit twin (constructed on "meta": every tensor is then
# replaced by the original's, so nothing is allocated and optimizers keep their params)
CONVERTERS: Dict[Type[nn.Module], Callable[[nn.Module], nn.Module]] = {
    nn.BatchNorm1d: _batch(M.BatchNorm1d),
    nn.BatchNorm2d: _batch(M.BatchNorm2d),
    nn.BatchNorm3d: _batch(M.BatchNorm3d),
    nn.SyncBatchNorm: lambda m: M.SyncBatchNorm(m.num_features, m.eps, m.momentum, m.affine,
                                                m.track_running_stats, m.process_group,
                                                device="meta", bias=m.bias is not None),
    nn.InstanceNorm1d: _batch(M.InstanceNorm1d),
    nn.InstanceNorm2d: _batch(M.InstanceNorm2d),
    nn.InstanceNorm3d: _batch(M.InstanceNorm3d),
    nn.LayerNorm: lambda m: M.LayerNorm(m.normalized_shape, m.eps, m.elementwise_affine,
                                        m.bias is not None, device="meta"),
    nn.GroupNorm: lambda m: M.GroupNorm(m.num_groups, m.num_channels, m.eps, m.affine,
                                        device="meta", bias=m.bias is not None),
    nn.RMSNorm: lambda m: M.RMSNorm(m.normalized_shape, m.eps, m.elementwise_affine,
                                    device="meta"),
    nn.LocalResponseNorm: lambda m: M.LocalResponseNorm(m.size, m.alpha, m.beta, m.k,
                                                        convention="torch"),
}


def _twin(module: nn.Module) -> nn.Module:
    new = CONVERTERS[type(module)](module)
    for name, param in module._parameters.items():
        new._parameters[name] = param
    for name, buf in module._buffers.items():
        new._buffers[name] = buf
    new.train(module.training)
    # hooks registered on the original keep firing on its replacement
    new._forward_pre_hooks.update(module._forward_pre_hooks)
    new._forward_hooks.update(module._forward_hooks)
    if hasattr(module, "qconfig"):
        new.qconfig = module.qconfig
    return new


def convert(model: nn.Module) -> nn.Module:
    """Replace every torch.nn normalization layer of ``model`` by its normkit twin, in place.

    Converted (exact types, so user subclasses with their own ``forward`` are
    left alone): ``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, ``InstanceNorm1d/2d/3d``,
    ``LayerNorm``, ``GroupNorm``, ``RMSNorm`` and ``LocalResponseNorm`` (to
    :class:`normkit.LocalResponseNorm` with the torch convention). The new
    layers share the original Parameter and buffer objects (same device, dtype,
    values; an optimizer built before the call keeps working), the train/eval
    mode and forward hooks.

    Args:
        model: any ``nn.Module``.

    Returns:
        ``model`` (modified in place), or the twin when ``model`` itself is a
        normalization layer.

    Example::

        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
        >>> net = convert(net)
        >>> type(net[1]).__module__
        'normkit.modules.norms'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: expected an nn.Module, got {type(model).__name__}")
    if type(model) in CONVERTERS:
        return _twin(model)
    for name, child in list(model.named_children()):
        if type(child) in CONVERTERS:
            setattr(model, name, _twin(child))
        else:
            convert(child)
    return model

