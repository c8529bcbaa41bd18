"""normkit: normalization layers done right.

Public re-exports only; see the README for a tour.

The names below load on first use (PEP 562 ``__getattr__``): ``import normkit`` alone does
not import torch, so torch-free paths such as ``normkit scale`` (the data scalers and their
command line) start in a fraction of a second. The first access to any layer, function or
submodule loads the whole public API at once, exactly as an eager import would.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it ("" for a submodule of the same name)
_EXPORTS = {
    # submodules
    "conventions": "",
    "functional": "",
    "preprocessing": "",
    "interop": "",
    # LRN and the torch.nn-compatible layers
    "LocalResponseNorm": "modules",
    "BatchNorm1d": "modules",
    "BatchNorm2d": "modules",
    "BatchNorm3d": "modules",
    "SyncBatchNorm": "modules",
    "LayerNorm": "modules",
    "GroupNorm": "modules",
    "InstanceNorm1d": "modules",
    "InstanceNorm2d": "modules",
    "InstanceNorm3d": "modules",
    "RMSNorm": "modules",
    "ChannelRMSNorm": "modules",
    # third-party twins that convert() builds
    "BatchNormAct2d": "modules",
    "FrozenBatchNorm2d": "modules",
    "HFRMSNorm": "modules",
    "LayerNorm2d": "modules",
    # beyond the source documents: FRN, weight standardization, fused and modulated norms
    "FilterResponseNorm2d": "modules",
    "WSConv2d": "modules",
    "AddRMSNorm": "modules",
    "AddLayerNorm": "modules",
    "AdaLayerNorm": "modules",
    # model-level tools
    "convert": "convert",
    "ConvertReport": "convert",
    "functional_mode": "functional_mode",
    "fold_batch_norm": "fold",
    "create_norm": "factory",
    "create_conv": "factory",
    "NORMS": "factory",
}

__all__ = [*_EXPORTS, "__version__"]

# the layer stack and the exporters, loaded together on first use of a layer or function;
# interop is among them because importing it installs the ONNX LRN-node writer that plain
# torch.onnx.export (TorchScript) uses
_EAGER_MODULES = (
    "conventions",
    "functional",
    "modules",
    "interop",
    "convert",
    "functional_mode",
    "fold",
    "factory",
)


def _load() -> None:
    for module in _EAGER_MODULES:
        importlib.import_module(f"{__name__}.{module}")
    for name, module in _EXPORTS.items():
        source = importlib.import_module(f"{__name__}.{module or name}")
        globals()[name] = source if not module else getattr(source, name)


_loading = False


def __getattr__(name: str):
    global _loading
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _EXPORTS and _EXPORTS[name] and not _loading:
        # a layer or function: load the whole public API once
        _loading = True
        try:
            _load()
        finally:
            _loading = False
        return globals()[name]
    # a submodule (normkit.functional, normkit.dispatch, ...): import just that one. The
    # import system also lands here for ``from . import x`` inside normkit, so this must
    # never load more than it is asked for (a half-imported module would import itself)
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
