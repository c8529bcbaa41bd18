"""`normkit scale` against polars on the same files, whole processes, wall time and peak RSS.

Writes a numeric CSV of about --size-mb MiB (default 68) to a temporary
directory, then times, each in its own subprocess (start-up included):

    fit:        normkit scale fit DATA.csv --method zscore -o stats.json
                polars: pl.scan_csv(DATA).select(mean, std).collect(engine="streaming")
    transform:  normkit scale transform DATA.csv --stats stats.json -o OUT.parquet
                polars: pl.scan_csv(DATA).select((c - mean) / std).sink_parquet(OUT)
                (means and stds computed by polars first, outside the timing)
    help:       normkit scale --help   (start-up only)

Results go to --csv (appended) and stdout, with the load average: on a shared,
loaded machine the ratios are indicative only.

    PYTHONPATH=src python benchmarks/scale_vs_polars.py --size-mb 68 \
        --csv benchmarks/results/scale_vs_polars.csv [--repeat 5]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile

import numpy as np

from scale_memory import measured_run  # the peak-RSS launcher (this folder)


def write_csv(path: str, size_mb: float, n_cols: int = 10, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    target = int(size_mb * 1024 * 1024)
    written = 0
    with open(path, "w") as f:
        f.write(",".join(f"c{i}" for i in range(n_cols)) + "\n")
        while written < target:
            block = rng.normal(size=(20000, n_cols)) * np.logspace(-2, 3, n_cols)
            text = "\n".join(",".join(f"{v:.9g}" for v in row) for row in block.tolist()) + "\n"
            f.write(text)
            written += len(text)


def run(cmd, env) -> tuple:
    """(wall seconds, peak RSS MiB) of one command (the launcher's start-up included)."""
    wall, mib, status, err = measured_run(cmd, env)
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (status {status}):\n{err}")
    return wall, mib


POLARS_FIT = """
import sys, polars as pl
lf = pl.scan_csv(sys.argv[1])
cols = lf.collect_schema().names()
lf.select([pl.col(c).mean().alias(c + "_mean") for c in cols]
          + [pl.col(c).std(ddof=0).alias(c + "_std") for c in cols]).collect(engine="streaming")
"""

POLARS_TRANSFORM = """
import sys, json, polars as pl
stats = json.load(open(sys.argv[3]))
lf = pl.scan_csv(sys.argv[1])
lf.select([((pl.col(c) - m) / s).alias(c) for c, (m, s) in stats.items()]).sink_parquet(sys.argv[2])
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=68)
    ap.add_argument("--dir", default=None, help="where to write the data (default: a temp dir)")
    ap.add_argument("--csv", default=None, help="append results to this CSV")
    ap.add_argument("--repeat", type=int, default=1, help="run the cases N times, interleaved")
    args = ap.parse_args()
    env = dict(os.environ)
    py = sys.executable
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        data = os.path.join(tmp, "data.csv")
        write_csv(data, args.size_mb)
        size = os.path.getsize(data) / 2**20
        stats = os.path.join(tmp, "stats.json")
        pstats = os.path.join(tmp, "pstats.json")
        import polars as pl

        df = pl.read_csv(data)
        import json

        json.dump({c: (df[c].mean(), df[c].std(ddof=0)) for c in df.columns}, open(pstats, "w"))
        del df
        rows = []
        cases = [
            ("help", "normkit", [py, "-m", "normkit", "scale", "--help"]),
            (
                "fit",
                "normkit",
                [
                    py,
                    "-m",
                    "normkit",
                    "scale",
                    "fit",
                    data,
                    "--method",
                    "zscore",
                    "-o",
                    stats,
                    "--no-progress",
                    "--force",
                ],
            ),
            ("fit", "polars", [py, "-c", POLARS_FIT, data]),
            (
                "transform csv->parquet",
                "normkit",
                [
                    py,
                    "-m",
                    "normkit",
                    "scale",
                    "transform",
                    data,
                    "--stats",
                    stats,
                    "-o",
                    os.path.join(tmp, "n.parquet"),
                    "--no-progress",
                    "--force",
                ],
            ),
            (
                "transform csv->parquet",
                "polars",
                [py, "-c", POLARS_TRANSFORM, data, os.path.join(tmp, "p.parquet"), pstats],
            ),
        ]
        # --repeat N: the cases in turn, N times (interleaved, so a change of load hits
        # normkit and polars alike); the ratio below is of the medians
        for _, (task, tool, cmd) in [(i, c) for i in range(args.repeat) for c in cases]:
            load = os.getloadavg()[0]
            wall, rss = run(cmd, env)
            rows.append(
                {
                    "task": task,
                    "tool": tool,
                    "size_mib": round(size, 1),
                    "wall_s": round(wall, 3),
                    "peak_rss_mib": round(rss, 1),
                    "load_avg_1m": round(load, 2),
                    "cpus": os.cpu_count(),
                    "machine": platform.machine(),
                }
            )
            print(rows[-1], flush=True)
    import statistics

    by = {}
    for r in rows:
        by.setdefault((r["task"], r["tool"]), []).append(r["wall_s"])
    for task in ("fit", "transform csv->parquet"):
        n, p = statistics.median(by[(task, "normkit")]), statistics.median(by[(task, "polars")])
        print(
            f"{task}: normkit {n:.3f} s / polars {p:.3f} s = {n / p:.2f}x"
            f" (median of {len(by[(task, 'normkit')])})"
        )
    if args.csv:
        new = not os.path.exists(args.csv)
        with open(args.csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
