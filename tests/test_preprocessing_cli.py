"""`normkit scale fit|transform`: chunked CSV/.npy files against the in-memory scalers."""

import json
import subprocess
import sys

import numpy as np
import pytest

from normkit import cli
from normkit import preprocessing as P

skp = pytest.importorskip("sklearn.preprocessing")


def _write_csv(path, X, header=None):
    with open(path, "w") as f:
        if header:
            f.write(",".join(header) + "\n")
        for row in X:
            f.write(",".join(repr(float(v)) for v in row) + "\n")


@pytest.fixture
def data():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(1003, 4)) * [1, 10, 1e3, 0.1] + [0, 5, 1e5, -2]
    X[[3, 500, 999], 1] = np.nan
    return X


@pytest.mark.parametrize(
    "method,cls", [("minmax", skp.MinMaxScaler), ("zscore", skp.StandardScaler)]
)
@pytest.mark.parametrize("fmt", ["csv", "npy"])
def test_fit_and_transform_files_equal_sklearn(tmp_path, data, method, cls, fmt, capsys):
    src = tmp_path / f"d.{fmt}"
    if fmt == "csv":
        _write_csv(src, data, header=["a", "b", "c", "d"])
    else:
        np.save(src, data)
    stats = tmp_path / "s.json"
    assert (
        cli.main(
            [
                "scale",
                "fit",
                str(src),
                "--method",
                method,
                "-o",
                str(stats),
                "--chunk-rows",
                "97",
                "--no-progress",
            ]
        )
        == 0
    )
    saved = json.loads(stats.read_text())
    assert saved["state"]["n_rows"] == 1003
    if fmt == "csv":
        assert saved["meta"]["columns"] == ["a", "b", "c", "d"]
    ref = cls()
    for chunk in np.array_split(data, range(97, 1003, 97)):
        ref.partial_fit(chunk)
    for out_fmt in ("csv", "npy"):
        out = tmp_path / f"o.{out_fmt}"
        assert (
            cli.main(
                [
                    "scale",
                    "transform",
                    str(src),
                    "--stats",
                    str(stats),
                    "-o",
                    str(out),
                    "--chunk-rows",
                    "250",
                    "--no-progress",
                ]
            )
            == 0
        )
        if out_fmt == "npy":
            Y = np.load(out)
        else:
            lines = out.read_text().splitlines()
            if fmt == "csv":
                assert lines[0] == "a,b,c,d"  # the header is carried over
                lines = lines[1:]
            Y = np.loadtxt(lines, delimiter=",", ndmin=2)
        want = ref.transform(data)
        assert Y.shape == want.shape and np.array_equal(np.isnan(Y), np.isnan(want))
        np.testing.assert_allclose(Y, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["reciprocal", "log10", "arctan"])
def test_fixed_methods_and_inverse_round_trip(tmp_path, data, method):
    X = np.abs(data) + 0.25
    src = tmp_path / "d.npy"
    np.save(src, X.astype(np.float32))
    stats, out, back = tmp_path / "s.json", tmp_path / "o.npy", tmp_path / "b.npy"
    assert (
        cli.main(["scale", "fit", str(src), "--method", method, "-o", str(stats), "--no-progress"])
        == 0
    )
    assert (
        cli.main(
            ["scale", "transform", str(src), "--stats", str(stats), "-o", str(out), "--no-progress"]
        )
        == 0
    )
    Y = np.load(out)
    assert Y.dtype == np.float32  # the input's dtype is kept
    f = {
        "reciprocal": lambda x: 1 / (1 + x),
        "log10": np.log10,
        "arctan": lambda x: np.arctan(x) * 2 / np.pi,
    }[method]
    np.testing.assert_allclose(Y, f(X.astype(np.float32).astype(np.float64)), rtol=2e-6, atol=1e-7)
    if method != "arctan":  # atan of 1e5 rounds to ~1 in float32: not invertible
        assert (
            cli.main(
                [
                    "scale",
                    "transform",
                    str(out),
                    "--stats",
                    str(stats),
                    "-o",
                    str(back),
                    "--inverse",
                    "--no-progress",
                ]
            )
            == 0
        )
        np.testing.assert_allclose(np.load(back), X.astype(np.float32), rtol=1e-5)


def test_out_of_range_summary_and_progress_bar_go_to_stderr(tmp_path, data):
    fit_src, new_src = tmp_path / "fit.csv", tmp_path / "new.csv"
    _write_csv(fit_src, data[:500])
    _write_csv(new_src, data[500:])
    stats, out = tmp_path / "s.json", tmp_path / "o.csv"
    assert cli.main(["scale", "fit", str(fit_src), "--method", "minmax", "-o", str(stats)]) == 0
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "normkit",
            "scale",
            "transform",
            str(new_src),
            "--stats",
            str(stats),
            "-o",
            str(out),
            "--chunk-rows",
            "100",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # the output file is the only product; messages are on stderr
    assert "transform" in proc.stderr and "100%" in proc.stderr  # tqdm's bar
    below = (data[500:] < np.nanmin(data[:500], 0)).sum(0)
    above = (data[500:] > np.nanmax(data[:500], 0)).sum(0)
    assert f"{int((below + above).sum())} value(s) outside the fitted range" in proc.stderr
    assert f"0: {below[0]} below, {above[0]} above" in proc.stderr


def test_cli_errors_are_one_clear_line(tmp_path, data, capsys):
    src = tmp_path / "d.csv"
    X = np.abs(data)
    X[700, 2] = -1.0
    _write_csv(src, X)
    stats = tmp_path / "s.json"
    assert (
        cli.main(
            [
                "scale",
                "fit",
                str(src),
                "--method",
                "log10",
                "-o",
                str(stats),
                "--chunk-rows",
                "300",
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "data rows 600..899" in err and "column 'x2': 1 value(s) (first at row 100" in err
    assert not stats.exists()

    assert (
        cli.main(
            ["scale", "fit", str(tmp_path / "missing.csv"), "--method", "zscore", "-o", str(stats)]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err

    bad = tmp_path / "bad.csv"
    bad.write_text("1,2\n3,x\n")
    assert (
        cli.main(
            ["scale", "fit", str(bad), "--method", "zscore", "-o", str(stats), "--no-progress"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "bad.csv: cannot parse CSV" in err and "invalid value 'x'" in err

    # stats for 4 columns applied to 3 columns: an error, and no half-written output left
    good = tmp_path / "good.npy"
    np.save(good, data)
    assert (
        cli.main(
            ["scale", "fit", str(good), "--method", "zscore", "-o", str(stats), "--no-progress"]
        )
        == 0
    )
    three = tmp_path / "three.npy"
    np.save(three, data[:, :3])
    out = tmp_path / "o.npy"
    assert (
        cli.main(
            [
                "scale",
                "transform",
                str(three),
                "--stats",
                str(stats),
                "-o",
                str(out),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "has 3 numeric column(s) to scale" in err and "fitted on 4" in err
    assert not out.exists()

    stats.write_text(stats.read_text()[:100])
    assert (
        cli.main(
            [
                "scale",
                "transform",
                str(good),
                "--stats",
                str(stats),
                "-o",
                str(out),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "truncated" in capsys.readouterr().err

    assert (
        cli.main(
            [
                "scale",
                "fit",
                str(good),
                "--method",
                "zscore",
                "--clip",
                "-o",
                str(stats),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "minmax only" in capsys.readouterr().err
    assert cli.main(["scale"]) == 2
    assert (
        cli.main(
            [
                "scale",
                "transform",
                str(good),
                "--stats",
                str(tmp_path / "s2.json"),
                "-o",
                str(good),
                "--no-progress",
            ]
        )
        == 2
    )  # s2.json does not exist
    np.save(good, data)
    assert (
        cli.main(
            [
                "scale",
                "fit",
                str(good),
                "--method",
                "zscore",
                "-o",
                str(tmp_path / "s2.json"),
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        cli.main(
            [
                "scale",
                "transform",
                str(good),
                "--stats",
                str(tmp_path / "s2.json"),
                "-o",
                str(good),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "is the input file" in capsys.readouterr().err
    np.testing.assert_array_equal(np.load(good), data)  # untouched


def test_npy_integer_and_1d_inputs(tmp_path):
    src = tmp_path / "i.npy"
    np.save(src, np.arange(10, dtype=np.int32))  # 1-D: one feature
    stats, out = tmp_path / "s.json", tmp_path / "o.npy"
    assert (
        cli.main(
            [
                "scale",
                "fit",
                str(src),
                "--method",
                "minmax",
                "-o",
                str(stats),
                "--chunk-rows",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "scale",
                "transform",
                str(src),
                "--stats",
                str(stats),
                "-o",
                str(out),
                "--chunk-rows",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    Y = np.load(out)
    assert Y.dtype == np.float64 and Y.shape == (10, 1)
    np.testing.assert_allclose(Y.ravel(), np.arange(10) / 9, rtol=0, atol=3e-16)
    assert P.load(stats).data_max_.tolist() == [9.0]
