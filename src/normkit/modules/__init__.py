"""nn.Modules: parameters and buffers; ``forward`` is one call into ``functional``."""

from .lrn import LocalResponseNorm
from .norms import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    ChannelRMSNorm,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    LayerNorm,
    RMSNorm,
    SyncBatchNorm,
)

__all__ = ["LocalResponseNorm"]
__all__ += [
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

from .frn import FilterResponseNorm2d  # noqa: E402
from .ws import WSConv2d  # noqa: E402

__all__ += ["FilterResponseNorm2d", "WSConv2d"]

# --- fused residual-add norms and adaptive LayerNorm (issue 13) ---
from .fused import AdaLayerNorm, AddLayerNorm, AddRMSNorm  # noqa: E402

__all__ += ["AddRMSNorm", "AddLayerNorm", "AdaLayerNorm"]

# third-party twins that normkit.convert builds (timm, torchvision, Hugging Face)
from .compat import BatchNormAct2d, FrozenBatchNorm2d, HFRMSNorm, LayerNorm2d  # noqa: E402

__all__ += ["LayerNorm2d", "BatchNormAct2d", "FrozenBatchNorm2d", "HFRMSNorm"]
