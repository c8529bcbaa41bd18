"""GPU check of the Triton ops that benchmarks/gpu_validate.py does not cover.

gpu_validate.py calls the LRN/LayerNorm/RMSNorm/GroupNorm/BatchNorm kernels directly.
This script goes through the public API instead (``backend="triton"`` and ``"auto"``)
for the fused and newer ops: ``add_rms_norm``, ``add_layer_norm``,
``modulated_layer_norm``, ``filter_response_norm``, plus the layer modules on a CUDA
model. Each output and gradient is compared with the same function run by the
``torch`` backend in float64 (the composition of torch ops), under the suite's
tolerance policy (tests/tolerance.py):
``max|ours - ref| <= 2 * max|torch_same_dtype - ref| + ATOL[dtype] * scale``.

    PYTHONPATH=src python benchmarks/gpu_fused_check.py [--dtypes float32,float16,bfloat16]

One line per output, ``[ok  ]`` or ``[FAIL]``; exit status 1 if anything fails. Needs a
CUDA device (the interpreter path of these ops is covered by tests/test_fused_norms.py
and tests/test_frn.py on CPU tensors).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from tolerance import ATOL, as_f64  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def cases():
    """(name, fn(backend, *tensors) -> tuple of outputs, shapes of the tensor inputs)."""
    import normkit.functional as NF
    import normkit.fused as fused

    def add_rms(backend, x, r, w):
        return fused.add_rms_norm(x, r, x.shape[-1], w, 1e-6, backend=backend)

    def add_rms_fp32_res(backend, x, r, w):
        return fused.add_rms_norm(
            x, r, x.shape[-1], w, 1e-6, residual_in_fp32=True, backend=backend
        )

    def add_ln(backend, x, r, w, b):
        return fused.add_layer_norm(x, r, x.shape[-1], w, b, 1e-5, backend=backend)

    def mod_ln(backend, x, shift, scale):
        return (fused.modulated_layer_norm(x, shift, scale, 1e-6, backend=backend),)

    def frn(backend, x, w, b, tau):
        return (NF.filter_response_norm(x, w, b, tau, 1e-6, backend=backend),)

    return [
        ("add_rms_norm D=4096", add_rms, [(512, 4096), (512, 4096), (4096,)], 0.0),
        (
            "add_rms_norm D=1023 residual_in_fp32",
            add_rms_fp32_res,
            [(97, 1023)] * 2 + [(1023,)],
            0.0,
        ),
        ("add_rms_norm mean 1e3", add_rms, [(64, 768), (64, 768), (768,)], 1e3),
        ("add_layer_norm D=4096", add_ln, [(512, 4096), (512, 4096), (4096,), (4096,)], 0.0),
        ("add_layer_norm D=8199", add_ln, [(33, 8199), (33, 8199), (8199,), (8199,)], 0.0),
        ("add_layer_norm mean 1e4", add_ln, [(64, 768), (64, 768), (768,), (768,)], 1e4),
        ("modulated_layer_norm", mod_ln, [(8, 256, 1152), (8, 1152), (8, 1152)], 0.0),
        ("modulated_layer_norm mean 1e4", mod_ln, [(4, 77, 768), (4, 768), (4, 768)], 1e4),
        (
            "filter_response_norm",
            frn,
            [(8, 64, 28, 28), (1, 64, 1, 1), (1, 64, 1, 1), (1, 64, 1, 1)],
            0.0,
        ),
    ]


def run(fn, backend, inputs, dys):
    ins = [t.detach().clone().requires_grad_(True) for t in inputs]
    outs = fn(backend, *ins)
    torch.autograd.backward(list(outs), [d.to(o.dtype) for o, d in zip(outs, dys)])
    return list(outs) + [t.grad for t in ins]


def compare(what, ours, ref, same, dtype):
    ref64, ours64, same64 = as_f64(ref), as_f64(ours), as_f64(same)
    scale = max(1.0, float(abs(ref64).max()))
    err = float(abs(ours64 - ref64).max())
    terr = float(abs(same64 - ref64).max())
    bound = 2 * terr + ATOL[dtype] * scale
    ok = bool(err <= bound) and bool((ours64 == ours64).all())
    tag = "[ok  ]" if ok else "[FAIL]"
    print(f"{tag} {what}: ours {err:.3g} torch {terr:.3g} bound {bound:.3g}", flush=True)
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dtypes", default="float32,float16,bfloat16")
    p.add_argument(
        "--device",
        default="cuda",
        help="cuda (default); cpu only with TRITON_INTERPRET=1, to check this script",
    )
    args = p.parse_args(argv)
    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device: this script checks the Triton kernels on a GPU")
    from normkit import dispatch

    failures = 0
    gen = torch.Generator(device=dev).manual_seed(0)
    for name, fn, shapes, mean in cases():
        base = [
            torch.randn(s, generator=gen, device=dev, dtype=torch.float64) + (mean if i == 0 else 0)
            for i, s in enumerate(shapes)
        ]
        for dname in args.dtypes.split(","):
            dtype = DTYPES[dname]
            inputs = [t.to(dtype) for t in base]
            outs_shape = [o.shape for o in fn("torch", *inputs)]
            dys = [
                torch.randn(s, generator=gen, device=dev, dtype=torch.float64) for s in outs_shape
            ]
            try:
                ours = run(fn, "triton", inputs, dys)
                used = dict(dispatch.last_backend)
                same = run(fn, "torch", inputs, dys)
                ref = run(fn, "torch", [t.to(torch.float64) for t in inputs], dys)
            except Exception as exc:  # report and go on: one broken op must not hide the rest
                print(f"[FAIL] {name} {dname}: {type(exc).__name__}: {exc}", flush=True)
                failures += 1
                continue
            ran = sorted({v for v in used.values()})
            for i, (o, r, s) in enumerate(zip(ours, ref, same)):
                if o is None and r is None:
                    continue
                what = f"{name} {dname} out{i} (backends {ran})"
                failures += not compare(what, o, r, s, dtype)

    # the layer modules inside a CUDA model, backend "auto": which backend runs, and grads flow
    import normkit

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 3, padding=1),
        normkit.BatchNorm2d(64),
        torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(64, 64, 3, padding=1),
        normkit.GroupNorm(8, 64),
        normkit.LocalResponseNorm(5),
    ).to(dev)
    x = torch.randn(8, 3, 32, 32, device=dev)
    model(x).sum().backward()
    print(f"auto on CUDA ran: {dict(dispatch.last_backend)}", flush=True)
    print(f"fused check: {'all ok' if not failures else f'{failures} FAILED'}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
