"""What the benchmark scripts share: a run's timestamp and load average, and its CSV.

Imported by the scripts in this folder (``python benchmarks/<script>.py`` puts the folder
on ``sys.path``).
"""

from __future__ import annotations

import csv
import datetime
import os
import pathlib
from typing import List, Optional

__all__ = ["stamp", "load_average", "write_csv"]


def stamp() -> str:
    """The run's UTC timestamp, as it appears in result file names (``20261127T230919Z``)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def load_average() -> str:
    """The 1/5/15-minute load average, two decimals each (ratios shift on a busy machine)."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def write_csv(
    out: str, name: str, run_stamp: str, rows: List[dict], common: Optional[dict] = None
) -> pathlib.Path:
    """Write ``rows`` to ``<out>/<name>-<run_stamp>.csv`` (the folder made if needed), each
    row preceded by the ``common`` fields; returns the path."""
    folder = pathlib.Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{run_stamp}.csv"
    common = common or {}
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(common) + list(rows[0]))
        writer.writeheader()
        writer.writerows(dict(common, **row) for row in rows)
    return path
