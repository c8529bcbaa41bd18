"""Peak memory of `normkit scale fit/transform` on a large CSV (bounded-memory check).

Writes a CSV of about --size-mb megabytes to a temporary directory (default /tmp),
then runs, each in its own subprocess,

    normkit scale fit DATA --method zscore -o stats.json
    normkit scale transform DATA --stats stats.json -o OUT.parquet (and OUT.csv, OUT.npy)

and reports each one's wall time, peak resident set size (ru_maxrss of that command,
through a small launcher, see LAUNCH) and the load average, next to processes that only
import normkit, and numpy + pyarrow: the part of the peak that is the data is the
difference. Run it at two sizes (e.g. 256 and 1024): bounded memory means the same
peak. Not part of the test suite.

    PYTHONPATH=src python benchmarks/scale_memory.py --size-mb 1024
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np


def write_csv(path: str, size_mb: float, n_cols: int, seed: int = 0) -> int:
    """A CSV of about size_mb MB: blocks of random rows with per-column offsets and scales."""
    rng = np.random.default_rng(seed)
    target = int(size_mb * 1024 * 1024)
    written = rows = 0
    with open(path, "w") as f:
        f.write(",".join(f"c{i}" for i in range(n_cols)) + "\n")
        while written < target:
            block = rng.normal(size=(20000, n_cols)) * np.logspace(-2, 3, n_cols) + np.linspace(
                -1e4, 1e4, n_cols
            )
            text = "\n".join(",".join(f"{v:.9g}" for v in row) for row in block.tolist()) + "\n"
            f.write(text)
            written += len(text)
            rows += len(block)
    return rows


# Peak RSS through a small launcher: a child forked (or vforked) straight from this
# process starts its peak-RSS count at this process's size, because Linux keeps the
# larger of the old and the new image's peak at exec (scale_vs_polars.py's earlier rows
# all read 196.9 MiB, its own size after polars had read the data). The launcher is
# a bare Python (~10 MiB): that is the floor of the numbers reported now.
LAUNCH = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
kib = usage.ru_maxrss // (1024 if sys.platform == "darwin" else 1)  # macOS: bytes
sys.stderr.write(f"\\nmaxrss_kib {kib}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _maxrss_mib(err: str) -> float:
    for line in reversed(err.splitlines()):
        if line.startswith("maxrss_kib "):
            return int(line.split()[1]) / 1024
    return float("nan")


def measured_run(cmd, env):
    """Run cmd; return (seconds, peak RSS in MiB of that command, returncode, stderr tail)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCH, *cmd],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    secs = time.perf_counter() - t0
    err = proc.stderr.decode(errors="replace")
    return secs, _maxrss_mib(err), proc.returncode, err[-400:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=1024)
    ap.add_argument("--cols", type=int, default=10)
    ap.add_argument(
        "--chunk-rows", type=int, default=None, help="pass --chunk-rows (default: the CLI's)"
    )
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()

    env = dict(os.environ)
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    env["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + env.get("PYTHONPATH", "")
    work = tempfile.mkdtemp(prefix="normkit-scale-mem-", dir=args.dir)
    data = os.path.join(work, "data.csv")
    stats = os.path.join(work, "stats.json")
    t0 = time.perf_counter()
    rows = write_csv(data, args.size_mb, args.cols)
    size = os.path.getsize(data)
    print(
        f"data: {data}: {size / 2**20:.0f} MiB, {rows} rows x {args.cols} columns "
        f"(written in {time.perf_counter() - t0:.0f} s)"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cpus, "
        f"python {platform.python_version()}, numpy {np.__version__}, "
        f"chunk_rows {args.chunk_rows}"
    )

    py = sys.executable
    cli = [py, "-m", "normkit", "scale"]
    chunk = [] if args.chunk_rows is None else ["--chunk-rows", str(args.chunk_rows)]

    def transform(ext):
        out = os.path.join(work, f"out{ext}")
        return cli + ["transform", data, "--stats", stats, "-o", out, "--no-progress"] + chunk

    jobs = [
        ("import normkit only (baseline)", [py, "-c", "import normkit, normkit.scale_cli"]),
        (
            "import numpy+pyarrow (baseline)",
            [py, "-c", "import numpy, pyarrow.csv, pyarrow.parquet, normkit.preprocessing"],
        ),
        (
            "fit zscore",
            cli + ["fit", data, "--method", "zscore", "-o", stats, "--no-progress"] + chunk,
        ),
        ("transform -> parquet", transform(".parquet")),
        ("transform -> csv", transform(".csv")),
        ("transform -> npy", transform(".npy")),
    ]
    print(
        f"{'step':34s} {'seconds':>8s} {'peak RSS MiB':>13s} {'MB/s excl. import':>18s}"
        f" {'load avg 1m':>12s}"
    )
    failed = False
    base_secs = 0.0
    for name, cmd in jobs:
        load = os.getloadavg()[0]
        secs, rss, rc, err = measured_run(cmd, env)
        if "baseline" in name:
            base_secs, rate = max(base_secs, secs), ""
        else:
            rate = f"{size / 1e6 / max(secs - base_secs, 1e-9):18.1f}"
        print(
            f"{name:34s} {secs:8.1f} {rss:13.0f} {rate:>18s} {load:12.2f}"
            + ("" if rc == 0 else f"  FAILED rc={rc}: {err}")
        )
        failed |= rc != 0
    if os.path.exists(os.path.join(work, "out.npy")):
        out = np.load(os.path.join(work, "out.npy"), mmap_mode="r")
        print(
            f"out.npy: shape {out.shape}, column means of the first 100k rows "
            f"{np.round(np.nanmean(out[:100000], axis=0), 3).tolist()}"
        )
    if not args.keep:
        for name in os.listdir(work):
            os.unlink(os.path.join(work, name))
        os.rmdir(work)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
