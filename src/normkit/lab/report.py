"""``normkit lab report``: every claim of the source documents on one self-contained page.

For each experiment (``compare``, ``batch-size``, ``ics``, ``scale-invariance``,
``lrn-effect``, ``scaling``) the report reuses ``<out>/<experiment>/results.json`` when
it exists (``--rerun`` runs it again) and otherwise runs the experiment (``--quick``:
the experiments' quick modes). It writes ``<out>/report.html`` -- figures embedded as
base64 data URIs, no script, no external file, readable from disk in any browser -- and
``<out>/report.json`` with the same claims and verdicts.

Each claim gets a verdict, "holds", "holds weakly" or "does not hold here", computed
from the measured numbers by the rule printed next to it (the ``rule`` text of each
``Claim`` below is the rule the code applies; tests/test_lab_report.py checks each rule
on hand-made numbers). A claim whose experiment did not run reads "not measured".
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

EXPERIMENT_ORDER = ["compare", "batch-size", "ics", "scale-invariance", "lrn-effect", "scaling"]
HOLDS, WEAK, NOT, MISSING = "holds", "holds weakly", "does not hold here", "not measured"

# The documents, described (they are blog posts and a Q&A thread, not papers); the
# primary papers behind each claim are named in the claims themselves.
DOCUMENTS = {
    1: "Document 1 (Chinese blog post on LRN that opens with data normalization: why to "
    "normalize, the zig-zag example, sigmoid saturation, five methods, the min-max "
    "refit caveat)",
    2: "Document 2 (Chinese post on what LRN and BatchNorm do: vanishing/exploding "
    "gradients, BN removing the weight scale, LRN superseded by dropout and BN)",
    3: "Document 3 (Chinese post on TensorFlow's local_response_normalization formula)",
    4: "Document 4 (Chinese notes on normalization layers: internal covariate shift, BN, "
    "LN, IN, GN)",
    5: "Document 5 (Korean Q&A on the importance of LRN in CNNs)",
}


@dataclass
class Claim:
    key: str
    claim: str
    documents: Tuple[int, ...]
    experiment: str
    rule: str
    judge: Callable[[dict], Tuple[str, List[str]]]
    figures: Tuple[str, ...]
    command: str


# ------------------------------------------------------------------ helpers


def _runs(res, **kw):
    return [r for r in res["runs"] if all(r.get(k) == v for k, v in kw.items())]


def _one(res, **kw):
    found = _runs(res, **kw)
    if not found:
        raise KeyError(f"no run with {kw}")
    return found[0]


def _num(v, fmt="{:.3g}"):
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def _faster(a_steps, b_steps, factor=2.0) -> bool:
    """b reached the target and a did not, or a needed >= factor x b's steps."""
    if b_steps is None:
        return False
    return a_steps is None or a_steps >= factor * max(b_steps, 1)


def _learned(run: dict, classes: int) -> bool:
    return run["test_accuracy"] is not None and run["test_accuracy"] >= 2.5 / classes


# ------------------------------------------------------------------ rules: scaling


def judge_zigzag(res):
    lines, fast = [], []
    for d in res["config"]["datasets"]:
        raw, z = (
            _one(res, dataset=d, model="logreg", scaling="raw"),
            _one(res, dataset=d, model="logreg", scaling="zscore"),
        )
        ok = _faster(raw["steps_to_target"], z["steps_to_target"])
        fast.append(ok)
        lines.append(
            f"{d}, logistic regression: cond(cov) {_num(raw.get('cond_cov'), '{:.1e}')} "
            f"raw vs {_num(z.get('cond_cov'), '{:.1e}')} z-scored; steps to loss <= "
            f"{res['config']['loss_target']:g}: raw {_num(raw['steps_to_target'], '{}')}"
            f", z-score {_num(z['steps_to_target'], '{}')} (final loss "
            f"{_num(raw['final_loss'])} vs {_num(z['final_loss'])})"
        )
    pan = res["contours"]["panels"]
    raw_c, z_c = pan["raw (centred)"], pan["zscore"]
    key = "fastest_steps_to_1pct" if "fastest_steps_to_1pct" in raw_c else "steps_to_1pct"
    contour_ok = _faster(raw_c[key], z_c[key])
    lines.append(
        f"two-weight contours ({', '.join(res['contours']['features'])}): Hessian "
        f"condition {raw_c['hessian_condition']:.0f} raw vs "
        f"{z_c['hessian_condition']:.1f} z-scored; steps to close 99% of the loss gap "
        f"at the fastest rate of the grid: {_num(raw_c[key], '{}')} vs "
        f"{_num(z_c[key], '{}')} (- = not within 10000)"
    )
    if all(fast) and contour_ok:
        return HOLDS, lines
    if any(fast) or contour_ok:
        return WEAK, lines
    return NOT, lines


def judge_saturation(res):
    lines, strong, weak = [], [], []
    for d in res["config"]["datasets"]:
        raw, z = (
            _one(res, dataset=d, model="mlp", scaling="raw"),
            _one(res, dataset=d, model="mlp", scaling="zscore"),
        )
        sr, sz = raw.get("saturated_fraction_init"), z.get("saturated_fraction_init")
        if sr is None or sz is None:
            continue
        strong.append(
            sr >= 0.5
            and sz <= 0.1
            and raw["final_loss"] is not None
            and z["final_loss"] is not None
            and raw["final_loss"] > z["final_loss"]
        )
        weak.append(sr >= sz + 0.2)
        lines.append(
            f"{d}, sigmoid MLP at init: {100 * sr:.0f}% of hidden units saturated "
            f"(output < {res['config']['saturation']:g} or > "
            f"{1 - res['config']['saturation']:g}) on raw inputs vs {100 * sz:.0f}% "
            f"z-scored; gradient norm {raw['grad_norm_init']:.2g} vs "
            f"{z['grad_norm_init']:.2g}; final loss {_num(raw['final_loss'])} vs "
            f"{_num(z['final_loss'])}"
        )
    if strong and all(strong):
        return HOLDS, lines
    if any(weak):
        return WEAK, lines
    return NOT, lines


METHODS = ["minmax", "zscore", "reciprocal", "log10", "arctan"]


def _helps(run, raw) -> bool:
    """run beats raw: reaches the target where raw does not / 2x sooner, or halves its loss."""
    if not run["applicable"] or run["final_loss"] is None:
        return False
    if _faster(raw["steps_to_target"], run["steps_to_target"]):
        return True
    return raw["final_loss"] is not None and run["final_loss"] <= 0.5 * raw["final_loss"]


def judge_methods(res):
    lines, verdicts, detail = [], {}, {}
    for m in METHODS:
        cells, na = [], []
        for d in res["config"]["datasets"]:
            for model in res["config"]["models"]:
                run, raw = (
                    _one(res, dataset=d, model=model, scaling=m),
                    _one(res, dataset=d, model=model, scaling="raw"),
                )
                if not run["applicable"]:
                    na.append(f"{d} (n/a: {run['reason'].split(' (')[0]})")
                    continue
                ok = _helps(run, raw)
                cells.append(ok)
                lines_m = (
                    f"{d}/{model} {'helps' if ok else 'does not help'} (loss "
                    f"{_num(run['final_loss'])} vs raw {_num(raw['final_loss'])}, "
                    f"steps {_num(run['steps_to_target'], '{}')})"
                )
                detail.setdefault(m, []).append(lines_m)
        all_ok = bool(cells) and all(cells)
        lines.append(
            f"{m} {'passes' if all_ok else 'fails'}: {'; '.join(detail.get(m, []))}"
            + (f"; not applicable on {', '.join(sorted(set(na)))}" if na else "")
        )
        verdicts[m] = all_ok
    ok = [verdicts[m] for m in METHODS]
    if all(ok):
        return HOLDS, lines
    if any(ok):
        return WEAK, lines
    return NOT, lines


def judge_comparable(res):
    lines, ok = [], {}
    for m in ["raw"] + METHODS:
        ratios = []
        for d in res["config"]["datasets"]:
            run = _one(res, dataset=d, model="logreg", scaling=m)
            if run["applicable"] and run.get("feature_std_ratio") is not None:
                ratios.append((d, run["feature_std_ratio"]))
        lines.append(
            f"{m}: largest / smallest feature std " + ", ".join(f"{d} {r:.3g}" for d, r in ratios)
            if ratios
            else f"{m}: not applicable"
        )
        if m != "raw" and ratios:
            ok[m] = all(r <= 10 for _, r in ratios)
    if ok and all(ok.values()):
        return HOLDS, lines
    if ok.get("minmax") and ok.get("zscore"):
        return WEAK, lines
    return NOT, lines


def judge_minmax(res):
    c = res["minmax_caveat"]
    lines = [
        f"MinMaxScaler fitted on {c['fit_on']} ({c['fit_rows']} rows); {c['new_data']} "
        f"({c['new_rows']} rows): {c['out_of_range']['total']} of {c['n_values']} values "
        f"outside the fitted range, in {c['features_out_of_range']} of "
        f"{len(c['features'])} features; scaled values from {min(c['new_min']):.2f} "
        f"to {max(c['new_max']):.2f}",
        f"clip=True: output back in [0, 1], {c['clip_changed_values']} values changed, "
        f"{c['clip_collapsed_distinct_values']} distinct values merged",
        f"refit on old + new: the old rows' scaled values move by up to "
        f"{c['refit_old_max_shift']:.3f} in {c['refit_old_shifted_features']} features",
    ]
    iid = [r.get("test_out_of_range") for r in _runs(res, scaling="minmax", model="logreg")]
    iid = [v for v in iid if v is not None]
    if iid:
        lines.append(
            f"even the random train/test split puts {sum(iid)} test values outside "
            "the training range (both tables)"
        )
    if c["out_of_range"]["total"] > 0 and c["refit_old_max_shift"] > 0:
        return HOLDS, lines
    if sum(iid) > 0:
        return WEAK, lines
    return NOT, lines


# ------------------------------------------------------------------ rules: layers


def judge_bn_speed(res):
    classes = res["data"]["classes"]
    none, bn = _one(res, norm="none"), _one(res, norm="batch")
    lines = [
        f"{r['norm']}: final train loss {_num(r['final_train_loss'], '{:.4f}')}, test "
        f"accuracy {100 * r['test_accuracy']:.1f}%, steps to loss < "
        f"{res['config']['threshold']:g}: {_num(r['steps_to_threshold'], '{}')}"
        for r in (none, bn)
    ]
    if (_learned(bn, classes) and not _learned(none, classes)) or _faster(
        none["steps_to_threshold"], bn["steps_to_threshold"]
    ):
        return HOLDS, lines
    if none["final_train_loss"] is None or (
        bn["final_train_loss"] is not None and bn["final_train_loss"] < none["final_train_loss"]
    ):
        return WEAK, lines
    return NOT, lines


def judge_lrn_gradient(res):
    classes = res["data"]["classes"]
    none, lrn = _one(res, norm="none"), _one(res, norm="lrn")
    lines = [
        f"{r['norm']} ({res['config']['depth']} net): final train loss "
        f"{_num(r['final_train_loss'], '{:.4f}')}, test accuracy "
        f"{100 * r['test_accuracy']:.1f}%"
        for r in (none, lrn)
    ]
    if (_learned(lrn, classes) and not _learned(none, classes)) or _faster(
        none["steps_to_threshold"], lrn["steps_to_threshold"]
    ):
        return HOLDS, lines
    if (
        none["final_train_loss"]
        and lrn["final_train_loss"] is not None
        and lrn["final_train_loss"] <= 0.95 * none["final_train_loss"]
    ):
        return WEAK, lines
    return NOT, lines


def judge_scale_invariance(res):
    def worst(rows):
        return max(
            max(
                r["output_rel_change"],
                r["grad_u_rel_change"],
                r["grad_w_times_a_rel_change"],
                abs(r["grad_w_ratio"] - 1),
            )
            for r in rows
        )

    tiny = [r for r in res["runs"] if r["norm"].startswith("batch eps=") and r["a"] >= 0.5]
    std = [r for r in res["runs"] if r["norm"] == "batch" and r["a"] >= 0.5]
    none = [r for r in res["runs"] if r["norm"] == "none" and r["a"] != 1.0]
    lines = []
    if tiny:
        lines.append(
            f"BN with eps = 1e-12, a in 0.5..100: largest relative change of y, "
            f"dL/du, a*dL/dW (and |a|dW|/|dW1| - 1|) = {worst(tiny):.1e}"
        )
    if std:
        lines.append(f"BN with torch's eps = 1e-5: largest change {worst(std):.1e}")
    if none:
        lines.append(
            f"no norm: largest output change {max(r['output_rel_change'] for r in none):.3g}"
            " (it scales with a)"
        )
    if tiny and worst(tiny) < 1e-6:
        return HOLDS, lines
    if std and worst(std) < 0.1:
        return WEAK, lines
    return NOT, lines


def judge_small_batch(res):
    sizes = res["config"]["batch_sizes"]
    small = min(sizes)
    rows = {r[0]: r[1:] for r in res["table"]["rows"]}
    drops = {}
    lines = []
    for norm, accs in rows.items():
        vals = [a for a in accs if a is not None]
        drops[norm] = max(vals) - accs[sizes.index(small)]
        lines.append(
            f"{norm}: {accs[sizes.index(small)]:.1f}% at batch {small}, best "
            f"{max(vals):.1f}% (drop {drops[norm]:.1f} points)"
        )
    others = [drops[n] for n in ("group", "layer") if n in drops]
    if "batch" not in drops or not others:
        return MISSING, lines
    if all(drops["batch"] >= d + 2.0 for d in others):
        return HOLDS, lines
    if all(drops["batch"] > d for d in others):
        return WEAK, lines
    return NOT, lines


def judge_ics(res):
    drift: Dict[str, List[float]] = {}
    for row in res["table"]["rows"]:
        if row[1] != "conv1":
            drift.setdefault(row[0], []).append(row[6])
    mean = {k: sum(v) / len(v) for k, v in drift.items()}
    lines = [
        f"{k}: mean drift of the layers after conv1 {v:.2f} (max - min of the layer's "
        "mean over training / its average std)"
        for k, v in mean.items()
    ]
    lines.append(
        "Santurkar et al. (2018) showed BN's benefit does not come from reducing "
        "this shift: the verdict is about the shift, not about why BN helps."
    )
    if "batch" not in mean or "none" not in mean:
        return MISSING, lines
    if mean["batch"] <= 0.5 * mean["none"]:
        return HOLDS, lines
    if mean["batch"] < mean["none"]:
        return WEAK, lines
    return NOT, lines


def judge_lrn_minimal(res):
    lines, small, bn_better = [], [], []
    by = {(r[0], r[1]): r for r in res["table"]["rows"]}
    for depth in res["config"]["depths"]:
        if (depth, "none") not in by or (depth, "lrn") not in by:
            continue
        none, lrn = by[(depth, "none")], by[(depth, "lrn")]
        tol = max(2 * max(none[3], lrn[3]), 0.5)
        diff = lrn[2] - none[2]
        small.append(abs(diff) <= tol)
        line = f"{depth}: LRN - none = {diff:+.1f} points (tolerance 2 x seed std = {tol:.1f})"
        if (depth, "batch") in by:
            bdiff = by[(depth, "batch")][2] - none[2]
            bn_better.append(bdiff > tol)
            line += f"; BN - none = {bdiff:+.1f} points"
        lines.append(line)
    if not small:
        return MISSING, lines
    if all(small) and bn_better and all(bn_better):
        return HOLDS, lines
    if all(small):
        return WEAK, lines
    return NOT, lines


def lrn_worked_example() -> dict:
    """Document 3's worked example of TensorFlow's LRN, through normkit and by hand.

    Input NHWC [1, 2, 2, 8]; depth_radius 2, bias 0, alpha 1, beta 1. The document
    derives two outputs by hand: 1 / (1 + 4 + 9) and 4 / (4 + 9 + 16 + 25 + 36).
    """
    import numpy as np
    import torch

    from normkit.functional import local_response_norm

    x = np.array(
        [
            [
                [[1, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2, 1]],
                [[4, 3, 2, 1, 8, 7, 6, 5], [1, 2, 3, 4, 5, 6, 7, 8]],
            ]
        ],
        dtype=np.float64,
    )
    got = local_response_norm(
        torch.from_numpy(x), 5, 1.0, 1.0, 0.0, convention="tensorflow", channel_dim=-1
    ).numpy()
    ref = np.empty_like(x)  # TensorFlow's definition, written out: sum over d-2..d+2
    for d in range(x.shape[-1]):
        window = x[..., max(0, d - 2) : d + 3]
        ref[..., d] = x[..., d] / (0.0 + 1.0 * (window**2).sum(-1)) ** 1.0
    return {
        "normkit": got.ravel().tolist(),
        "reference": ref.ravel().tolist(),
        "quoted": {
            "first pixel, channel 0": [float(got[0, 0, 0, 0]), 1 / 14],
            "first pixel, channel 3": [float(got[0, 0, 0, 3]), 4 / 90],
        },
        "config": {"quick": False},
    }


def judge_lrn_formula(res):
    import numpy as np

    err = float(np.max(np.abs(np.subtract(res["normkit"], res["reference"]))))
    lines = [
        f"{k}: normkit {v[0]:.8f}, the document's hand value {v[1]:.8f}"
        for k, v in res["quoted"].items()
    ]
    lines.append(
        f"all {len(res['normkit'])} outputs vs the formula written out in float64: "
        f"largest difference {err:.1e}"
    )
    quoted = max(abs(a - b) for a, b in res["quoted"].values())
    if quoted < 1e-7 and err < 1e-12:
        return HOLDS, lines
    if quoted < 1e-4:
        return WEAK, lines
    return NOT, lines


CLAIMS = [
    Claim(
        "scaling-zigzag",
        "Features on very different scales stretch the loss contours, so gradient descent "
        "zig-zags and converges slowly; normalizing the inputs fixes it (the document's "
        "example: one weight over [-10, 10], another over [-100, 100]). LeCun et al., "
        "'Efficient BackProp' (1998) make the same point.",
        (1,),
        "scaling",
        "holds: on every dataset, logistic regression on z-scored inputs reaches the loss "
        "target and raw inputs do not or need >= 2x the steps, AND on the two-weight "
        "contour case raw needs >= 2x the steps to close 99% of the loss gap (each at "
        "the fastest rate of the grid); holds "
        "weakly: at least one of those; does not hold here: none.",
        judge_zigzag,
        ("scaling_contours.png", "scaling_curves.png"),
        "normkit lab scaling",
    ),
    Claim(
        "scaling-saturation",
        "Without normalization, sigmoid units saturate (outputs near 0 or 1), where the "
        "gradient is almost zero and back-propagation 'kills' it.",
        (1,),
        "scaling",
        "holds: on every dataset >= 50% of the MLP's hidden sigmoids are saturated at "
        "initialization on raw inputs, <= 10% on z-scored ones, and raw ends at a higher "
        "training loss; holds weakly: raw saturation exceeds z-scored by >= 20 points on "
        "some dataset; does not hold here: otherwise.",
        judge_saturation,
        ("scaling_curves.png",),
        "normkit lab scaling",
    ),
    Claim(
        "scaling-methods",
        "The five methods (min-max, z-score, 1/(1+x), log10, atan*2/pi) are ways to "
        "normalize data for training.",
        (1,),
        "scaling",
        "per method: it helps on a (dataset, model) when it reaches the loss target where "
        "raw does not (or in half raw's steps) or halves raw's final loss; a method "
        "passes when it helps everywhere it applies. holds: all five pass; holds weakly: "
        "some pass; does not hold here: none.",
        judge_methods,
        ("scaling_curves.png",),
        "normkit lab scaling",
    ),
    Claim(
        "scaling-comparable",
        "Normalization puts features measured in different units on one scale, so that "
        "they can be compared.",
        (1,),
        "scaling",
        "per method: the largest / smallest feature standard deviation after the map is "
        "<= 10 on both tables. holds: every applicable method; holds weakly: min-max and "
        "z-score (the two the document calls common); does not hold here: otherwise.",
        judge_comparable,
        ("scaling_curves.png",),
        "normkit lab scaling",
    ),
    Claim(
        "scaling-minmax-refit",
        "Min-max scaling has a flaw: when new data arrives, max and min can change and "
        "must be redefined.",
        (1,),
        "scaling",
        "holds: data from outside the fitted population leaves [0, 1] (out-of-range "
        "count > 0) and refitting moves the old data's scaled values; holds weakly: only "
        "a random split shows out-of-range test values; does not hold here: neither.",
        judge_minmax,
        ("scaling_minmax.png",),
        "normkit lab scaling",
    ),
    Claim(
        "bn-speed",
        "Normalization speeds up training; BatchNorm keeps activations at a usable scale "
        "so that a deep network trains (Ioffe & Szegedy 2015).",
        (1, 2, 4),
        "compare",
        "holds: BN learns (test accuracy >= 2.5x chance) where no normalization does not, "
        "or reaches the loss threshold in half the steps; holds weakly: BN ends at a "
        "lower training loss; does not hold here: otherwise.",
        judge_bn_speed,
        ("curves.png",),
        "normkit lab",
    ),
    Claim(
        "lrn-gradient",
        "LRN, like BN, addresses vanishing and exploding gradients.",
        (2,),
        "compare",
        "holds: LRN (Krizhevsky et al. 2012's constants) learns where no normalization "
        "does not, or reaches the threshold in half the steps; holds weakly: LRN's final "
        "training loss is >= 5% lower than none's; does not hold here: otherwise.",
        judge_lrn_gradient,
        ("curves.png",),
        "normkit lab",
    ),
    Claim(
        "bn-scale-invariance",
        "BN removes the weight's scale: BN(aWu) = BN(Wu), the gradient w.r.t. the layer "
        "input is unchanged and the weight's gradient scales as 1/a.",
        (2,),
        "scale-invariance",
        "holds: with eps = 1e-12 every relative change (a >= 0.5) is < 1e-6; holds "
        "weakly: only with torch's eps = 1e-5 below 0.1; does not hold here: otherwise.",
        judge_scale_invariance,
        ("scale_invariance.png",),
        "normkit lab scale-invariance",
    ),
    Claim(
        "bn-small-batch",
        "BN's statistics come from the mini-batch, so it degrades with few samples per "
        "batch; LayerNorm (Ba et al. 2016) and GroupNorm (Wu & He 2018) compute per "
        "example and do not.",
        (4,),
        "batch-size",
        "drop = best accuracy over batch sizes - accuracy at the smallest batch. holds: "
        "BN's drop exceeds both GN's and LN's by >= 2 points; holds weakly: by any "
        "margin; does not hold here: otherwise.",
        judge_small_batch,
        ("batch_size.png",),
        "normkit lab batch-size",
    ),
    Claim(
        "bn-ics",
        "BN fixes each layer's input distribution during training (it reduces internal "
        "covariate shift).",
        (2, 4),
        "ics",
        "holds: BN's average drift of the hidden pre-activation means is <= half of "
        "no normalization's; holds weakly: lower; does not hold here: not lower.",
        judge_ics,
        ("ics.png",),
        "normkit lab ics",
    ),
    Claim(
        "lrn-minimal",
        "LRN's contribution is minimal; dropout and BatchNorm took over its role.",
        (2, 5),
        "lrn-effect",
        "per depth: LRN - none within 2x the seed std (at least 0.5 points). holds: on "
        "every depth, and BN - none exceeds that tolerance; holds weakly: LRN ~ none but "
        "BN not better everywhere; does not hold here: LRN differs from none.",
        judge_lrn_minimal,
        ("lrn_effect.png",),
        "normkit lab lrn-effect",
    ),
    Claim(
        "lrn-tf-formula",
        "TensorFlow's LRN sums the squares over channels d - depth_radius .. d + "
        "depth_radius and divides by (bias + alpha * sum)^beta; with depth_radius 2, "
        "bias 0, alpha 1, beta 1 the first pixel gives 1/(1+4+9) = 0.07142857 in channel "
        "0 and 4/(4+9+16+25+36) = 0.04444445 in channel 3.",
        (3,),
        "lrn-formula",
        "holds: normkit's TensorFlow convention reproduces both hand values to 1e-7 and "
        "the written-out formula to 1e-12 (float64); holds weakly: the hand values to "
        "1e-4; does not hold here: otherwise.",
        judge_lrn_formula,
        (),
        "normkit lab report",
    ),
]


# ------------------------------------------------------------------ running


def _experiment_results(
    exp: str, out: str, quick: bool, rerun: bool, seed: int, progress: bool, runner
) -> Tuple[Optional[dict], str]:
    """(results, how) for one experiment: reused from disk, or run now by
    ``runner(argv, exp_dir)`` (the lab command line's own run-and-write, passed in by
    :mod:`normkit.lab.cli` so that this module does not import it back)."""

    exp_dir = os.path.join(out, exp)
    path = os.path.join(exp_dir, "results.json")
    if os.path.isfile(path) and not rerun:
        try:
            with open(path) as f:
                return json.load(f), f"reused {path}"
        except (OSError, ValueError) as exc:
            return None, f"could not read {path} ({exc}); pass --rerun"
    argv = (
        [exp, "--out", exp_dir, "--seed", str(seed)]
        + (["--quick"] if quick else [])
        + ([] if progress else ["--no-progress"])
    )
    t0 = time.perf_counter()
    try:
        runner(argv, exp_dir)
    except ValueError as exc:
        return None, f"{exp} failed: {exc}"
    with open(path) as f:  # what the page shows is exactly what results.json holds
        result = json.load(f)
    return result, f"ran {' '.join(['normkit lab'] + argv)} ({time.perf_counter() - t0:.0f} s)"


def evaluate(results: Dict[str, Optional[dict]]) -> List[dict]:
    """One record per claim: verdict and measured lines, from the experiments' results."""
    out = []
    for c in CLAIMS:
        res = results.get(c.experiment)
        if res is None:
            verdict, lines = MISSING, [f"experiment {c.experiment!r} did not run"]
        else:
            try:
                verdict, lines = c.judge(res)
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                verdict, lines = (
                    MISSING,
                    [
                        f"results of {c.experiment!r} lack what this "
                        f"claim needs ({type(exc).__name__}: {exc}); "
                        "rerun the experiment"
                    ],
                )
        quick = bool(res and res.get("config", {}).get("quick"))
        out.append(
            {
                "key": c.key,
                "claim": c.claim,
                "documents": [DOCUMENTS[d] for d in c.documents],
                "experiment": c.experiment,
                "rule": c.rule,
                "verdict": verdict,
                "measured": lines,
                "figures": list(c.figures),
                "command": c.command + (" --quick" if quick else ""),
                "quick": quick,
            }
        )
    return out


def build_report(args, runner) -> dict:
    out = args.out or "lab-out"
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    results, log = {}, []
    for exp in EXPERIMENT_ORDER:
        res, how = _experiment_results(
            exp, out, args.quick, args.rerun, args.seed, args.progress, runner
        )
        results[exp] = res
        log.append(how)
        print(f"normkit lab report: {how}", file=sys.stderr)
    results["lrn-formula"] = lrn_worked_example()
    claims = evaluate(results)
    page = render_html(claims, results, out, log)
    path = os.path.join(out, "report.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    summary = {
        "experiment": "report",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "claims": claims,
        "log": log,
        "seconds": time.perf_counter() - t0,
        "path": path,
        "out_dir": out,
    }
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def print_summary(result: dict) -> None:
    width = max(len(c["key"]) for c in result["claims"])
    print(f"normkit lab report: {len(result['claims'])} claims, {result['seconds']:.0f} s")
    print()
    for c in result["claims"]:
        print(f"{c['key'].ljust(width)}  {c['verdict']}")
    print()
    print(
        f"wrote {os.path.abspath(result['path'])} (open it in a browser: "
        f"file://{os.path.abspath(result['path'])})"
    )


# ------------------------------------------------------------------ HTML

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#1a1a1a;line-height:1.45}
h1{margin-bottom:.2em}.meta{color:#555;font-size:.9em}
table.summary{border-collapse:collapse;margin:1em 0;width:100%}
table.summary td,table.summary th{border-bottom:1px solid #ddd;padding:.35em .6em;text-align:left}
section.claim{border:1px solid #ddd;border-radius:8px;padding:1em 1.2em;margin:1.5em 0}
.verdict{display:inline-block;padding:.15em .6em;border-radius:1em;font-weight:600;
font-size:.9em;white-space:nowrap}
.v-holds{background:#d8f3dc;color:#1b4332}.v-weak{background:#fff3bf;color:#5c4400}
.v-not{background:#ffe3e3;color:#7d1a1a}.v-missing{background:#e9ecef;color:#333}
.label{font-weight:600;color:#444}.rule{color:#444;font-size:.92em}
code{background:#f3f3f3;padding:.1em .3em;border-radius:3px}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.5em 0}
ul.measured li{margin:.15em 0}.quick{color:#8a5a00;font-size:.9em}
"""

_VCLASS = {HOLDS: "v-holds", WEAK: "v-weak", NOT: "v-not", MISSING: "v-missing"}


def _data_uri(path: str) -> Optional[str]:
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def _utc_now_text() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def render_html(
    claims: List[dict], results: Dict[str, Optional[dict]], out: str, log: List[str]
) -> str:
    e = html.escape
    env = next((r["environment"] for r in results.values() if r and "environment" in r), {})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>normkit lab report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>normkit lab report</h1>",
        f'<p class="meta">{e(_utc_now_text())}'
        f" &middot; normkit {e(str(env.get('normkit', '?')))} &middot; torch "
        f"{e(str(env.get('torch', '?')))} &middot; {e(str(env.get('platform', '')))}</p>",
        "<p>Each claim of the source documents (five blog posts and Q&amp;A threads on "
        "normalization), what <code>normkit lab</code> measured, the figure, and a "
        "verdict computed from the numbers by the rule shown with it: <b>holds</b>, "
        "<b>holds weakly</b> or <b>does not hold here</b> (on this data, at this "
        "scale). Every section ends with the command that reproduces it.</p>",
    ]
    if any(c["quick"] for c in claims):
        parts.append(
            '<p class="quick">Some experiments ran with <code>--quick</code> '
            "(one epoch on 256 images, or 100 GD steps): small-budget numbers; run "
            "<code>normkit lab report --rerun</code> for the full ones.</p>"
        )
    parts.append(
        '<table class="summary"><tr><th>claim</th><th>documents</th>'
        "<th>experiment</th><th>verdict</th></tr>"
    )
    for c in claims:
        docs = ", ".join(d.split(" (")[0] for d in c["documents"])
        parts.append(
            f'<tr><td><a href="#{e(c["key"])}">{e(c["claim"][:90])}'
            f"{'...' if len(c['claim']) > 90 else ''}</a></td><td>{e(docs)}</td>"
            f'<td>{e(c["experiment"])}</td><td><span class="verdict '
            f'{_VCLASS[c["verdict"]]}">{e(c["verdict"])}</span></td></tr>'
        )
    parts.append("</table>")
    for c in claims:
        parts.append(f'<section class="claim" id="{e(c["key"])}">')
        parts.append(
            f'<h2>{e(c["key"])} <span class="verdict {_VCLASS[c["verdict"]]}">'
            f"{e(c['verdict'])}</span></h2>"
        )
        parts.append(f'<p><span class="label">Claim.</span> {e(c["claim"])}</p>')
        parts.append(f'<p><span class="label">Made by.</span> {e("; ".join(c["documents"]))}</p>')
        parts.append(
            '<p><span class="label">Measured</span> (experiment <code>'
            f"{e(c['experiment'])}</code>{', quick mode' if c['quick'] else ''}):</p>"
            '<ul class="measured">' + "".join(f"<li>{e(x)}</li>" for x in c["measured"]) + "</ul>"
        )
        for fig in c["figures"]:
            uri = _data_uri(os.path.join(out, c["experiment"], fig))
            if uri:
                parts.append(f'<img src="{uri}" alt="{e(c["experiment"])}: {e(fig)}">')
            else:
                parts.append(f"<p><i>figure {e(fig)} missing</i></p>")
        parts.append(f'<p class="rule"><span class="label">Verdict rule.</span> {e(c["rule"])}</p>')
        parts.append(
            f'<p><span class="label">Reproduce:</span> <code>{e(c["command"])}</code></p></section>'
        )
    notes = []
    for exp in EXPERIMENT_ORDER:
        res = results.get(exp)
        if res and res.get("notes"):
            notes.append(
                f"<h3>{e(exp)}</h3><ul>"
                + "".join(f"<li>{e(n)}</li>" for n in res.get("notes", []))
                + "</ul>"
            )
    parts.append("<h2>Notes printed by each experiment</h2>" + "".join(notes))
    parts.append(
        "<h2>How this page was made</h2><ul>"
        + "".join(f"<li><code>{e(x)}</code></li>" for x in log)
        + "</ul>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)
