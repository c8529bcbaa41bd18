"""`normkit convert`: every LRN of a model in every framework's terms, with porting warnings."""

import json
import os
import subprocess
import sys

import pytest

from normkit import cli

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def convert(capsys, *argv):
    code = cli.main(["convert", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_seed_prototxt(capsys):
    code, out, _ = convert(capsys, os.path.join(FIXTURES, "seed_norm1_v1.prototxt"))
    assert code == 0
    assert "1 LRN layer" in out and "norm1" in out
    # the same layer in each framework's terms (alpha/5 raw for TensorFlow, radius 2)
    assert "torch.nn.LocalResponseNorm(size=5, alpha=0.0001, beta=0.75, k=1.0)" in out
    assert "LRN(size=5, alpha=0.0001, beta=0.75, bias=1.0)" in out
    assert "depth_radius=2, bias=1.0, alpha=2e-05, beta=0.75" in out
    assert "WARNING: alpha scaling" in out and "5x stronger" in out


def test_caffe_ignored_k_is_warned(capsys):
    code, out, _ = convert(capsys, os.path.join(FIXTURES, "caffenet_lrn.prototxt"))
    assert code == 0 and "5 LRN layers" in out
    section = out.split("norm_within  (")[1].split("\n\n")[0]
    assert "Caffe ignores k=2.0" in section
    assert "onnx         cannot express" in section
    assert "alpha is not set: Caffe's default is 1.0" in out  # the defaults_only layer


def test_onnx_even_size_warning_and_json(capsys, tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("LRN", ["x"], ["y"], name="norm_even", size=4, alpha=1e-4),
        helper.make_node("LRN", ["y"], ["z"], name="norm_odd", size=5),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    code, out, _ = convert(capsys, str(path))
    assert code == 0
    even = out.split("norm_even  (")[1].split("\n\n")[0]
    assert "even size 4" in even and "onnx2torch" in even
    assert "torch        cannot express" in even  # torch's even window is the mirror
    code, out, _ = convert(capsys, str(path), "--json")
    data = json.loads(out)
    assert [d["name"] for d in data["lrn"]] == ["norm_even", "norm_odd"]
    assert data["lrn"][0]["canonical"]["back"] == 1 and data["lrn"][0]["canonical"]["ahead"] == 2
    assert data["lrn"][1]["forms"]["tensorflow"]["depth_radius"] == 2
    assert not any("even size" in w for w in data["lrn"][1]["warnings"])


def test_tensorflow_depth_radius_warning(capsys):
    code, out, _ = convert(capsys, os.path.join(FIXTURES, "tf_lrn_graph.pbtxt"))
    assert code == 0 and "3 LRN layers" in out
    assert "depth_radius=2 is a radius" in out and "size=5, not 2" in out
    assert "TensorFlow's default is 5 (11 channels)" in out  # lrn_defaults
    assert "5x weaker" in out


def test_errors_exit_2_with_message(capsys, tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer {\n  type: "LRN"\n  lrn_param { local_size: 4 }\n}\n')
    code, out, err = convert(capsys, str(bad))
    assert code == 2 and "line 3" in err and "odd" in err
    code, _, err = convert(capsys, str(tmp_path / "model.caffemodel"))
    assert code == 2 and "--format" in err
    code, _, err = convert(capsys, str(tmp_path / "missing.prototxt"))
    assert code == 2


def test_format_override_and_no_lrn(capsys, tmp_path):
    path = tmp_path / "net.txt"
    path.write_text('layer { name: "c" type: "Convolution" }\n')
    code, out, _ = convert(capsys, str(path), "--format", "caffe")
    assert code == 0 and "no LRN layers found" in out


def test_subcommand_listed_in_help():
    out = subprocess.run(
        [sys.executable, "-m", "normkit", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.returncode == 0 and "convert" in out.stdout
