"""PNG plots for the lab (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from typing import Dict, List, Sequence

import numpy as np


LINESTYLES = ["-", "--", ":", "-."]


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)  # a headless machine has no display; never open a window
    import matplotlib.pyplot as plt
    return plt


def _smooth(values: Sequence[float], window: int) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if window <= 1 or v.size < window:
        return v
    kernel = np.ones(window) / window
    head = np.cumsum(v[:window - 1]) / np.arange(1, window)  # ramp-in: no fake zeros
    return np.concatenate([head, np.convolve(v, kernel, mode="valid")])


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    _plt().close(fig)
    return os.path.basename(path)


def curves(runs: List[dict], path: str, title: str) -> str:
    """Two panels: smoothed train loss per step, and test accuracy per epoch; one line per run."""
    plt = _plt()
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 4))
    for i, run in enumerate(runs):
        h = run["history"]
        window = max(1, run["steps_per_epoch"] // 4)
        loss = _smooth(h["step_loss"], window)
        # runs that do not learn draw the same flat line; dashes keep them all visible
        style = LINESTYLES[i % len(LINESTYLES)]
        (line,) = ax_l.plot(np.arange(1, loss.size + 1), loss, label=run["norm"], lw=1.4,
                            ls=style)
        epochs = np.arange(1, len(h["test_accuracy"]) + 1)
        ax_a.plot(epochs, 100 * np.asarray(h["test_accuracy"]), marker="o", ms=3,
                  color=line.get_color(), label=run["norm"], lw=1.4, ls=style)
    ax_l.set(xlabel="step", ylabel="train loss (running mean)", title="training loss")
    ax_l.set_yscale("log")
    ax_a.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy", ylim=(0, 100))
    ax_l.legend(fontsize=8, loc="lower left", ncol=2)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def batch_size(acc: Dict[str, Dict[int, float]], path: str, title: str) -> str:
    """Test accuracy against batch size (log2 axis), one line per norm."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for norm, by_bs in acc.items():
        bs = sorted(by_bs)
        ax.plot(bs, [100 * by_bs[b] for b in bs], marker="o", label=norm)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="batch size", ylabel="test accuracy (%)", title=title, ylim=(0, 100))
    ax.legend()
    return _save(fig, path)


def ics(probes: Dict[str, dict], path: str, title: str) -> str:
    """Grid: rows = runs (norm), columns = pre-activation mean and std; one line per layer."""
    plt = _plt()
    names = list(probes)
    fig, axes = plt.subplots(len(names), 2, figsize=(10, 3.2 * len(names)), squeeze=False)
    for row, norm in enumerate(names):
        p = probes[norm]
        steps = np.asarray(p["steps"])
        for j, layer in enumerate(p["layers"]):
            axes[row, 0].plot(steps, p["mean"][j], label=layer)
            axes[row, 1].plot(steps, p["std"][j], label=layer)
        axes[row, 0].set(title=f"{norm}: pre-activation mean", xlabel="step")
        axes[row, 1].set(title=f"{norm}: pre-activation std", xlabel="step")
        axes[row, 1].set_yscale("log")
        axes[row, 0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def scale_invariance(rows: List[dict], path: str, title: str) -> str:
    """log-log: |dL/dW| and |dL/du| against the weight scale a, per norm, with 1/a for reference."""
    plt = _plt()
    fig, (ax_w, ax_u) = plt.subplots(1, 2, figsize=(10, 4))
    for norm in dict.fromkeys(r["norm"] for r in rows):
        rs = [r for r in rows if r["norm"] == norm]
        a = np.array([r["a"] for r in rs])
        ax_w.plot(a, [r["grad_w_norm"] for r in rs], marker="o", label=norm)
        ax_u.plot(a, [r["grad_u_norm"] for r in rs], marker="o", label=norm)
    ref = [r for r in rows if r["a"] == 1.0]
    if ref:
        a = np.array(sorted({r["a"] for r in rows}))
        ax_w.plot(a, ref[0]["grad_w_norm"] / a, "k--", lw=0.8, label="1/a")
    ax_w.set(xscale="log", yscale="log", xlabel="weight scale a", ylabel="|dL/dW|",
             title="gradient w.r.t. the weight")
    ax_u.set(xscale="log", yscale="log", xlabel="weight scale a", ylabel="|dL/du|",
             title="gradient w.r.t. the layer input")
    ax_w.legend()
    ax_u.legend()
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def mean_std_bars(groups: Dict[str, Dict[str, List[float]]], path: str, title: str) -> str:
    """Grouped bars of mean test accuracy with +-1 std error bars: groups -> norm -> values."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    gnames = list(groups)
    norms = list(dict.fromkeys(n for g in groups.values() for n in g))
    width = 0.8 / max(1, len(norms))
    for i, norm in enumerate(norms):
        xs, means, stds = [], [], []
        for gi, g in enumerate(gnames):
            vals = groups[g].get(norm)
            if vals:
                xs.append(gi + (i - (len(norms) - 1) / 2) * width)
                means.append(100 * float(np.mean(vals)))
                stds.append(100 * float(np.std(vals)))
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=norm)
    ax.set_xticks(range(len(gnames)), gnames)
    ax.set(ylabel="test accuracy (%)", ylim=(0, 110), title=title)
    ax.legend(loc="upper center", ncol=len(norms), fontsize=8)
    return _save(fig, path)
