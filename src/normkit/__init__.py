"""normkit: normalization layers done right.

Public re-exports only; see the README for a tour.
"""

from . import conventions, functional
from . import preprocessing
from .modules import LocalResponseNorm
from . import interop  # noqa: E402  (after modules: interop builds LocalResponseNorm)

__version__ = "0.1.0"

__all__ = ["conventions", "functional", "LocalResponseNorm", "__version__"]

from .modules import (BatchNorm1d, BatchNorm2d, BatchNorm3d, ChannelRMSNorm,  # noqa: E402
                      GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d, LayerNorm,
                      RMSNorm, SyncBatchNorm)
from .convert import convert  # noqa: E402
from .factory import NORMS, create_norm  # noqa: E402

__all__ += ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LayerNorm",
            "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "RMSNorm",
            "ChannelRMSNorm", "convert", "create_norm", "NORMS"]
__all__ += ["interop"]
__all__ += ["preprocessing"]

# --- fused residual-add norms and adaptive LayerNorm (issue 13) ---
from .modules import AdaLayerNorm, AddLayerNorm, AddRMSNorm  # noqa: E402

__all__ += ["AddRMSNorm", "AddLayerNorm", "AdaLayerNorm"]
