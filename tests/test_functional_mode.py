"""normkit.functional_mode against plain torch.nn.functional (issue 10, item 5)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normkit
from normkit import dispatch

from hostile import randn

BACKENDS = sorted(
    {
        b
        for op in (
            "layer_norm_fwd",
            "batch_norm_stats",
            "group_norm_fwd",
            "rms_norm_fwd",
            "lrn_fwd",
        )
        for b in dispatch.table[op]
        if b != "triton"
    }
    | {"auto"}
)


def _both(fn, *tensors, backend="auto"):
    """fn on torch and under the mode, on clones: outputs, grads, and the mutated inputs."""
    runs = []
    for mode in (False, True):
        ts = [
            t.detach().clone().requires_grad_(t.is_floating_point() and i == 0)
            for i, t in enumerate(tensors)
        ]
        dispatch.last_backend.clear()
        if mode:
            with normkit.functional_mode(backend):
                y = fn(*ts)
        else:
            y = fn(*ts)
        used = dict(dispatch.last_backend)
        (y * randn(*y.shape, seed=99, dtype=y.dtype)).sum().backward()
        runs.append((y.detach(), ts[0].grad, [t.detach() for t in ts[1:]], used))
    return runs


def _close(a, b, tol=1e-12):
    assert a.shape == b.shape and a.dtype == b.dtype
    a, b = a.detach(), b.detach()
    assert (a - b).abs().max() <= tol * max(1.0, float(b.abs().max()))


CALLS = [
    ("layer_norm", lambda x, w, b: F.layer_norm(x, [5], w, b, 1e-3), [(4, 3, 5), (5,), (5,)]),
    ("layer_norm", lambda x: F.layer_norm(x, [3, 5]), [(4, 3, 5)]),
    ("rms_norm", lambda x, w: F.rms_norm(x, [5], w), [(4, 3, 5), (5,)]),
    ("rms_norm", lambda x: F.rms_norm(x, [5], eps=1e-2), [(4, 3, 5)]),
    ("group_norm", lambda x, w, b: F.group_norm(x, 3, w, b), [(2, 6, 4), (6,), (6,)]),
    ("group_norm", lambda x: F.group_norm(x, 2), [(2, 6, 2, 2)]),
    ("local_response_norm", lambda x: F.local_response_norm(x, 4, 1e-2, 0.6, 2.0), [(2, 7, 3, 3)]),
    (
        "batch_norm",
        lambda x, rm, rv, w, b: F.batch_norm(x, rm, rv, w, b, True, 0.3, 1e-4),
        [(5, 3, 4), (3,), (3,), (3,), (3,)],
    ),
    (
        "batch_norm",
        lambda x, rm, rv: F.batch_norm(x, rm, rv, training=False),
        [(5, 3, 4), (3,), (3,)],
    ),
    ("batch_norm", lambda x: F.batch_norm(x, None, None, training=True), [(5, 3)]),
    (
        "instance_norm",
        lambda x, rm, rv: F.instance_norm(x, rm, rv, momentum=0.2),
        [(3, 2, 6), (2,), (2,)],
    ),
    (
        "instance_norm",
        lambda x, rm, rv, w, b: F.instance_norm(x, rm, rv, w, b, use_input_stats=False),
        [(3, 2, 6), (2,), (2,), (2,), (2,)],
    ),
    ("instance_norm", lambda x: F.instance_norm(x), [(3, 2, 5, 5)]),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("i", range(len(CALLS)))
def test_mode_serves_functional_calls_exactly(i, backend):
    name, fn, shapes = CALLS[i]
    tensors = [randn(*s, seed=10 + j) for j, s in enumerate(shapes)]
    if name in ("batch_norm", "instance_norm") and len(tensors) > 2:
        tensors[2] = tensors[2].abs() + 0.5  # a valid running_var
    (y_t, dx_t, rest_t, _), (y_n, dx_n, rest_n, used) = _both(fn, *tensors, backend=backend)
    _close(y_n, y_t)
    _close(dx_n, dx_t, 1e-10)
    for a, b in zip(
        rest_n, rest_t, strict=True
    ):  # running stats updated like torch's (or untouched)
        _close(a, b)
    assert used["F." + name] == (
        "cpu"
        if backend == "auto" and "cpu" in BACKENDS
        else backend
        if backend != "auto"
        else "torch"
    )


def test_torch_modules_inside_the_mode_run_normkit_and_keep_running_stats():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3),
        nn.BatchNorm2d(6, momentum=None),
        nn.ReLU(),
        nn.GroupNorm(2, 6),
        nn.InstanceNorm2d(6, track_running_stats=True),
        nn.Flatten(),
        nn.LayerNorm(6 * 16),
    ).double()
    twin = __import__("copy").deepcopy(net)
    x = randn(4, 3, 6, 6, seed=1)
    for step in range(2):
        y0 = net(x * (step + 1))
        dispatch.last_backend.clear()
        with normkit.functional_mode(backend="torch"):
            y1 = twin(x * (step + 1))
        assert {
            dispatch.last_backend[k]
            for k in ("F.batch_norm", "F.group_norm", "F.instance_norm", "F.layer_norm")
        } == {"torch"}
        _close(y1, y0, 1e-11)
    for (k, a), (k2, b) in zip(net.state_dict().items(), twin.state_dict().items(), strict=True):
        assert k == k2
        assert torch.equal(a, b) if not a.is_floating_point() else (a - b).abs().max() < 1e-12, k


def test_unservable_calls_fall_back_to_torch():
    x = randn(4, 3, 5, dtype=torch.float32)
    cases = [
        (lambda: F.layer_norm(x, [5], torch.ones(5, dtype=torch.float64)), "F.layer_norm"),
        (
            lambda: F.batch_norm(x, torch.zeros(3), torch.ones(3), training=True, momentum=None),
            "F.batch_norm",
        ),
        (lambda: F.group_norm(torch.randn(3), 1), "F.group_norm"),
    ]
    for fn, key in cases:
        try:
            expected, raised = fn(), None
        except Exception as e:  # torch's own error must come out unchanged
            expected, raised = None, type(e)
        dispatch.last_backend.clear()
        with normkit.functional_mode():
            if raised is not None:
                with pytest.raises(raised):
                    fn()
            else:
                got = fn()
                assert torch.equal(got, expected)
        assert dispatch.last_backend[key] == "aten"
    # autocast: torch's policy decides the dtypes, so torch runs
    with torch.autocast("cpu", dtype=torch.bfloat16), normkit.functional_mode():
        dispatch.last_backend.clear()
        F.layer_norm(x, [5])
    assert dispatch.last_backend["F.layer_norm"] == "aten"


def test_mode_rejects_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        normkit.functional_mode("cuda-magic")
