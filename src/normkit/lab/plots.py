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
    head = np.cumsum(v[: window - 1]) / np.arange(1, window)  # ramp-in: no fake zeros
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
        (line,) = ax_l.plot(np.arange(1, loss.size + 1), loss, label=run["norm"], lw=1.4, ls=style)
        epochs = np.arange(1, len(h["test_accuracy"]) + 1)
        ax_a.plot(
            epochs,
            100 * np.asarray(h["test_accuracy"]),
            marker="o",
            ms=3,
            color=line.get_color(),
            label=run["norm"],
            lw=1.4,
            ls=style,
        )
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
    ax_w.set(
        xscale="log",
        yscale="log",
        xlabel="weight scale a",
        ylabel="|dL/dW|",
        title="gradient w.r.t. the weight",
    )
    ax_u.set(
        xscale="log",
        yscale="log",
        xlabel="weight scale a",
        ylabel="|dL/du|",
        title="gradient w.r.t. the layer input",
    )
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


# ---------------------------------------------------------------- scaling (input data)

SCALING_STYLES = {
    "raw": ("k", "-"),
    "minmax": ("tab:blue", "--"),
    "zscore": ("tab:green", "-"),
    "reciprocal": ("tab:orange", ":"),
    "log10": ("tab:purple", "-."),
    "arctan": ("tab:red", "--"),
}


def scaling_contours(case: dict, path: str) -> str:
    """Loss contours over two weights with the GD path: raw (centred) vs z-scored."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    f1, f2 = case["features"]
    for ax, (label, p) in zip(axes, case["panels"].items()):
        x, t = np.asarray(p["x"]), np.asarray(p["t"])
        path_w = np.asarray(p["path"])
        opt = np.asarray(p["optimum"])
        pts = np.vstack([path_w, opt[None, :]])
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        pad = np.maximum(0.25 * (hi - lo), 1e-3 * np.abs(hi).max())
        g1 = np.linspace(lo[0] - pad[0], hi[0] + pad[0], 120)
        g2 = np.linspace(lo[1] - pad[1], hi[1] + pad[1], 120)
        a, b = np.meshgrid(g1, g2)
        margins = t[:, None] * (x @ np.vstack([a.ravel(), b.ravel()]))  # (n, grid points)
        loss = np.logaddexp(0.0, -margins).mean(axis=0).reshape(a.shape)
        levels = p["optimum_loss"] + (np.log(2) - p["optimum_loss"] + 1e-9) * np.geomspace(
            0.005, 4, 14
        )
        ax.contour(g1, g2, loss, levels=levels, cmap="viridis", linewidths=0.8)
        ax.plot(
            path_w[:, 0],
            path_w[:, 1],
            "o-",
            color="tab:red",
            ms=2.5,
            lw=0.9,
            label=f"GD, lr {p['lr']:.0e}, {len(path_w) - 1} steps",
        )
        ax.plot(*opt, "k*", ms=10, label="minimum")
        reach = p.get("fastest_steps_to_1pct", p["steps_to_1pct"])
        ax.set(
            xlabel=f"w1 (weight of {f1})",
            ylabel=f"w2 (weight of {f2})",
            title=f"{label}: Hessian condition {p['hessian_condition']:.0f}; fastest "
            f"rate: {reach if reach is not None else '>10000'} steps to 99%",
        )
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(
        f"{case['task']}: logistic loss over two weights (features {f1}, {f2}; "
        "same learning-rate search in both panels)",
        fontsize=10,
    )
    return _save(fig, path)


def scaling_curves(runs: List[dict], target: float, path: str) -> str:
    """Training loss per GD step, one panel per (dataset, model), one line per input variant."""
    plt = _plt()
    keys = list(dict.fromkeys((r["dataset"], r["model"]) for r in runs))
    cols = 2 if len(keys) > 2 else len(keys)
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.8 * rows), squeeze=False)
    for ax, (d, m) in zip(axes.ravel(), keys):
        for r in runs:
            if (r["dataset"], r["model"]) != (d, m) or not r.get("loss_curve"):
                continue
            color, ls = SCALING_STYLES.get(r["scaling"], (None, "-"))
            curve = np.asarray(r["loss_curve"])
            ax.plot(
                np.arange(curve.size),
                curve,
                color=color,
                ls=ls,
                lw=1.3,
                label=f"{r['scaling']} (lr {r['lr']:.0e})",
            )
        na = [
            r["scaling"]
            for r in runs
            if (r["dataset"], r["model"]) == (d, m) and not r["applicable"]
        ]
        ax.axhline(target, color="grey", lw=0.8, ls=":")
        ax.set(
            xlabel="full-batch GD step",
            ylabel="training loss",
            yscale="log",
            title=f"{d}, {m}" + (f" ({', '.join(na)}: n/a)" if na else ""),
        )
        ax.legend(fontsize=7)
    fig.suptitle(f"convergence per input scaling (dotted: loss target {target:g})", fontsize=10)
    return _save(fig, path)


def scaling_minmax(caveat: dict, path: str) -> str:
    """Per feature: range of the new data after min-max fitted on old data, without/with clip."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4))
    n = len(caveat["features"])
    xs = np.arange(n)
    ax.axhspan(0, 1, color="tab:green", alpha=0.12, label="feature_range [0, 1]")
    ax.vlines(
        xs - 0.12,
        caveat["new_min"],
        caveat["new_max"],
        color="tab:red",
        lw=3,
        label="new data, clip=False",
    )
    ax.vlines(
        xs + 0.12,
        caveat["clip_min"],
        caveat["clip_max"],
        color="tab:blue",
        lw=3,
        label="new data, clip=True",
    )
    tot = [b + a for b, a in zip(caveat["out_of_range"]["below"], caveat["out_of_range"]["above"])]
    for i, c in enumerate(tot):
        if c:
            ax.annotate(
                str(c), (i, max(caveat["new_max"][i], 1.0)), ha="center", va="bottom", fontsize=8
            )
    ax.set_xticks(xs, caveat["features"], rotation=35, ha="right", fontsize=8)
    ax.set(
        ylabel="min-max scaled value",
        title=f"MinMaxScaler fitted on {caveat['fit_on']}, applied to {caveat['new_data']} "
        "(numbers: values out of range)",
    )
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)
