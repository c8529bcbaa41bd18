"""``normkit lab scaling``: the input-data experiment (quick mode), its pieces checked
against hand calculations, torch autograd and scikit-learn."""

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch

from normkit import cli
from normkit.lab import scaling as S

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_KEYS = ("scaling", "dataset", "model", "steps_to_target", "final_loss", "test_acc")


def _check_png(path):
    import matplotlib.image as mpimg

    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC, f"{path} is not a PNG"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > 0.01, "blank image"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("scaling") / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["lab", "scaling", "--quick", "--out", str(out), "--no-progress"])
    assert code == 0
    with open(out / "results.json") as f:
        return out, json.load(f), printed.getvalue()


def test_results_schema_and_every_variant(quick, capsys):
    out, res, _ = quick
    assert res["experiment"] == "scaling" and res["schema"] == "normkit-lab/1"
    runs = res["runs"]
    assert len(runs) == len(S.DATASETS) * len(S.MODELS) * len(S.VARIANTS)
    assert {(r["dataset"], r["model"], r["scaling"]) for r in runs} == {
        (d, m, v) for d in S.DATASETS for m in S.MODELS for v in S.VARIANTS
    }
    for r in runs:
        for key in RUN_KEYS:
            assert key in r, key
        assert r["scaling"] in ("raw", "minmax", "zscore", "reciprocal", "log10", "arctan")
        if r["applicable"]:
            assert isinstance(r["final_loss"], float) and 0 <= r["test_acc"] <= 1
            assert r["steps_to_target"] is None or isinstance(r["steps_to_target"], int)
            # the same learning-rate grid for every variant
            assert [s["lr"] for s in r["lr_search"]] == S.lr_grid(True)
            assert len(r["loss_curve"]) == S.n_steps(True) + 1
        else:
            assert r["final_loss"] is None and r["test_acc"] is None and r["reason"]
    assert res["plots"] == ["scaling_contours.png", "scaling_curves.png", "scaling_minmax.png"]
    for p in res["plots"]:
        _check_png(out / p)


def test_log10_not_applicable_on_breast_cancer_and_not_shifted(quick):
    _, res, _ = quick
    from sklearn.datasets import load_breast_cancer

    # breast cancer has zeros (e.g. 'mean concavity'); log10 of 0 is -inf
    assert (load_breast_cancer().data <= 0).any()
    for r in res["runs"]:
        if r["scaling"] == "log10" and r["dataset"] == "breast_cancer":
            assert r["applicable"] is False and "log10" in r["reason"]
        else:
            assert r["applicable"] is True  # wine is positive; nothing is at x = -1


def test_the_document_claims_as_measured(quick):
    """What the quick run shows, asserted so that a regression in the lab is caught."""
    _, res, _ = quick
    by = {(r["dataset"], r["model"], r["scaling"]): r for r in res["runs"]}
    for d in S.DATASETS:
        raw, z = by[(d, "logreg", "raw")], by[(d, "logreg", "zscore")]
        assert z["steps_to_target"] is not None and raw["steps_to_target"] is None
        assert raw["cond_cov"] > 100 * z["cond_cov"]  # stretched contours, as a number
        mraw, mz = by[(d, "mlp", "raw")], by[(d, "mlp", "zscore")]
        assert mraw["saturated_fraction_init"] > 0.9 and mz["saturated_fraction_init"] < 0.05
    pan = res["contours"]["panels"]
    assert pan["zscore"]["steps_to_1pct"] is not None
    # the fastest rate of the grid: raw needs thousands of steps, z-scored a handful
    assert (
        pan["raw (centred)"]["fastest_steps_to_1pct"] > 100 * pan["zscore"]["fastest_steps_to_1pct"]
    )
    assert pan["raw (centred)"]["hessian_condition"] > 100 * pan["zscore"]["hessian_condition"]


def test_printed_table(quick):
    text = quick[2]
    assert "log10 (n/a)" in text and "steps to loss<=0.1" in text and "cond(cov)" in text
    assert "not applicable" in text and "min-max caveat" in text
    assert "scaling_contours.png" in text.splitlines()[-1]


def test_same_seed_same_numbers():
    table = S.load_table("wine")
    a, b = (S.run_variant(table, "zscore", "mlp", True, seed=0) for _ in range(2))
    assert a["loss_curve"] == b["loss_curve"] and a["lr"] == b["lr"]
    c = S.run_variant(table, "zscore", "mlp", True, seed=1)  # another init
    assert c["loss_curve"][0] != a["loss_curve"][0]


def test_data_option_refused(tmp_path, capsys):
    code = cli.main(["lab", "scaling", "--quick", "--data", "x.npz", "--out", str(tmp_path)])
    assert code == 2 and "--data" in capsys.readouterr().err


# ------------------------------------------------------------------ pieces


def test_out_of_range_counts_hand_computed():
    x = np.array([[0.0, 5.0], [2.0, -1.0], [3.0, 11.0], [-4.0, 10.0]])
    # range [0, 2] x [0, 10]: column 0 has -4 below and 3 above; column 1 has -1 below, 11 above
    c = S.out_of_range_counts([0.0, 0.0], [2.0, 10.0], x)
    assert c == {"below": [1, 1], "above": [1, 1], "total": 4}


def test_apply_variant_reports_domain_errors_without_shifting():
    good = np.array([[1.0, 2.0], [3.0, 4.0]])
    _, _, reason = S.apply_variant("log10", np.array([[1.0, 0.0], [2.0, 3.0]]), good)
    assert reason and "log10" in reason
    _, _, reason = S.apply_variant("reciprocal", np.array([[1.0, -1.0], [2.0, 3.0]]), good)
    assert reason and "-1" in reason
    # the test split may be what breaks the domain: also not applicable
    _, _, reason = S.apply_variant("log10", good, np.array([[1.0, -2.0]]))
    assert reason is not None
    xt, xs, reason = S.apply_variant("log10", good, good)
    assert reason is None and np.allclose(xt, np.log10(good))
    xt, _, _ = S.apply_variant("arctan", good, good)
    assert np.allclose(xt, np.arctan(good) * 2 / np.pi)


def test_conditioning_hand_computed():
    # zero-mean, uncorrelated columns with variances 2/3 and 200/3 (ddof 1): ratio 100
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 10.0], [0.0, -10.0]])
    c = S.conditioning(x)
    assert c["cond_cov"] == pytest.approx(100.0)
    assert c["feature_std_ratio"] == pytest.approx(10.0)
    # second moment with a bias column: diag(1/2, 50, 1) -> 100
    assert c["cond_second_moment"] == pytest.approx(100.0)


@pytest.mark.parametrize("model", ["logreg", "mlp"])
def test_loss_and_gradient_match_torch_autograd(model):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 5)), rng.integers(0, 3, 20)
    p = S.init_params(model, 5, 3, seed=1)
    if model == "logreg":
        p = {k: rng.standard_normal(v.shape) for k, v in p.items()}
    loss, grads, _ = S.loss_and_grad(model, p, x, y)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    xt = torch.tensor(x)
    if model == "logreg":
        logits = xt @ tp["W"] + tp["b"]
    else:
        logits = torch.sigmoid(xt @ tp["W1"] + tp["b1"]) @ tp["W2"] + tp["b2"]
    ref = torch.nn.functional.cross_entropy(logits, torch.tensor(y))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-12)
    for k in p:
        np.testing.assert_allclose(grads[k], tp[k].grad.numpy(), rtol=1e-10, atol=1e-14)


def test_steps_to_target_hand_computed():
    assert S.steps_to_target([1.0, 0.5, 0.09, 0.2], 0.1) == 2
    assert S.steps_to_target([1.0, 0.5], 0.1) is None
    assert S.steps_to_target([0.05], 0.1) == 0


def test_gradient_descent_on_separable_data_and_divergence():
    x = np.array([[-2.0], [-1.0], [1.0], [2.0]])
    y = np.array([0, 0, 1, 1])
    _, losses, diverged = S.gradient_descent("logreg", x, y, 2, lr=1.0, steps=50, seed=0)
    # zero init: both logits 0, so the first loss is ln 2 (hand value)
    assert losses[0] == pytest.approx(math.log(2)) and not diverged
    assert losses[-1] < losses[0] / 5 and len(losses) == 51


def test_minmax_caveat_matches_scikit_learn():
    from sklearn.datasets import load_wine
    from sklearn.preprocessing import MinMaxScaler as SkMinMax

    c = S.minmax_caveat()
    b = load_wine()
    old, new = b.data[b.target != 2], b.data[b.target == 2]
    y = SkMinMax().fit(old).transform(new)
    assert c["out_of_range"]["total"] == int(((y < 0) | (y > 1)).sum()) > 0
    assert c["new_min"] == pytest.approx(y.min(axis=0).tolist(), abs=1e-12)
    assert c["new_max"] == pytest.approx(y.max(axis=0).tolist(), abs=1e-12)
    yc = SkMinMax(clip=True).fit(old).transform(new)
    assert c["clip_min"] == pytest.approx(yc.min(axis=0).tolist(), abs=1e-12)
    assert c["clip_max"] == pytest.approx(yc.max(axis=0).tolist(), abs=1e-12)
    assert c["clip_changed_values"] == c["out_of_range"]["total"]
    refit = SkMinMax().fit(b.data)
    shift = np.abs(refit.transform(old) - SkMinMax().fit(old).transform(old)).max()
    assert c["refit_old_max_shift"] == pytest.approx(shift, abs=1e-12)
    if c["api_counts"] is not None:  # the scaler's own record, where this version keeps one
        assert c["api_counts_agree"] is True
