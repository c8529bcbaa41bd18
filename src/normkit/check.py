"""``normkit check``: conformance of normkit against every peer installed here.

Each case runs normkit and a peer (or a worked example from the source
documents) on the same input and reports the largest absolute difference.
Peers that are not installed are listed as skipped, never silently dropped.
Other layers add their cases by appending a provider to :data:`PROVIDERS`.
"""

from __future__ import annotations

import importlib.util
import platform
import sys
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional

import numpy as np
import torch

from .conventions import canonicalize
from .functional import local_response_norm
from .reference import lrn_forward


@dataclass
class Case:
    group: str  # e.g. "LRN vs torch"
    name: str
    status: str  # "pass", "FAIL", "skipped"
    max_abs_err: Optional[float] = None
    tol: Optional[float] = None
    detail: str = ""


def _compare(group, name, ours, theirs, tol) -> Case:
    ours = np.asarray(ours, dtype=np.float64)
    theirs = np.asarray(theirs, dtype=np.float64)
    if ours.shape != theirs.shape:
        return Case(group, name, "FAIL", None, tol, f"shape {ours.shape} vs {theirs.shape}")
    err = float(np.max(np.abs(ours - theirs))) if ours.size else 0.0
    ok = bool(np.isfinite(err) and err <= tol)
    return Case(group, name, "pass" if ok else "FAIL", err, tol)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _rng_input(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# --- seeds' worked examples ---------------------------------------------------------


def seed_cases() -> Iterator[Case]:
    group = "LRN vs seeds' worked examples"
    # source document 1: tf.nn.local_response_normalization(np.ones([2,2,3,3]), 1, 0, 1, 1):
    # channel 0 and 2 see two ones, channel 1 sees three: 1/2, 1/3, 1/2.
    x = torch.ones(2, 2, 3, 3, dtype=torch.float64)
    y = local_response_norm(x, 3, 1.0, 1.0, 0.0, convention="tensorflow", channel_dim=-1)
    expected = np.broadcast_to(np.array([1 / 2, 1 / 3, 1 / 2]), (2, 2, 3, 3))
    yield _compare(
        group, "source document 1: ones[2,2,3,3], r=1, bias=0, alpha=1, beta=1", y, expected, 1e-15
    )
    # source document 3: [1,2,2,8] NHWC, depth_radius=2, bias=0, alpha=1, beta=1; the values
    # TensorFlow printed in the blog post (float32, 8 digits).
    x = torch.tensor(
        [
            [
                [[1, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2, 1]],
                [[4, 3, 2, 1, 8, 7, 6, 5], [1, 2, 3, 4, 5, 6, 7, 8]],
            ]
        ],
        dtype=torch.float32,
    )
    printed = np.array(
        [
            [
                [
                    [
                        0.07142857,
                        0.06666667,
                        0.05454545,
                        0.04444445,
                        0.03703704,
                        0.03157895,
                        0.04022989,
                        0.05369128,
                    ],
                    [
                        0.05369128,
                        0.04022989,
                        0.03157895,
                        0.03703704,
                        0.04444445,
                        0.05454545,
                        0.06666667,
                        0.07142857,
                    ],
                ],
                [
                    [
                        0.13793103,
                        0.10000001,
                        0.0212766,
                        0.00787402,
                        0.05194805,
                        0.04,
                        0.03448276,
                        0.04545454,
                    ],
                    [
                        0.07142857,
                        0.06666667,
                        0.05454545,
                        0.04444445,
                        0.03703704,
                        0.03157895,
                        0.04022989,
                        0.05369128,
                    ],
                ],
            ]
        ]
    )
    y = local_response_norm(x, 5, 1.0, 1.0, 0.0, convention="tensorflow", channel_dim=-1)
    yield _compare(
        group, "source document 3: [1,2,2,8] NHWC, r=2, bias=0, alpha=1, beta=1", y, printed, 1e-7
    )
    # source document 5: k=0, alpha=1, beta=1/2 with a window over every channel is L2
    # normalization.
    x = torch.from_numpy(_rng_input((3, 6, 4, 4), 4).astype(np.float64))
    y = local_response_norm(x, 11, 1.0, 0.5, 0.0, convention="tensorflow")
    l2 = x / x.norm(dim=1, keepdim=True)
    yield _compare(
        group, "source document 5: k=0, alpha=1, beta=1/2, full window == L2 norm", y, l2, 1e-12
    )


# --- float64 reference -----------------------------------------------------------------


def reference_cases() -> Iterator[Case]:
    group = "LRN vs float64 reference"
    x = _rng_input((2, 9, 5, 6), 1).astype(np.float64)
    for convention, size, region in [
        ("torch", 5, "across"),
        ("torch", 4, "across"),
        ("onnx", 4, "across"),
        ("tensorflow", 5, "across"),
        ("chainer", 4, "across"),
        ("caffe", 3, "within"),
        ("caffe-cudnn", 3, "within"),
    ]:
        spec = canonicalize(size, 0.5, 0.75, 2.0, region=region, convention=convention)
        y = local_response_norm(
            torch.from_numpy(x), size, 0.5, 0.75, 2.0, region=region, convention=convention
        )
        yield _compare(
            group, f"{convention} size={size} {region} float64", y, lrn_forward(x, spec), 1e-13
        )


# --- peers -----------------------------------------------------------------------------


def torch_cases() -> Iterator[Case]:
    group = f"LRN vs torch {torch.__version__}"
    x = torch.from_numpy(_rng_input((4, 13, 7, 5), 2))
    for size in (1, 2, 3, 4, 5, 6, 11, 20):
        theirs = torch.nn.functional.local_response_norm(x, size, 1e-2, 0.75, 1.5)
        ours = local_response_norm(x, size, 1e-2, 0.75, 1.5, convention="torch")
        yield _compare(group, f"F.local_response_norm size={size} float32", ours, theirs, 1e-6)


def onnxruntime_cases() -> Iterator[Case]:
    group = "LRN vs onnxruntime"
    if not (_installed("onnxruntime") and _installed("onnx")):
        yield Case(group, "onnxruntime LRN", "skipped", detail="onnx/onnxruntime not installed")
        return
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    group = f"LRN vs onnxruntime {ort.__version__}"
    # N != C: the onnx <= 1.23.2 reference evaluator confuses them (docs/design.md section 2)
    x = _rng_input((2, 7, 4, 3), 3)
    for size in (1, 3, 5, 7, 9):
        node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=0.02, beta=0.75, bias=1.5)
        graph = helper.make_graph(
            [node],
            "lrn",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = min(model.ir_version, 10)
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        theirs = session.run(None, {"x": x})[0]
        ours = local_response_norm(torch.from_numpy(x), size, 0.02, 0.75, 1.5, convention="onnx")
        yield _compare(group, f"LRN node size={size} float32", ours, theirs, 1e-6)
    del onnx


def tensorflow_cases() -> Iterator[Case]:
    group = "LRN vs tensorflow"
    if not _installed("tensorflow"):
        yield Case(
            group,
            "tf.nn.local_response_normalization",
            "skipped",
            detail="tensorflow not installed (pip install tensorflow-cpu)",
        )
        return
    import tensorflow as tf

    group = f"LRN vs tensorflow {tf.__version__}"
    x = _rng_input((2, 5, 4, 13), 5)  # NHWC
    for radius in (0, 1, 2, 5):
        theirs = tf.nn.local_response_normalization(
            x, depth_radius=radius, bias=1.5, alpha=0.01, beta=0.75
        ).numpy()
        ours = local_response_norm(
            torch.from_numpy(x),
            2 * radius + 1,
            0.01,
            0.75,
            1.5,
            convention="tensorflow",
            channel_dim=-1,
        )
        yield _compare(group, f"depth_radius={radius} float32 NHWC", ours, theirs, 1e-6)


PROVIDERS: List[Callable[[], Iterator[Case]]] = [
    seed_cases,
    reference_cases,
    torch_cases,
    onnxruntime_cases,
    tensorflow_cases,
]


# --- batch / layer / group / instance / RMS norm ------------------------------------------


def _grads_of(module, x, dy):
    x = x.clone().requires_grad_(True)
    y = module(x)
    (y * dy).sum().backward()
    return (
        [y.detach(), x.grad]
        + [p.grad for _, p in module.named_parameters()]
        + [b for _, b in module.named_buffers()]
    )


def norm_layer_cases() -> Iterator[Case]:
    """Every normkit norm layer vs its torch.nn twin (train step + eval) and the reference."""
    import copy

    from . import modules as nk
    from .reference import (
        batch_norm_forward,
        group_norm_forward,
        layer_norm_forward,
        rms_norm_forward,
    )

    group = f"norm layers vs torch.nn {torch.__version__}"
    layers = [
        ("BatchNorm1d(5)", lambda m: m.BatchNorm1d(5), (7, 5, 3)),
        ("BatchNorm2d(5, momentum=None)", lambda m: m.BatchNorm2d(5, momentum=None), (4, 5, 3, 3)),
        ("BatchNorm3d(5, affine=False)", lambda m: m.BatchNorm3d(5, affine=False), (2, 5, 2, 3, 3)),
        ("SyncBatchNorm(5) (no process group)", lambda m: m.SyncBatchNorm(5), (4, 5, 3, 3)),
        (
            "InstanceNorm2d(5, affine, tracked)",
            lambda m: m.InstanceNorm2d(5, affine=True, track_running_stats=True),
            (3, 5, 4, 4),
        ),
        ("LayerNorm([5, 4])", lambda m: m.LayerNorm([5, 4]), (3, 5, 4)),
        ("GroupNorm(5, 10)", lambda m: m.GroupNorm(5, 10), (3, 10, 2, 3)),
        ("RMSNorm(6)", lambda m: m.RMSNorm(6), (4, 3, 6)),
    ]
    for name, make, shape in layers:
        for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
            theirs = make(torch.nn).to(dtype)
            with torch.no_grad():
                for p in theirs.parameters():
                    p.copy_(torch.from_numpy(_rng_input(tuple(p.shape), 7)).to(dtype))
            ours = make(nk).to(dtype)
            ours.load_state_dict(theirs.state_dict())
            x = torch.from_numpy(_rng_input(shape, 8) * 3 + 2).to(dtype)
            dy = torch.from_numpy(_rng_input(shape, 9)).to(dtype)
            worst = 0.0
            for mode in ("train", "eval"):
                theirs.train(mode == "train")
                ours.train(mode == "train")
                for a, b in zip(
                    _grads_of(copy.deepcopy(ours), x, dy), _grads_of(copy.deepcopy(theirs), x, dy)
                ):
                    if a is not None and a.numel():
                        worst = max(worst, float((a.double() - b.double()).abs().max()))
            short = str(dtype).replace("torch.", "")
            yield Case(
                group,
                f"{name} {short}: y, grads, running stats",
                "pass" if worst <= tol else "FAIL",
                worst,
                tol,
            )
    group = "norm layers vs float64 reference"
    x = _rng_input((4, 6, 5, 3), 10).astype(np.float64) + 1e4  # |mean|/std = 1e4
    xt = torch.from_numpy(x)
    from .functional import batch_norm, group_norm, layer_norm, rms_norm

    yield _compare(
        group,
        "batch_norm training, mean 1e4, float64",
        batch_norm(xt, None, None, training=True),
        batch_norm_forward(x)[0],
        1e-9,
    )
    yield _compare(
        group,
        "group_norm G=3, mean 1e4, float64",
        group_norm(xt, 3),
        group_norm_forward(x, 3)[0],
        1e-9,
    )
    yield _compare(
        group,
        "layer_norm (5, 3), mean 1e4, float64",
        layer_norm(xt, [5, 3]),
        layer_norm_forward(x, (5, 3))[0],
        1e-9,
    )
    yield _compare(
        group,
        "rms_norm (3,), float64",
        rms_norm(xt - 1e4, [3], eps=1e-6),
        rms_norm_forward(x - 1e4, (3,), eps=1e-6)[0],
        1e-12,
    )
    x32 = torch.from_numpy(x.astype(np.float32))
    # float32 at mean 1e4: the error floor is half an ulp of the mean (4.9e-4) times rstd
    ref32 = batch_norm_forward(x32.double().numpy())[0]
    yield _compare(
        group,
        "batch_norm training, mean 1e4, float32 (two-pass stats)",
        batch_norm(x32, None, None, training=True),
        ref32,
        2e-3,
    )


PROVIDERS.append(norm_layer_cases)


def run_checks() -> List[Case]:
    """Run every provider; a provider that crashes is reported as a failure."""
    cases: List[Case] = []
    for provider in PROVIDERS:
        try:
            cases.extend(provider())
        except Exception as exc:  # report, do not hide
            cases.append(
                Case(
                    provider.__name__,
                    "provider crashed",
                    "FAIL",
                    detail=f"{type(exc).__name__}: {exc}",
                )
            )
    return cases


def format_report(cases: List[Case]) -> str:
    lines = [
        f"normkit conformance report (python {platform.python_version()}, "
        f"torch {torch.__version__}, numpy {np.__version__})",
        "",
    ]
    group = None
    for case in cases:
        if case.group != group:
            group = case.group
            lines.append(f"== {group}")
        err = "" if case.max_abs_err is None else f"max|diff|={case.max_abs_err:.3g}"
        tol = "" if case.tol is None else f"(tol {case.tol:g})"
        detail = f"  [{case.detail}]" if case.detail else ""
        lines.append(f"  {case.status:7s} {case.name:55s} {err} {tol}{detail}".rstrip())
    counts = {s: sum(c.status == s for c in cases) for s in ("pass", "FAIL", "skipped")}
    lines += [
        "",
        f"summary: {counts['pass']} cases agree, {counts['FAIL']} disagree, "
        f"{counts['skipped']} skipped (peer not installed)",
    ]
    return "\n".join(lines)


def main(args=None) -> int:
    cases = run_checks()
    print(format_report(cases))
    sys.stdout.flush()
    return 1 if any(c.status == "FAIL" for c in cases) else 0
