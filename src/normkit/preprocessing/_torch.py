"""torch, imported on first use: the NumPy-only paths (and ``normkit scale``) never load it.

A torch tensor can only reach a scaler once torch is imported, so
``is_tensor`` looks in ``sys.modules`` instead of importing torch to ask.
"""

from __future__ import annotations

import sys


class _LazyTorch:
    def __getattr__(self, name):
        import torch

        return getattr(torch, name)


torch = _LazyTorch()


def is_tensor(x) -> bool:
    """``isinstance(x, torch.Tensor)`` without importing torch."""
    mod = sys.modules.get("torch")
    return mod is not None and isinstance(x, mod.Tensor)
