"""``normkit lab scaling``: does scaling the *input data* help gradient descent?

The first source document argues for normalizing data before training: features on
different scales stretch the loss surface, so gradient descent zig-zags and converges
slowly (its example: one weight ranging over [-10, 10], another over [-100, 100]);
sigmoid units fed large inputs saturate and pass almost no gradient; features in
different units become comparable. It lists five maps -- min-max, z-score, 1/(1+x),
log10(x), atan(x)*2/pi -- and warns that min-max must be redefined when new data leaves
the fitted range. LeCun, Bottou, Orr and Mueller, "Efficient BackProp" (1998), section
4.3, makes the same argument for centred inputs of equal variance.

This experiment measures those claims on two tables that ship with scikit-learn (no
download): wine (178 x 13, features from ~0.1 to ~1680, 3 classes) and breast cancer
(569 x 30, 2 classes). Every input variant -- raw, minmax, zscore, reciprocal, log10,
arctan, each a ``normkit.preprocessing`` scaler fitted on the training split only --
trains the same two models by plain full-batch gradient descent in float64 NumPy:

- ``logreg``: softmax (multinomial logistic) regression, zero initialization;
- ``mlp``: one hidden layer of 16 sigmoid units and a softmax output, weights drawn
  N(0, 1/fan_in) (LeCun et al. 1998's recommendation) from one seed for every variant.

Each (dataset, model, variant) gets the same learning-rate search: every rate of one
log-spaced grid runs the same number of steps and the rate with the lowest final
training loss wins (a run whose loss becomes non-finite is discarded). A variant that
cannot apply (log10 of a feature <= 0, 1/(1+x) at x = -1) is reported with the scaler's
own error as the reason, never silently shifted.

Measured per run: steps until the training loss first reaches ``LOSS_TARGET``, final
training loss, test accuracy, the condition number of the training inputs' covariance
(the "stretched contours" as a number) and of their second-moment matrix with a bias
column (what full-batch GD on a linear model actually sees, mean included), and for
the MLP the fraction of saturated sigmoid units and the gradient norm at initialization.
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, List, Optional

import numpy as np

VARIANTS = ["raw", "minmax", "zscore", "reciprocal", "log10", "arctan"]
DATASETS = ["wine", "breast_cancer"]
MODELS = ["logreg", "mlp"]
HIDDEN = 16
LOSS_TARGET = 0.1  # mean cross-entropy; z-scored inputs reach it on both tables and models
SATURATION = 0.01  # a sigmoid output below 0.01 or above 0.99 has slope < 4% of its peak
TEST_FRACTION = 0.3
REACH_LIMIT = 10000  # steps the contour case may take to close 99% of the loss gap
CONTOUR_FEATURES = ("alcohol", "magnesium")  # wine: std 0.81 vs 14.3, the document's 1:10+


def lr_grid(quick: bool) -> List[float]:
    """The one learning-rate grid every variant searches (log-spaced)."""
    # raw breast-cancer features reach ~4000, so the stable rate for raw inputs is ~1e-7;
    # z-scored ones take rates above 10. The grid spans both.
    exps = np.array([-7, -5, -3, -1, 0, 1, 2]) if quick else np.arange(-7, 2.01, 0.5)
    return [float(10.0**e) for e in exps]


def n_steps(quick: bool) -> int:
    return 100 if quick else 1000


# ------------------------------------------------------------------ data


def load_table(name: str, seed: int = 0) -> dict:
    """A scikit-learn table split once, stratified, ``TEST_FRACTION`` to test (fixed seed)."""
    from sklearn import datasets as skd

    from .data import _stratified_split

    loaders = {"wine": skd.load_wine, "breast_cancer": skd.load_breast_cancer}
    if name not in loaders:
        raise ValueError(f"scaling: unknown dataset {name!r}; choose from {list(loaders)}")
    bunch = loaders[name]()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    train, test = _stratified_split(y, TEST_FRACTION, seed)
    return {
        "name": name,
        "features": [str(f) for f in bunch.feature_names],
        "x_train": x[train],
        "y_train": y[train],
        "x_test": x[test],
        "y_test": y[test],
        "classes": int(y.max()) + 1,
    }


def make_scaler(variant: str):
    """The ``normkit.preprocessing`` scaler for ``variant`` (``None`` for raw)."""
    from normkit import preprocessing as pp

    makers = {
        "raw": lambda: None,
        "minmax": pp.MinMaxScaler,
        "zscore": pp.StandardScaler,
        "reciprocal": pp.ReciprocalScaler,
        "log10": pp.Log10Scaler,
        "arctan": pp.ArctanScaler,
    }
    if variant not in makers:
        raise ValueError(f"scaling: unknown variant {variant!r}; choose from {VARIANTS}")
    return makers[variant]()


def apply_variant(variant: str, x_train: np.ndarray, x_test: np.ndarray):
    """(x_train', x_test', None) or (None, None, reason) when the map cannot apply.

    The scaler is fitted on the training rows only. Its own domain error (log10 of
    x <= 0, 1/(1+x) at x = -1) becomes the reason; nothing is shifted to make it fit.
    """
    scaler = make_scaler(variant)
    if scaler is None:
        return x_train.copy(), x_test.copy(), None
    try:
        scaler.fit(x_train)
        with warnings.catch_warnings():
            # min-max on the test split may leave [0, 1]; counted separately (out_of_range)
            warnings.simplefilter("ignore")
            xt, xs = scaler.transform(x_train), scaler.transform(x_test)
    except ValueError as exc:
        return None, None, f"{type(scaler).__name__}: {str(exc).splitlines()[0]}"
    xt, xs = np.asarray(xt, dtype=np.float64), np.asarray(xs, dtype=np.float64)
    if not (np.all(np.isfinite(xt)) and np.all(np.isfinite(xs))):
        return None, None, f"{type(scaler).__name__} produced non-finite values"
    return xt, xs, None


def out_of_range_counts(data_min, data_max, x) -> Dict[str, list]:
    """Per-feature counts of values below data_min / above data_max (computed here, from
    the fitted range, so they do not depend on what ``transform`` records)."""
    lo, hi = np.asarray(data_min, np.float64), np.asarray(data_max, np.float64)
    below = (x < lo).sum(axis=0).astype(int)
    above = (x > hi).sum(axis=0).astype(int)
    return {
        "below": below.tolist(),
        "above": above.tolist(),
        "total": int(below.sum() + above.sum()),
    }


def conditioning(x: np.ndarray) -> dict:
    """Condition numbers of the inputs' covariance and of E[[x, 1][x, 1]^T]."""
    cov = np.atleast_2d(np.cov(x, rowvar=False))
    aug = np.hstack([x, np.ones((x.shape[0], 1))])
    second = aug.T @ aug / x.shape[0]

    def cond(m):
        s = np.linalg.svd(m, compute_uv=False)
        return float(s[0] / s[-1]) if s[-1] > 0 else math.inf

    std = x.std(axis=0)
    pos = std[std > 0]
    return {
        "cond_cov": cond(cov),
        "cond_second_moment": cond(second),
        "feature_std_ratio": float(pos.max() / pos.min()) if pos.size else None,
        "feature_min": float(x.min()),
        "feature_max": float(x.max()),
    }


# ------------------------------------------------------------------ models


def _sigmoid(z):
    from scipy.special import expit

    return expit(z)


def _softmax_ce(logits: np.ndarray, y: np.ndarray):
    """Mean cross-entropy and its gradient w.r.t. the logits (log-sum-exp, stable)."""
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = y.shape[0]
    loss = -float(logp[np.arange(n), y].mean())
    g = np.exp(logp)
    g[np.arange(n), y] -= 1.0
    return loss, g / n


def init_params(model: str, d: int, k: int, seed: int) -> Dict[str, np.ndarray]:
    if model == "logreg":
        return {"W": np.zeros((d, k)), "b": np.zeros(k)}
    if model == "mlp":
        rng = np.random.default_rng(seed)
        return {
            "W1": rng.standard_normal((d, HIDDEN)) / math.sqrt(d),
            "b1": np.zeros(HIDDEN),
            "W2": rng.standard_normal((HIDDEN, k)) / math.sqrt(HIDDEN),
            "b2": np.zeros(k),
        }
    raise ValueError(f"scaling: unknown model {model!r}; choose from {MODELS}")


def loss_and_grad(model: str, p: Dict[str, np.ndarray], x, y):
    """(loss, gradients, hidden activations or None) of the whole batch."""
    if model == "logreg":
        loss, g = _softmax_ce(x @ p["W"] + p["b"], y)
        return loss, {"W": x.T @ g, "b": g.sum(0)}, None
    h = _sigmoid(x @ p["W1"] + p["b1"])
    loss, g = _softmax_ce(h @ p["W2"] + p["b2"], y)
    gh = (g @ p["W2"].T) * h * (1.0 - h)  # sigma' = h (1 - h)
    return loss, {"W1": x.T @ gh, "b1": gh.sum(0), "W2": h.T @ g, "b2": g.sum(0)}, h


def predict(model: str, p, x) -> np.ndarray:
    if model == "logreg":
        return np.argmax(x @ p["W"] + p["b"], axis=1)
    return np.argmax(_sigmoid(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"], axis=1)


def gradient_descent(model: str, x, y, k: int, lr: float, steps: int, seed: int):
    """Plain full-batch GD; returns (params, losses[0..steps], diverged).

    ``losses[s]`` is the training loss after s steps. A non-finite loss stops the run.
    """
    p = init_params(model, x.shape[1], k, seed)
    losses = []
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(steps):
            loss, g, _ = loss_and_grad(model, p, x, y)
            losses.append(loss)
            if not math.isfinite(loss):
                return p, losses, True
            for key in p:
                p[key] -= lr * g[key]
        loss = loss_and_grad(model, p, x, y)[0]
    losses.append(loss)
    return p, losses, not math.isfinite(loss)


def steps_to_target(losses: List[float], target: float) -> Optional[int]:
    """First s with losses[s] <= target (losses[s] = loss after s steps), else None."""
    for s, v in enumerate(losses):
        if v <= target:
            return s
    return None


def init_stats(x, y, k: int, seed: int) -> dict:
    """MLP at initialization: saturated fraction of hidden sigmoids and gradient norms."""
    p = init_params("mlp", x.shape[1], k, seed)
    _, g, h = loss_and_grad("mlp", p, x, y)
    saturated = float(((h < SATURATION) | (h > 1 - SATURATION)).mean())
    full = math.sqrt(sum(float((v**2).sum()) for v in g.values()))
    return {
        "saturated_fraction_init": saturated,
        "grad_norm_init": full,
        "grad_norm_init_hidden": float(np.linalg.norm(g["W1"])),
        "mean_sigmoid_slope_init": float((h * (1 - h)).mean()),
    }


# ------------------------------------------------------------------ one variant


def run_variant(table: dict, variant: str, model: str, quick: bool, seed: int) -> dict:
    """Learning-rate search, then the measurements of the winning rate."""
    rec = {
        "scaling": variant,
        "dataset": table["name"],
        "model": model,
        "steps_to_target": None,
        "final_loss": None,
        "test_acc": None,
        "applicable": True,
        "reason": None,
        "loss_target": LOSS_TARGET,
    }
    xt, xs, reason = apply_variant(variant, table["x_train"], table["x_test"])
    if reason is not None:
        rec.update(applicable=False, reason=reason)
        return rec
    yt, ys, k = table["y_train"], table["y_test"], table["classes"]
    rec.update(conditioning(xt))
    steps = n_steps(quick)
    search, best = [], None
    for lr in lr_grid(quick):
        p, losses, diverged = gradient_descent(model, xt, yt, k, lr, steps, seed)
        final = losses[-1] if not diverged else None
        search.append({"lr": lr, "final_loss": final, "diverged": diverged})
        if final is not None and (best is None or final < best[0]):
            best = (final, lr, p, losses)
    rec["lr_search"] = search
    rec["steps"] = steps
    if best is None:
        rec["reason_no_lr"] = "every learning rate of the grid diverged"
        return rec
    final, lr, p, losses = best
    grid = lr_grid(quick)
    rec.update(
        lr=lr,
        lr_at_grid_edge=lr in (grid[0], grid[-1]),
        final_loss=final,
        steps_to_target=steps_to_target(losses, LOSS_TARGET),
        train_acc=float((predict(model, p, xt) == yt).mean()),
        test_acc=float((predict(model, p, xs) == ys).mean()),
        loss_curve=[float(v) for v in losses],
    )
    if model == "mlp":
        rec.update(init_stats(xt, yt, k, seed))
        h = _sigmoid(xt @ p["W1"] + p["b1"])
        rec["saturated_fraction_final"] = float(((h < SATURATION) | (h > 1 - SATURATION)).mean())
    if variant == "minmax":
        s = make_scaler("minmax").fit(table["x_train"])
        rec["test_out_of_range"] = out_of_range_counts(s.data_min_, s.data_max_, table["x_test"])[
            "total"
        ]
    return rec


# ------------------------------------------------------------------ contours (the zig-zag)


def _binary_loss_grad(w, x, t):
    """Logistic loss of labels t in {-1, +1} for the score x @ w (no bias), and its gradient."""
    m = t * (x @ w)
    loss = float(np.logaddexp(0.0, -m).mean())
    s = -t * _sigmoid(-m)
    return loss, x.T @ s / x.shape[0]


def contour_case(quick: bool) -> dict:
    """Two wine features, mean-centred, GD path in raw units vs z-scored.

    Both panels are centred so that the only difference is the feature scale, the
    document's point (a bias would add the mean's own ill-conditioning on top).
    """
    from sklearn.datasets import load_wine

    bunch = load_wine()
    names = list(bunch.feature_names)
    idx = [names.index(f) for f in CONTOUR_FEATURES]
    x = bunch.data[:, idx].astype(np.float64)
    x = x - x.mean(axis=0)
    t = np.where(bunch.target == 0, 1.0, -1.0)  # class 0 vs the rest
    # One picture in quick and full runs: the decade grid and 60 steps (the path of the
    # rate that is best after 60 steps), plus the fastest rate of the grid to 99%.
    steps = 60
    grid = [float(10.0**e) for e in range(-7, 3)]
    out = {
        "features": list(CONTOUR_FEATURES),
        "steps": steps,
        "task": "wine class 0 vs rest",
        "panels": {},
    }
    for label, xs in (("raw (centred)", x), ("zscore", x / x.std(axis=0))):
        best = None
        for lr in grid:
            w = np.zeros(2)
            path = [w.copy()]
            with np.errstate(over="ignore", invalid="ignore"):
                for _ in range(steps):
                    _, g = _binary_loss_grad(w, xs, t)
                    w = w - lr * g
                    path.append(w.copy())
                final = _binary_loss_grad(w, xs, t)[0]
            if math.isfinite(final) and (best is None or final < best[0]):
                best = (final, lr, np.array(path))
        final, lr, path = best
        # the minimum, by many small steps of Newton's method on this 2-D convex loss
        w = path[-1].copy()
        for _ in range(50):
            m = t * (xs @ w)
            sig = _sigmoid(-m)
            g = xs.T @ (-t * sig) / len(t)
            hess = (xs * (sig * (1 - sig))[:, None]).T @ xs / len(t)
            w = w - np.linalg.solve(hess, g)
        w_star = w
        loss_star = _binary_loss_grad(w_star, xs, t)[0]
        m = t * (xs @ w_star)
        sig = _sigmoid(-m)
        hess = (xs * (sig * (1 - sig))[:, None]).T @ xs / len(t)
        ev = np.linalg.eigvalsh(hess)
        # steps for a rate to get within 1% of the optimum's loss gap from the start
        gap0 = math.log(2.0) - loss_star

        def reach_steps(rate, limit, xs=xs, loss_star=loss_star, gap0=gap0):
            w = np.zeros(2)
            with np.errstate(over="ignore", invalid="ignore"):
                for s in range(0, limit + 1):
                    loss, g = _binary_loss_grad(w, xs, t)
                    if not math.isfinite(loss):
                        return None
                    if loss - loss_star <= 0.01 * gap0:
                        return s
                    w = w - rate * g
            return None

        reach = reach_steps(lr, REACH_LIMIT)
        fast_steps, fast_lr = None, None
        for rate in sorted(grid, reverse=True):
            # a smaller rate is only of interest if it beats the best so far
            r = reach_steps(rate, REACH_LIMIT if fast_steps is None else fast_steps - 1)
            if r is not None:
                fast_steps, fast_lr = r, rate
        out["panels"][label] = {
            "lr": lr,
            "final_loss": final,
            "optimum": w_star.tolist(),
            "optimum_loss": loss_star,
            "hessian_condition": float(ev[-1] / ev[0]),
            "path": path.tolist(),
            "steps_to_1pct": reach,
            "fastest_steps_to_1pct": fast_steps,
            "fastest_lr": fast_lr,
            "x": xs.tolist(),
            "t": t.tolist(),
        }
    return out


# ------------------------------------------------------------------ the min-max caveat


def minmax_caveat() -> dict:
    """Fit MinMaxScaler on the wine rows of classes 0 and 1, then transform class 2.

    scikit-learn's wine table is ordered by class, so "the first 130 rows, then 48
    new ones" is the situation the document warns about: new data from a population the
    fitted min and max never saw.
    """
    from sklearn.datasets import load_wine

    from normkit.preprocessing import MinMaxScaler

    bunch = load_wine()
    x, y = bunch.data.astype(np.float64), bunch.target
    old, new = x[y != 2], x[y == 2]
    names = [str(f) for f in bunch.feature_names]
    res = {
        "fit_rows": int(old.shape[0]),
        "new_rows": int(new.shape[0]),
        "features": names,
        "fit_on": "wine classes 0 and 1",
        "new_data": "wine class 2",
    }
    s = MinMaxScaler().fit(old)
    counts = out_of_range_counts(s.data_min_, s.data_max_, new)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y_new = np.asarray(s.transform(new), dtype=np.float64)
    res["warned"] = any("range" in str(w.message).lower() for w in caught)
    # Cross-check against the scaler's own record when this version keeps one; the
    # experiment's numbers never depend on it (the attribute may move off the estimator).
    api = getattr(s, "n_out_of_range_", None)
    res["api_counts"] = None if api is None else [int(v) for v in np.asarray(api)]
    res["api_counts_agree"] = (
        None
        if api is None
        else (res["api_counts"] == [b + a for b, a in zip(counts["below"], counts["above"])])
    )
    clipped = np.asarray(MinMaxScaler(clip=True).fit(old).transform(new), dtype=np.float64)
    changed = int((clipped != y_new).sum())
    # values that were distinct before clipping and are equal after: information lost
    collapsed = 0
    for j in range(new.shape[1]):
        collapsed += len(np.unique(new[:, j])) - len(np.unique(clipped[:, j]))
    refit = MinMaxScaler().fit(np.vstack([old, new]))
    shift = np.abs(np.asarray(refit.transform(old)) - np.asarray(s.transform(old)))
    res.update(
        out_of_range=counts,
        n_values=int(new.size),
        out_of_range_fraction=counts["total"] / new.size,
        features_out_of_range=int(
            sum(1 for b, a in zip(counts["below"], counts["above"]) if a + b)
        ),
        new_min=y_new.min(axis=0).tolist(),
        new_max=y_new.max(axis=0).tolist(),
        clip_min=clipped.min(axis=0).tolist(),
        clip_max=clipped.max(axis=0).tolist(),
        clip_changed_values=changed,
        clip_collapsed_distinct_values=int(collapsed),
        refit_old_max_shift=float(shift.max()),
        refit_old_shifted_features=int((shift.max(axis=0) > 1e-12).sum()),
    )
    return res


# ------------------------------------------------------------------ the experiment


def scaling(opts, out_dir: Optional[str]) -> dict:
    """Every (dataset, model, variant); contours; the min-max caveat; table, notes, PNGs."""
    from . import plots

    quick, seed = opts.quick, opts.seed
    tables = {name: load_table(name, seed=0) for name in DATASETS}
    runs = [
        run_variant(tables[d], v, m, quick, seed)
        for d in DATASETS
        for m in MODELS
        for v in VARIANTS
    ]
    contours = contour_case(quick)
    caveat = minmax_caveat()
    pngs = []
    if out_dir:
        pngs.append(plots.scaling_contours(contours, f"{out_dir}/scaling_contours.png"))
        pngs.append(plots.scaling_curves(runs, LOSS_TARGET, f"{out_dir}/scaling_curves.png"))
        pngs.append(plots.scaling_minmax(caveat, f"{out_dir}/scaling_minmax.png"))
    rows = []
    for r in runs:
        name = r["scaling"] if r["applicable"] else f"{r['scaling']} (n/a)"
        rows.append(
            [
                r["dataset"],
                r["model"],
                name,
                r.get("lr"),
                r["steps_to_target"],
                r["final_loss"],
                None if r["test_acc"] is None else 100 * r["test_acc"],
                r.get("cond_cov"),
                None
                if r.get("saturated_fraction_init") is None
                else 100 * r["saturated_fraction_init"],
                r.get("grad_norm_init"),
            ]
        )
    notes = scaling_notes(runs, contours, caveat, quick)
    for d in contours["panels"].values():  # the arrays are for the figure, not the JSON
        d.pop("x")
        d.pop("t")
    config = {
        "datasets": DATASETS,
        "models": MODELS,
        "variants": VARIANTS,
        "hidden": HIDDEN,
        "loss_target": LOSS_TARGET,
        "steps": n_steps(quick),
        "lr_grid": lr_grid(quick),
        "lr_rule": "lowest final training loss after "
        "'steps' full-batch GD steps; non-finite runs discarded",
        "test_fraction": TEST_FRACTION,
        "saturation": SATURATION,
        "seed": seed,
        "quick": quick,
    }
    return {
        "experiment": "scaling",
        "config": config,
        "table": {
            "columns": [
                "dataset",
                "model",
                "scaling",
                "lr",
                f"steps to loss<={LOSS_TARGET:g}",
                "final loss",
                "test acc %",
                "cond(cov)",
                "saturated %",
                "|grad| init",
            ],
            "formats": [
                "{}",
                "{}",
                "{}",
                "{:.0e}",
                "{}",
                "{:.4f}",
                "{:.1f}",
                "{:.1e}",
                "{:.0f}",
                "{:.2e}",
            ],
            "rows": rows,
        },
        "runs": runs,
        "contours": contours,
        "minmax_caveat": caveat,
        "plots": pngs,
        "notes": notes,
    }


def _by(runs, **kw):
    return [r for r in runs if all(r[k] == v for k, v in kw.items())]


def scaling_notes(runs, contours, caveat, quick) -> List[str]:
    notes = []
    for r in runs:
        if not r["applicable"]:
            notes.append(
                f"{r['dataset']} {r['model']} {r['scaling']}: not applicable -- {r['reason']}"
            )
    for d in DATASETS:
        for m in MODELS:
            raw, z = (
                _by(runs, dataset=d, model=m, scaling="raw")[0],
                _by(runs, dataset=d, model=m, scaling="zscore")[0],
            )
            raw_steps, z_steps = raw["steps_to_target"], z["steps_to_target"]
            notes.append(
                f"{d} {m}: raw reaches loss <= {LOSS_TARGET:g} "
                f"{'never' if raw_steps is None else f'after {raw_steps} steps'}"
                f" (final {_f(raw['final_loss'])}), z-score "
                f"{'never' if z_steps is None else f'after {z_steps}'}"
                f" (final {_f(z['final_loss'])}); cond(cov) {_e(raw.get('cond_cov'))} -> "
                f"{_e(z.get('cond_cov'))}."
            )
            edge = [r["scaling"] for r in _by(runs, dataset=d, model=m) if r.get("lr_at_grid_edge")]
            if edge:
                notes.append(
                    f"{d} {m}: the best learning rate sits at the edge of the grid for "
                    f"{', '.join(edge)}: a rate outside it might do better."
                )
    for d in DATASETS:
        raw = _by(runs, dataset=d, model="mlp", scaling="raw")[0]
        z = _by(runs, dataset=d, model="mlp", scaling="zscore")[0]
        if raw.get("saturated_fraction_init") is not None:
            notes.append(
                f"{d} mlp at init: {100 * raw['saturated_fraction_init']:.0f}% of "
                f"hidden sigmoids saturated on raw inputs vs "
                f"{100 * z['saturated_fraction_init']:.0f}% z-scored (mean slope "
                f"{raw['mean_sigmoid_slope_init']:.3f} vs "
                f"{z['mean_sigmoid_slope_init']:.3f}, peak 0.25). The raw gradient "
                f"norm is {raw['grad_norm_init']:.2g} vs {z['grad_norm_init']:.2g}: "
                "saturation shrinks the per-unit slope, but the first layer's "
                "gradient is multiplied by the inputs themselves, so a large raw "
                "feature can still give a large (and badly scaled) gradient."
            )
        arc = _by(runs, dataset=d, model="mlp", scaling="arctan")[0]
        if arc["applicable"]:
            notes.append(
                f"{d} arctan: atan(x)*2/pi of raw features in the tens to thousands "
                f"is within a few percent of 1 -- the features collapse (std ratio "
                f"{_e(arc.get('feature_std_ratio'))}, cond(cov) "
                f"{_e(arc.get('cond_cov'))}); the map bounds the data but does not "
                "make it comparable."
            )
        rec = _by(runs, dataset=d, model="logreg", scaling="reciprocal")[0]
        if rec["applicable"]:
            notes.append(
                f"{d} reciprocal: 1/(1+x) squeezes large features towards 0 "
                f"(range {rec['feature_min']:.3g}..{rec['feature_max']:.3g}, "
                f"cond(cov) {_e(rec.get('cond_cov'))})."
            )
    pr = contours["panels"]
    raw_c, z_c = pr["raw (centred)"], pr["zscore"]
    notes.append(
        f"contours ({', '.join(contours['features'])}, centred, no bias): Hessian "
        f"condition {raw_c['hessian_condition']:.0f} raw vs "
        f"{z_c['hessian_condition']:.1f} z-scored; the rate best after "
        f"{contours['steps']} steps zig-zags across the valley and needs "
        f"{_steps(raw_c['steps_to_1pct'])} vs {_steps(z_c['steps_to_1pct'])} to "
        f"close 99% of the loss gap; the fastest rate of the grid needs "
        f"{_steps(raw_c['fastest_steps_to_1pct'])} vs "
        f"{_steps(z_c['fastest_steps_to_1pct'])}."
    )
    c = caveat
    notes.append(
        f"min-max caveat: fitted on {c['fit_on']} ({c['fit_rows']} rows), "
        f"{c['new_data']} ({c['new_rows']} rows) has {c['out_of_range']['total']} of "
        f"{c['n_values']} values ({100 * c['out_of_range_fraction']:.0f}%) outside the "
        f"fitted range in {c['features_out_of_range']} of {len(c['features'])} "
        f"features (transformed values from {min(c['new_min']):.2f} to "
        f"{max(c['new_max']):.2f}). clip=True keeps [0, 1] but changes "
        f"{c['clip_changed_values']} values and merges "
        f"{c['clip_collapsed_distinct_values']} distinct ones; refitting on old + new "
        f"moves the old rows' scaled values by up to {c['refit_old_max_shift']:.2f}, "
        "so a model trained on the old scaling sees different inputs."
    )
    if quick:
        notes.append(
            f"--quick: {n_steps(True)} GD steps and a 1-decade learning-rate grid; "
            "the full run uses 1000 steps and half decades."
        )
    return notes


def _f(v):
    return "-" if v is None else f"{v:.4f}"


def _e(v):
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.1e}"


def _steps(v):
    return f"more than {REACH_LIMIT} steps" if v is None else f"{v} steps"


def describe_data() -> dict:
    """The lab CLI's one-line data summary for this experiment."""
    n_train = n_test = 0
    for name in DATASETS:
        t = load_table(name)
        n_train += len(t["y_train"])
        n_test += len(t["y_test"])
    return {
        "name": "wine + breast_cancer (scikit-learn)",
        "train": n_train,
        "test": n_test,
        "datasets": DATASETS,
    }
