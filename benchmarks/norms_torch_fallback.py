"""Forward and forward+backward of normkit's norm layers (backend="torch") vs torch.nn, CPU.

Ad-hoc timing (median of 10 after a warm-up) for the report; ``normkit bench`` is the
harness. Run: ``PYTHONPATH=src python benchmarks/norms_torch_fallback.py``.
"""

import platform
import time

import torch

import normkit


def median_time(fn, repeats=10):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


CASES = [
    ("BatchNorm2d(64) (32,64,56,56)", lambda m: m.BatchNorm2d(64), (32, 64, 56, 56)),
    ("GroupNorm(32,64) (32,64,56,56)", lambda m: m.GroupNorm(32, 64), (32, 64, 56, 56)),
    ("InstanceNorm2d(64,affine) (32,64,56,56)", lambda m: m.InstanceNorm2d(64, affine=True),
     (32, 64, 56, 56)),
    ("LayerNorm(1024) (8192,1024)", lambda m: m.LayerNorm(1024), (8192, 1024)),
    ("RMSNorm(1024) (8192,1024)", lambda m: m.RMSNorm(1024), (8192, 1024)),
]


def main():
    print(f"torch {torch.__version__}, python {platform.python_version()}, "
          f"threads {torch.get_num_threads()}, float32, CPU")
    for name, make, shape in CASES:
        x = torch.randn(shape, requires_grad=True)
        dy = torch.randn(shape)
        row = []
        for lib in (torch.nn, normkit):
            m = make(lib)
            if lib is normkit:
                m.backend = "torch"
            row.append(median_time(lambda: m(x)))
            row.append(median_time(lambda: m(x).backward(dy)))
        print(f"{name:42s} torch fwd {row[0] * 1e3:7.1f} ms  f+b {row[1] * 1e3:7.1f} ms | "
              f"normkit fwd {row[2] * 1e3:7.1f} ms  f+b {row[3] * 1e3:7.1f} ms | "
              f"f+b ratio {row[3] / row[1]:.2f}")


if __name__ == "__main__":
    main()
