"""``normkit bench --quick`` produces a well-formed CSV (timings are never asserted)."""

import csv
import math
import os
import subprocess
import sys

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
        assert float(r["minor_faults_per_call"]) >= 0  # recorded for every timed case
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


def _python(code: str, *args: str) -> str:
    # a fresh interpreter: --malloc keep changes the allocator of the process it runs in
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_bench_malloc_keep_is_recorded(tmp_path):
    _python(
        "import sys; from normkit import cli; sys.exit(cli.main(sys.argv[1:]))",
        *("bench", "--quick", "--layers", "layernorm", "--repeats", "2", "--warmup", "1"),
        *("--malloc", "keep", "--memory", "off", "--out", str(tmp_path)),
    )
    (path,) = tmp_path.glob("cpu-*.csv")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all("mallopt keeps freed memory" in r["allocator"] for r in rows)


def test_keep_freed_memory_stops_refaulting_a_reallocated_output():
    # a 16 MiB output allocated and freed in a loop, as a layer's output is. With glibc's
    # initial mmap threshold pinned, each round is a fresh mapping whose 4096 pages fault
    # in; after keep_freed_memory the rounds reuse mapped pages
    code = """
import ctypes, resource, sys, torch
from normkit.bench import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
else:
    assert ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    torch.empty(4 << 20).fill_(1.0)
start = faults()
for _ in range(10):
    torch.empty(4 << 20).fill_(1.0)
print((faults() - start) / 10)
"""
    fresh = float(_python(code, "mmap").strip())
    kept = float(_python(code, "keep").strip())
    assert fresh > 2000, fresh  # 4096 pages of 4 KiB (fewer with transparent huge pages)
    assert kept < 64, kept


def test_implementations_are_timed_interleaved_in_alternating_order():
    calls = []
    fns = [lambda name=name: calls.append(name) for name in "abc"]
    times, faults = bench._interleaved_ms(fns, "cpu", warmup=1, repeats=4)
    assert calls[:3] == ["a", "b", "c"]  # warm-up, one call each
    rounds = [calls[3 + 3 * r : 6 + 3 * r] for r in range(4)]
    # each round calls every implementation once, the order reversed every round, so
    # no implementation always follows the same one
    assert rounds == [["c", "b", "a"], ["a", "b", "c"], ["c", "b", "a"], ["a", "b", "c"]]
    assert len(times) == len(faults) == 3
    assert all(t >= 0.0 for t in times) and all(f >= 0.0 for f in faults)
