"""The op schema (normkit.ops.schema) is the one declaration of every op."""

from __future__ import annotations

import pathlib
import re

import pytest
import torch

from normkit import dispatch, library
from normkit.ops import schema

ROOT = pathlib.Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "normkit"


def test_docs_op_table_is_generated_from_the_schema():
    text = (ROOT / "docs" / "ops.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- BEGIN OP TABLE[^\n]*-->\n(.*?)<!-- END OP TABLE -->", text, re.S)
    assert block, "docs/ops.md lost its generated op table markers"
    assert block.group(1) == schema.markdown_table(), (
        "docs/ops.md's op table is stale: replace it with `python -m normkit.ops.schema`"
    )


@pytest.mark.parametrize(
    "backend",
    [
        b
        for b in schema.BACKENDS
        if b in {name for impls in dispatch.table.values() for name in impls}
    ],
)
def test_each_backend_implements_exactly_its_schema_ops(backend):
    declared = {name for name, s in schema.OPS.items() if backend in s.backends}
    registered = {op for op, impls in dispatch.table.items() if backend in impls}
    assert registered == declared
    assert set(schema.check_backend(backend)) == declared


def test_every_schema_op_is_a_custom_op_with_the_declared_signature():
    for name, spec in schema.OPS.items():
        op = getattr(torch.ops.normkit, name)
        args = [a.name for a in op.default._schema.arguments]
        assert args == [a.name for a in spec.args] + ["backend"], name
        assert len(op.default._schema.returns) == len(spec.outputs), name
        assert name in library.OPS


def test_implements_rejects_undeclared_ops_and_backends():
    with pytest.raises(KeyError, match="not declared"):
        schema.implements("no_such_op", "cpu")
    frn = schema.OPS["frn_fwd"]
    assert "torch" in frn.backends
    with pytest.raises(ValueError, match="unknown backend"):
        schema.OpSchema(
            "x_fwd",
            (schema.Arg("x", "Tensor"),),
            (schema.Out("y", "like"),),
            "doc",
            "shapes",
            backends=("gpu",),
        )


def test_an_op_name_is_spelled_in_few_source_files():
    """Adding an op touches the schema, its kernels (one file per backend) and the autograd
    Function that calls it: no table elsewhere repeats its name. (bench.py is left out: it
    times every raw op on every backend by name, which is its job.)"""
    for name in schema.OPS:
        files = sorted(
            str(p.relative_to(SRC))
            for p in SRC.rglob("*.py")
            if p.name != "bench.py" and re.search(rf"\b{name}\b", p.read_text(encoding="utf-8"))
        )
        assert len(files) <= 5, f"{name} is spelled in {len(files)} source files: {files}"
