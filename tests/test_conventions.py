"""Conventions: each framework's parameters -> the canonical form, by hand."""

import pathlib

import pytest

from normkit import conventions as C
from normkit.conventions import canonicalize, from_canonical

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "conventions.md"


@pytest.mark.parametrize(
    "convention,size,back,ahead",
    [
        ("torch", 5, 2, 2),
        ("torch", 4, 2, 1),
        ("torch", 2, 1, 0),
        ("torch", 1, 0, 0),
        ("paddle", 4, 2, 1),
        ("onnx", 4, 1, 2),
        ("onnx", 2, 0, 1),
        ("onnx", 5, 2, 2),
        ("cudnn", 6, 2, 3),
        ("chainer", 4, 2, 2),
        ("chainer", 5, 2, 2),
        ("cuda-convnet", 4, 2, 1),
        ("caffe", 5, 2, 2),
        ("mxnet", 3, 1, 1),
        ("alexnet", 5, 2, 2),
        ("tensorflow", 11, 5, 5),
    ],
)
def test_windows(convention, size, back, ahead):
    spec = canonicalize(size, 1.0, 0.75, 1.0, convention=convention)
    assert (spec.back, spec.ahead) == (back, ahead)


@pytest.mark.parametrize(
    "convention,divisor",
    [
        ("torch", 5),
        ("onnx", 5),
        ("caffe", 5),
        ("paddle", 5),
        ("mxnet", 5),
        ("cuda-convnet", 5),
        ("tensorflow", 1),
        ("alexnet", 1),
        ("chainer", 1),
    ],
)
def test_alpha_divisor(convention, divisor):
    spec = canonicalize(5, 0.3, 0.75, 1.0, convention=convention)
    assert spec.alpha == pytest.approx(0.3 / divisor, rel=1e-15)


@pytest.mark.parametrize("convention", ["caffe", "tensorflow", "mxnet", "alexnet", "caffe-cudnn"])
def test_even_size_rejected_where_framework_has_none(convention):
    with pytest.raises(ValueError, match="size must be odd, got size=4"):
        canonicalize(4, 1.0, 0.75, 1.0, convention=convention)


def test_caffe_within_ignores_k_and_divides_by_size_squared():
    spec = canonicalize(3, 0.9, 0.75, 7.0, region="within", convention="caffe")
    assert spec.k == 1.0 and spec.alpha == pytest.approx(0.1)
    spec = canonicalize(3, 0.9, 0.75, 7.0, region="within", convention="caffe-cudnn")
    assert spec.k == 7.0 and spec.alpha == pytest.approx(0.1)
    assert C.get_convention("openvino").name == "caffe-cudnn"


@pytest.mark.parametrize("convention", ["torch", "onnx", "tensorflow", "mxnet"])
def test_within_rejected_where_framework_has_none(convention):
    with pytest.raises(ValueError, match="has no within-channel LRN"):
        canonicalize(3, 1.0, 0.75, 1.0, region="within", convention=convention)


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(size=0), "size must be >= 1, got 0"),
        (dict(size=2.5), "size must be an int"),
        (dict(alpha=-1.0), "alpha must be >= 0, got -1.0"),
        (dict(beta=float("nan")), "beta must be finite, got nan"),
        (dict(k=float("inf")), "k must be finite"),
        (dict(alpha="0.1"), "alpha must be a real number, got str"),
        (dict(region="spatial"), "region must be 'across' or 'within'"),
        (dict(convention="keras"), "unknown LRN convention 'keras'"),
    ],
)
def test_bad_parameters_name_the_invariant(bad, match):
    args = dict(size=5, alpha=1e-4, beta=0.75, k=1.0, region="across", convention="torch")
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        canonicalize(
            args["size"],
            args["alpha"],
            args["beta"],
            args["k"],
            region=args["region"],
            convention=args["convention"],
        )


def test_tensorflow_from_and_to_size_form():
    # docs/conventions.md: TF -> size form: n = 2r+1, alpha_size = alpha_tf * n, k = bias
    spec = canonicalize(5, 0.01, 0.5, 2.0, convention="tensorflow")
    as_torch = from_canonical(spec, "torch")
    assert as_torch == {"size": 5, "alpha": pytest.approx(0.05), "beta": 0.5, "k": 2.0}
    assert from_canonical(spec, "tensorflow") == {
        "depth_radius": 2,
        "bias": 2.0,
        "alpha": pytest.approx(0.01),
        "beta": 0.5,
    }


def test_even_windows_do_not_translate_between_torch_and_onnx():
    spec = canonicalize(4, 1e-4, 0.75, 1.0, convention="torch")
    with pytest.raises(ValueError, match="look the other way"):
        from_canonical(spec, "onnx")
    assert from_canonical(spec, "paddle")["size"] == 4
    with pytest.raises(ValueError, match="cannot express"):
        from_canonical(spec, "tensorflow")


def test_chainer_even_window_maps_to_odd_size_elsewhere():
    spec = canonicalize(4, 1e-4, 0.75, 2.0, convention="chainer")  # 5 taps, raw alpha
    assert spec.width == 5
    assert from_canonical(spec, "torch") == {
        "size": 5,
        "alpha": pytest.approx(5e-4),
        "beta": 0.75,
        "k": 2.0,
    }


def test_caffe_within_with_k_cannot_go_to_plain_caffe():
    spec = canonicalize(3, 1.0, 0.75, 2.0, region="within", convention="caffe-cudnn")
    with pytest.raises(ValueError, match="ignores k"):
        from_canonical(spec, "caffe")


@pytest.mark.parametrize("convention", sorted(C.CONVENTIONS))
@pytest.mark.parametrize("size", [1, 3, 4, 5])
def test_round_trip_through_own_convention(convention, size):
    try:
        spec = canonicalize(size, 0.02, 0.6, 1.5, convention=convention)
    except ValueError:
        assert size % 2 == 0
        return
    params = from_canonical(spec, convention)
    names = C.get_convention(convention).param_names
    if convention == "tensorflow":
        back = canonicalize(
            2 * params["depth_radius"] + 1,
            params["alpha"],
            params["beta"],
            params["bias"],
            convention=convention,
        )
    else:
        back = canonicalize(*(params[n] for n in names), convention=convention)
    assert back.back == spec.back and back.ahead == spec.ahead
    assert back.alpha == pytest.approx(spec.alpha, rel=1e-14)


def test_docs_table_is_generated_from_presets():
    text = DOCS.read_text(encoding="utf-8")
    assert text == C.conventions_doc(), (
        "docs/conventions.md is stale: regenerate with `python -m normkit.conventions "
        "> docs/conventions.md` (see the file's header)"
    )
