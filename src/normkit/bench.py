"""``normkit bench``: normkit's backends against torch eager, in the same process.

For each layer and shape: warm-up, many repeats, the median time of the forward
and of forward+backward, for torch eager and for every normkit backend that can
run the tensor. Prints the ratio (torch time / normkit time: > 1 means normkit is
faster), the effective bandwidth under the minimum-traffic model of docs/design.md
section 3 (forward
reads x and writes y: 2·N·s bytes; backward reads x and dy and writes dx: 3·N·s;
so forward+backward is 5·N·s) and that bandwidth as a fraction of a measured large
tensor copy. For LRN forward+backward it also reports the peak extra memory as a
multiple of the input size, measured in a fresh subprocess per implementation: the
peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) while one
forward+backward runs, minus the resident set just before it (inputs allocated,
kernels compiled on a tiny input, ``malloc_trim`` called). torch's CPU allocator
keeps no statistics and ``tracemalloc`` does not see torch's allocations, so the
resident set is the honest measure; it counts the output ``y`` and ``dx`` too.

Every case becomes one CSV row in ``benchmarks/results/<device>-<timestamp>.csv``
(``--out`` picks another folder) with the device, library versions, thread count
and allocator settings, and the minor page faults per call of each timed call. Timings on
a shared machine are noisy: compare the ratios of one run, not absolute times across runs.

Page faults: every call allocates its output. With glibc's default settings, whether that
memory is still mapped or has been handed back to the OS, and must be faulted in again,
depends on the order of earlier allocations and frees (torch's as much as normkit's); on
a VM a fault can cost microseconds, so a 16 MB output faulted in costs more than the
kernel that fills it. ``--malloc keep`` asks glibc (in this process) to keep freed memory
(``mallopt``: mmap threshold 32 MiB, trim threshold 1 GiB), which takes that luck out of
the comparison; the default measures what a default process gets.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

from .families import bench_layers

__all__ = ["add_arguments", "main", "CASES"]

# every layer case a family names (normkit.families), then the whole-model tables
LAYERS = bench_layers() + ("overhead", "model")
LRN_BETAS = (0.5, 0.75, 1.0, 0.6)
CSV_FIELDS = [
    "timestamp",
    "device",
    "device_name",
    "torch_version",
    "numba_version",
    "triton_version",
    "threads",
    "allocator",
    "load_avg",
    "layer",
    "shape",
    "dtype",
    "params",
    "pass",
    "impl",
    "median_ms",
    "repeats",
    "torch_ms",
    "ratio_vs_torch",
    "gbps",
    "copy_gbps",
    "frac_copy_bw",
    "peak_extra_mem_x_input",
    "minor_faults_per_call",
]


def add_arguments(parser) -> None:
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small shapes and few repeats (a smoke run, not a measurement)",
    )
    parser.add_argument(
        "--layers",
        default=",".join(LAYERS),
        help=f"comma-separated subset of {','.join(LAYERS)} (default all)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed repeats per case (default 20, --quick 3)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed warm-up calls per case (default 3, --quick 1)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch intra-op threads, also used by normkit's cpu kernels (default 2)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "float64", "float16", "bfloat16"),
        default="float32",
        help="input dtype (default float32)",
    )
    parser.add_argument(
        "--memory",
        choices=("auto", "on", "off"),
        default="auto",
        help="measure LRN peak extra memory in subprocesses (auto: on unless --quick)",
    )
    parser.add_argument(
        "--malloc",
        choices=("default", "keep"),
        default="default",
        help="glibc settings: default, or keep freed memory (no page-fault luck; see docs)",
    )
    parser.add_argument(
        "--out", default=None, help="folder for the CSV (default benchmarks/results)"
    )


# --- cases -----------------------------------------------------------------------------


@dataclass
class Impl:
    name: str
    fwd: Callable[[], object]
    fwdbwd: Callable[[], object]


@dataclass
class Case:
    layer: str
    shape: tuple
    params: str
    x: torch.Tensor
    impls: List[Impl] = field(default_factory=list)
    lrn_args: Optional[dict] = None  # for the memory subprocess
    traffic: Optional[tuple] = None  # (fwd, fwdbwd) tensors moved; None: (2, 5), one input


def _backends(op: str, x: torch.Tensor) -> List[str]:
    from . import dispatch

    return [
        name
        for name, entry in sorted(dispatch.table.get(op, {}).items())
        if entry.why_not(x) is None
    ]


def _autograd_pair(fn, inputs, dy):
    """(forward, forward+backward) closures for an autograd function of ``inputs``."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]

    def fwd():
        with torch.no_grad():
            return fn(*leaves)

    def fwdbwd():
        for t in leaves:
            if t is not None:
                t.grad = None
        y = fn(*leaves)
        y.backward(dy)
        return y

    return fwd, fwdbwd


def _lrn_case(x, dy, beta, size=5, alpha=1e-4, k=1.0) -> Case:
    from .functional import local_response_norm

    case = Case(
        "lrn",
        tuple(x.shape),
        f"size={size} beta={beta}",
        x,
        lrn_args=dict(size=size, alpha=alpha, beta=beta, k=k),
    )
    f, fb = _autograd_pair(lambda v: F.local_response_norm(v, size, alpha, beta, k), [x], dy)
    case.impls.append(Impl("torch-eager", f, fb))
    for backend in _backends("lrn_fwd", x):
        f, fb = _autograd_pair(
            lambda v, b=backend: local_response_norm(v, size, alpha, beta, k, backend=b), [x], dy
        )
        case.impls.append(Impl(f"normkit-{backend}", f, fb))
    return case


def _nf():
    """normkit.functional: what a user calls (``backend="auto"``, autograd included),
    timed beside the raw kernels of each backend."""
    from . import functional

    return functional


def _raw_backends(ops, x):
    from . import dispatch

    names = None
    for op in ops:
        have = set(_backends(op, x)) if op in dispatch.table else set()
        names = have if names is None else names & have
    return sorted(names or ())


def _call(op, backend, *args):
    from . import dispatch

    return dispatch.call(op, backend, *args)


def _row_case(layer, x, dy, rms: bool) -> Case:
    d = x.shape[-1]
    w = torch.randn(d, dtype=x.dtype, device=x.device)
    b = None if rms else torch.randn(d, dtype=x.dtype, device=x.device)
    case = Case(layer, tuple(x.shape), "affine", x)
    if rms:
        f, fb = _autograd_pair(lambda v, ww: F.rms_norm(v, (d,), ww, 1e-6), [x, w], dy)
    else:
        f, fb = _autograd_pair(lambda v, ww, bb: F.layer_norm(v, (d,), ww, bb, 1e-5), [x, w, b], dy)
    case.impls.append(Impl("torch-eager", f, fb))
    if rms:
        f, fb = _autograd_pair(lambda v, ww: _nf().rms_norm(v, (d,), ww, 1e-6), [x, w], dy)
    else:
        f, fb = _autograd_pair(
            lambda v, ww, bb: _nf().layer_norm(v, (d,), ww, bb, 1e-5), [x, w, b], dy
        )
    case.impls.append(Impl("normkit-auto", f, fb))
    ops = ("rms_norm_fwd", "rms_norm_bwd") if rms else ("layer_norm_fwd", "layer_norm_bwd")
    for backend in _raw_backends(ops, x):
        if rms:

            def fwd(be=backend):
                return _call("rms_norm_fwd", be, x, w, 1e-6)

            def fwdbwd(be=backend):
                y, rstd = _call("rms_norm_fwd", be, x, w, 1e-6)
                return _call("rms_norm_bwd", be, dy, x, rstd, w)
        else:

            def fwd(be=backend):
                return _call("layer_norm_fwd", be, x, w, b, 1e-5)

            def fwdbwd(be=backend):
                y, mean, rstd = _call("layer_norm_fwd", be, x, w, b, 1e-5)
                return _call("layer_norm_bwd", be, dy, x, mean, rstd, w)

        case.impls.append(Impl(f"normkit-{backend}", fwd, fwdbwd))
    return case


def _group_case(layer, x, dy, groups, affine: bool) -> Case:
    c = x.shape[1]
    w = torch.randn(c, dtype=x.dtype, device=x.device) if affine else None
    b = torch.randn(c, dtype=x.dtype, device=x.device) if affine else None
    case = Case(layer, tuple(x.shape), f"groups={groups} affine={affine}", x)
    if layer == "instancenorm":
        f, fb = _autograd_pair(lambda v: F.instance_norm(v, eps=1e-5), [x], dy)
    else:
        f, fb = _autograd_pair(
            lambda v, ww, bb: F.group_norm(v, groups, ww, bb, 1e-5), [x, w, b], dy
        )
    case.impls.append(Impl("torch-eager", f, fb))
    if layer == "instancenorm":
        f, fb = _autograd_pair(lambda v: _nf().instance_norm(v, eps=1e-5), [x], dy)
    else:
        f, fb = _autograd_pair(
            lambda v, ww, bb: _nf().group_norm(v, groups, ww, bb, 1e-5), [x, w, b], dy
        )
    case.impls.append(Impl("normkit-auto", f, fb))
    # the raw ops take (N, C, L) (docs/ops.md); the module/functional layer does this view
    x, dy = x.reshape(x.shape[0], c, -1), dy.reshape(dy.shape[0], c, -1)
    for backend in _raw_backends(("group_norm_fwd", "group_norm_bwd"), x):

        def fwd(be=backend):
            return _call("group_norm_fwd", be, x, w, b, groups, 1e-5)

        def fwdbwd(be=backend):
            y, mean, rstd = _call("group_norm_fwd", be, x, w, b, groups, 1e-5)
            return _call("group_norm_bwd", be, dy, x, mean, rstd, w, groups)

        case.impls.append(Impl(f"normkit-{backend}", fwd, fwdbwd))
    return case


def _batch_case(x, dy) -> Case:
    c = x.shape[1]
    w = torch.randn(c, dtype=x.dtype, device=x.device)
    b = torch.randn(c, dtype=x.dtype, device=x.device)
    rm = torch.zeros(c, dtype=x.dtype, device=x.device)
    rv = torch.ones(c, dtype=x.dtype, device=x.device)
    case = Case("batchnorm", tuple(x.shape), "train affine momentum=0.1", x)
    f, fb = _autograd_pair(
        lambda v, ww, bb: F.batch_norm(v, rm, rv, ww, bb, training=True, momentum=0.1, eps=1e-5),
        [x, w, b],
        dy,
    )
    case.impls.append(Impl("torch-eager", f, fb))
    arm, arv = rm.clone(), rv.clone()
    f, fb = _autograd_pair(
        lambda v, ww, bb: _nf().batch_norm(v, arm, arv, ww, bb, True, 0.1, 1e-5), [x, w, b], dy
    )
    case.impls.append(Impl("normkit-auto", f, fb))
    ops = ("batch_norm_stats", "batch_norm_apply", "batch_norm_bwd_reduce", "batch_norm_bwd_apply")
    count = x.numel() // c
    nrm, nrv = rm.clone(), rv.clone()
    # the raw ops take (N, C, L) (docs/ops.md); the module/functional layer does this view
    x, dy = x.reshape(x.shape[0], c, -1), dy.reshape(dy.shape[0], c, -1)

    for backend in _raw_backends(ops, x):

        def fwd(be=backend):
            mean, var = _call("batch_norm_stats", be, x)
            rstd = (var + 1e-5).rsqrt_()
            # running statistics as torch keeps them (unbiased variance), for a fair race
            nrm.mul_(0.9).add_(mean.to(nrm.dtype), alpha=0.1)
            nrv.mul_(0.9).add_(var.to(nrv.dtype), alpha=0.1 * count / max(count - 1, 1))
            return _call("batch_norm_apply", be, x, mean, rstd, w, b), mean, rstd

        def fwdbwd(be=backend):
            y, mean, rstd = fwd(be)
            sum_dy, sum_dy_xhat = _call("batch_norm_bwd_reduce", be, dy, x, mean, rstd)
            return _call(
                "batch_norm_bwd_apply", be, dy, x, mean, rstd, w, sum_dy, sum_dy_xhat, count
            )

        case.impls.append(Impl(f"normkit-{backend}", fwd, fwdbwd))
    return case


SHAPES = {  # layer -> (full shape, --quick shape); the full ones are the issue-4 targets
    "lrn": ((32, 96, 55, 55), (4, 32, 16, 16)),
    "rmsnorm": ((8192, 768), (256, 128)),
    "layernorm": ((8192, 768), (256, 128)),
    "instancenorm": ((16, 64, 64, 64), (2, 8, 16, 16)),
    "groupnorm": ((16, 256, 32, 32), (2, 64, 8, 8)),
    "batchnorm": ((32, 96, 55, 55), (4, 16, 16, 16)),
}


def CASES(layers, quick: bool, device: str, dtype: torch.dtype) -> List[Case]:
    """Build the benchmark cases (inputs allocated once, reused by every repeat)."""
    gen = torch.Generator().manual_seed(0)
    cases = []
    for layer in layers:
        if layer == "overhead":
            cases += _overhead_cases(device, dtype)
            continue
        if layer == "model":
            cases += _model_cases(quick, device, dtype)
            continue
        shape = SHAPES[layer][1 if quick else 0]
        x = torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)
        dy = torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)
        if layer == "lrn":
            cases += [_lrn_case(x, dy, beta) for beta in LRN_BETAS]
        elif layer in ("rmsnorm", "layernorm"):
            cases.append(_row_case(layer, x, dy, rms=layer == "rmsnorm"))
        elif layer == "instancenorm":
            cases.append(_group_case(layer, x, dy, shape[1], affine=False))
        elif layer == "groupnorm":
            cases.append(_group_case(layer, x, dy, 32, affine=True))
        elif layer == "batchnorm":
            cases.append(_batch_case(x, dy))
        elif layer in FUSED_LAYERS:  # fused norms (issue 13), block at the end of this file
            cases.append(_fused_case(layer, x, dy, gen))
    return cases


# --- per-call overhead and whole-model train steps ---------------------------------------
#
# A user judges the step of the model they run, not a kernel: these cases time normkit's
# modules against torch.nn's inside whole models (same weights, same data, SGD step), and
# the fixed cost of one layer call on a tiny input (where the kernel costs next to nothing
# and Python dispatch, autograd and validation dominate).


def _norm_factory(lib):
    """Constructors of the norm layers of ``lib`` (torch.nn or normkit)."""
    return {
        "bn2d": lambda c: lib.BatchNorm2d(c),
        "ln": lambda d: lib.LayerNorm(d),
    }


def _overhead_layers(lib):
    """name -> (constructor, tiny input shape); ``lib`` is torch.nn or normkit (same API)."""
    return {
        "BatchNorm2d": (lambda: lib.BatchNorm2d(4), (2, 4, 4, 4)),
        "LayerNorm": (lambda: lib.LayerNorm(8), (2, 8)),
        "GroupNorm": (lambda: lib.GroupNorm(2, 4), (2, 4, 4, 4)),
        "InstanceNorm2d": (lambda: lib.InstanceNorm2d(4, affine=True), (2, 4, 4, 4)),
        "RMSNorm": (lambda: lib.RMSNorm(8), (2, 8)),
        "LocalResponseNorm": (lambda: lib.LocalResponseNorm(3), (2, 4, 4, 4)),
    }


def _module_pair(module, x):
    """(forward, forward+backward) of a module on ``x`` (the input needs its gradient)."""
    leaf = x.detach().clone().requires_grad_()

    def fwd():
        with torch.no_grad():
            return module(leaf)

    def fwdbwd():
        leaf.grad = None
        module.zero_grad(set_to_none=True)
        y = module(leaf)
        y.sum().backward()
        return y

    return fwd, fwdbwd


def _overhead_cases(device, dtype) -> List[Case]:
    import torch.nn as nn

    import normkit

    ours, theirs = _overhead_layers(normkit), _overhead_layers(nn)
    cases = []
    gen = torch.Generator().manual_seed(1)
    for name, (make, shape) in ours.items():
        x = torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)
        case = Case("overhead", shape, name, x)
        t = theirs[name][0]().to(device=device, dtype=dtype)
        case.impls.append(Impl("torch-eager", *_module_pair(t, x)))
        m = make().to(device=device, dtype=dtype)
        case.impls.append(Impl("normkit-auto", *_module_pair(m, x)))
        # which path auto takes on this input (size-aware: "native" = torch's kernel)
        with torch.no_grad():
            m(x)
        from . import dispatch

        case.params = f"{name} [{dispatch.last_backend[_OVERHEAD_OP[name]]}]"
        cases.append(case)
    return cases


# the op whose dispatch.last_backend entry names the path a layer call took
_OVERHEAD_OP = {
    "BatchNorm2d": "batch_norm_stats",
    "LayerNorm": "layer_norm_fwd",
    "GroupNorm": "group_norm_fwd",
    "InstanceNorm2d": "group_norm_fwd",
    "RMSNorm": "rms_norm_fwd",
    "LocalResponseNorm": "lrn_fwd",
}


class _BasicBlock(torch.nn.Module):
    """torchvision's ResNet BasicBlock: conv-BN-ReLU(inplace)-conv-BN, ``out += identity``."""

    def __init__(self, norms, cin, cout, stride):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norms["bn2d"](cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norms["bn2d"](cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), norms["bn2d"](cout)
            )

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


def _resnet(norms, stages, stem=64, classes=10, pool=True):
    nn = torch.nn
    layers = [nn.Conv2d(3, stem, 3, 1, 1, bias=False), norms["bn2d"](stem), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    cin = stem
    for cout, stride, blocks in stages:
        for i in range(blocks):
            layers.append(_BasicBlock(norms, cin, cout, stride if i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


class _PreNormBlock(torch.nn.Module):
    def __init__(self, norms, d, heads):
        super().__init__()
        nn = torch.nn
        self.ln1, self.ln2 = norms["ln"](d), norms["ln"](d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.heads = heads

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, self.heads, d // self.heads).unbind(2)
        att = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        x = x + self.proj(att.transpose(1, 2).reshape(b, s, d))
        return x + self.mlp(self.ln2(x))


def _transformer(norms, d=256, depth=4, heads=4, classes=10):
    nn = torch.nn
    return nn.Sequential(
        *[_PreNormBlock(norms, d, heads) for _ in range(depth)],
        norms["ln"](d),
        nn.Flatten(1),
        nn.LazyLinear(classes),
    )


# name -> (builder, input shape without batch, full batches, --quick batches)
MODELS = {
    # BN from 64ch x 64x64 (stem) down to 512ch x 4x4: torchvision resnet18's stages
    "resnet18-bn": (
        lambda n: _resnet(n, [(64, 1, 2), (128, 2, 2), (256, 2, 2), (512, 2, 2)]),
        (3, 64, 64),
        (8, 1),
        (2,),
    ),
    # many small BN tensors: per-call overhead dominates
    "small-bn": (
        lambda n: _resnet(n, [(16, 1, 1), (32, 2, 1), (32, 2, 1)], stem=16),
        (3, 16, 16),
        (8, 1),
        (2,),
    ),
    # 4-layer pre-norm Transformer encoder, d 256, sequence 64
    "transformer-ln": (lambda n: _transformer(n), (64, 256), (8, 1), (2,)),
    # large BN tensors: 64ch at 64x64 throughout
    "resnet-big-bn": (lambda n: _resnet(n, [(64, 1, 2)], pool=False), (3, 64, 64), (8,), ()),
}


def _train_step_pair(model, x, target):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def fwd():
        with torch.no_grad():
            return model(x)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        return loss

    return fwd, step


def _model_cases(quick, device, dtype) -> List[Case]:
    import copy

    import torch.nn as nn

    import normkit

    cases = []
    for name, (build, shape, batches, quick_batches) in MODELS.items():
        for batch in quick_batches if quick else batches:
            gen = torch.Generator().manual_seed(2)
            if quick:  # a smoke run: smaller inputs
                shape = (shape[0], 16, 16) if len(shape) == 3 else (16, shape[1])
            x = torch.randn(batch, *shape, generator=gen).to(device=device, dtype=dtype)
            target = torch.randint(0, 10, (batch,), generator=gen).to(device)
            torch.manual_seed(3)
            ref = build(_norm_factory(nn)).to(device=device, dtype=dtype)
            ref(x)  # materialise lazy layers
            ours = build(_norm_factory(normkit)).to(device=device, dtype=dtype)
            ours(x)
            ours.load_state_dict(copy.deepcopy(ref.state_dict()))
            case = Case("model", tuple(x.shape), f"{name} batch={batch}", x)
            case.impls.append(Impl("torch-eager", *_train_step_pair(ref, x, target)))
            case.impls.append(Impl("normkit-auto", *_train_step_pair(ours, x, target)))
            cases.append(case)
    return cases


# --- timing ------------------------------------------------------------------------------


def _minor_faults() -> int:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except (ImportError, OSError):  # not on this platform
        return 0


def _median_ms(fn, device: str, warmup: int, repeats: int) -> float:
    """Median time of ``fn`` in ms."""
    if device == "cuda":
        try:
            from triton.testing import do_bench

            return float(
                do_bench(
                    fn, warmup=max(25, warmup), rep=max(100, repeats * 10), return_mode="median"
                )
            )
        except ImportError:
            pass
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _interleaved_ms(fns, device: str, warmup: int, repeats: int):
    """Median ms of each of ``fns`` and its minor page faults per call, the calls
    interleaved (one call of each per round, in alternating order): a drift of the
    machine's speed during the run (another process, a frequency change) then hits every
    implementation alike instead of whichever ran last, and no implementation always
    inherits the caches and heap state of the same predecessor. CUDA: each function by
    ``_median_ms`` (do_bench)."""
    if device == "cuda":
        return [_median_ms(fn, device, warmup, repeats) for fn in fns], [None] * len(fns)
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    faults = [0] * len(fns)
    order = list(range(len(fns)))
    for _ in range(repeats):
        order.reverse()  # alternate the order: no implementation always runs after another
        for i in order:
            fn = fns[i]
            f0 = _minor_faults()
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
            faults[i] += _minor_faults() - f0
    return (
        [statistics.median(t) * 1e3 for t in times],
        [f / max(1, repeats) for f in faults],
    )


def copy_bandwidth_gbps(device: str, nbytes: int = 256 * 2**20) -> float:
    """Bandwidth of a large tensor copy into a preallocated buffer (read + write bytes)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), device, 2, 7)
    return 2 * nbytes / (ms * 1e-3) / 1e9


# --- peak memory (subprocess) ------------------------------------------------------------

_MEM_SCRIPT = r"""
import ctypes, gc, json, sys
import torch
import torch.nn.functional as F
from normkit.functional import local_response_norm
torch.set_num_threads({threads})
shape, impl, a = {shape!r}, {impl!r}, {args!r}
dtype = getattr(torch, {dtype!r})

def run(x, dy):
    x = x.detach().requires_grad_()
    if impl == "torch-eager":
        y = F.local_response_norm(x, a["size"], a["alpha"], a["beta"], a["k"])
    else:
        y = local_response_norm(x, a["size"], a["alpha"], a["beta"], a["k"],
                                backend=impl.split("-", 1)[1])
    y.backward(dy)
    return y, x.grad

def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

small = torch.randn(2, shape[1], 3, 3, dtype=dtype)
run(small, torch.randn_like(small))  # compile kernels, start the thread pool
x = torch.randn(*shape, dtype=dtype)
dy = torch.randn(*shape, dtype=dtype)
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)
base = rss("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM to the current RSS
out = run(x, dy)
peak = rss("VmHWM")
print(json.dumps({{"extra": peak - base, "input": x.numel() * x.element_size()}}))
"""


def peak_extra_memory(case: Case, impl: str, threads: int, dtype: str) -> Optional[float]:
    """Peak extra resident memory of one LRN forward+backward, as a multiple of the input."""
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    code = _MEM_SCRIPT.format(
        threads=threads, shape=case.shape, impl=impl, args=case.lrn_args, dtype=dtype
    )
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env
        )
        import json

        result = json.loads(out.stdout.strip().splitlines()[-1])
        return result["extra"] / result["input"]
    except (subprocess.TimeoutExpired, ValueError, IndexError, KeyError, OSError):
        return None


# --- environment -------------------------------------------------------------------------


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def keep_freed_memory() -> bool:
    """glibc: serve allocations up to 32 MiB from the heap and never trim it (this process
    only), so that an output's memory is not faulted in again on every call. False where
    there is no glibc ``mallopt``."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(
            libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
            and libc.mallopt(m_trim_threshold, 1 << 30)
        )
    except (OSError, AttributeError):
        return False


def allocator_description() -> str:
    """The C allocator in use and the settings that change its page-fault behaviour."""
    preload = os.environ.get("LD_PRELOAD", "")
    if "jemalloc" in preload:
        name = "jemalloc (LD_PRELOAD)"
    elif "tcmalloc" in preload:
        name = "tcmalloc (LD_PRELOAD)"
    else:
        libc, version = platform.libc_ver()
        name = f"{libc or 'libc'} {version} malloc".strip()
    settings = [
        f"{k}={v}"
        for k, v in sorted(os.environ.items())
        if k.startswith("MALLOC_") or k in ("THP_MEM_ALLOC_ENABLE",)
    ]
    try:
        thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read().strip()
        settings.append(f"THP={thp.split('[')[1].split(']')[0]}")
    except (OSError, IndexError):
        pass
    return "; ".join([name] + settings)


def _load_average() -> str:
    """1/5/15-minute load average: how busy the machine was (ratios shift under load)."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:  # not installed or broken: record the absence, do not fail
        return "absent"


def _print_overhead_table(rows) -> None:
    """Fixed cost per layer call (tiny input), normkit vs torch, in microseconds."""
    table = {}
    for r in rows:
        if r["layer"] == "overhead":
            table.setdefault((r["params"], r["pass"]), {})[r["impl"]] = 1e3 * float(r["median_ms"])
    if not table:
        return
    print("\nper-call overhead (tiny inputs; microseconds per call)")
    print(f"{'layer [auto path]':<28}{'pass':<8}{'torch':>9}{'normkit':>9}{'extra':>9}")
    for (layer, pass_name), t in table.items():
        ours, theirs = t.get("normkit-auto"), t.get("torch-eager")
        if ours is None or theirs is None:
            continue
        print(f"{layer:<28}{pass_name:<8}{theirs:9.1f}{ours:9.1f}{ours - theirs:9.1f}")


# --- main --------------------------------------------------------------------------------


def main(args) -> int:
    layers = [s.strip() for s in args.layers.split(",") if s.strip()]
    unknown = [s for s in layers if s not in LAYERS]
    if unknown:
        print(
            f"normkit bench: unknown layer(s) {unknown}; choose from {','.join(LAYERS)}",
            file=sys.stderr,
        )
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "normkit bench: --device cuda but torch sees no CUDA device; use --device cpu",
            file=sys.stderr,
        )
        return 2
    if args.threads < 1:
        print(f"normkit bench: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    kept = args.malloc == "keep" and keep_freed_memory()
    if args.malloc == "keep" and not kept:
        print(
            "normkit bench: --malloc keep needs glibc's mallopt; not available here",
            file=sys.stderr,
        )
        return 2
    repeats = args.repeats or (3 if args.quick else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    memory = args.memory == "on" or (args.memory == "auto" and not args.quick)
    dtype = getattr(torch, args.dtype)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = args.out or os.path.join("benchmarks", "results")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{args.device}-{stamp}.csv")

    copy_gbps = copy_bandwidth_gbps(args.device, 16 * 2**20 if args.quick else 256 * 2**20)
    common = {
        "timestamp": stamp,
        "device": args.device,
        "device_name": _device_name(args.device),
        "torch_version": torch.__version__,
        "numba_version": _version("numba"),
        "triton_version": _version("triton"),
        "threads": args.threads,
        "allocator": allocator_description() + ("; mallopt keeps freed memory" if kept else ""),
        "dtype": args.dtype,
        "load_avg": _load_average(),
        "copy_gbps": f"{copy_gbps:.4g}",
    }
    print(
        f"load average {common['load_avg']} (1/5/15 min; more than the thread count "
        "means a loaded machine: ratios are then not final)"
    )
    print(
        f"normkit bench on {common['device_name']} ({args.device}), {args.threads} threads, "
        f"torch {torch.__version__}, numba {common['numba_version']}, "
        f"copy bandwidth {copy_gbps:.1f} GB/s; allocator: {common['allocator']}"
    )
    print(
        "ratio = torch eager time / normkit time (> 1: normkit faster); medians of "
        f"{repeats} repeats after {warmup} warm-up calls, the implementations of a case "
        "interleaved call by call"
    )
    header = (
        f"{'layer':<13}{'shape':<20}{'params':<28}{'pass':<8}{'impl':<16}"
        f"{'ms':>9}{'ratio':>8}{'GB/s':>8}{'%copy':>7}{'mem/in':>8}{'faults':>8}"
    )
    print(header)
    rows = []
    for case in CASES(layers, args.quick, args.device, dtype):
        nbytes = case.x.numel() * case.x.element_size()
        for pass_name, traffic in (("fwd", 2), ("fwdbwd", 5)):
            if case.traffic:
                traffic = case.traffic[pass_name == "fwdbwd"]
            fns = [impl.fwd if pass_name == "fwd" else impl.fwdbwd for impl in case.impls]
            times, fault_counts = _interleaved_ms(fns, args.device, warmup, repeats)
            by_name = {impl.name: ms for impl, ms in zip(case.impls, times)}
            torch_ms = by_name.get("torch-eager")
            for impl, ms, n_faults in zip(case.impls, times, fault_counts):
                flt = "" if n_faults is None else f"{n_faults:.0f}"
                gbps = traffic * nbytes / (ms * 1e-3) / 1e9
                mem = None
                if memory and case.layer == "lrn" and pass_name == "fwdbwd":
                    mem = peak_extra_memory(case, impl.name, args.threads, args.dtype)
                row = dict(
                    common,
                    layer=case.layer,
                    shape="x".join(map(str, case.shape)),
                    params=case.params,
                    **{"pass": pass_name},
                    impl=impl.name,
                    median_ms=f"{ms:.4g}",
                    repeats=repeats,
                    torch_ms=f"{torch_ms:.4g}" if torch_ms else "",
                    ratio_vs_torch=f"{torch_ms / ms:.3g}" if torch_ms else "",
                    gbps=f"{gbps:.4g}",
                    frac_copy_bw=f"{gbps / copy_gbps:.4g}",
                    peak_extra_mem_x_input="" if mem is None else f"{mem:.2f}",
                    minor_faults_per_call=flt,
                )
                rows.append(row)
                print(
                    f"{case.layer:<13}{row['shape']:<20}{case.params:<28}{pass_name:<8}"
                    f"{impl.name:<16}{ms:9.3g}{row['ratio_vs_torch']:>8}{gbps:8.2f}"
                    f"{100 * gbps / copy_gbps:6.0f}%"
                    f"{row['peak_extra_mem_x_input']:>8}{flt:>8}",
                    flush=True,
                )
    _print_overhead_table(rows)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {path}")
    return 0


# --- fused residual-add norms and modulated LayerNorm (issue 13) -----------------------------
# normkit through its public functional (autograd included) against torch eager's composite:
# ``h = x + r`` then ``F.rms_norm`` / ``F.layer_norm``, and DiT's
# ``F.layer_norm(x) * (1 + scale[:, None]) + shift[:, None]``. Traffic model: the add-norm
# forward reads x, r and writes y, h (4 tensors); its backward reads dy, dh, h and writes
# dx = dresidual (4 more); the modulated norm moves what LayerNorm does (2, then 5).

FUSED_LAYERS = ("add_rms_norm", "add_layer_norm", "modulated_layer_norm")
SHAPES.update(
    {
        "add_rms_norm": ((8192, 768), (256, 128)),
        "add_layer_norm": ((8192, 768), (256, 128)),
        "modulated_layer_norm": ((32, 256, 1152), (4, 64, 128)),  # DiT-XL/2: 256 tokens, D 1152
    }
)


def _leaves_of(*ts):
    return [t.detach().clone().requires_grad_() for t in ts]


def _two_output_pair(fn, inputs, dy, dh):
    """(forward, forward+backward) closures of ``fn(*inputs) -> (y, h)``; backward of both."""
    leaves = _leaves_of(*inputs)

    def fwd():
        with torch.no_grad():
            return fn(*leaves)

    def fwdbwd():
        for t in leaves:
            t.grad = None
        y, h = fn(*leaves)
        torch.autograd.backward((y, h), (dy, dh))
        return y

    return fwd, fwdbwd


def _fused_case(layer, x, dy, gen) -> Case:
    from . import functional as NF

    dev, dt = x.device, x.dtype
    d = x.shape[-1]
    if layer == "modulated_layer_norm":
        n = x.shape[0]
        shift = torch.randn(n, d, generator=gen).to(dev, dt)
        scale = (0.1 * torch.randn(n, d, generator=gen)).to(dev, dt)
        case = Case(layer, tuple(x.shape), "shift/scale (N, D)", x, traffic=(2, 5))

        def composite(v, s, c):
            return F.layer_norm(v, (d,), eps=1e-6) * (1 + c[:, None]) + s[:, None]

        f, fb = _autograd_pair(composite, [x, shift, scale], dy)
        case.impls.append(Impl("torch-eager", f, fb))
        ops = ("modulated_layer_norm_fwd", "modulated_layer_norm_bwd")
        for backend in [*_raw_backends(ops, x), "auto"]:
            f, fb = _autograd_pair(
                lambda v, s, c, be=backend: NF.modulated_layer_norm(v, s, c, 1e-6, backend=be),
                [x, shift, scale],
                dy,
            )
            case.impls.append(Impl(f"normkit-{backend}", f, fb))
        return case
    rms = layer == "add_rms_norm"
    r = torch.randn(*x.shape, generator=gen).to(dev, dt)
    dh = torch.randn(*x.shape, generator=gen).to(dev, dt)
    w = torch.randn(d, generator=gen).to(dev, dt)
    b = torch.randn(d, generator=gen).to(dev, dt)
    case = Case(layer, tuple(x.shape), "affine, grads of y and h", x, traffic=(4, 8))
    if rms:

        def composite(v, rr, ww, bb):
            h = v + rr
            return F.rms_norm(h, (d,), ww, 1e-6), h
    else:

        def composite(v, rr, ww, bb):
            h = v + rr
            return F.layer_norm(h, (d,), ww, bb, 1e-5), h

    f, fb = _two_output_pair(composite, [x, r, w, b], dy, dh)
    case.impls.append(Impl("torch-eager", f, fb))
    # the raw backends, then auto (the call a user makes: below normkit._native's
    # thresholds torch's add and norm)
    for backend in [*_raw_backends((f"{layer}_fwd", f"{layer}_bwd"), x), "auto"]:
        if rms:

            def fused(v, rr, ww, bb, be=backend):
                return NF.add_rms_norm(v, rr, d, ww, 1e-6, backend=be)
        else:

            def fused(v, rr, ww, bb, be=backend):
                return NF.add_layer_norm(v, rr, d, ww, bb, 1e-5, backend=be)

        f, fb = _two_output_pair(fused, [x, r, w, b], dy, dh)
        case.impls.append(Impl(f"normkit-{backend}", f, fb))
    return case
