"""normkit's LRN (functional, autograd, module) against the reference and real peers."""

import importlib.util
import pickle

import numpy as np
import pytest
import torch

import normkit
from normkit import dispatch
from normkit.conventions import CONVENTIONS, canonicalize
from normkit.functional import local_response_norm
from normkit.reference import lrn_backward, lrn_forward

from hostile import layouts, lrn_inputs, randn
from tolerance import ATOL, assert_matches_reference, max_err

HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None
HAVE_TF = importlib.util.find_spec("tensorflow") is not None

ACROSS_CASES = [(c, n) for c in sorted(CONVENTIONS) for n in (1, 2, 3, 4, 5, 6, 7)]


def _spec_or_skip_even(convention, size, region="across"):
    try:
        return canonicalize(size, 0.3, 0.75, 1.2, region=region, convention=convention)
    except ValueError as exc:
        assert "size must be odd" in str(exc) or "no within-channel" in str(exc)
        return None


# --- against the float64 reference --------------------------------------------------


@pytest.mark.parametrize("convention,size", ACROSS_CASES)
def test_across_every_preset_matches_reference(convention, size):
    spec = _spec_or_skip_even(convention, size)
    if spec is None:
        with pytest.raises(ValueError):
            local_response_norm(randn(2, 5, 3, 3), size, 0.3, 0.75, 1.2, convention=convention)
        return
    for name, x in lrn_inputs():
        y = local_response_norm(x, size, 0.3, 0.75, 1.2, convention=convention)
        assert_matches_reference(y, lrn_forward(x.numpy(), spec), torch.float64, what=name)


@pytest.mark.parametrize(
    "convention,size,k",
    [("caffe", 3, 1.0), ("caffe", 5, 4.0), ("caffe-cudnn", 3, 4.0), ("cuda-convnet", 2, 2.0)],
)
def test_within_matches_reference(convention, size, k):
    spec = canonicalize(size, 0.5, 0.75, k, region="within", convention=convention)
    x = randn(2, 3, 7, 6, seed=7)
    y = local_response_norm(x, size, 0.5, 0.75, k, region="within", convention=convention)
    assert_matches_reference(y, lrn_forward(x.numpy(), spec), torch.float64)


def test_caffe_within_ignores_k_but_cudnn_honours_it():
    x = randn(1, 2, 5, 5, seed=8)
    a = local_response_norm(x, 3, 1.0, 0.75, 1.0, region="within", convention="caffe")
    b = local_response_norm(x, 3, 1.0, 0.75, 9.0, region="within", convention="caffe")
    c = local_response_norm(x, 3, 1.0, 0.75, 9.0, region="within", convention="caffe-cudnn")
    assert torch.equal(a, b)
    assert max_err(a, c) > 0.1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("size", [3, 4, 5])
def test_low_precision_within_policy(dtype, size):
    x64 = randn(2, 8, 6, 5, seed=9)
    spec = canonicalize(size, 0.5, 0.75, 1.0)
    ref = lrn_forward(x64.numpy(), spec)
    x = x64.to(dtype)
    ours = local_response_norm(x, size, 0.5, 0.75, 1.0)
    assert ours.dtype == dtype
    peer = None
    if dtype == torch.float32:  # torch's CPU LRN refuses fp16/bf16 4-D input
        peer = torch.nn.functional.local_response_norm(x, size, 0.5, 0.75, 1.0)
    # low precision: also allow for the rounding of the input itself
    ref_of_rounded = lrn_forward(x.double().numpy(), spec)
    assert_matches_reference(ours, ref_of_rounded, dtype, torch_same_dtype=peer)
    assert max_err(ours, ref) <= 4 * ATOL[dtype] + max_err(ref_of_rounded, ref)


def test_fp16_magnitude_300_is_finite_and_correct():
    # 300^2 = 90000 overflows float16 (max 65504): square and sum in float32.
    x = torch.full((1, 3, 2, 2), 300.0, dtype=torch.float16)
    y = local_response_norm(x, 3, 1e-4, 0.75, 1.0)
    spec = canonicalize(3, 1e-4, 0.75, 1.0)
    ref = lrn_forward(x.double().numpy(), spec)
    assert torch.isfinite(y).all()
    assert_matches_reference(y, ref, torch.float16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loud_channel_and_huge_values_do_not_cancel(dtype):
    x = randn(2, 12, 3, 3, seed=10)
    x[:, 6] *= 1000.0
    spec = canonicalize(5, 1.0, 0.75, 1.0)
    ours = local_response_norm(x.to(dtype), 5, 1.0, 0.75, 1.0)
    ref = lrn_forward(x.to(dtype).double().numpy(), spec)
    rel = np.max(np.abs(ours.double().numpy() - ref) / np.maximum(np.abs(ref), 1e-30))
    assert rel < (1e-5 if dtype == torch.float32 else 1e-12)
    # 1e38: x^2 overflows float32 to inf; a running sum then computes inf - inf = NaN.
    # A direct sum gives scale = inf and y = 0, within the policy of the float64 truth
    # (~1e-19); torch itself is the yardstick for how far float32 may be.
    huge = torch.full((1, 4, 1, 1), 1e38, dtype=torch.float32)
    y = local_response_norm(huge, 3, 1.0, 0.75, 1.0)
    ref_huge = lrn_forward(huge.double().numpy(), spec)  # float64: tiny but finite
    assert not torch.isnan(y).any()
    peer = torch.nn.functional.local_response_norm(huge, 3, 1.0, 0.75, 1.0)
    assert_matches_reference(
        y, ref_huge, torch.float32, torch_same_dtype=torch.nan_to_num(peer, nan=0.0)
    )


@pytest.mark.parametrize("channel_dim", [1, -1, 2])
def test_channel_dim_and_layouts(channel_dim):
    x = randn(2, 5, 6, 4, seed=11)
    spec = canonicalize(3, 0.4, 0.75, 1.0)
    ref = lrn_forward(x.numpy(), spec, channel_axis=channel_dim)
    for name, xv in layouts(x):
        y = local_response_norm(xv, 3, 0.4, 0.75, 1.0, channel_dim=channel_dim)
        assert_matches_reference(y, ref, torch.float64, what=name)


def test_within_nhwc():
    x = randn(2, 6, 5, 3, seed=12)  # N H W C
    spec = canonicalize(3, 0.5, 0.75, 1.0, region="within", convention="caffe")
    y = local_response_norm(
        x, 3, 0.5, 0.75, 1.0, region="within", convention="caffe", channel_dim=-1
    )
    assert_matches_reference(y, lrn_forward(x.numpy(), spec, channel_axis=-1), torch.float64)


def test_empty_input_returns_empty():
    for shape in [(0, 4, 3, 3), (2, 0, 3, 3), (2, 4, 0, 3)]:
        x = torch.empty(shape, requires_grad=True)
        y = local_response_norm(x, 3)
        assert y.shape == x.shape
        y.sum().backward()
        assert x.grad.shape == x.shape


# --- peers ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6, 9, 16])
@pytest.mark.parametrize("shape", [(3, 7, 5, 4), (2, 6, 11), (2, 5, 3, 2, 3)])
def test_matches_torch_functional_odd_and_even(size, shape):
    x = randn(*shape, seed=size, dtype=torch.float64).requires_grad_()
    theirs = torch.nn.functional.local_response_norm(x, size, 0.05, 0.75, 1.5)
    ours = local_response_norm(x, size, 0.05, 0.75, 1.5)
    assert max_err(ours, theirs) < 1e-13
    dy = randn(*shape, seed=99)
    (g_theirs,) = torch.autograd.grad(theirs, x, dy)
    (g_ours,) = torch.autograd.grad(ours, x, dy)
    assert max_err(g_ours, g_theirs) < 1e-12


def test_torch_preset_module_equals_torch_module():
    x = randn(4, 10, 6, 6, seed=13, dtype=torch.float32)
    for size in (2, 5):
        ours = normkit.LocalResponseNorm(size)(x)
        theirs = torch.nn.LocalResponseNorm(size)(x)
        assert max_err(ours, theirs) < 1e-6


def test_onnx_is_mirror_of_torch_for_even_sizes():
    x = randn(2, 9, 3, 3, seed=14)
    for size in (2, 4, 6):
        onnx_y = local_response_norm(x, size, 0.2, 0.75, 1.0, convention="onnx")
        mirrored = local_response_norm(x.flip(1), size, 0.2, 0.75, 1.0).flip(1)
        assert max_err(onnx_y, mirrored) < 1e-15
        torch_y = local_response_norm(x, size, 0.2, 0.75, 1.0)
        assert max_err(onnx_y, torch_y) > 1e-3  # they really differ


def test_l2_normalization_identity_seed_004():
    # k = 0, raw alpha = 1, beta = 1/2, window covering every channel: y = x / ||x||_2
    x = randn(3, 6, 4, 4, seed=15)
    y = local_response_norm(x, 11, 1.0, 0.5, 0.0, convention="tensorflow")
    assert max_err(y, x / x.norm(dim=1, keepdim=True)) < 1e-14


def test_seed_000_and_002_worked_examples():
    x = torch.ones(2, 2, 3, 3)
    y = local_response_norm(x, 3, 1.0, 1.0, 0.0, convention="tensorflow", channel_dim=-1)
    assert torch.allclose(y, torch.tensor([0.5, 1 / 3, 0.5]).expand(2, 2, 3, 3))
    layer = normkit.LocalResponseNorm.from_tensorflow(depth_radius=2, bias=0.0, alpha=1.0, beta=1.0)
    x = torch.tensor(
        [
            [
                [[1.0, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2, 1]],
                [[4, 3, 2, 1, 8, 7, 6, 5], [1, 2, 3, 4, 5, 6, 7, 8]],
            ]
        ]
    )
    y = layer(x)
    # hand calculations from the seed: 1/(1+4+9), 4/(4+9+16+25+36), and row 3's 2/(16+9+4+1+64)
    assert y[0, 0, 0, 0].item() == pytest.approx(1 / 14, rel=1e-6)
    assert y[0, 0, 0, 3].item() == pytest.approx(4 / 90, rel=1e-6)
    assert y[0, 1, 0, 2].item() == pytest.approx(2 / 94, rel=1e-6)


def _onnx_lrn(x: np.ndarray, size, alpha, beta, bias):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=alpha, beta=beta, bias=bias)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 10)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime not installed")
@pytest.mark.parametrize("size", [1, 3, 5, 7, 13])
def test_matches_onnxruntime(size):
    # N != C (the onnx reference evaluator confuses them); float32, odd sizes
    x = randn(2, 9, 4, 5, seed=16, dtype=torch.float32)
    theirs = _onnx_lrn(x.numpy(), size, 0.03, 0.7, 1.3)
    ours = local_response_norm(x, size, 0.03, 0.7, 1.3, convention="onnx")
    spec = canonicalize(size, 0.03, 0.7, 1.3, convention="onnx")
    ref = lrn_forward(x.double().numpy(), spec)
    assert_matches_reference(ours, ref, torch.float32, torch_same_dtype=theirs)
    assert max_err(ours, theirs) < 1e-6
    layer = normkit.LocalResponseNorm.from_onnx(size, 0.03, 0.7, 1.3)
    assert layer.to_onnx() == {"size": size, "alpha": pytest.approx(0.03), "beta": 0.7, "bias": 1.3}


@pytest.mark.skipif(not HAVE_TF, reason="tensorflow not installed (optional peer)")
@pytest.mark.parametrize("radius", [0, 1, 2, 5])
def test_matches_tensorflow(radius):
    import tensorflow as tf

    x = randn(2, 4, 5, 13, seed=17, dtype=torch.float32)  # NHWC
    theirs = tf.nn.local_response_normalization(
        x.numpy(), depth_radius=radius, bias=1.5, alpha=0.01, beta=0.75
    ).numpy()
    layer = normkit.LocalResponseNorm.from_tensorflow(radius, 1.5, 0.01, 0.75)
    assert max_err(layer(x), theirs) < 1e-6
    # gradients: TensorFlow's own LRNGrad op against normkit's analytic backward
    dy = randn(*x.shape, seed=23, dtype=torch.float32)
    xt = tf.constant(x.numpy())
    with tf.GradientTape() as tape:
        tape.watch(xt)
        yt = tf.nn.local_response_normalization(
            xt, depth_radius=radius, bias=1.5, alpha=0.01, beta=0.75
        )
    g_tf = tape.gradient(yt, xt, output_gradients=tf.constant(dy.numpy())).numpy()
    xr = x.clone().requires_grad_()
    (g_ours,) = torch.autograd.grad(layer(xr), xr, dy)
    assert max_err(g_ours, g_tf) < 1e-5


# --- autograd ---------------------------------------------------------------------------

GRAD_CASES = [(c, n, "across") for c in sorted(CONVENTIONS) for n in (3, 4)] + [
    ("caffe", 3, "within"),
    ("caffe-cudnn", 3, "within"),
    ("cuda-convnet", 2, "within"),
]


@pytest.mark.parametrize("convention,size,region", GRAD_CASES)
def test_gradcheck_every_preset(convention, size, region):
    spec = _spec_or_skip_even(convention, size, region)
    if spec is None:
        return
    x = randn(2, 5, 3, 4, seed=18).requires_grad_()

    def f(v):
        return local_response_norm(v, size, 0.3, 0.75, 1.2, region=region, convention=convention)

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-8)
    dy = randn(2, 5, 3, 4, seed=19)
    (dx,) = torch.autograd.grad(f(x), x, dy)
    assert_matches_reference(
        dx, lrn_backward(x.detach().numpy(), dy.numpy(), spec), torch.float64, what="dx"
    )


def test_backward_saves_only_the_input():
    x = randn(2, 6, 4, 4, seed=20).requires_grad_()
    y = local_response_norm(x, 5)
    saved = y.grad_fn.saved_tensors
    assert len(saved) == 1 and saved[0] is x


def test_chosen_backend_is_observable_and_explicit_requests_are_checked():
    x = randn(2, 6, 4, 4, seed=21)
    local_response_norm(x, 5, backend="torch")
    assert dispatch.last_backend["lrn_fwd"] == "torch"
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        local_response_norm(x, 5, backend="gpu")


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (
            lambda: local_response_norm(np.ones((2, 3, 4, 4)), 3),
            TypeError,
            "must be a torch.Tensor",
        ),
        (
            lambda: local_response_norm(torch.ones(2, 3, dtype=torch.int64).view(2, 3, 1), 3),
            TypeError,
            "floating point",
        ),
        (lambda: local_response_norm(torch.ones(4, 3), 3), ValueError, "rank >= 3"),
        (
            lambda: local_response_norm(
                torch.ones(2, 3, 4), 3, region="within", convention="caffe"
            ),
            ValueError,
            "4-D input",
        ),
        (
            lambda: local_response_norm(torch.ones(2, 3, 4, 4), 3, channel_dim=4),
            ValueError,
            r"channel_dim must be in \[-4, 3\]",
        ),
        (
            lambda: local_response_norm(torch.ones(2, 3, 4, 4), 3, channel_dim=0),
            ValueError,
            "batch dim",
        ),
        (lambda: local_response_norm(torch.ones(2, 3, 4, 4), 0), ValueError, "size must be >= 1"),
        (
            lambda: local_response_norm(torch.ones(2, 3, 4, 4), 4, convention="caffe"),
            ValueError,
            "size must be odd",
        ),
        (
            lambda: local_response_norm(torch.ones(2, 3, 4, 4), 3, beta=float("nan")),
            ValueError,
            "beta must be finite",
        ),
        (
            lambda: local_response_norm(torch.ones(2, 3, 4, 4), 3, region="within"),
            ValueError,
            "no within-channel LRN",
        ),
        (
            lambda: normkit.LocalResponseNorm.from_tensorflow(-1),
            ValueError,
            "depth_radius must be >= 0",
        ),
        (
            lambda: normkit.LocalResponseNorm.from_caffe(norm_region="SPATIAL"),
            ValueError,
            "norm_region",
        ),
    ],
)
def test_bad_input_gives_clear_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# --- module -----------------------------------------------------------------------------


def test_module_constructors_defaults_and_way_back():
    caffe = normkit.LocalResponseNorm.from_caffe()
    assert (caffe.size, caffe.alpha, caffe.beta, caffe.k) == (5, 1.0, 0.75, 1.0)
    assert caffe.to_caffe() == {
        "local_size": 5,
        "alpha": 1.0,
        "beta": 0.75,
        "k": 1.0,
        "norm_region": "ACROSS_CHANNELS",
    }
    assert caffe.to_tensorflow() == {
        "depth_radius": 2,
        "bias": 1.0,
        "alpha": pytest.approx(0.2),
        "beta": 0.75,
    }
    tf_layer = normkit.LocalResponseNorm.from_tensorflow()
    assert tf_layer.channel_dim == -1 and tf_layer.spec.width == 11
    assert tf_layer.to_onnx() == {
        "size": 11,
        "alpha": pytest.approx(11.0),
        "beta": 0.5,
        "bias": 1.0,
    }
    within = normkit.LocalResponseNorm.from_caffe(3, 1.0, 0.75, 2.0, "WITHIN_CHANNEL")
    assert within.spec.k == 1.0
    with pytest.raises(ValueError, match="no within-channel LRN"):
        within.to_onnx()
    cudnn = normkit.LocalResponseNorm.from_caffe(
        3, 1.0, 0.75, 2.0, "WITHIN_CHANNEL", engine="cudnn"
    )
    assert cudnn.to_caffe()["engine"] == "CUDNN" and cudnn.to_caffe()["k"] == 2.0
    even = normkit.LocalResponseNorm(4)
    with pytest.raises(ValueError, match="look the other way"):
        even.to_onnx()


def test_module_repr_pickle_state_dict():
    layer = normkit.LocalResponseNorm(4, 2e-4, 0.5, 2.0, convention="onnx", channel_dim=-1)
    assert repr(layer) == (
        "LocalResponseNorm(4, alpha=0.0002, beta=0.5, k=2.0, convention='onnx', channel_dim=-1)"
    )
    assert repr(normkit.LocalResponseNorm(5)) == repr(torch.nn.LocalResponseNorm(5))
    clone = pickle.loads(pickle.dumps(layer))
    x = randn(2, 3, 3, 7, seed=22)
    assert torch.equal(clone(x), layer(x))
    # no parameters, no buffers: same (empty) state_dict as torch's module
    assert layer.state_dict() == torch.nn.LocalResponseNorm(4).state_dict() == {}
