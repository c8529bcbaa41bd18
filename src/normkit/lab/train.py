"""The lab's training loop: deterministic, with a progress bar, single-process or DDP.

One loop serves the single-process run and the data-parallel run under
``torchrun``: both draw their batches from a ``DistributedSampler`` seeded with
``seed`` (one replica in the single-process case). With ``W`` processes and a
per-process batch of ``B / W``, process ``r`` takes elements ``r, r + W, ...`` of
the same permutation, so global batch ``k`` is exactly elements
``k*B .. (k+1)*B - 1`` of it -- the same examples the single process uses for
its batch ``k``. DDP averages the gradients of equal-sized shards, which is the
gradient of the global mean loss, and ``normkit.SyncBatchNorm`` computes the
statistics of the global batch, so the two runs follow the same curve up to the
order of floating-point sums (dropout masks are per-process random draws, so set
``dropout=0`` where you compare curves step by step).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from .data import Dataset
from .model import build_model

# A loss-threshold crossing is judged on a running mean of this many steps, so one
# lucky mini-batch does not count as convergence.
THRESHOLD_WINDOW = 10


@dataclass
class TrainConfig:
    """Everything that determines a run (recorded verbatim in results.json)."""

    norm: str = "batch"
    depth: str = "deep"
    epochs: int = 8
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    dropout: float = 0.2
    seed: int = 0
    device: str = "cpu"
    threshold: float = 0.5
    norm_kwargs: Dict = field(default_factory=dict)
    max_train: Optional[int] = None  # --quick trains on the first max_train examples

    def to_dict(self) -> dict:
        return asdict(self)


def world() -> tuple:
    """(rank, world_size): (0, 1) unless a process group is running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "--device cuda: torch reports no CUDA device here "
                f"(torch {torch.__version__}); use --device cpu"
            )
        rank, _ = world()
        local = int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count()
        return torch.device("cuda", local)
    raise ValueError(f"--device must be 'cpu' or 'cuda', got {name!r}")


def steps_to_threshold(
    step_loss: List[float], threshold: float, window: int = THRESHOLD_WINDOW
) -> Optional[int]:
    """First step (1-based) at which the mean loss of the last ``window`` steps is < threshold."""
    total = 0.0
    for i, loss in enumerate(step_loss):
        total += loss
        if i >= window:
            total -= step_loss[i - window]
        if i + 1 >= window and total / window < threshold:
            return i + 1
    return None


def evaluate(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device, chunk: int = 1024
) -> tuple:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode over (x, y)."""
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, x.shape[0], chunk):
            xb, yb = x[i : i + chunk].to(device), y[i : i + chunk].to(device)
            logits = model(xb)
            loss += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    model.train(was_training)
    n = max(1, x.shape[0])
    return loss / n, correct / n


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True
    )


def train(
    dataset: Dataset,
    cfg: TrainConfig,
    *,
    progress: bool = True,
    on_step: Optional[Callable[[torch.nn.Module, int], None]] = None,
    label: Optional[str] = None,
) -> dict:
    """Train one model; return its run record (config, curves, summary numbers).

    Args:
        dataset: train/test tensors (see :mod:`normkit.lab.data`).
        cfg: the run's settings. Under a process group, ``cfg.batch_size`` is
            the *global* batch and must divide by the world size; ``"batch"``
            is then built as ``"sync-batch"``.
        progress: draw a tqdm bar on stderr (rank 0 only).
        on_step: called as ``on_step(model, step)`` before the first step
            (step 0) and after every step, for probes such as the ICS experiment.
        label: the bar's description. Default: the norm's name.

    Returns:
        dict with ``history`` (``step_loss`` per step; per epoch
        ``train_loss``, ``test_loss``, ``test_accuracy``, ``seconds``) and the
        summary ``final_train_loss``, ``test_accuracy``, ``steps_to_threshold``,
        ``seconds_per_epoch``.
    """
    rank, world_size = world()
    device = resolve_device(cfg.device)
    if cfg.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.batch_size % world_size:
        raise ValueError(
            f"--batch-size is the global batch and must divide by the number of "
            f"processes ({world_size}), got {cfg.batch_size}"
        )
    norm = cfg.norm
    if world_size > 1 and norm == "batch":
        norm = "sync-batch"  # the global batch's statistics, as the single process computes

    x_train, y_train = dataset.x_train, dataset.y_train
    if cfg.max_train is not None:
        x_train, y_train = x_train[: cfg.max_train], y_train[: cfg.max_train]
    per_rank = cfg.batch_size // world_size
    sampler = DistributedSampler(
        TensorDataset(x_train, y_train),
        num_replicas=world_size,
        rank=rank,
        shuffle=True,
        seed=cfg.seed,
        drop_last=True,
    )
    loader = DataLoader(
        TensorDataset(x_train, y_train), batch_size=per_rank, sampler=sampler, drop_last=True
    )
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError(
            f"--batch-size {cfg.batch_size} exceeds the {len(x_train)} training "
            "examples; choose a smaller batch"
        )

    model = build_model(
        norm,
        seed=cfg.seed,
        in_channels=dataset.in_channels,
        num_classes=dataset.num_classes,
        image_size=dataset.image_size,
        depth=cfg.depth,
        norm_kwargs=cfg.norm_kwargs,
        dropout=cfg.dropout,
    ).to(device)
    net = model
    if world_size > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = torch.optim.SGD(
        net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    torch.manual_seed(cfg.seed + rank)  # dropout masks: reproducible per process

    step_loss: List[float] = []
    hist = {"train_loss": [], "test_loss": [], "test_accuracy": [], "seconds": []}
    bar = _progress(cfg.epochs * steps_per_epoch, label or cfg.norm, progress and rank == 0)
    diverged = False
    step = 0
    if on_step is not None:
        on_step(model, 0)
    try:
        for epoch in range(cfg.epochs):
            sampler.set_epoch(epoch)
            net.train()
            t0 = time.perf_counter()
            epoch_losses = []
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                loss = F.cross_entropy(net(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                value = loss.detach()
                if world_size > 1:  # log the global batch's loss, as one process would
                    dist.all_reduce(value)
                    value = value / world_size
                value = float(value)
                step += 1
                step_loss.append(value)
                epoch_losses.append(value)
                if on_step is not None:
                    on_step(model, step)
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0:
                        bar.set_postfix(loss=f"{value:.3f}", epoch=epoch + 1, refresh=False)
                if not math.isfinite(value):
                    diverged = True
                    break
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            hist["seconds"].append(time.perf_counter() - t0)
            hist["train_loss"].append(sum(epoch_losses) / max(1, len(epoch_losses)))
            test_loss, test_acc = evaluate(model, dataset.x_test, dataset.y_test, device)
            hist["test_loss"].append(test_loss)
            hist["test_accuracy"].append(test_acc)
            if diverged:
                break
    finally:
        if bar is not None:
            bar.close()

    seconds = sorted(hist["seconds"])
    return {
        "norm": cfg.norm,
        "built_as": norm,
        "config": cfg.to_dict(),
        "world_size": world_size,
        "steps_per_epoch": steps_per_epoch,
        "history": {"step_loss": step_loss, **hist},
        "final_train_loss": hist["train_loss"][-1],
        "test_accuracy": hist["test_accuracy"][-1],
        "steps_to_threshold": steps_to_threshold(step_loss, cfg.threshold),
        # median: the first epoch pays one-off costs and the machine may be shared
        "seconds_per_epoch": seconds[len(seconds) // 2],
        "diverged": diverged,
    }
