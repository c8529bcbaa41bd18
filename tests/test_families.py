"""The family registry (normkit.families) is complete and agrees with its readers."""

from __future__ import annotations

import pathlib

import pytest
import torch
from torch import nn

import normkit
from normkit import bench, factory, families
from normkit.convert import CONVERTERS
from normkit.interop import export as ex
from normkit.lab.experiments import ALL_NORMS

from module_db import public_layer_classes

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_public_layer_class_has_a_family():
    missing = [c.__name__ for c in public_layer_classes() if families.family_of(c) is None]
    assert not missing, f"public layer classes with no entry in normkit.families: {missing}"


def test_family_names_and_classes_are_unique():
    names = [f.name for f in families.FAMILIES]
    assert len(names) == len(set(names))
    classes = [c for f in families.FAMILIES for c in f.classes]
    assert len(classes) == len(set(classes))


def test_readers_take_their_tables_from_the_registry():
    assert factory.NORMS == families.norm_builders()
    assert CONVERTERS == families.torch_converters()
    assert ALL_NORMS == list(families.lab_norms())
    assert set(families.bench_layers()) <= set(bench.LAYERS)
    assert set(families.lab_norms()) <= set(factory.NORMS)


def test_export_rules_and_bench_cases_exist():
    for cls, rule in families.export_rules().items():
        assert rule in ex.RULES, f"{cls.__name__}: export rule {rule!r} not in interop.export"
        assert ex.export_forward_for(object.__new__(cls)) is ex.RULES[rule]
    for case in families.bench_layers():
        assert case in bench.SHAPES, f"bench case {case!r} has no shape in normkit.bench"


def test_docs_pages_exist():
    for fam in families.FAMILIES:
        assert (ROOT / fam.doc).is_file(), f"{fam.name}: docs page {fam.doc} is missing"


# nn.SyncBatchNorm is left out: its own forward needs CUDA (tests/test_syncbn.py covers it)
@pytest.mark.parametrize(
    "torch_cls",
    sorted(
        (c for c in families.torch_converters() if c is not nn.SyncBatchNorm),
        key=lambda c: c.__name__,
    ),
)
def test_each_converter_builds_a_family_class_of_the_same_math(torch_cls):
    """convert's twin of a default-constructed torch layer computes what the layer does."""
    args = {
        nn.GroupNorm: (2, 4),
        nn.LayerNorm: (4,),
        nn.RMSNorm: (4,),
        nn.LocalResponseNorm: (3,),
    }.get(torch_cls, (4,))
    original = torch_cls(*args).eval()
    twin = normkit.convert(original)
    assert families.family_of(type(twin)) is not None
    shape = (2, 4) if torch_cls is nn.BatchNorm1d else (2, 4, 3, 4)
    if torch_cls in (nn.InstanceNorm1d,):
        shape = (2, 4, 5)
    if torch_cls in (nn.BatchNorm3d, nn.InstanceNorm3d):
        shape = (2, 4, 2, 3, 3)
    x = torch.randn(*shape, dtype=torch.float64)
    original.double()
    twin.double()
    assert torch.allclose(twin(x), original(x), atol=1e-10)


def test_create_norm_knows_every_registry_name():
    for name in families.norm_builders():
        assert isinstance(normkit.create_norm(name, 8), nn.Module)
