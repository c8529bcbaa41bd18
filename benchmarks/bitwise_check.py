"""Bitwise comparison of normkit versions on the numba backend.

Usage: run once per version, then compare::

    PYTHONPATH=<old>/src python benchmarks/bitwise_check.py old.pt
    PYTHONPATH=src python benchmarks/bitwise_check.py new.pt
    python benchmarks/bitwise_check.py --compare old.pt new.pt

Saves the outputs and every gradient of the numba-backed functional ops (LayerNorm, RMSNorm,
GroupNorm, InstanceNorm, BatchNorm train/eval with running stats, LRN for several betas,
even sizes, within-channel and NHWC), at mean 0 and 1e3, small and pool-sized inputs.
"""

import sys

import torch

if sys.argv[1] == "--compare":
    a, b = torch.load(sys.argv[2]), torch.load(sys.argv[3])
    assert a.keys() == b.keys(), "the two runs saved different cases"
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    print(f"compared {len(a)} tensors; not bit-identical: {diff or 'none'}")
    sys.exit(1 if diff else 0)

import normkit.functional as F  # noqa: E402

out = {}
g = torch.Generator().manual_seed(0)


def rnd(*s, mean=0.0):
    return (torch.randn(*s, generator=g, dtype=torch.float64) + mean).float()


def grads(name, fn, *inputs):
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    y = fn(*leaves)
    dy = rnd(*y.shape)
    y.backward(dy)
    out[name + ".y"] = y.detach()
    for i, t in enumerate(leaves):
        out[f"{name}.g{i}"] = t.grad


for mean in (0.0, 1e3):
    x = rnd(64, 768, mean=mean)
    w = rnd(768)
    b = rnd(768)
    grads(f"ln{mean}", lambda x, w, b: F.layer_norm(x, (768,), w, b, backend="cpu"), x, w, b)
    grads(f"rms{mean}", lambda x, w: F.rms_norm(x, (768,), w, 1e-6, backend="cpu"), x, w)
    x4 = rnd(4, 32, 9, 11, mean=mean)
    w = rnd(32)
    b = rnd(32)
    grads(f"gn{mean}", lambda x, w, b: F.group_norm(x, 8, w, b, backend="cpu"), x4, w, b)
    grads(
        f"in{mean}", lambda x, w, b: F.instance_norm(x, weight=w, bias=b, backend="cpu"), x4, w, b
    )
    rm, rv = torch.zeros(32), torch.ones(32)
    grads(
        f"bn{mean}",
        lambda x, w, b: F.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5, backend="cpu"),
        x4,
        w,
        b,
    )
    out[f"bn{mean}.rm"], out[f"bn{mean}.rv"] = rm.clone(), rv.clone()
    grads(
        f"bneval{mean}",
        lambda x, w, b: F.batch_norm(x, rm, rv, w, b, False, 0.1, 1e-5, backend="cpu"),
        x4,
        w,
        b,
    )
# large enough for the thread pool (> ops.cpu._pool.SERIAL_BELOW elements)
xl = rnd(512, 768, mean=10.0)
wl = rnd(768)
bl = rnd(768)
grads("ln-large", lambda x, w, b: F.layer_norm(x, (768,), w, b, backend="cpu"), xl, wl, bl)
xb = rnd(16, 64, 16, 16)
wb = rnd(64)
bb = rnd(64)
grads(
    "bn-large",
    lambda x, w, b: F.batch_norm(x, None, None, w, b, True, 0.1, 1e-5, backend="cpu"),
    xb,
    wb,
    bb,
)
grads("gn-large", lambda x, w, b: F.group_norm(x, 16, w, b, backend="cpu"), xb, wb, bb)
grads("lrn-large", lambda x: F.local_response_norm(x, 5, 1e-2, 0.75, 1.0, backend="cpu"), xb)
x = rnd(2, 13, 7, 9)
for beta in (0.5, 0.75, 1.0, 0.6):
    grads(f"lrn{beta}", lambda x: F.local_response_norm(x, 5, 1e-2, beta, 1.0, backend="cpu"), x)
grads(
    "lrn-even",
    lambda x: F.local_response_norm(x, 4, 1e-2, 0.75, 2.0, convention="onnx", backend="cpu"),
    x,
)
grads(
    "lrn-within",
    lambda x: F.local_response_norm(
        x, 3, 1.0, 0.75, 1.0, region="within", convention="caffe", backend="cpu"
    ),
    x,
)
grads(
    "lrn-nhwc",
    lambda x: F.local_response_norm(x, 5, 1e-2, 0.75, 1.0, channel_dim=-1, backend="cpu"),
    x.permute(0, 2, 3, 1).contiguous(),
)
torch.save(out, sys.argv[1])
print(len(out), "tensors")
