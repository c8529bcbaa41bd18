"""nn.Modules: parameters and buffers; ``forward`` is one call into ``functional``."""

from .lrn import LocalResponseNorm

__all__ = ["LocalResponseNorm"]
