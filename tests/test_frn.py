"""Filter Response Normalization + TLU: reference vs hand and finite differences, every
backend and dtype vs the float64 reference, gradcheck, channels_last, compile, in-place."""

import numpy as np
import pytest
import torch

import normkit
from normkit import dispatch
from normkit.functional import filter_response_norm
from normkit.reference import frn_backward, frn_forward

from hostile import randn
from tolerance import assert_matches_reference, numeric_grad

BACKENDS = ["torch", "cpu", "triton"]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


def test_reference_by_hand():
    # one plane [1, -1, 2, -2]: mean square 2.5; eps 1.5 -> r = 1/sqrt(4) = 0.5
    # x_hat = [.5, -.5, 1, -1]; z = 2 x_hat + .5 = [1.5, -.5, 2.5, -1.5]; TLU at 0
    x = np.array([1.0, -1.0, 2.0, -2.0]).reshape(1, 1, 2, 2)
    y, r = frn_forward(x, [2.0], [0.5], [0.0], 1.5)
    assert r.item() == 0.5
    assert y.reshape(-1).tolist() == [1.5, 0.0, 2.5, 0.0]


def test_reference_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 3, 4))
    w, b = rng.standard_normal(3), rng.standard_normal(3)
    tau = np.array([-0.3, 0.1, 0.4])
    eps = np.array([1e-3, 0.5, 2.0])
    dy = rng.standard_normal(x.shape)
    args = [w, b, tau, eps]
    grads = frn_backward(x, dy, *args)

    def loss(xv, params):
        return float(np.sum(frn_forward(xv, *params)[0] * dy))

    # some outputs clipped by the TLU, none near the kink (finite differences stay valid)
    z = w.reshape(1, -1, 1, 1) * x / np.sqrt(
        (x * x).mean((2, 3), keepdims=True) + eps.reshape(1, -1, 1, 1)
    ) + b.reshape(1, -1, 1, 1)
    gap = np.abs(z - tau.reshape(1, -1, 1, 1))
    assert (z < tau.reshape(1, -1, 1, 1)).any() and gap.min() > 1e-4
    np.testing.assert_allclose(
        grads[0], numeric_grad(lambda v: loss(v, args), x.copy()), rtol=1e-6, atol=1e-8
    )
    for i in range(4):
        num = numeric_grad(
            lambda v, i=i: loss(x, [v if j == i else a for j, a in enumerate(args)]), args[i].copy()
        )
        np.testing.assert_allclose(grads[i + 1], num, rtol=1e-6, atol=1e-8)


def _inputs(dtype, shape=(3, 4, 5, 6), seed=0):
    x = randn(*shape, seed=seed, dtype=dtype)
    c = shape[1]
    w = (randn(c, seed=seed + 1) * 0.5 + 1).to(dtype)
    b = (randn(c, seed=seed + 2) * 0.3).to(dtype)
    tau = (randn(c, seed=seed + 3) * 0.3).to(dtype)
    dy = randn(*shape, seed=seed + 4, dtype=dtype)
    return x, w, b, tau, dy


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_backend_and_dtype_matches_reference(backend, dtype):
    x, w, b, tau, dy = _inputs(dtype)
    eps = torch.full((4,), 1e-3, dtype=dtype)
    leaves = [t.clone().requires_grad_() for t in (x, w, b, tau, eps)]
    y = filter_response_norm(*leaves[:4], leaves[4], backend=backend)
    assert dispatch.last_backend["frn_fwd"] == backend
    y.backward(dy)
    assert y.dtype == dtype and leaves[0].grad.dtype == dtype
    # the reference sees the inputs as rounded to the dtype
    x64, w64, b64, t64, e64, dy64 = (t.double().numpy() for t in (x, w, b, tau, eps, dy))
    ref_y, _ = frn_forward(x64, w64, b64, t64, e64)
    assert_matches_reference(y, ref_y, dtype, what=f"{backend} y")
    names = ("dx", "dweight", "dbias", "dtau", "deps")
    for leaf, ref, name in zip(leaves, frn_backward(x64, dy64, w64, b64, t64, e64), names):
        assert_matches_reference(leaf.grad, ref, dtype, what=f"{backend} {name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    x, w, b, tau, _ = _inputs(torch.float64, shape=(2, 3, 3, 3), seed=5)
    eps = torch.tensor([1e-2, 0.1, 1.0], dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, w, b, tau, eps)]
    # Triton's interpreter takes ~0.5 s a call: fast mode checks a random projection of
    # the Jacobian (a few calls) instead of every column
    assert torch.autograd.gradcheck(
        lambda *a: filter_response_norm(*a, backend=backend),
        leaves,
        eps=1e-6,
        atol=1e-7,
        fast_mode=backend == "triton",
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_output_and_grads(backend):
    x, w, b, tau, dy = _inputs(torch.float32, seed=7)
    ref = filter_response_norm(x, w, b, tau, backend=backend)
    xl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    y = filter_response_norm(xl, w, b, tau, backend=backend)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-6)
    y.backward(dy)
    xc = x.clone().requires_grad_()
    filter_response_norm(xc, w, b, tau, backend=backend).backward(dy)
    torch.testing.assert_close(xl.grad, xc.grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_on_output_works(backend):
    m = normkit.FilterResponseNorm2d(4)
    m.backend = backend
    x = randn(2, 4, 3, 3, seed=8, dtype=torch.float32).requires_grad_()
    y = m(x)
    y.mul_(2.0)  # a fresh tensor, not a view of x: in-place is allowed
    y.sum().backward()
    x2 = x.detach().clone().requires_grad_()
    (m(x2) * 2.0).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_module_learnable_eps_gradient_is_reference_deps_times_sign():
    torch.manual_seed(0)
    m = normkit.FilterResponseNorm2d(3, eps=1e-6, learnable_eps=True, dtype=torch.float64)
    with torch.no_grad():
        m.eps_param.copy_(torch.tensor([0.2, -0.5, 1e-4]))
        m.tau.copy_(torch.tensor([-0.2, 0.0, 0.3]))
    x = randn(2, 3, 4, 4, seed=9)
    dy = randn(2, 3, 4, 4, seed=10)
    m(x).backward(dy)
    eps_eff = 1e-6 + np.abs(m.eps_param.detach().numpy())
    grads = frn_backward(
        x.numpy(),
        dy.numpy(),
        m.weight.detach().numpy(),
        m.bias.detach().numpy(),
        m.tau.detach().numpy(),
        eps_eff,
    )
    np.testing.assert_allclose(
        m.eps_param.grad.numpy(), grads[4] * np.sign(m.eps_param.detach().numpy()), atol=1e-12
    )
    np.testing.assert_allclose(m.tau.grad.numpy(), grads[3], atol=1e-12)


def test_module_defaults_and_batch_independence():
    m = normkit.FilterResponseNorm2d(5)
    assert m.weight.tolist() == [1.0] * 5 and m.bias.tolist() == [0.0] * 5
    assert m.tau.tolist() == [0.0] * 5 and m.eps_param is None
    x = randn(4, 5, 6, 6, seed=11, dtype=torch.float32)
    # no batch statistics: a sample alone gives what it gives in a batch, train or eval
    torch.testing.assert_close(m(x)[1:2], m.eval()(x[1:2]), rtol=0, atol=0)
    ref, _ = frn_forward(x.double().numpy(), 1.0, 0.0, 0.0, 1e-6)
    assert_matches_reference(m(x), ref, torch.float32)


def test_auto_picks_cpu_kernel_on_cpu():
    filter_response_norm(randn(2, 3, 4, 4, seed=12, dtype=torch.float32))
    assert dispatch.last_backend["frn_fwd"] == "cpu"


def test_all_zero_plane_is_finite():
    x = torch.zeros(1, 2, 3, 3, requires_grad=True)
    y = filter_response_norm(x, tau=torch.zeros(2))
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eps=0.0), "eps must be a positive float"),
        (dict(weight=torch.ones(5)), r"weight must have 4 elements"),
    ],
)
def test_bad_arguments_name_the_invariant(kwargs, match):
    with pytest.raises(ValueError, match=match):
        filter_response_norm(torch.randn(2, 4, 3, 3), **kwargs)


def test_bad_module_inputs():
    with pytest.raises(ValueError, match="expected 3 channels"):
        normkit.FilterResponseNorm2d(3)(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="4-D input"):
        normkit.FilterResponseNorm2d(3)(torch.randn(2, 3, 3))
    with pytest.raises(ValueError, match="eps must be a positive float"):
        normkit.FilterResponseNorm2d(3, eps=-1.0)
    with pytest.raises(TypeError, match="floating point"):
        filter_response_norm(torch.ones(2, 3, 3, 3, dtype=torch.int64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), normkit.FilterResponseNorm2d(4))
    net[1].backend = backend
    with torch.no_grad():
        net[1].tau.fill_(-0.1)
    x = randn(2, 3, 6, 6, seed=13, dtype=torch.float32)
    dy = randn(2, 4, 6, 6, seed=14, dtype=torch.float32)
    eager = net(x)
    eager.backward(dy)
    g = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    y.backward(dy)
    torch.testing.assert_close(y, eager, rtol=0, atol=1e-6)
    for p, ge in zip(net.parameters(), g):
        torch.testing.assert_close(p.grad, ge, rtol=1e-5, atol=1e-5)
    assert dispatch.last_backend["frn_bwd"] == backend


def test_custom_op_schema_and_fake_tensor():
    x, w, b, tau, dy = _inputs(torch.float32, shape=(2, 3, 5), seed=15)
    eps = torch.full((3,), 1e-6)
    torch.library.opcheck(torch.ops.normkit.frn_fwd.default, (x, w, b, tau, eps, "cpu"))
    _, rstd = torch.ops.normkit.frn_fwd(x, w, b, tau, eps, "cpu")
    torch.library.opcheck(torch.ops.normkit.frn_bwd.default, (dy, x, rstd, w, b, tau, "cpu"))


def test_cpu_kernel_is_bitwise_independent_of_thread_count(monkeypatch):
    x, w, b, tau, dy = _inputs(torch.float32, shape=(6, 8, 9, 9), seed=16)
    results = []
    for threads in ("1", "2"):
        monkeypatch.setenv("NORMKIT_NUM_THREADS", threads)
        leaves = [t.clone().requires_grad_() for t in (x, w, b, tau)]
        y = filter_response_norm(*leaves, backend="cpu")
        y.backward(dy)
        results.append([y.detach()] + [t.grad for t in leaves])
    for a, b_ in zip(*results):
        assert torch.equal(a, b_)
