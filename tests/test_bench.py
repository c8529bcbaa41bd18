"""``normkit bench --quick`` produces a well-formed CSV (timings are never asserted)."""

import csv
import math

import pytest

from normkit import bench, cli


def test_bench_quick_writes_well_formed_csv(tmp_path, capsys):
    code = cli.main(
        [
            "bench",
            "--quick",
            "--layers",
            ",".join(bench.LAYERS),
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    files = list(tmp_path.glob("cpu-*.csv"))
    assert len(files) == 1
    with open(files[0], newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == bench.CSV_FIELDS
        rows = list(reader)
    layers = {r["layer"] for r in rows}
    assert layers == set(bench.LAYERS)  # every layer: each feeds the raw ops their contract
    # every case has a torch baseline and at least one normkit implementation, both passes
    for layer in layers:
        impls = {(r["impl"], r["pass"]) for r in rows if r["layer"] == layer}
        assert ("torch-eager", "fwd") in impls and ("torch-eager", "fwdbwd") in impls
        assert any(i.startswith("normkit-") for i, _ in impls)
    for r in rows:
        assert r["device"] == "cpu" and r["threads"] == "2" and r["torch_version"]
        assert "malloc" in r["allocator"] or "jemalloc" in r["allocator"]
        for key in ("median_ms", "ratio_vs_torch", "gbps", "copy_gbps", "frac_copy_bw"):
            value = float(r[key])
            assert math.isfinite(value) and value > 0, (key, r)
    assert {r["params"] for r in rows if r["layer"] == "lrn"} == {
        f"size=5 beta={b}" for b in bench.LRN_BETAS
    }
    # the machine's load is recorded (three averages), so a reader can tell a loaded run
    for r in rows:
        assert len([float(v) for v in r["load_avg"].split()]) == 3
    # per-call overhead: one tiny-input case per layer class; whole-model train steps
    # "<layer> [<path auto took>]": tiny float32 inputs take torch's kernel ("native")
    # except LRN, which has no native switch
    overhead = {r["params"] for r in rows if r["layer"] == "overhead"}
    assert overhead == {
        "BatchNorm2d [native]",
        "LayerNorm [native]",
        "GroupNorm [native]",
        "InstanceNorm2d [native]",
        "RMSNorm [native]",
        "LocalResponseNorm [cpu]",
    }
    models = {r["params"].split()[0] for r in rows if r["layer"] == "model"}
    assert {"resnet18-bn", "small-bn", "transformer-ln"} <= models
    out = capsys.readouterr().out
    assert "per-call overhead" in out and "wrote" in out


def test_model_cases_start_from_identical_weights():
    # the race is fair only if both models compute the same function at the start; float64,
    # since BN over 2 values per channel (the quick ResNet's last stage) amplifies float32
    # rounding differences
    import torch

    for case in bench._model_cases(True, "cpu", torch.float64):
        theirs, ours = case.impls[0].fwd(), case.impls[1].fwd()
        assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-9), case.params


def test_bench_rejects_unknown_layer(tmp_path, capsys):
    assert cli.main(["bench", "--quick", "--layers", "dropout", "--out", str(tmp_path)]) == 2
    assert "unknown layer" in capsys.readouterr().err


@pytest.mark.skipif(
    not __import__("os").path.exists("/proc/self/clear_refs"),
    reason="needs Linux /proc/self/clear_refs to reset the RSS peak",
)
def test_lrn_peak_memory_probe_measures_something():
    x = __import__("torch").randn(2, 16, 32, 32)
    case = bench._lrn_case(x, x.clone(), 0.75)
    ratio = bench.peak_extra_memory(case, "normkit-cpu", 2, "float32")
    # y and dx are live at the peak: at least about one input's worth (page granularity)
    assert ratio is not None and ratio > 0.5
