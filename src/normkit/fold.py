r"""``normkit.fold_batch_norm``: fold evaluation-mode BatchNorm into the neighbouring conv/linear.

In evaluation BatchNorm is a per-channel affine map with constants,
``BN(z) = s * z + t`` with ``s = gamma / sqrt(running_var + eps)`` and
``t = beta - s * running_mean``, so it merges exactly into an adjacent linear layer:

* **BN after a layer** (Conv1d/2d/3d or Linear, then BN over its output channels)::

      W'[o] = s[o] * W[o]            b'[o] = s[o] * b[o] + t[o]

* **BN before a layer** (BN over the layer's input channels, then the layer)::

      W'[o, j, k] = W[o, j, k] * s[i(o, j)]      b'[o] = b[o] + sum_{j,k} W[o, j, k] * t[i(o, j)]

  with ``i(o, j) = group(o) * in_per_group + j``. This is exact only when every value the
  layer reads is a BN output: no zero padding (a padded zero is not ``BN`` of anything),
  or ``padding_mode`` ``reflect``/``replicate``/``circular`` (padded values are copies of
  BN outputs). Zero padding > 0 is refused.

The folded BN is replaced by ``nn.Identity()`` (names and Sequential indices are kept).

What "follows" means. normkit cannot see a module's ``forward``, so adjacency is taken
only where the execution order is the container's order: two **direct successive
children of an** ``nn.Sequential`` (at any nesting depth; a Sequential child that is
itself a Sequential is not looked into across the boundary). Named children of other
modules (``self.conv1``, ``self.bn1`` in a ResNet block) are not adjacent: their order
of registration says nothing about the data flow. A layer appearing more than once in
the model (a shared instance) is never modified.

Refusals (``ValueError`` naming the module path and the reason, or with ``strict=False``
a ``UserWarning`` and the BN left in place): a BN adjacent to a conv/linear that is in
training mode, has no running statistics (``track_running_stats=False``), whose
``num_features`` does not match the layer's channels, of a dimensionality other than the
conv's (BatchNorm2d after Conv1d), before a zero-padded conv, or next to a shared layer.
BNs with no conv/linear neighbour in a Sequential are left alone (they stay correct).

``fold_norm_into_linear=True`` also folds the affine of a LayerNorm/RMSNorm (torch's or
normkit's) over the last dim into the directly following Linear,
``W (x_hat * gamma + beta) + c = (W * gamma) x_hat + (W beta + c)``; the norm keeps its
normalization with weight 1 and bias 0.

Linear + BatchNorm1d assumes the Linear's output is (N, F), the only layout in which
BatchNorm1d(F) normalizes the Linear's features (on (N, L, F) it would normalize dim 1).
"""

from __future__ import annotations

import copy
import warnings
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .modules.ws import WSConv2d

__all__ = ["fold_batch_norm"]

_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_EXACT_PAD_MODES = ("reflect", "replicate", "circular")


def _is_bn(m: nn.Module) -> bool:
    from .modules.norms import _BatchNorm

    return isinstance(m, (nn.modules.batchnorm._BatchNorm, _BatchNorm))


def _bn_dim(m: nn.Module) -> Optional[int]:
    """1, 2, 3 for (normkit or torch) BatchNorm1d/2d/3d; None for SyncBatchNorm (any)."""
    name = type(m).__name__
    for d in (1, 2, 3):
        if name.endswith(f"BatchNorm{d}d") or isinstance(m, getattr(nn, f"BatchNorm{d}d")):
            return d
    return None


def _layer_dim(m: nn.Module) -> Optional[int]:
    if isinstance(m, nn.Linear):
        return 0
    for cls, d in _CONVS.items():
        if isinstance(m, cls) and not isinstance(m, nn.modules.conv._ConvTransposeNd):
            return d
    return None


class _Refusal(Exception):
    pass


def _bn_affine(bn: nn.Module, path: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(s, t) of the evaluation-mode BN, in float64."""
    if bn.training:
        raise _Refusal(
            f"{path} ({type(bn).__name__}) is in training mode, where it uses batch "
            "statistics; folding uses the running ones: call model.eval() first"
        )
    if getattr(bn, "running_mean", None) is None or getattr(bn, "running_var", None) is None:
        raise _Refusal(
            f"{path} ({type(bn).__name__}) has no running statistics "
            "(track_running_stats=False), so it normalizes by batch statistics "
            "even in eval mode and is not an affine map"
        )
    rm = bn.running_mean.detach().to(torch.float64)
    rv = bn.running_var.detach().to(torch.float64)
    s = torch.rsqrt(rv + float(bn.eps))
    if bn.weight is not None:
        s = s * bn.weight.detach().to(torch.float64)
    t = -rm * s
    if bn.bias is not None:
        t = t + bn.bias.detach().to(torch.float64)
    return s, t


def _check_dims(layer: nn.Module, bn: nn.Module, lpath: str, bpath: str) -> None:
    ld, bd = _layer_dim(layer), _bn_dim(bn)
    want = 1 if ld == 0 else ld
    if bd is not None and bd != want:
        raise _Refusal(
            f"{bpath} ({type(bn).__name__}) next to {lpath} ({type(layer).__name__}): "
            f"a {bd}-d BatchNorm cannot normalize a {type(layer).__name__}'s "
            f"channels; expected BatchNorm{want}d"
        )


def _plain_conv(layer: nn.Module) -> nn.Module:
    """A WSConv2d as the plain Conv2d it computes in evaluation (standardized weight)."""
    if not isinstance(layer, WSConv2d):
        return layer
    conv = nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.groups,
        layer.bias is not None,
        layer.padding_mode,
        device=layer.weight.device,
        dtype=layer.weight.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(layer.standardized_weight())
        if layer.bias is not None:
            conv.bias.copy_(layer.bias)
    return conv


def _set_params(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
    w = layer.weight
    with torch.no_grad():
        w.copy_(weight.to(w.dtype))
        if layer.bias is None:
            layer.bias = nn.Parameter(
                bias.to(device=w.device, dtype=w.dtype), requires_grad=w.requires_grad
            )
        else:
            layer.bias.copy_(bias.to(layer.bias.dtype))


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _in_channels(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _fold_after(layer, bn, lpath, bpath) -> None:
    _check_dims(layer, bn, lpath, bpath)
    c = _out_channels(layer)
    if bn.num_features != c:
        raise _Refusal(
            f"{bpath} ({type(bn).__name__}) has num_features={bn.num_features} but "
            f"{lpath} ({type(layer).__name__}) outputs {c} channels"
        )
    s, t = _bn_affine(bn, bpath)
    w = layer.weight.detach().to(torch.float64)
    b = (
        layer.bias.detach().to(torch.float64)
        if layer.bias is not None
        else torch.zeros(c, dtype=torch.float64, device=w.device)
    )
    view = (-1,) + (1,) * (w.dim() - 1)
    _set_params(layer, w * s.view(view), b * s + t)


def _fold_before(bn, layer, bpath, lpath) -> None:
    _check_dims(layer, bn, lpath, bpath)
    c = _in_channels(layer)
    if bn.num_features != c:
        raise _Refusal(
            f"{bpath} ({type(bn).__name__}) has num_features={bn.num_features} but "
            f"{lpath} ({type(layer).__name__}) reads {c} channels"
        )
    if not isinstance(layer, nn.Linear):
        padded = (
            any(p != 0 for p in layer.padding)
            if not isinstance(layer.padding, str)
            else layer.padding == "same" and any(k > 1 for k in layer.kernel_size)
        )
        if padded and layer.padding_mode not in _EXACT_PAD_MODES:
            raise _Refusal(
                f"{bpath} ({type(bn).__name__}) precedes {lpath}, which zero-pads "
                f"(padding={layer.padding}): a padded 0 is not a BatchNorm output, "
                "so the fold would change the border; use padding=0 or "
                "padding_mode='reflect'/'replicate'/'circular', or keep the BN"
            )
    s, t = _bn_affine(bn, bpath)
    w = layer.weight.detach().to(torch.float64)
    o = w.shape[0]
    groups = 1 if isinstance(layer, nn.Linear) else layer.groups
    per = w.shape[1]  # input channels per group
    # channel index i(o, j) of every (o, j): (O, in_per_group)
    idx = (torch.arange(o, device=w.device) // (o // groups)).view(-1, 1) * per + torch.arange(
        per, device=w.device
    ).view(1, -1)
    view = idx.shape + (1,) * (w.dim() - 2)
    s_oj, t_oj = s[idx].view(view), t[idx].view(view)
    b = (
        layer.bias.detach().to(torch.float64)
        if layer.bias is not None
        else torch.zeros(o, dtype=torch.float64, device=w.device)
    )
    b = b + (w * t_oj).flatten(1).sum(1)
    _set_params(layer, w * s_oj, b)


def _is_affine_norm(m: nn.Module) -> bool:
    from .modules.norms import LayerNorm, RMSNorm

    kinds = (nn.LayerNorm, LayerNorm, RMSNorm) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())
    return isinstance(m, kinds)


def _fold_norm_linear(norm, lin, npath, lpath) -> None:
    shape = tuple(norm.normalized_shape)
    if shape != (lin.in_features,):
        raise _Refusal(
            f"{npath} ({type(norm).__name__}) normalizes {shape}, but {lpath} reads "
            f"{lin.in_features} features; only a norm over the Linear's input "
            "features folds"
        )
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    if weight is None and bias is None:
        return
    w = lin.weight.detach().to(torch.float64)
    b = (
        lin.bias.detach().to(torch.float64)
        if lin.bias is not None
        else torch.zeros(lin.out_features, dtype=torch.float64, device=w.device)
    )
    if bias is not None:
        b = b + w @ bias.detach().to(torch.float64)
    if weight is not None:
        w = w * weight.detach().to(torch.float64).view(1, -1)
    _set_params(lin, w, b)
    with torch.no_grad():
        if weight is not None:
            weight.fill_(1.0)
        if bias is not None:
            bias.zero_()


def fold_batch_norm(
    model: nn.Module,
    *,
    fold_norm_into_linear: bool = False,
    inplace: bool = False,
    strict: bool = True,
) -> nn.Module:
    r"""Fold every evaluation-mode BatchNorm adjacent to a Conv/Linear in an ``nn.Sequential``.

    .. math:: \mathrm{BN}(z) = s z + t,\quad s = \frac{\gamma}{\sqrt{\sigma^2_{run} +
              \epsilon}},\quad t = \beta - s\mu_{run};\qquad W' = sW,\ b' = sb + t

    A BN directly after a Conv1d/2d/3d (or ``WSConv2d``, first turned into the plain
    Conv2d it computes) or Linear is folded into it; a BN directly before one is folded
    into it when exact (no zero padding). The BN becomes ``nn.Identity()``. The folded
    model in evaluation computes what the original computed in evaluation, up to
    rounding (parameters are folded in float64 and cast back). See the module docstring
    for what "adjacent" means and what is refused.

    Args:
        model: the model (torch or normkit BatchNorm layers, 1d/2d/3d).
        fold_norm_into_linear: also fold LayerNorm/RMSNorm gamma and beta into a directly
            following Linear (keyword-only). Default False.
        inplace: modify ``model`` itself; else a deep copy is folded. Default False.
        strict: raise ``ValueError`` for an adjacent BN that cannot be folded exactly;
            ``False`` warns and leaves it. Default True.

    Returns:
        the folded model (``model`` itself when ``inplace``).

    Example::

        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
        >>> folded = fold_batch_norm(net)
        >>> folded[1]
        Identity()
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold_batch_norm: model must be an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    counts: Dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        counts[id(m)] = counts.get(id(m), 0) + 1
    problems: List[str] = []

    def refuse(msg: str) -> None:
        if strict:
            raise ValueError(f"fold_batch_norm: {msg}")
        problems.append(msg)

    def shared(m, path) -> bool:
        if counts.get(id(m), 0) > 1:
            refuse(
                f"{path} ({type(m).__name__}) appears more than once in the model; folding "
                "into it would change every use"
            )
            return True
        return False

    seqs = [(p, m) for p, m in model.named_modules() if isinstance(m, nn.Sequential)]
    for spath, seq in seqs:
        names = list(seq._modules.keys())
        prefix = f"{spath}." if spath else ""
        i = 0
        while i < len(names):
            name = names[i]
            mod = seq._modules[name]
            path = prefix + name
            nxt_name = names[i + 1] if i + 1 < len(names) else None
            nxt = seq._modules[nxt_name] if nxt_name is not None else None
            npath = prefix + nxt_name if nxt_name is not None else None
            step = 1
            try:
                if _layer_dim(mod) is not None and nxt is not None and _is_bn(nxt):
                    step = 2  # the pair is decided here, folded or refused
                    if not (shared(mod, path) or shared(nxt, npath)):
                        layer = _plain_conv(mod)
                        _fold_after(layer, nxt, path, npath)
                        seq._modules[name] = layer
                        seq._modules[nxt_name] = nn.Identity()
                elif _is_bn(mod) and nxt is not None and _layer_dim(nxt) is not None:
                    # step stays 1: the layer may still take the BN that follows it
                    if not (shared(mod, path) or shared(nxt, npath)):
                        layer = _plain_conv(nxt)
                        _fold_before(mod, layer, path, npath)
                        seq._modules[nxt_name] = layer
                        seq._modules[name] = nn.Identity()
                elif (
                    fold_norm_into_linear
                    and _is_affine_norm(mod)
                    and isinstance(nxt, nn.Linear)
                    and not (shared(mod, path) or shared(nxt, npath))
                ):
                    _fold_norm_linear(mod, nxt, path, npath)
            except _Refusal as exc:
                refuse(str(exc))
            i += step
    for msg in problems:
        warnings.warn(f"fold_batch_norm: left unfolded: {msg}", UserWarning, stacklevel=2)
    return model
