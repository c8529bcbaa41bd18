"""Compile every Triton kernel ahead of time for a GPU target, without a GPU.

The interpreter tests (tests/test_triton_kernels.py) check the math but never run
Triton's real compiler. This script records every kernel launch the launchers make
for a matrix of dtypes and options (weight/no weight, RMS, LRN regions and betas,
one-chunk and chunked rows, both backward phases), then compiles each distinct
configuration to PTX and a cubin for the chosen target (default: sm_90a, H100) with
``triton.compile``, and reports registers and spills from ``ptxas -v``.

    PYTHONPATH=src python benchmarks/triton_compile_check.py            # full matrix
    PYTHONPATH=src python benchmarks/triton_compile_check.py --quick    # one per kernel

Must run with TRITON_INTERPRET unset (kernels decorated for compilation). Exit status 1
if any configuration fails to compile. Compiling is not running: this proves the kernels
lower to valid GPU code, not that the code is correct or fast on a GPU.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("triton_compile_check: unset TRITON_INTERPRET (the interpreter has no compiler)")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9's default, said explicitly

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from normkit.ops.triton import _common, batch_norm, lrn, norms  # noqa: E402

TYPES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float64: "fp64",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.bool: "i1",
}
LAUNCH_OPTIONS = ("num_warps", "num_stages")


class _Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kw)`` records instead of launching."""

    def __init__(self, kernel: JITFunction, log: list):
        self.kernel, self.log = kernel, log

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.log.append((self.kernel, args, kwargs))


def _arg_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"cannot type kernel argument {value!r}")


def record_launches(quick: bool) -> list:
    """Call every launcher on small CPU tensors with kernels replaced by recorders."""
    log: list = []
    modules = (_common, lrn, norms, batch_norm)
    saved = []
    for mod in modules:
        for name, obj in list(vars(mod).items()):
            if isinstance(obj, JITFunction) and name.endswith("_kernel"):
                saved.append((mod, name, obj))
                setattr(mod, name, _Recorder(obj, log))
    try:
        dtypes = (
            [torch.float32]
            if quick
            else [torch.float32, torch.float16, torch.bfloat16, torch.float64]
        )
        for dt in dtypes:
            x4 = torch.randn(2, 6, 5, 7).to(dt)
            betas = [0.75] if quick else [0.75, 0.5, 1.0, 0.6]
            for within in (False, True):
                for beta in betas:
                    lrn.lrn_fwd(x4, 2, 1, 1e-4, beta, 1.0, within)
                    lrn.lrn_bwd(x4, x4, 2, 1, 1e-4, beta, 1.0, within)
            for d in (37,) if quick else (37, 4000, 5000):  # one block (small, 4096), chunked
                x2 = torch.randn(3, d).to(dt)
                w = torch.ones(d).to(dt)
                for weight in (w,) if quick else (w, None):
                    y, mean, rstd = norms.layer_norm_fwd(x2, weight, weight, 1e-5)
                    norms.layer_norm_bwd(x2, x2, mean, rstd, weight)
                    y, rstd = norms.rms_norm_fwd(x2, weight, 1e-5)
                    norms.rms_norm_bwd(x2, x2, rstd, weight)
            x3 = torch.randn(2, 4, 9).to(dt)
            w = torch.ones(4).to(dt)
            for weight in (w,) if quick else (w, None):
                norms.group_norm_fwd(x3, weight, weight, 2, 1e-5)
                mean = torch.zeros(2, 2, dtype=_common.stats_dtype(dt))
                norms.group_norm_bwd(x3, x3, mean, mean, weight, 2)
                stats = torch.zeros(4, dtype=_common.stats_dtype(dt))
                batch_norm.batch_norm_stats(x3)
                batch_norm.batch_norm_apply(x3, stats, stats, weight, weight)
                batch_norm.batch_norm_bwd_reduce(x3, x3, stats, stats)
                batch_norm.batch_norm_bwd_apply(x3, x3, stats, stats, weight, stats, stats, 18)
    finally:
        for mod, name, obj in saved:
            setattr(mod, name, obj)
    return log


def configurations(log: list) -> dict:
    """Distinct (kernel, signature, constexprs, options) among the recorded launches."""
    configs = {}
    for kernel, args, kwargs in log:
        params = kernel.arg_names
        consts = {k: v for k, v in kwargs.items() if k not in LAUNCH_OPTIONS}
        options = {k: v for k, v in kwargs.items() if k in LAUNCH_OPTIONS}
        signature = {}
        for i, name in enumerate(params):
            if name in consts:
                signature[name] = "constexpr"
            else:
                signature[name] = _arg_type(args[i])
        key = (
            kernel.fn.__name__,
            tuple(signature.items()),
            tuple((k, str(v)) for k, v in consts.items()),
            tuple(options.items()),
        )
        configs.setdefault(key, (kernel, signature, consts, options))
    return configs


def _ptxas_report(ptx: str, arch: str) -> str:
    bin_dir = pathlib.Path(triton.__file__).parent / "backends/nvidia/bin"
    # triton 3.9 emits PTX 9.x, which only the newer bundled ptxas reads
    ptxas = next((p for p in (bin_dir / "ptxas-blackwell", bin_dir / "ptxas") if p.exists()), None)
    if ptxas is None:
        return "no ptxas found"
    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp) / "k.ptx"
        src.write_text(ptx)
        out = subprocess.run(
            [str(ptxas), f"-arch={arch}", "-v", str(src), "-o", str(pathlib.Path(tmp) / "k.cubin")],
            capture_output=True,
            text=True,
        )
    text = out.stdout + out.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores", text)
    return f"{regs.group(1) if regs else '?'} regs, {spill.group(1) if spill else '?'} B spill"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="float32 and one variant each")
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability (90)")
    args = parser.parse_args(argv)
    target = GPUTarget("cuda", args.arch, 32)
    arch = f"sm_{args.arch}a" if args.arch >= 90 else f"sm_{args.arch}"
    configs = configurations(record_launches(args.quick))
    failures = 0
    for (name, _sig, consts, options), (kernel, signature, const_vals, opts) in configs.items():
        params = kernel.arg_names
        constexprs = {(params.index(k),): v for k, v in const_vals.items()}
        label = f"{name} {dict(consts)} {dict(options)} " + ",".join(
            t for t in signature.values() if t.startswith("*")
        )
        try:
            compiled = triton.compile(
                ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                target=target,
                options=opts,
            )
            report = _ptxas_report(compiled.asm["ptx"], arch)
            print(f"ok    {label}: {report}", flush=True)
        except Exception as exc:  # report every failure, then fail the run
            failures += 1
            print(f"FAIL  {label}: {type(exc).__name__}: {str(exc)[-800:]}", flush=True)
    print(
        f"{len(configs) - failures}/{len(configs)} kernel configurations compiled for "
        f"{arch} (triton {triton.__version__})"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
