"""normkit: normalization layers done right.

Public re-exports only; see the README for a tour.
"""

from . import conventions, functional
from .modules import LocalResponseNorm
from . import interop  # noqa: E402  (after modules: interop builds LocalResponseNorm)

__version__ = "0.1.0"

__all__ = ["conventions", "functional", "LocalResponseNorm", "__version__"]
__all__ += ["interop"]
