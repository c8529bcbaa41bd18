"""Distributed sync: merge a scaler's statistics across the ranks of a torch.distributed group.

The state travels as one float64 vector per rank (``n_rows`` then each of the
class's ``_STATE_KEYS``), gathered with ``all_gather`` and merged in rank
order with the same ``merge`` as in-process shards, so the result does not
depend on timing.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np


def state_vector(scaler) -> np.ndarray:
    state = scaler._get_state()
    parts = [np.array([state["n_rows"]], dtype=np.float64)]
    parts += [np.asarray(state[k], dtype=np.float64) for k in scaler._STATE_KEYS]
    return np.concatenate(parts)


def state_from_vector(scaler, vec: np.ndarray, n_features: int) -> Dict[str, Any]:
    state = {"n_rows": int(vec[0])}
    for i, k in enumerate(scaler._STATE_KEYS):
        state[k] = vec[1 + i * n_features : 1 + (i + 1) * n_features].copy()
    return state


def sync(scaler, process_group=None):
    """Combine the statistics of every rank of a ``torch.distributed`` group (in place).

    Every rank ends with the same statistics: those of all ranks' data
    together, merged in rank order (so the result does not depend on
    timing). Ranks that saw no data may call ``sync`` unfitted. A
    collective: every rank of the group must call it.

    Args:
        process_group: the group; ``None`` (default) is the default group.

    Returns:
        scaler
    """
    import torch
    import torch.distributed as dist

    name = type(scaler).__name__
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"{name}.sync: torch.distributed is not initialized; call "
            "torch.distributed.init_process_group first (or use merge() "
            "to combine scalers in one process)"
        )
    world = dist.get_world_size(process_group)
    backend = dist.get_backend(process_group)
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if str(backend) == "nccl"
        else torch.device("cpu")
    )
    n_feat = float(scaler.n_features_in_) if hasattr(scaler, "n_features_in_") else -1.0
    header = torch.tensor([n_feat], dtype=torch.float64, device=device)
    headers = [torch.empty_like(header) for _ in range(world)]
    dist.all_gather(headers, header, group=process_group)
    feats = [int(h.item()) for h in headers]
    fitted = sorted({f for f in feats if f >= 0})
    if len(fitted) > 1:
        raise ValueError(
            f"{name}.sync: ranks were fitted with different numbers of "
            f"features {feats} (-1 = not fitted); every rank must see the "
            "same columns"
        )
    if not fitted:
        return scaler
    n_features = fitted[0]
    length = 1 + len(scaler._STATE_KEYS) * n_features
    if n_feat >= 0:
        vec = torch.as_tensor(state_vector(scaler), device=device)
    else:
        vec = torch.zeros(length, dtype=torch.float64, device=device)
    vecs = [torch.empty_like(vec) for _ in range(world)]
    dist.all_gather(vecs, vec, group=process_group)
    total = type(scaler)(**scaler.get_params())
    for rank, v in enumerate(vecs):
        if feats[rank] < 0:
            continue
        part = type(scaler)(**scaler.get_params())
        part._set_state(n_features, state_from_vector(scaler, v.cpu().numpy(), n_features))
        total.merge(part)
    scaler._set_state(n_features, total._get_state())
    return scaler
