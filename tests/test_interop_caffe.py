"""Caffe prototxt import (hand-written fixtures, the seeds' norm1 example) and the text parser."""

import os

import pytest
import torch

import normkit
from normkit.interop import lrn_layers_from_caffe
from normkit.interop.caffe import read_caffe_lrn
from normkit.interop.prototext import parse
from normkit.reference import lrn_forward

from hostile import randn
from tolerance import assert_matches_reference

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def fixture(name):
    return os.path.join(FIXTURES, name)


# --- the seeds' example ------------------------------------------------------------------


def test_seed_norm1_legacy_layers_syntax():
    layers = lrn_layers_from_caffe(fixture("seed_norm1_v1.prototxt"))
    assert list(layers) == ["norm1"]
    lrn = layers["norm1"]
    # Caffe: scale = k + alpha/n * sum over 5 channels, k defaults to 1
    assert (lrn.spec.region, lrn.spec.back, lrn.spec.ahead) == ("across", 2, 2)
    assert lrn.spec.alpha == pytest.approx(1e-4 / 5)
    assert (lrn.spec.beta, lrn.spec.k) == (0.75, 1.0)
    # hand calculation: all-ones input, 7 channels; the centre channel sees 5 ones
    x = torch.ones(1, 7, 1, 1, dtype=torch.float64)
    y = lrn(x)
    assert y[0, 3, 0, 0].item() == pytest.approx((1 + 1e-4 / 5 * 5) ** -0.75, rel=1e-12)
    assert y[0, 0, 0, 0].item() == pytest.approx((1 + 1e-4 / 5 * 3) ** -0.75, rel=1e-12)


def test_seed_example_as_text_and_torch_agrees():
    text = open(fixture("seed_norm1_v1.prototxt")).read()
    lrn = lrn_layers_from_caffe(text)["norm1"]
    x = randn(2, 96, 5, 5, seed=1)
    expected = torch.nn.functional.local_response_norm(x, 5, 1e-4, 0.75, 1.0)
    assert torch.allclose(lrn(x), expected, rtol=1e-12, atol=1e-12)


# --- the current syntax, defaults and WITHIN_CHANNEL ---------------------------------------


def test_caffenet_fixture_all_layers():
    layers = lrn_layers_from_caffe(fixture("caffenet_lrn.prototxt"))
    assert list(layers) == ["norm1", "pool1/norm1", "norm_within", "defaults_only", "within_cudnn"]
    assert layers["pool1/norm1"].spec.k == 2.0
    # all of LRNParameter's defaults: local_size 5, alpha 1, beta 0.75, k 1, across
    d = layers["defaults_only"].spec
    assert (d.region, d.size, d.alpha, d.beta, d.k) == ("across", 5, 1.0 / 5, 0.75, 1.0)


def test_within_channel_ignores_k_like_bvlc_caffe():
    lrn = lrn_layers_from_caffe(fixture("caffenet_lrn.prototxt"))["norm_within"]
    assert lrn.spec.region == "within"
    assert lrn.spec.k == 1.0  # the file says k: 2; BVLC Caffe never reads it
    assert lrn.spec.alpha == pytest.approx(5e-5 / 9)
    # hand calculation, the centre of a 3x3 box of ones: 1 * (1 + alpha/9 * 9)^-0.75
    x = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    assert lrn(x)[0, 0, 1, 1].item() == pytest.approx((1 + 5e-5) ** -0.75, rel=1e-12)
    # a corner sees 4 ones but still divides by 9 (Caffe's padded average pooling)
    assert lrn(x)[0, 0, 0, 0].item() == pytest.approx((1 + 5e-5 / 9 * 4) ** -0.75, rel=1e-12)


def test_cudnn_engine_honours_k():
    layers = lrn_layers_from_caffe(fixture("caffenet_lrn.prototxt"))
    assert layers["within_cudnn"].convention == "caffe-cudnn"
    assert layers["within_cudnn"].spec.k == 2.0
    # a cuDNN build runs DEFAULT as CUDNN
    cudnn = lrn_layers_from_caffe(fixture("caffenet_lrn.prototxt"), default_engine="cudnn")
    assert cudnn["norm_within"].spec.k == 2.0
    with pytest.raises(ValueError, match="default_engine"):
        lrn_layers_from_caffe(fixture("caffenet_lrn.prototxt"), default_engine="mkl")


def test_layers_match_reference_and_from_caffe():
    for lrn in read_caffe_lrn(fixture("caffenet_lrn.prototxt")):
        module = lrn.module()
        same = normkit.LocalResponseNorm.from_caffe(
            lrn.local_size,
            lrn.alpha,
            lrn.beta,
            lrn.k,
            lrn.norm_region,
            engine=lrn.effective_engine(),
        )
        assert module.spec == same.spec
        x = randn(2, 7, 6, 5, seed=3)
        assert_matches_reference(module(x), lrn_forward(x.numpy(), module.spec), torch.float64)


def test_v0_syntax():
    layers = lrn_layers_from_caffe(fixture("lrn_v0.prototxt"))
    assert list(layers) == ["norm1"]
    assert layers["norm1"].spec.width == 3
    assert layers["norm1"].spec.alpha == pytest.approx(1e-4 / 3)


def test_v1_numeric_type_and_mixed_layers():
    text = """
    layers { name: "a" type: 15 bottom: "x" top: "y" lrn_param { local_size: 3 } }
    layers { name: "conv" type: CONVOLUTION }
    layer { name: "b" type: "LRN" }
    layer { name: "relu" type: "ReLU" }
    """
    assert list(lrn_layers_from_caffe(text)) == ["a", "b"]


def test_positional_details():
    lrns = read_caffe_lrn(fixture("caffenet_lrn.prototxt"))
    norm1 = lrns[0]
    assert norm1.line == 19 and norm1.syntax == "layer"
    assert norm1.bottom == ("pool1",) and norm1.top == ("norm1",)
    assert norm1.explicit == {"local_size", "alpha", "beta"}


def test_no_lrn_and_empty():
    assert lrn_layers_from_caffe('name: "x"\nlayer { name: "c" type: "Convolution" }') == {}
    assert lrn_layers_from_caffe("") == {}


def test_unnamed_layer_takes_its_top():
    layers = lrn_layers_from_caffe('layer { type: "LRN" top: "n1" }\nlayer { type: "LRN" }')
    assert list(layers) == ["n1", "LRN@line2"]


# --- errors name the line -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,line,match",
    [
        ('layer {\n  name: "n"\n  type: "LRN"\n  lrn_param { local_size: 4 }\n}', 4, "odd"),
        ('layer {\n  name: "n"\n  type: "LRN"\n  lrn_param { local_size: 0 }\n}', 4, "odd"),
        ('layer {\n  type: "LRN"\n  lrn_param {\n    locl_size: 5\n  }\n}', 3, "locl_size"),
        ('layer {\n  type: "LRN"\n  lrn_param {\n    alpha: "big"\n  }\n}', 4, "number"),
        ('layer {\n  type: "LRN"\n  lrn_param {\n    local_size: 2.5\n  }\n}', 4, "integer"),
        ('layer {\n  type: "LRN"\n  lrn_param {\n    local_size: -3\n  }\n}', 4, "uint32"),
        (
            'layer {\n  type: "LRN"\n  lrn_param {\n    norm_region: SIDEWAYS\n  }\n}',
            4,
            "ACROSS_CHANNELS",
        ),
        ('layer {\n  type: "LRN"\n  lrn_param { engine: MKL }\n}', 3, "CUDNN"),
        ('layer {\n  name: "n"\n  type: "LRN"\n', 4, "missing '}'"),
        ('layer {\n  name: "n"\n  type "LRN"\n}', 3, "':'"),
        ('layer {\n  name: "n"\n}\n}', 4, "field name"),
        ('layer {\n  name: "n" @\n}', 2, "unexpected character"),
        ('layer { name: "n" type: "LRN" }\nlayer { name: "n" type: "LRN" }', 2, "second LRN"),
    ],
)
def test_malformed_prototxt_names_the_line(text, line, match):
    with pytest.raises(ValueError, match=match) as info:
        lrn_layers_from_caffe(text)
    assert str(info.value).startswith(f"line {line}")


def test_bad_source_types():
    with pytest.raises(TypeError, match="bytes"):
        lrn_layers_from_caffe(b"layer {}")
    with pytest.raises(TypeError):
        lrn_layers_from_caffe(42)
    with pytest.raises(FileNotFoundError):
        lrn_layers_from_caffe("no_such_model.prototxt")


# --- the text-format parser -----------------------------------------------------------------


def test_parser_handles_text_format_details():
    msg = parse("""
    # comment
    a: 1e-4  b: -3 c: 0x1F d: inf e: "x" 'y'   # adjacent strings concatenate
    f: [1, 2, 3]
    g < h: true >
    i: { j: "esc\\"aped\\n" }; k: ENUM_VALUE,
    """)
    assert msg.get("a").as_float("a") == 1e-4
    assert msg.get("b").as_int("b") == -3
    assert msg.get("c").as_int("c") == 31
    assert msg.get("d").as_float("d") == float("inf")
    assert msg.get("e").text == "xy"
    assert [v.as_int("f") for v in msg.all("f")] == [1, 2, 3]
    assert msg.get("g").get("h").as_bool("h") is True
    assert msg.get("i").get("j").text == 'esc"aped\n'
    assert msg.get("k").text == "ENUM_VALUE"
    assert msg.get("missing") is None


def test_parser_rejects_non_text():
    with pytest.raises(TypeError, match="decode"):
        parse(b"a: 1")
