"""`normkit scale` on CSV, Parquet, Arrow IPC/Feather and .npy, against scikit-learn in memory."""

import numpy as np
import pytest

from normkit import cli

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pd = pytest.importorskip("pandas")
skp = pytest.importorskip("sklearn.preprocessing")


def _run(*argv):
    return cli.main(["scale", *map(str, argv), "--no-progress"])


@pytest.fixture
def table():
    rng = np.random.default_rng(3)
    n = 2500
    x = rng.normal(size=n) * 10 + 3
    x[[5, 77]] = np.nan
    return pa.table(
        {
            "id": pa.array([f"row{i}" for i in range(n)]),  # text: passes through
            "x": pa.array(x),
            "n": pa.array(rng.integers(0, 1000, size=n)),  # int64: scaled as float64
            "f": pa.array(rng.uniform(1, 2, size=n).astype(np.float32)),
        }
    )


def _write(table, path):
    if path.suffix == ".csv":
        table.to_pandas().to_csv(path, index=False)
    elif path.suffix in (".parquet", ".pq"):
        pq.write_table(table, path, row_group_size=700)
    elif path.suffix in (".arrow", ".feather"):
        import pyarrow.feather as feather

        feather.write_feather(table, path, chunksize=600)


def _read(path):
    if path.suffix == ".csv":
        return pa.csv.read_csv(path)
    if path.suffix == ".parquet":
        return pq.read_table(path)
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


@pytest.mark.parametrize("src_ext", [".csv", ".parquet", ".arrow", ".feather"])
@pytest.mark.parametrize("out_ext", [".csv", ".parquet", ".arrow"])
def test_formats_equal_sklearn_and_keep_other_columns(tmp_path, table, src_ext, out_ext):
    import pyarrow.csv  # noqa: F401  (pa.csv)

    src = tmp_path / f"d{src_ext}"
    _write(table, src)
    stats, out = tmp_path / "s.json", tmp_path / f"o{out_ext}"
    assert _run("fit", src, "--method", "zscore", "-o", stats, "--chunk-rows", "500") == 0
    assert _run("transform", src, "--stats", stats, "-o", out) == 0
    got = _read(out)
    assert got.column_names == ["id", "x", "n", "f"]
    assert got.column("id").to_pylist() == table.column("id").to_pylist()
    # the values as pandas reads the source (CSV text of the float32 column parses as float64)
    ref = pd.read_csv(src) if src_ext == ".csv" else table.to_pandas()
    X = ref[["x", "n", "f"]].to_numpy(dtype=np.float64)
    want = skp.StandardScaler().fit(X).transform(X)
    Y = np.column_stack(
        [got.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in ["x", "n", "f"]]
    )
    np.testing.assert_array_equal(np.isnan(Y), np.isnan(want))
    np.testing.assert_allclose(Y[:, :2], want[:, :2], rtol=1e-12, atol=1e-12)
    # f is float32 in Parquet/Arrow (output float32 too): float32 rounding
    f32 = src_ext != ".csv"  # the source holds f as float32: so does the output
    np.testing.assert_allclose(
        Y[:, 2], want[:, 2], rtol=1e-6 if f32 else 1e-12, atol=1e-6 if f32 else 1e-12
    )


def test_parquet_output_is_real_parquet_and_columns_select(tmp_path, table):
    src = tmp_path / "d.parquet"
    _write(table, src)
    stats, out = tmp_path / "s.json", tmp_path / "o.parquet"
    assert _run("fit", src, "--method", "minmax", "--columns", "x,f", "-o", stats) == 0
    assert _run("transform", src, "--stats", stats, "-o", out) == 0
    assert out.read_bytes()[:4] == b"PAR1"
    got = pq.read_table(out)
    np.testing.assert_array_equal(got.column("n").to_numpy(), table.column("n").to_numpy())
    assert got.schema.field("f").type == pa.float32()  # float32 stays float32
    x = table.column("x").to_numpy(zero_copy_only=False)
    want = skp.MinMaxScaler().fit_transform(x[:, None])[:, 0]
    np.testing.assert_allclose(
        got.column("x").to_numpy(zero_copy_only=False), want, rtol=1e-15, atol=1e-15
    )


def test_unknown_extensions_and_missing_columns_are_refused(tmp_path, table, capsys):
    src = tmp_path / "d.parquet"
    _write(table, src)
    stats = tmp_path / "s.json"
    (tmp_path / "d.xlsx").write_bytes(b"x")
    assert _run("fit", tmp_path / "d.xlsx", "--method", "zscore", "-o", stats) == 2
    err = capsys.readouterr().err
    assert "unknown extension '.xlsx'" in err and ".parquet" in err and ".npy" in err
    assert _run("fit", src, "--method", "zscore", "--columns", "x,nope", "-o", stats) == 2
    assert "['nope'] not in the file" in capsys.readouterr().err
    assert _run("fit", src, "--method", "zscore", "--columns", "id", "-o", stats) == 2
    assert "column 'id' has type string" in capsys.readouterr().err
    assert _run("fit", src, "--method", "zscore", "-o", stats) == 0
    assert _run("transform", src, "--stats", stats, "-o", tmp_path / "o.txt") == 2
    assert "unknown extension '.txt'" in capsys.readouterr().err
    assert _run("transform", src, "--stats", stats, "-o", tmp_path / "o.npy") == 2
    assert "a .npy output holds only the scaled columns" in capsys.readouterr().err


def test_csv_empty_fields_are_nan(tmp_path):
    src = tmp_path / "d.csv"
    src.write_text("a,b\n1,2\n,4\n3,\n5,8\n")
    stats = tmp_path / "s.json"
    assert _run("fit", src, "--method", "zscore", "-o", stats) == 0
    import json

    doc = json.loads(stats.read_text())
    # hand calculation: a = [1, 3, 5] -> mean 3; b = [2, 4, 8] -> mean 14/3
    assert doc["state"]["mean"] == [3.0, 14 / 3]


def test_data_path_does_not_import_torch(tmp_path):
    """normkit.preprocessing and normkit.scale_cli never import torch on NumPy/file data.

    The package's own __init__ imports torch, so the check loads the two modules under a
    bare `normkit` package object: it guards the data path's start-up, not the package's.
    """
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src" / "normkit"
    data = tmp_path / "d.csv"
    data.write_text("a,b,name\n1,2,x\n3,5,y\n4,4,z\n")
    code = f"""
import sys, types, argparse
pkg = types.ModuleType("normkit"); pkg.__path__ = [{str(src)!r}]; sys.modules["normkit"] = pkg
import numpy as np
from normkit import preprocessing as P, scale_cli
P.StandardScaler().fit(np.ones((3, 2))).transform(np.ones((1, 2)))
ap = argparse.ArgumentParser(); scale_cli.add_arguments(ap)
for argv in (["fit", {str(data)!r}, "--method", "zscore", "-o", {str(tmp_path / "s.json")!r},
              "--no-progress"],
             ["transform", {str(data)!r}, "--stats", {str(tmp_path / "s.json")!r}, "-o",
              {str(tmp_path / "o.parquet")!r}, "--no-progress"]):
    assert scale_cli.main(ap.parse_args(argv)) == 0
assert "torch" not in sys.modules, "torch was imported"
# Array.to_numpy / pa.array would pull these in: ~0.35 s of start-up (docs/scalers.md)
assert "pandas" not in sys.modules and "pyarrow.compute" not in sys.modules, "pandas imported"
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.parametrize("piece", [7, 64, 1 << 20])
def test_csv_pieces_cut_at_line_ends_equal_sklearn(tmp_path, monkeypatch, piece):
    """The CSV is parsed in pieces on threads: any piece size gives the same numbers.

    7 bytes is shorter than every line (each piece must grow to a line end); the file
    has no final newline and a text column that passes through.
    """
    from normkit import scale_cli

    monkeypatch.setattr(scale_cli, "_CSV_PIECE_BYTES", piece)
    rng = np.random.default_rng(8)
    X = rng.normal(size=(300, 2)) * [2.0, 500.0] + [1.0, -3.0]
    src = tmp_path / "d.csv"
    lines = ["u,v,tag"] + [f"{a!r},{b!r},t{i}" for i, (a, b) in enumerate(X.tolist())]
    src.write_text("\n".join(lines))  # no newline at the end
    stats, out = tmp_path / "s.json", tmp_path / "o.parquet"
    assert _run("fit", src, "--method", "zscore", "-o", stats) == 0
    assert _run("transform", src, "--stats", stats, "-o", out) == 0
    got = pq.read_table(out)
    assert got.column("tag").to_pylist() == [f"t{i}" for i in range(300)]
    Y = np.column_stack([got.column(c).to_numpy() for c in ("u", "v")])
    np.testing.assert_allclose(Y, skp.StandardScaler().fit_transform(X), rtol=1e-12, atol=1e-12)
