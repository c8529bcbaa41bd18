"""Nothing lost, hostile stats files: `normkit scale` and save/load under errors and signals."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from normkit import cli
from normkit import preprocessing as P
from normkit.preprocessing._persist import _digest

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(*argv):
    return cli.main(["scale", *map(str, argv), "--no-progress"])


def _resign(doc):
    """Recompute the checksum, as a forger would."""
    doc = dict(doc)
    doc.pop("sha256", None)
    doc["sha256"] = _digest(doc)
    return doc


def _leftovers(directory):
    return sorted(p.name for p in Path(directory).iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def files(tmp_path):
    X = np.arange(60, dtype=np.float64).reshape(20, 3)
    data = tmp_path / "d.npy"
    np.save(data, X)
    stats = tmp_path / "s.json"
    assert _run("fit", data, "--method", "zscore", "-o", stats) == 0
    return tmp_path, data, stats, X


# ---------------------------------------------------------------- nothing lost


def test_fit_output_equal_to_input_is_refused_even_with_force(files, capsys):
    tmp, data, _, X = files
    for extra in ([], ["--force"]):
        assert _run("fit", data, "--method", "zscore", "-o", data, *extra) == 2
        assert "is the input file" in capsys.readouterr().err
        np.testing.assert_array_equal(np.load(data), X)


def test_transform_output_equal_to_data_or_stats_is_refused(files, capsys):
    tmp, data, stats, X = files
    before = stats.read_bytes()
    for out in (data, stats):
        assert _run("transform", data, "--stats", stats, "-o", out, "--force") == 2
        assert "is the input file" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(data), X)
    assert stats.read_bytes() == before


def test_existing_output_needs_force(files, capsys):
    tmp, data, stats, X = files
    out = tmp / "o.csv"
    out.write_text("precious\n")
    assert _run("transform", data, "--stats", stats, "-o", out) == 2
    err = capsys.readouterr().err
    assert "already exists; pass --force" in err and err.count("\n") == 1
    assert out.read_text() == "precious\n"
    old_stats = stats.read_bytes()
    assert _run("fit", data, "--method", "minmax", "-o", stats) == 2
    assert stats.read_bytes() == old_stats
    assert _run("transform", data, "--stats", stats, "-o", out, "--force") == 0
    # hand calculation: column j holds 3*i + j, i = 0..19; population std of 0..19 * 3
    i = np.arange(20.0)
    want = (i - i.mean()) / i.std()
    got = np.loadtxt(out, delimiter=",", ndmin=2)
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-14)
    assert _leftovers(tmp) == []


def test_late_data_error_keeps_the_old_output(tmp_path, capsys):
    X = np.ones((300, 2))
    X[::3] = 2.0
    good = tmp_path / "good.npy"
    np.save(good, X)
    X[250, 1] = -1.0  # outside log10's domain, in the third chunk: two are written already
    data = tmp_path / "d.npy"
    np.save(data, X)
    stats = tmp_path / "s.json"
    assert _run("fit", good, "--method", "log10", "-o", stats) == 0
    for out in (tmp_path / "o.npy", tmp_path / "o.parquet", tmp_path / "o.csv"):
        out.write_bytes(b"older result")
        assert (
            _run("transform", data, "--stats", stats, "-o", out, "--force", "--chunk-rows", "100")
            == 2
        )
        assert "data rows 200..299" in capsys.readouterr().err
        assert out.read_bytes() == b"older result"
        assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])  # Parquet: a writer thread
def test_sigterm_mid_write_leaves_old_output_and_no_partial_file(tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400_000, 4))
    data = tmp_path / "big.npy"
    np.save(data, X)
    stats = tmp_path / "s.json"
    assert _run("fit", data, "--method", "zscore", "-o", stats) == 0
    out = tmp_path / ("out" + suffix)
    out.write_text("old,result\n")
    env = dict(os.environ, PYTHONPATH=SRC)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "normkit",
            "scale",
            "transform",
            str(data),
            "--stats",
            str(stats),
            "-o",
            str(out),
            "--force",
            "--chunk-rows",
            "2000",
            "--no-progress",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        # wait until the temporary output holds some data: the process is mid-write
        while time.monotonic() < deadline and proc.poll() is None:
            tmps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
            if tmps and tmps[0].stat().st_size > 100_000:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "transform finished before the signal: make the input larger"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()
    assert out.read_text() == "old,result\n"
    assert _leftovers(tmp_path) == []


def test_save_is_atomic_when_meta_cannot_be_written(tmp_path):
    s = P.MinMaxScaler().fit(np.array([[1.0], [2.0]]))
    path = tmp_path / "s.json"
    s.save(path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="meta must be JSON data"):
        s.save(path, meta={"x": object()})
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


# ---------------------------------------------------------------- non-finite statistics


def test_overflowed_variance_round_trips(tmp_path):
    skp = pytest.importorskip("sklearn.preprocessing")
    # finite data whose variance overflows float64 (scikit-learn accepts it: var_ = inf)
    X = np.array([[1e308, 1.0], [-1e308, 2.0]])
    s = P.StandardScaler().fit(X)
    ref = skp.StandardScaler().fit(X)
    assert np.isinf(ref.var_[0]) and np.isinf(s.var_[0])
    path = tmp_path / "s.json"
    s.save(path)
    doc = json.loads(path.read_text())  # strict JSON
    assert doc["state"]["var"][0] == "inf"
    t = P.load(path)
    np.testing.assert_array_equal(t.var_, ref.var_)
    np.testing.assert_array_equal(t.scale_, ref.scale_)
    np.testing.assert_array_equal(t.mean_, ref.mean_)


# ---------------------------------------------------------------- hostile files


@pytest.fixture
def saved(tmp_path):
    s = P.StandardScaler().fit(np.array([[1.0, 2.0], [3.0, 5.0], [4.0, 4.0]]))
    path = tmp_path / "s.json"
    s.save(path)
    return tmp_path, json.loads(path.read_text())


def _forge(tmp_path, name, doc, resign=True):
    path = tmp_path / name
    path.write_text(json.dumps(_resign(doc) if resign else doc))
    return path


def _one_line_error(path, field):
    with pytest.raises(ValueError) as info:
        P.load(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and field in msg, msg
    return msg


def test_nesting_bomb_is_refused_before_parsing(tmp_path):
    path = tmp_path / "bomb.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    _one_line_error(path, "nested more than")
    path.write_text('{"format": "normkit-scaler", "meta": ' + "[" * 100_000)
    _one_line_error(path, "nested more than")


@pytest.mark.parametrize(
    "field,edit",
    [
        ("params", lambda d: d.__setitem__("params", ["with_mean", True])),
        ("params.bogus", lambda d: d["params"].__setitem__("bogus", 1)),
        ("params", lambda d: d["params"].__setitem__("with_mean", "yes")),
        ("class", lambda d: d.__setitem__("class", ["StandardScaler"])),
        ("n_features_in", lambda d: d.__setitem__("n_features_in", 2.0)),
        ("n_features_in", lambda d: d.__setitem__("n_features_in", 10**30)),
        ("state.n_rows", lambda d: d["state"].__setitem__("n_rows", -3)),
        ("state.n_rows", lambda d: d["state"].__setitem__("n_rows", True)),
        ("state", lambda d: d.__setitem__("state", "x")),
        ("state.mean", lambda d: d["state"].__setitem__("mean", {"0": 1.0})),
        ("state.mean", lambda d: d["state"].__setitem__("mean", [1.0])),
        ("state.mean[1]", lambda d: d["state"]["mean"].__setitem__(1, "1.0")),
        ("state.var[0]", lambda d: d["state"]["var"].__setitem__(0, [1.0])),
        ("meta", lambda d: d.__setitem__("meta", 3)),
    ],
)
def test_forged_fields_are_named(saved, field, edit):
    tmp_path, doc = saved
    doc = json.loads(json.dumps(doc))
    edit(doc)
    _one_line_error(_forge(tmp_path, "forged.json", doc), field)


@pytest.mark.parametrize(
    "field,literal",
    [
        ("state.mean[0]", "1" + "0" * 400),  # 10**400 as an integer literal
        ("state.mean[0]", "1e400"),  # float64 overflow
        ("n_features_in", "9" * 5000),  # beyond Python's int-string limit
    ],
    ids=["int-10**400", "float-1e400", "int-5000-digits"],
)
def test_huge_numbers_are_named(saved, field, literal):
    tmp_path, doc = saved
    text = json.dumps(_resign(doc))
    key, where = field.split("[")[0].split(".")[-1], field
    if where == "n_features_in":
        text = text.replace('"n_features_in": 2', f'"n_features_in": {literal}')
    else:
        old = json.dumps(doc["state"][key][0])
        text = text.replace(f'"{key}": [{old}', f'"{key}": [{literal}', 1)
    path = tmp_path / "huge.json"
    path.write_text(text)
    msg = _one_line_error(path, field)
    assert "out of float64 range" in msg


def test_nan_constant_is_refused(saved):
    tmp_path, doc = saved
    text = json.dumps(doc).replace('"var": [', '"var": [NaN, ', 1)
    path = tmp_path / "nan.json"
    path.write_text(text)
    _one_line_error(path, "NaN")
