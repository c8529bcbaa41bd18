"""normkit: normalization layers done right.

Public re-exports only; see the README for a tour.
"""

from . import conventions, functional
from .modules import LocalResponseNorm

__version__ = "0.1.0"

__all__ = ["conventions", "functional", "LocalResponseNorm", "__version__"]
from .factory import create_norm  # noqa: E402
