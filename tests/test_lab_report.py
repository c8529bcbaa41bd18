"""``normkit lab report``: the verdict rules on hand-made numbers, the quick report end to
end, and the page rendered by a real browser (headless Chromium).

The browser test needs Debian's ``chromium`` (``apt-get install -y chromium``). Without
it the test fails and says so; set ``NORMKIT_SKIP_BROWSER=1`` to skip it deliberately.
"""

import json
import os
import re
import shutil
import subprocess

import pytest

from normkit import cli
from normkit.lab import report as R

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


# ------------------------------------------------------------------ rules, by hand


def _scaling_res(raw_steps, z_steps, raw_c, z_c, sat_raw=0.98, sat_z=0.0):
    runs = []
    for d in ("wine", "breast_cancer"):
        for model in ("logreg", "mlp"):
            for v, steps, loss, sat in (
                ("raw", raw_steps, 0.9, sat_raw),
                ("zscore", z_steps, 0.01, sat_z),
            ):
                r = {
                    "dataset": d,
                    "model": model,
                    "scaling": v,
                    "steps_to_target": steps,
                    "final_loss": loss,
                    "cond_cov": 1e7 if v == "raw" else 50.0,
                    "applicable": True,
                }
                if model == "mlp":
                    r.update(saturated_fraction_init=sat, grad_norm_init=0.7)
                runs.append(r)
    return {
        "config": {
            "datasets": ["wine", "breast_cancer"],
            "models": ["logreg", "mlp"],
            "loss_target": 0.1,
            "saturation": 0.01,
        },
        "runs": runs,
        "contours": {
            "features": ["a", "b"],
            "panels": {
                "raw (centred)": {"hessian_condition": 500.0, "steps_to_1pct": raw_c},
                "zscore": {"hessian_condition": 2.0, "steps_to_1pct": z_c},
            },
        },
    }


def test_zigzag_rule():
    # z-score reaches the target, raw never; contours: raw 100 steps vs 4 -> holds
    assert R.judge_zigzag(_scaling_res(None, 10, 100, 4))[0] == R.HOLDS
    # raw 15 vs 10 steps (< 2x) on the tables, contours still 2x -> only one part: weakly
    assert R.judge_zigzag(_scaling_res(15, 10, 100, 4))[0] == R.WEAK
    # neither: raw as fast as z-score everywhere
    assert R.judge_zigzag(_scaling_res(10, 10, 4, 4))[0] == R.NOT


def test_saturation_rule():
    assert R.judge_saturation(_scaling_res(None, 10, 100, 4, 0.98, 0.0))[0] == R.HOLDS
    # 40% vs 10%: not >= 50%, but 30 points more than z-scored -> weakly
    assert R.judge_saturation(_scaling_res(None, 10, 100, 4, 0.4, 0.1))[0] == R.WEAK
    assert R.judge_saturation(_scaling_res(None, 10, 100, 4, 0.1, 0.05))[0] == R.NOT


def test_small_batch_rule():
    def res(batch, group, layer):
        return {
            "config": {"batch_sizes": [2, 32]},
            "table": {"rows": [["batch", *batch], ["group", *group], ["layer", *layer]]},
        }

    # drops (best - at batch 2): BN 7, GN 1, LN 0 -> BN's exceeds both by >= 2 points
    assert R.judge_small_batch(res([88.0, 95.0], [96.0, 97.0], [94.0, 94.0]))[0] == R.HOLDS
    # BN 3, GN 2 -> exceeds by 1 point only
    assert R.judge_small_batch(res([92.0, 95.0], [95.0, 97.0], [94.0, 94.0]))[0] == R.WEAK
    assert R.judge_small_batch(res([95.0, 95.0], [90.0, 97.0], [94.0, 94.0]))[0] == R.NOT


def test_lrn_minimal_rule():
    def res(lrn_mean, bn_mean, std=1.0):
        rows = [
            ["deep", "none", 10.0, std],
            ["deep", "lrn", lrn_mean, std],
            ["deep", "batch", bn_mean, std],
        ]
        return {"config": {"depths": ["deep"]}, "table": {"rows": rows}}

    # tolerance = max(2 * std, 0.5) = 2 points
    assert R.judge_lrn_minimal(res(11.5, 90.0))[0] == R.HOLDS
    assert R.judge_lrn_minimal(res(11.5, 11.0))[0] == R.WEAK
    assert R.judge_lrn_minimal(res(20.0, 90.0))[0] == R.NOT


def test_ics_rule():
    def res(none, batch):
        return {
            "table": {
                "rows": [
                    ["none", "conv1", 0, 0, 0, 0, 9.0, 0],
                    ["none", "conv2", 0, 0, 0, 0, none, 0],
                    ["batch", "conv2", 0, 0, 0, 0, batch, 0],
                ]
            }
        }

    assert R.judge_ics(res(1.0, 0.4))[0] == R.HOLDS  # conv1's 9.0 is not counted
    assert R.judge_ics(res(1.0, 0.8))[0] == R.WEAK
    assert R.judge_ics(res(1.0, 1.2))[0] == R.NOT


def test_a_missing_experiment_is_not_measured():
    claims = R.evaluate({})
    assert {c["verdict"] for c in claims} == {R.MISSING}
    assert {c["key"] for c in claims} == {c.key for c in R.CLAIMS}


def test_lrn_worked_example_holds():
    verdict, lines = R.judge_lrn_formula(R.lrn_worked_example())
    assert verdict == R.HOLDS
    assert "0.07142857" in lines[0]  # 1 / 14, the document's hand value


# ------------------------------------------------------------------ the quick report


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "lab-out"
    code = cli.main(["lab", "report", "--quick", "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def test_report_files_and_claims(quick_report, capsys):
    out = quick_report
    for exp in R.EXPERIMENT_ORDER:
        assert (out / exp / "results.json").is_file(), exp
    with open(out / "report.json") as f:
        rep = json.load(f)
    assert [c["key"] for c in rep["claims"]] == [c.key for c in R.CLAIMS]
    for c in rep["claims"]:
        assert c["verdict"] in (R.HOLDS, R.WEAK, R.NOT), (c["key"], c["measured"])
        assert c["measured"] and c["rule"] and c["documents"]
        assert c["command"].startswith("normkit lab")
    # the verdict on the page is the rule applied to the results.json next to it
    results = {}
    for exp in R.EXPERIMENT_ORDER:
        with open(out / exp / "results.json") as f:
            results[exp] = json.load(f)
    results["lrn-formula"] = R.lrn_worked_example()
    assert [c["verdict"] for c in R.evaluate(results)] == [c["verdict"] for c in rep["claims"]]


def test_report_reuses_results(quick_report, capsys):
    before = (quick_report / "scaling" / "results.json").stat().st_mtime_ns
    code = cli.main(["lab", "report", "--quick", "--out", str(quick_report), "--no-progress"])
    assert code == 0
    captured = capsys.readouterr()
    assert captured.err.count("reused") == len(R.EXPERIMENT_ORDER)
    assert (quick_report / "scaling" / "results.json").stat().st_mtime_ns == before
    assert "report.html" in captured.out


def test_report_is_self_contained(quick_report):
    page = (quick_report / "report.html").read_text(encoding="utf-8")
    srcs = re.findall(r'<img src="([^"]+)"', page)
    n_figures = sum(len(c.figures) for c in R.CLAIMS)
    assert len(srcs) == n_figures
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert page.count('<section class="claim"') == len(R.CLAIMS)
    assert "missing</i>" not in page  # every claim's figure was found and embedded


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("NORMKIT_SKIP_BROWSER") == "1":
        pytest.skip("NORMKIT_SKIP_BROWSER=1: the browser check was skipped on purpose")
    pytest.fail(
        "headless Chromium is needed to check report.html in a real browser: "
        "install it (Debian: apt-get install -y chromium) or set "
        "NORMKIT_SKIP_BROWSER=1 to skip this test deliberately"
    )


def _browser(binary, tmp_path, *args):
    profile = tmp_path / "profile"
    cmd = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_report_renders_in_chromium(quick_report, tmp_path):
    binary = _chromium()
    page = (quick_report / "report.html").read_text(encoding="utf-8")
    # A copy with a probe: after the load event, write each image's decoded width into
    # the DOM, where --dump-dom can read it (0 = the image failed to load).
    probe = (
        "<script>window.addEventListener('load',function(){var r=[];"
        "document.querySelectorAll('img').forEach(function(i){"
        "r.push(i.complete+':'+i.naturalWidth)});var d=document.createElement('pre');"
        "d.id='img-probe';d.textContent=r.join(',');document.body.appendChild(d);});"
        "</script>"
    )
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", probe + "</body>"), encoding="utf-8")
    dom = _browser(binary, tmp_path, "--dump-dom", probed.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'<pre id="img-probe">([^<]*)</pre>', dom.stdout)
    assert m, "the probe did not run: the page did not load\n" + dom.stdout[:1000]
    widths = [entry.split(":") for entry in m.group(1).split(",")]
    assert len(widths) == sum(len(c.figures) for c in R.CLAIMS)
    assert all(done == "true" and int(w) > 100 for done, w in widths), widths
    assert "normkit lab report" in dom.stdout and "holds" in dom.stdout

    shot = tmp_path / "report.png"
    res = _browser(
        binary,
        tmp_path,
        "--window-size=1200,1600",
        f"--screenshot={shot}",
        (quick_report / "report.html").as_uri(),
    )
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    with open(shot, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[:2] == (1600, 1200)
    assert img.std() > 0.05, "the screenshot is blank"
    # not a white page: enough non-white pixels (text, verdict badges, figures)
    assert (img[..., :3].mean(axis=2) < 0.9).mean() > 0.02
