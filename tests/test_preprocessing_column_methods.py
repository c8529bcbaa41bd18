"""`normkit scale fit --column-method`: a method per column, against scikit-learn and float64."""

import json

import numpy as np
import pytest

from normkit import cli
from normkit import preprocessing as P
from normkit.preprocessing._persist import _digest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
skp = pytest.importorskip("sklearn.preprocessing")


def _run(*argv):
    return cli.main(["scale", *map(str, argv), "--no-progress"])


@pytest.fixture
def table():
    rng = np.random.default_rng(11)
    n = 1500
    a = rng.normal(size=n) * 3 + 7
    a[[4, 900]] = np.nan
    return {
        "a": a,
        "price": rng.lognormal(3, 1, size=n),  # > 0: log10's domain
        "age": rng.integers(18, 90, size=n).astype(np.float64),
        "name": np.array([f"p{i}" for i in range(n)], dtype=object),
    }


def _cell(v) -> str:
    if isinstance(v, str):
        return v
    v = float(v)
    return "" if np.isnan(v) else repr(v)  # empty field: a missing value


def _write_csv(path, cols):
    names = list(cols)
    with open(path, "w") as f:
        f.write(",".join(names) + "\n")
        for row in zip(*(cols[c] for c in names)):
            f.write(",".join(_cell(v) for v in row) + "\n")


@pytest.mark.parametrize("out_ext", [".parquet", ".csv", ".arrow"])
def test_mixed_methods_equal_sklearn_and_float64(tmp_path, table, out_ext):
    src = tmp_path / "d.csv"
    _write_csv(src, table)
    stats, out = tmp_path / "s.json", tmp_path / f"o{out_ext}"
    assert (
        _run(
            "fit",
            src,
            "--method",
            "zscore",
            "--column-method",
            "price=log10, age=minmax",
            "-o",
            stats,
            "--chunk-rows",
            "400",
        )
        == 0
    )
    doc = json.loads(stats.read_text())
    assert doc["format"] == "normkit-scaler-set"
    groups = {s["meta"]["method"]: s["meta"]["columns"] for s in doc["scalers"]}
    assert groups == {"zscore": ["a"], "log10": ["price"], "minmax": ["age"]}
    assert _run("transform", src, "--stats", stats, "-o", out) == 0
    if out_ext == ".parquet":
        got = pq.read_table(out)
    elif out_ext == ".csv":
        got = pa.csv.read_csv(out)
    else:
        got = pa.ipc.open_file(pa.memory_map(str(out))).read_all()
    assert got.column_names == ["a", "price", "age", "name"]
    assert got.column("name").to_pylist() == list(table["name"])  # text passes through
    col = {
        c: got.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
        for c in "a price age".split()
    }
    want_a = skp.StandardScaler().fit_transform(table["a"][:, None])[:, 0]
    np.testing.assert_array_equal(np.isnan(col["a"]), np.isnan(want_a))
    np.testing.assert_allclose(col["a"], want_a, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(col["price"], np.log10(table["price"]), rtol=1e-15, atol=0)
    want_age = skp.MinMaxScaler().fit_transform(table["age"][:, None])[:, 0]
    np.testing.assert_allclose(col["age"], want_age, rtol=1e-15, atol=1e-15)

    # the Python side reads the same file
    scalers = P.load_set(stats)
    assert [type(s).__name__ for s in scalers] == ["StandardScaler", "Log10Scaler", "MinMaxScaler"]
    assert scalers[0].meta_["columns"] == ["a"]
    with pytest.raises(ValueError, match="load_set"):
        P.load(stats)

    # inverse_transform of every column gives the data back
    back = tmp_path / f"b{out_ext}"
    assert _run("transform", out, "--stats", stats, "-o", back, "--inverse") == 0
    if out_ext == ".parquet":
        b = pq.read_table(back)
        for c in ("a", "price", "age"):
            x = b.column(c).to_numpy(zero_copy_only=False)
            np.testing.assert_allclose(x, table[c], rtol=1e-12, atol=1e-12)


def test_column_method_alone_scales_only_those_columns(tmp_path, table):
    src = tmp_path / "d.parquet"
    pq.write_table(pa.table({k: pa.array(v) for k, v in table.items()}), src)
    stats, out = tmp_path / "s.json", tmp_path / "o.parquet"
    assert _run("fit", src, "--column-method", "price=arctan", "-o", stats) == 0
    doc = json.loads(stats.read_text())
    # one method: the single-scaler format that normkit.preprocessing.load reads
    assert doc["format"] == "normkit-scaler" and doc["meta"]["columns"] == ["price"]
    assert type(P.load(stats)).__name__ == "ArctanScaler"
    assert _run("transform", src, "--stats", stats, "-o", out) == 0
    got = pq.read_table(out)
    np.testing.assert_array_equal(got.column("a").to_numpy(zero_copy_only=False), table["a"])
    np.testing.assert_array_equal(got.column("age").to_numpy(), table["age"])
    # float64 formula: atan(x) * 2 / pi
    np.testing.assert_allclose(
        got.column("price").to_numpy(), np.arctan(table["price"]) * 2 / np.pi, rtol=1e-15
    )


def test_same_method_twice_writes_one_scaler(tmp_path, table):
    src = tmp_path / "d.csv"
    _write_csv(src, {k: table[k] for k in ("price", "age")})
    stats = tmp_path / "s.json"
    assert (
        _run("fit", src, "--method", "minmax", "--column-method", "price=minmax", "-o", stats) == 0
    )
    s = P.load(stats)
    X = np.column_stack([table["price"], table["age"]])
    ref = skp.MinMaxScaler().fit(X)
    np.testing.assert_array_equal(s.data_min_, ref.data_min_)
    np.testing.assert_array_equal(s.data_max_, ref.data_max_)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (
            ["--method", "zscore", "--column-method", "pricee=log10"],
            "--column-method: column(s) ['pricee'] not in",
        ),
        (
            ["--method", "zscore", "--column-method", "price=log"],
            "unknown method 'log' for column 'price'; choose one of arctan, log10, minmax",
        ),
        (
            ["--method", "zscore", "--column-method", "price:log10"],
            "'price:log10' is not COLUMN=METHOD; write e.g. --column-method price=log10",
        ),
        (
            ["--method", "zscore", "--column-method", "price=log10,price=minmax"],
            "column 'price' is given twice (log10 and minmax)",
        ),
        (
            ["--columns", "a,age", "--column-method", "a=zscore"],
            "--columns ['age'] have no method: give --method for them",
        ),
        ([], "give --method (for every scaled column) and/or --column-method"),
        (
            ["--column-method", "price=log10", "--clip"],
            "--feature-range and --clip apply to minmax only",
        ),
        (["--column-method", "name=zscore"], "column 'name' has type string, not numbers"),
    ],
)
def test_column_method_errors_name_the_column_and_the_fix(tmp_path, table, capsys, argv, needle):
    src = tmp_path / "d.csv"
    _write_csv(src, table)
    stats = tmp_path / "s.json"
    assert _run("fit", src, *argv, "-o", stats) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not stats.exists()


def test_domain_violation_names_the_column_rows_and_the_fix(tmp_path, table, capsys):
    cols = dict(table)
    cols["age"] = cols["age"].copy()
    cols["age"][1234] = 0.0  # log10 needs x > 0
    src = tmp_path / "d.csv"
    _write_csv(src, cols)
    stats = tmp_path / "s.json"
    assert (
        _run(
            "fit",
            src,
            "--method",
            "zscore",
            "--column-method",
            "age=log10,price=log10",
            "-o",
            stats,
            "--chunk-rows",
            "500",
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "data rows 1000..1499, column 'age' (log10)" in err
    assert "column 'age': 1 value(s) (first at row 234, value 0.0)" in err
    assert "--column-method age=arctan" in err
    assert not stats.exists()


def test_forged_set_files_name_the_scaler_and_field(tmp_path, table, capsys):
    src = tmp_path / "d.csv"
    _write_csv(src, {k: table[k] for k in ("a", "price")})
    stats = tmp_path / "s.json"
    assert (
        _run("fit", src, "--method", "zscore", "--column-method", "price=log10", "-o", stats) == 0
    )
    doc = json.loads(stats.read_text())
    doc.pop("sha256")
    doc["scalers"][1]["state"]["data_min"] = ["x"]
    doc["sha256"] = _digest(doc)  # re-signed, as a forger would
    stats.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"\(scalers\[1\]\): field 'state.data_min\[0\]' is 'x'"):
        P.load_set(stats)
    assert _run("transform", src, "--stats", stats, "-o", tmp_path / "o.parquet") == 2
    assert "scalers[1]" in capsys.readouterr().err


def test_unnamed_files_keep_fit_column_order(tmp_path):
    """.npy has no names: the set file's positions put each column back in its place."""
    rng = np.random.default_rng(2)
    X = np.abs(rng.normal(size=(600, 3))) + 0.5
    src = tmp_path / "d.npy"
    np.save(src, X)
    stats, out = tmp_path / "s.json", tmp_path / "o.npy"
    assert _run("fit", src, "--method", "zscore", "--column-method", "x1=log10", "-o", stats) == 0
    assert _run("transform", src, "--stats", stats, "-o", out) == 0
    Y = np.load(out)
    want = skp.StandardScaler().fit_transform(X[:, [0, 2]])
    np.testing.assert_allclose(Y[:, [0, 2]], want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(Y[:, 1], np.log10(X[:, 1]), rtol=1e-15, atol=0)


def test_forged_positions_are_refused(tmp_path, capsys):
    X = np.abs(np.random.default_rng(4).normal(size=(50, 2))) + 1
    src = tmp_path / "d.npy"
    np.save(src, X)
    stats = tmp_path / "s.json"
    assert _run("fit", src, "--method", "zscore", "--column-method", "x1=log10", "-o", stats) == 0
    doc = json.loads(stats.read_text())
    doc.pop("sha256")
    doc["scalers"][1]["meta"]["positions"] = [0]  # two columns claim place 0
    doc["sha256"] = _digest(doc)
    stats.write_text(json.dumps(doc))
    assert _run("transform", src, "--stats", stats, "-o", tmp_path / "o.npy") == 2
    err = capsys.readouterr().err
    assert "meta.positions are not 0..1 each once" in err and not (tmp_path / "o.npy").exists()
