"""``normkit scale``: fit and apply the data scalers to files too big for memory.

    normkit scale fit DATA --method minmax|zscore|reciprocal|log10|arctan -o stats.json
    normkit scale transform DATA --stats stats.json -o OUT

DATA is a CSV file (comma-separated by default, an optional header line of
column names) or a ``.npy`` file. Both are read ``--chunk-rows`` rows at a
time, so memory stays bounded by the chunk, not the file: ``fit`` streams
``partial_fit``, ``transform`` streams ``transform`` and appends each chunk to
OUT (``.npy`` when OUT ends in ``.npy``, CSV otherwise). A progress bar
(tqdm) goes to stderr. By default a chunk holds about 2**20 values (at most
65536 rows), so wide files stay bounded too.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import sys
import tempfile
import warnings
from typing import Iterator, List, Optional, Tuple

import numpy as np

METHODS = {
    "minmax": "MinMaxScaler",
    "zscore": "StandardScaler",
    "reciprocal": "ReciprocalScaler",
    "log10": "Log10Scaler",
    "arctan": "ArctanScaler",
}

_NPY_HEADER_BYTES = 128  # fixed size, so the row count can be patched in after streaming


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="scale_command", metavar="{fit,transform}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("data", metavar="DATA", help="input file: .npy, or CSV (anything else)")
    common.add_argument("--chunk-rows", type=int, default=None,
                        help="rows per chunk (bounds memory; default: about 2**20 values "
                             "per chunk, at most 65536 rows)")
    common.add_argument("--delimiter", default=",", help="CSV field separator (default ',')")
    common.add_argument("--no-progress", action="store_true", help="no progress bar")
    common.add_argument("--force", action="store_true",
                        help="replace an existing output file (never an input)")

    fit = sub.add_parser("fit", parents=[common], help="compute statistics, write stats.json",
                         description="Stream DATA through partial_fit and save the scaler.")
    fit.add_argument("--method", required=True, choices=sorted(METHODS),
                     help="minmax (MinMaxScaler), zscore (StandardScaler), reciprocal "
                          "(1/(1+x)), log10, arctan (atan(x)*2/pi)")
    fit.add_argument("-o", "--output", required=True, metavar="STATS",
                     help="where to write the statistics (JSON)")
    fit.add_argument("--feature-range", nargs=2, type=float, metavar=("A", "B"),
                     default=None, help="minmax only: target range (default 0 1)")
    fit.add_argument("--clip", action="store_true",
                     help="minmax only: clip transformed values to the feature range")

    tr = sub.add_parser("transform", parents=[common], help="apply saved statistics to DATA",
                        description="Stream DATA through the saved scaler into OUT.")
    tr.add_argument("--stats", required=True, help="statistics written by `normkit scale fit`")
    tr.add_argument("-o", "--output", required=True, metavar="OUT",
                    help="output file: .npy if it ends in .npy, CSV otherwise")
    tr.add_argument("--inverse", action="store_true", help="apply inverse_transform instead")


# ----------------------------------------------------------------------------
# Readers: yield (chunk as a 2-D array, progress units consumed).
# ----------------------------------------------------------------------------

class _Source:
    """One input file, read in chunks."""

    def __init__(self, path: str, chunk_rows: Optional[int], delimiter: str):
        if chunk_rows is not None and chunk_rows < 1:
            raise CLIError(f"--chunk-rows must be >= 1, got {chunk_rows}")
        if not os.path.isfile(path):
            raise CLIError(f"input file {path!r} does not exist")
        self.path = path
        self.chunk_rows = chunk_rows
        self.delimiter = delimiter
        self.is_npy = path.endswith(".npy")
        self.columns: Optional[List[str]] = None
        self.dtype = np.dtype(np.float64)
        if self.is_npy:
            self._open_npy()
        else:
            self.total = os.path.getsize(path)  # progress in bytes
            self.unit = "B"

    def _open_npy(self) -> None:
        with open(self.path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            except ValueError as exc:
                raise CLIError(f"{self.path}: not a valid .npy file ({exc})") from None
            self.offset = f.tell()
        if dtype.kind not in "fiub" or dtype.hasobject:
            raise CLIError(f"{self.path}: dtype {dtype} is not numeric; the scalers need "
                           "float, int or bool data")
        if len(shape) not in (1, 2):
            raise CLIError(f"{self.path}: expected a 1-D or 2-D array, got shape {shape}; "
                           "reshape it to (n_samples, n_features)")
        if fortran and len(shape) == 2 and shape[1] > 1:
            raise CLIError(f"{self.path}: Fortran-ordered arrays cannot be streamed by rows; "
                           "save it with np.save(path, np.ascontiguousarray(a))")
        self.npy_dtype = dtype
        self.n_rows = shape[0]
        self.n_cols = shape[1] if len(shape) == 2 else 1
        self.dtype = dtype if dtype.kind == "f" else np.dtype(np.float64)
        self.total = self.n_rows
        self.unit = "rows"

    def _rows_per_chunk(self, n_cols: int) -> int:
        if self.chunk_rows is not None:
            return self.chunk_rows
        # ~2**20 values (8 MiB of float64, a few times that as CSV text) whatever the width
        return max(1, min(65536, 2 ** 20 // max(n_cols, 1)))

    def chunks(self) -> Iterator[Tuple[np.ndarray, int]]:
        return self._npy_chunks() if self.is_npy else self._csv_chunks()

    def _npy_chunks(self):
        row_bytes = self.n_cols * self.npy_dtype.itemsize
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            done = 0
            while done < self.n_rows:
                rows = min(self._rows_per_chunk(self.n_cols), self.n_rows - done)
                buf = f.read(rows * row_bytes)
                if len(buf) != rows * row_bytes:
                    raise CLIError(f"{self.path}: file is truncated (expected {self.n_rows} rows, "
                                   f"data ends inside row {done + len(buf) // row_bytes})")
                yield np.frombuffer(buf, dtype=self.npy_dtype).reshape(rows, self.n_cols), rows
                done += rows

    def _csv_chunks(self):
        with open(self.path, "r", encoding="utf-8", newline="") as f:
            first = f.readline()
            if not first.strip():
                raise CLIError(f"{self.path}: empty CSV file (no data rows)")
            fields = [s.strip() for s in first.strip().split(self.delimiter)]
            pending: List[str] = []
            if _is_header(fields):
                self.columns = fields
            else:
                pending.append(first)
            chunk_rows = self._rows_per_chunk(len(fields))
            consumed = 0 if pending else len(first)  # a data first line is counted with its chunk
            line_no = 2 if self.columns else 1  # 1-based line number of the chunk's first line
            while True:
                lines = pending + list(itertools.islice(f, chunk_rows - len(pending)))
                pending = []
                if not lines:
                    break
                nbytes = sum(len(s) for s in lines) + consumed
                consumed = 0
                n_read = len(lines)
                lines = [s for s in lines if s.strip()]
                if lines:
                    yield self._parse(lines, line_no), nbytes
                line_no += n_read

    def _parse(self, lines: List[str], line_no: int) -> np.ndarray:
        try:
            arr = np.loadtxt(lines, delimiter=self.delimiter, dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise CLIError(f"{self.path}: cannot parse CSV lines {line_no}-"
                           f"{line_no + len(lines) - 1} as numbers ({exc}); empty fields are "
                           "not supported: write missing values as nan") from None
        return arr


def _is_header(fields: List[str]) -> bool:
    for s in fields:
        try:
            float(s)
        except ValueError:
            return True
    return False


# ----------------------------------------------------------------------------
# Writers.
# ----------------------------------------------------------------------------

def _npy_header(dtype: np.dtype, shape: Tuple[int, int]) -> bytes:
    """A version-1.0 .npy header padded to a fixed size (valid: spaces then newline)."""
    d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
         "shape": tuple(shape)}
    text = repr(d)
    magic = np.lib.format.magic(1, 0)
    body_len = _NPY_HEADER_BYTES - len(magic) - 2
    text = text.ljust(body_len - 1) + "\n"
    if len(text) != body_len:
        raise CLIError(f"internal: .npy header for shape {shape} does not fit "
                       f"{_NPY_HEADER_BYTES} bytes")
    return magic + body_len.to_bytes(2, "little") + text.encode("latin1")


class _Sink:
    """Writes OUT through a temporary file in OUT's directory; ``commit`` renames it into place.

    Until ``commit``, OUT (and any older file under that name) is untouched;
    ``abort`` removes the temporary file. A SIGKILL can leave only a
    ``.OUT.*.tmp`` file behind, never a partial OUT.
    """

    def __init__(self, path: str, columns: Optional[List[str]], delimiter: str):
        self.path = path
        self.is_npy = path.endswith(".npy")
        self.delimiter = delimiter
        self.rows = 0
        self.cols = None
        self.dtype = None
        fd, self.tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                        prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        self.f = os.fdopen(fd, "wb" if self.is_npy else "w", encoding=None if self.is_npy
                           else "utf-8", newline=None if self.is_npy else "")
        if not self.is_npy and columns:
            self.f.write(delimiter.join(columns) + "\n")

    def write(self, y: np.ndarray) -> None:
        if self.cols is None:
            self.cols, self.dtype = y.shape[1], y.dtype
            if self.is_npy:
                self.f.write(_npy_header(self.dtype, (0, self.cols)))
        self.rows += y.shape[0]
        if self.is_npy:
            self.f.write(np.ascontiguousarray(y).tobytes())
        else:
            # repr of a Python float is the shortest string that reads back identical
            sep = self.delimiter
            self.f.write("".join(sep.join(map(repr, row)) + "\n" for row in y.tolist()))

    def close(self, n_cols: int, dtype: np.dtype) -> None:
        if self.is_npy:
            if self.cols is None:
                self.cols, self.dtype = n_cols, dtype
            self.f.seek(0)
            self.f.write(_npy_header(self.dtype, (self.rows, self.cols)))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.f.close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


# ----------------------------------------------------------------------------
# Commands.
# ----------------------------------------------------------------------------

def _progress(src: _Source, desc: str, disable: bool):
    from tqdm import tqdm
    return tqdm(total=src.total, unit=src.unit, unit_scale=True, desc=desc, file=sys.stderr,
                disable=disable, dynamic_ncols=True)


class _rows_context:
    """Re-raise a scaler's data error with the chunk's place in the file."""

    def __init__(self, path: str, start: int, rows: int):
        self.where = f"{path}, data rows {start}..{start + rows - 1}"
        self.start = start

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, ValueError):
            raise CLIError(f"{self.where} (0-based, header excluded; 'row r' below means "
                           f"data row {self.start} + r): {exc}") from None
        return False


def _check_output(out: str, inputs: List[str], force: bool) -> None:
    """Refuse to write over an input (ever) or over an existing file (without --force)."""
    if os.path.isdir(out):
        raise CLIError(f"-o {out} is a directory; give a file name")
    if not os.path.exists(out):
        return
    for src in inputs:
        if os.path.exists(src) and os.path.samefile(out, src):
            raise CLIError(f"-o {out} is the input file {src}; writing it would destroy the "
                           "data being read: choose another output path")
    if not force:
        raise CLIError(f"-o {out} already exists; pass --force to replace it (it is replaced "
                       "only once the new file is complete)")


class _Terminated(SystemExit):
    """SIGTERM/SIGHUP, raised in the main thread so partial outputs are cleaned up."""


def _on_signal(signum, frame):
    raise _Terminated(128 + signum)


def _fit(args) -> int:
    from . import preprocessing as P

    cls = getattr(P, METHODS[args.method])
    kwargs = {}
    if args.method == "minmax":
        if args.feature_range is not None:
            kwargs["feature_range"] = tuple(args.feature_range)
        kwargs["clip"] = bool(args.clip)
    elif args.feature_range is not None or args.clip:
        raise CLIError(f"--feature-range and --clip apply to --method minmax only, "
                       f"not {args.method}")
    scaler = cls(**kwargs)
    src = _Source(args.data, args.chunk_rows, args.delimiter)
    _check_output(args.output, [args.data], args.force)
    with _progress(src, f"fit {args.method}", args.no_progress) as bar:
        start = 0
        for chunk, n in src.chunks():
            with _rows_context(args.data, start, len(chunk)):
                scaler.partial_fit(chunk)
            start += len(chunk)
            bar.update(n)
    if not hasattr(scaler, "n_features_in_"):
        raise CLIError(f"{args.data}: no data rows")
    scaler.save(args.output, meta={"source": os.path.basename(args.data),
                                   "columns": src.columns, "method": args.method})
    print(f"normkit scale fit: {scaler!r} on {scaler._st_rows} rows x "
          f"{scaler.n_features_in_} columns -> {args.output}", file=sys.stderr)
    return 0


def _transform(args) -> int:
    from . import preprocessing as P

    scaler = P.load(args.stats)
    src = _Source(args.data, args.chunk_rows, args.delimiter)
    _check_output(args.output, [args.data, args.stats], args.force)
    below = np.zeros(scaler.n_features_in_, dtype=np.int64)
    above = np.zeros_like(below)
    sink = None
    try:
        with _progress(src, "transform", args.no_progress) as bar:
            start = 0
            for chunk, n in src.chunks():
                if sink is None:
                    sink = _Sink(args.output, src.columns, args.delimiter)
                chunk = chunk.astype(src.dtype, copy=False)
                with _rows_context(args.data, start, len(chunk)):
                    if args.inverse:
                        y = scaler.inverse_transform(chunk)
                    else:
                        with warnings.catch_warnings():
                            # one summary at the end instead of a warning per chunk
                            warnings.simplefilter("ignore", P.OutOfRangeWarning)
                            y = scaler.transform(chunk)
                        counts = scaler.out_of_range(chunk)
                        below += counts.below
                        above += counts.above
                start += len(chunk)
                sink.write(y)
                bar.update(n)
        if sink is None:
            sink = _Sink(args.output, src.columns, args.delimiter)
        sink.close(scaler.n_features_in_, src.dtype)
    except BaseException:
        if sink is not None:
            sink.abort()  # OUT, old or absent, stays as it was
        raise
    out = below + above
    print(f"normkit scale transform: {sink.rows} rows -> {args.output}", file=sys.stderr)
    if out.any():
        cols = np.flatnonzero(out)
        names = src.columns or [str(i) for i in range(scaler.n_features_in_)]
        detail = "; ".join(f"{names[c]}: {below[c]} below, {above[c]} above" for c in cols[:10])
        more = f"; and {len(cols) - 10} more column(s)" if len(cols) > 10 else ""
        print(f"normkit scale transform: {int(out.sum())} value(s) outside the fitted range "
              f"({detail}{more})" + ("; clipped" if getattr(scaler, "clip", False) else ""),
              file=sys.stderr)
    return 0


def main(args) -> int:
    if getattr(args, "scale_command", None) is None:
        print("usage: normkit scale {fit,transform} ...  (see normkit scale fit --help)",
              file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            signal.signal(sig, _on_signal)
    try:
        return _fit(args) if args.scale_command == "fit" else _transform(args)
    except (CLIError, ValueError, TypeError, RuntimeError, OSError) as exc:
        print(f"normkit scale {args.scale_command}: error: {exc}", file=sys.stderr)
        return 2
