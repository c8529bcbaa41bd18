"""Float64 NumPy ground truth: forward and hand-derived backward of every op.

Never imports torch. Every backend of normkit is tested against these functions.
"""

from .lrn import lrn_backward, lrn_forward, window_sum
from .norms import (
    batch_norm_backward,
    batch_norm_eval_forward,
    batch_norm_forward,
    group_norm_backward,
    group_norm_forward,
    instance_norm_backward,
    instance_norm_forward,
    layer_norm_backward,
    layer_norm_forward,
    moments,
    rms_norm_backward,
    rms_norm_forward,
    running_stats_update,
)

__all__ = ["lrn_forward", "lrn_backward", "window_sum"]
__all__ += [
    "moments",
    "batch_norm_forward",
    "batch_norm_backward",
    "batch_norm_eval_forward",
    "running_stats_update",
    "layer_norm_forward",
    "layer_norm_backward",
    "group_norm_forward",
    "group_norm_backward",
    "instance_norm_forward",
    "instance_norm_backward",
    "rms_norm_forward",
    "rms_norm_backward",
]

from .frn import frn_backward, frn_forward, weight_standardize  # noqa: E402

__all__ += ["frn_forward", "frn_backward", "weight_standardize"]

# --- fused residual-add norms and modulated LayerNorm (issue 13) ---
from .fused import (  # noqa: E402
    add_layer_norm_backward,
    add_layer_norm_forward,
    add_rms_norm_backward,
    add_rms_norm_forward,
    modulated_layer_norm_backward,
    modulated_layer_norm_forward,
)

__all__ += [
    "add_rms_norm_forward",
    "add_rms_norm_backward",
    "add_layer_norm_forward",
    "add_layer_norm_backward",
    "modulated_layer_norm_forward",
    "modulated_layer_norm_backward",
]
