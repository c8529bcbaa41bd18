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

# --- FRN, Weight Standardization, BatchNorm folding (issue 13) ---
from .modules import FilterResponseNorm2d, WSConv2d  # noqa: E402
from .fold import fold_batch_norm  # noqa: E402
from .factory import create_conv  # noqa: E402

__all__ += ["FilterResponseNorm2d", "WSConv2d", "fold_batch_norm", "create_conv"]

# drop-in helpers (issue 10): third-party norm twins, functional mode
from .functional_mode import functional_mode  # noqa: E402
from .convert import ConvertReport  # noqa: E402
from .modules.compat import BatchNormAct2d, FrozenBatchNorm2d, HFRMSNorm, LayerNorm2d  # noqa: E402

__all__ += ["functional_mode", "ConvertReport", "BatchNormAct2d", "FrozenBatchNorm2d",
            "HFRMSNorm", "LayerNorm2d"]

# --- fused residual-add norms and adaptive LayerNorm (issue 13) ---
from .modules import AdaLayerNorm, AddLayerNorm, AddRMSNorm  # noqa: E402

__all__ += ["AddRMSNorm", "AddLayerNorm", "AdaLayerNorm"]
