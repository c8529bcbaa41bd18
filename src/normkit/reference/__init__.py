"""Float64 NumPy ground truth: forward and hand-derived backward of every op.

Never imports torch. Every backend of normkit is tested against these functions.
"""

from .lrn import lrn_backward, lrn_forward, window_sum

__all__ = ["lrn_forward", "lrn_backward", "window_sum"]
