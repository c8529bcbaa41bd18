"""Hostile model files and parameters (issue 10 item 9).

Every such input gets a one-line error naming the file/line or the value; ``normkit
convert`` exits non-zero with that one line and no traceback. LRN windows wider than the
tensor are a window of the whole extent (the divisor n is kept).
"""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import normkit
from normkit.conventions import canonicalize
from normkit.interop import lrn_layers_from_caffe, lrn_layers_from_tensorflow
from normkit.interop.prototext import MAX_DEPTH, parse
from normkit.reference import lrn_backward, lrn_forward

from hostile import randn
from tolerance import assert_matches_reference

ROOT = Path(__file__).resolve().parents[1]
NESTED = "layer " + "{ a " * 10_000 + "}" * 10_000 + "\n"
HEX_ALPHA = (
    'layer {\n  name: "n"\n  type: "LRN"\n  lrn_param { local_size: 5 alpha: 0x'
    + "f" * 260
    + " beta: 0.75 }\n}\n"
)  # 1040 bits: past float range


def convert(path):
    env = dict(
        os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    return subprocess.run(
        [sys.executable, "-m", "normkit", "convert", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_nested_braces_are_a_one_line_error_not_a_recursion_error():
    with pytest.raises(ValueError, match=rf"line 1: messages nested more than {MAX_DEPTH}"):
        parse(NESTED)
    with pytest.raises(ValueError, match="nested more than"):
        lrn_layers_from_caffe(NESTED)
    # protobuf's own limit: 100 levels parse
    depth_ok = "a { " * MAX_DEPTH + "x: 1 " + "} " * MAX_DEPTH
    assert parse(depth_ok + " b: 1").get("b").as_int("b") == 1
    with pytest.raises(ValueError, match="nested more than"):
        parse("a { " * (MAX_DEPTH + 1) + "x: 1 " + "} " * (MAX_DEPTH + 1))


def test_hex_alpha_past_float_range_names_line_and_value():
    with pytest.raises(ValueError) as info:
        lrn_layers_from_caffe(HEX_ALPHA)
    msg = str(info.value)
    assert "line 4" in msg and "alpha" in msg and "0xffff" in msg and "float range" in msg
    assert len(msg) < 300 and "\n" not in msg  # the 262-character literal is shortened


def test_decimal_int_with_too_many_digits_names_line():
    text = 'layer { name: "n" type: "LRN" lrn_param { local_size: ' + "9" * 5000 + " } }"
    with pytest.raises(ValueError, match=r"line 1: .*local_size.*too many digits"):
        lrn_layers_from_caffe(text)


@pytest.mark.parametrize("text,needle", [(NESTED, "nested more than"), (HEX_ALPHA, "float range")])
def test_normkit_convert_exits_nonzero_with_one_line(tmp_path, text, needle):
    path = tmp_path / "hostile.prototxt"
    path.write_text(text)
    out = convert(path)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and needle in lines[0], out.stderr


def test_tensorflow_text_graph_nesting_is_a_one_line_error():
    with pytest.raises(ValueError, match="nested more than"):
        lrn_layers_from_tensorflow("node " + "{ a " * 5000 + "}" * 5000)


@pytest.mark.parametrize("data", [b"\x0a" + b"\xff" * 10 + b"\x01", b"\x0a\x05abc"])
def test_tensorflow_binary_garbage_is_a_value_error(data):
    with pytest.raises(ValueError, match="GraphDef"):
        lrn_layers_from_tensorflow(data)


@pytest.mark.parametrize("size", [2**31 + 1, 2**64 + 1])
@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("region", ["across", "within"])
def test_lrn_window_wider_than_the_tensor_is_a_window_of_the_tensor(size, backend, region):
    convention = "onnx" if region == "across" else "caffe"
    spec = canonicalize(size, 0.3, 0.75, 1.2, region=region, convention=convention)
    x = randn(2, 5, 4, 3, dtype=torch.float32, seed=21).requires_grad_(True)
    layer = normkit.LocalResponseNorm(size, 0.3, 0.75, 1.2, region=region, convention=convention)
    layer.backend = backend
    y = normkit.functional.lrn_canonical(x, layer.spec, backend=backend)
    assert normkit.dispatch.last_backend["lrn_fwd"] == backend
    # the same sums with the window cut to the tensor; alpha keeps the divisor n
    reach = 5 if region == "across" else 4
    narrow = dataclasses.replace(spec, back=reach, ahead=reach)
    x64 = x.detach().double().numpy()
    assert_matches_reference(y, lrn_forward(x64, narrow), torch.float32)
    dy = randn(*x.shape, dtype=torch.float32, seed=22)
    y.backward(dy)
    assert_matches_reference(
        x.grad, lrn_backward(x64, dy.double().numpy(), narrow), torch.float32, what="grad"
    )
    assert np.isfinite(x.grad.numpy()).all()


def test_huge_size_from_a_caffe_file_runs():
    text = (
        'layer { name: "n" type: "LRN" lrn_param { local_size: 18446744073709551617 '
        "alpha: 0.5 beta: 0.75 } }"
    )
    layer = lrn_layers_from_caffe(text)["n"]
    x = randn(1, 3, 2, 2, dtype=torch.float32, seed=5)
    spec = dataclasses.replace(layer.spec, back=3, ahead=3)
    assert_matches_reference(layer(x), lrn_forward(x.double().numpy(), spec), torch.float32)
