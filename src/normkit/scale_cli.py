"""``normkit scale``: fit and apply the data scalers to files too big for memory.

    normkit scale fit DATA --method minmax|zscore|reciprocal|log10|arctan -o stats.json
    normkit scale transform DATA --stats stats.json -o OUT

DATA and OUT are chosen by extension: ``.csv``, ``.parquet``/``.pq``,
``.arrow``/``.feather``/``.ipc`` (Arrow IPC file or stream) and ``.npy``;
any other extension is refused. CSV, Parquet and Arrow are streamed as
record batches through pyarrow (multi-threaded CSV parsing, memory bounded by
the batch, not the file); ``.npy`` is read ``--chunk-rows`` rows at a time.

``--columns a,b`` picks the columns to scale (default: every numeric column);
the other columns pass through ``transform`` unchanged (``.npy`` output holds
the scaled columns only). Statistics go to a JSON file with the column names,
so ``transform`` selects the same columns by name. Outputs are written to a
temporary file next to OUT and renamed into place only when complete: an
error, Ctrl-C or SIGTERM leaves an existing OUT as it was. An existing OUT is
replaced only with ``--force``; an input file is never overwritten.
"""

from __future__ import annotations

import argparse
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

FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "ipc",
    ".feather": "ipc",
    ".ipc": "ipc",
    ".npy": "npy",
}

_NPY_HEADER_BYTES = 128  # fixed size, so the row count can be patched in after streaming
_CSV_BLOCK_BYTES = 1 << 20  # per block, parsed on pyarrow's threads; 8 MiB blocks let its
# read-ahead hold ~300 MiB on a 1 GiB file, 1 MiB blocks ~40 MiB (measured)


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="scale_command", metavar="{fit,transform}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "data", metavar="DATA", help="input file: .csv, .parquet/.pq, .arrow/.feather/.ipc or .npy"
    )
    common.add_argument(
        "--columns",
        default=None,
        metavar="A,B,...",
        help="comma-separated columns to scale (default: every numeric column; "
        "transform: the columns fit used)",
    )
    common.add_argument(
        "--chunk-rows",
        type=int,
        default=None,
        help="at most this many rows per chunk (default: pyarrow's batches; "
        "for .npy about 2**20 values per chunk)",
    )
    common.add_argument("--delimiter", default=",", help="CSV field separator (default ',')")
    common.add_argument("--no-progress", action="store_true", help="no progress bar")
    common.add_argument(
        "--force", action="store_true", help="replace an existing output file (never an input)"
    )

    fit = sub.add_parser(
        "fit",
        parents=[common],
        help="compute statistics, write stats.json",
        description="Stream DATA through partial_fit and save the scaler.",
    )
    fit.add_argument(
        "--method",
        required=True,
        choices=sorted(METHODS),
        help="minmax (MinMaxScaler), zscore (StandardScaler), reciprocal "
        "(1/(1+x)), log10, arctan (atan(x)*2/pi)",
    )
    fit.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="STATS",
        help="where to write the statistics (JSON)",
    )
    fit.add_argument(
        "--feature-range",
        nargs=2,
        type=float,
        metavar=("A", "B"),
        default=None,
        help="minmax only: target range (default 0 1)",
    )
    fit.add_argument(
        "--clip",
        action="store_true",
        help="minmax only: clip transformed values to the feature range",
    )

    tr = sub.add_parser(
        "transform",
        parents=[common],
        help="apply saved statistics to DATA",
        description="Stream DATA through the saved scaler into OUT.",
    )
    tr.add_argument("--stats", required=True, help="statistics written by `normkit scale fit`")
    tr.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="output file, format by extension (.csv, .parquet, .arrow, .npy)",
    )
    tr.add_argument("--inverse", action="store_true", help="apply inverse_transform instead")


def _format(path: str, what: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise CLIError(
            f"{what} {path}: unknown extension {ext or '(none)'!r}; supported: "
            ".csv, .parquet/.pq, .arrow/.feather/.ipc (Arrow IPC), .npy"
        )
    return FORMATS[ext]


def _pyarrow():
    try:
        import pyarrow
    except ImportError:
        raise CLIError(
            "CSV/Parquet/Arrow files need pyarrow, which is not installed: "
            "pip install 'normkit[data]' (or pyarrow)"
        ) from None
    return pyarrow


# ----------------------------------------------------------------------------
# Readers: batches (pyarrow RecordBatch, or a 2-D array for .npy) plus progress.
# ----------------------------------------------------------------------------


def _is_header(fields: List[str]) -> bool:
    for s in fields:
        try:
            float(s)
        except ValueError:
            return True
    return False


class _Source:
    """One input file, read in batches."""

    def __init__(
        self,
        path: str,
        chunk_rows: Optional[int],
        delimiter: str,
        float_columns: Optional[List[str]] = None,
    ):
        if chunk_rows is not None and chunk_rows < 1:
            raise CLIError(f"--chunk-rows must be >= 1, got {chunk_rows}")
        self.fmt = _format(path, "input")
        if not os.path.isfile(path):
            raise CLIError(f"input file {path!r} does not exist")
        self.path = path
        self.chunk_rows = chunk_rows
        self.delimiter = delimiter
        self.named = True  # the file has column names (CSV header, Parquet/Arrow schema)
        if self.fmt == "npy":
            self._open_npy()
            self.named = False
            self.names = [f"x{i}" for i in range(self.n_cols)]
            self.numeric = list(self.names)
            return
        pa = _pyarrow()
        if self.fmt == "csv":
            self._open_csv(pa, float_columns)
        elif self.fmt == "parquet":
            import pyarrow.parquet as pq

            try:
                self._pf = pq.ParquetFile(path)
            except (pa.ArrowException, OSError) as exc:
                raise CLIError(f"{path}: not a readable Parquet file ({exc})") from None
            self.schema = self._pf.schema_arrow
            self.total, self.unit = self._pf.metadata.num_rows, "rows"
        else:
            self._open_ipc(pa)
        self.names = list(self.schema.names)
        self.numeric = [f.name for f in self.schema if _is_numeric(pa, f.type)]

    # -- formats --------------------------------------------------------------

    def _open_csv(self, pa, float_columns) -> None:
        import pyarrow.csv as pcsv

        with open(self.path, "rb") as f:
            first = f.readline()
        try:
            fields = [s.strip() for s in first.decode("utf-8").strip().split(self.delimiter)]
        except UnicodeDecodeError as exc:
            raise CLIError(
                f"{self.path}: not UTF-8 text ({exc}); is it really a CSV "
                "file? (Parquet files end in .parquet)"
            ) from None
        if not first.strip():
            raise CLIError(f"{self.path}: empty CSV file (no data rows)")
        has_header = _is_header(fields)
        self.named = has_header
        names = fields if has_header else [f"x{i}" for i in range(len(fields))]
        types = {}
        if not has_header:  # a bare numeric table: every column is data
            types = {n: pa.float64() for n in names}
        for n in float_columns or []:
            types[n] = pa.float64()
        self._csv_args = dict(
            read_options=pcsv.ReadOptions(
                block_size=_CSV_BLOCK_BYTES,
                use_threads=True,
                column_names=names,
                skip_rows=int(has_header),
            ),
            parse_options=pcsv.ParseOptions(delimiter=self.delimiter),
            convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=True),
        )
        self._pcsv = pcsv
        self.total, self.unit = os.path.getsize(self.path), "B"
        self._file = pa.OSFile(self.path)
        try:
            self._reader = pcsv.open_csv(self._file, **self._csv_args)
        except pa.ArrowInvalid as exc:
            raise CLIError(f"{self.path}: cannot parse CSV ({exc})") from None
        self.schema = self._reader.schema

    def _open_ipc(self, pa) -> None:
        source = pa.memory_map(self.path)
        try:
            self._ipc = pa.ipc.open_file(source)
            self.total = sum(
                self._ipc.get_record_batch(i).num_rows for i in range(self._ipc.num_record_batches)
            )
        except pa.ArrowInvalid:
            source.seek(0)
            try:
                self._ipc = pa.ipc.open_stream(source)
            except pa.ArrowInvalid as exc:
                raise CLIError(f"{self.path}: not an Arrow IPC file or stream ({exc})") from None
            self.total = None
        self.schema = self._ipc.schema
        self.unit = "rows"

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
            raise CLIError(
                f"{self.path}: dtype {dtype} is not numeric; the scalers need "
                "float, int or bool data"
            )
        if len(shape) not in (1, 2):
            raise CLIError(
                f"{self.path}: expected a 1-D or 2-D array, got shape {shape}; "
                "reshape it to (n_samples, n_features)"
            )
        if fortran and len(shape) == 2 and shape[1] > 1:
            raise CLIError(
                f"{self.path}: Fortran-ordered arrays cannot be streamed by rows; "
                "save it with np.save(path, np.ascontiguousarray(a))"
            )
        self.npy_dtype = dtype
        self.n_rows = shape[0]
        self.n_cols = shape[1] if len(shape) == 2 else 1
        self.total = self.n_rows
        self.unit = "rows"

    # -- iteration ------------------------------------------------------------

    def batches(self) -> Iterator[Tuple[object, int]]:
        """(batch, progress units) pairs; batch is a RecordBatch, or an ndarray for .npy."""
        if self.fmt == "npy":
            yield from self._npy_chunks()
            return
        for batch, units in self._arrow_batches():
            if self.chunk_rows is None or batch.num_rows <= self.chunk_rows:
                yield batch, units
                continue
            for start in range(0, batch.num_rows, self.chunk_rows):
                part = batch.slice(start, self.chunk_rows)
                yield part, (units if start + self.chunk_rows >= batch.num_rows else 0)

    def _arrow_batches(self):
        pa = _pyarrow()
        if self.fmt == "parquet":
            for b in self._pf.iter_batches(batch_size=self.chunk_rows or 65536):
                yield b, b.num_rows
        elif self.fmt == "ipc":
            if hasattr(self._ipc, "num_record_batches"):
                for i in range(self._ipc.num_record_batches):
                    b = self._ipc.get_batch(i)
                    yield b, b.num_rows
            else:
                for b in self._ipc:
                    yield b, b.num_rows
        else:
            seen = 0
            while True:
                try:
                    b = self._reader.read_next_batch()
                except StopIteration:
                    break
                except pa.ArrowInvalid as exc:
                    raise CLIError(
                        f"{self.path}: cannot parse CSV after data row {seen} "
                        f"({exc}); write missing values as empty fields or nan"
                    ) from None
                seen += b.num_rows
                pos = self._file.tell()
                yield b, pos
            self._file.close()

    def _npy_chunks(self):
        row_bytes = self.n_cols * self.npy_dtype.itemsize
        per_chunk = self.chunk_rows or max(1, min(65536, 2**20 // max(self.n_cols, 1)))
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            done = 0
            while done < self.n_rows:
                rows = min(per_chunk, self.n_rows - done)
                buf = f.read(rows * row_bytes)
                if len(buf) != rows * row_bytes:
                    raise CLIError(
                        f"{self.path}: file is truncated (expected {self.n_rows} rows, "
                        f"data ends inside row {done + len(buf) // row_bytes})"
                    )
                yield np.frombuffer(buf, dtype=self.npy_dtype).reshape(rows, self.n_cols), rows
                done += rows


def _is_numeric(pa, t) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _matrix(batch, columns: List[str]) -> np.ndarray:
    """The selected columns of a RecordBatch as a 2-D array; nulls become NaN.

    The dtype follows the scalers' policy: float32 when every column is float32,
    float64 otherwise (integers and booleans included).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = [batch.column(batch.schema.get_field_index(c)) for c in columns]
    all_f32 = all(pa.types.is_float32(c.type) for c in cols)
    dtype = np.float32 if all_f32 else np.float64
    out = np.empty((batch.num_rows, len(cols)), dtype=dtype)
    target = pa.float32() if all_f32 else pa.float64()
    for j, c in enumerate(cols):
        if c.type != target:
            c = pc.cast(c, target)
        out[:, j] = c.to_numpy(zero_copy_only=False)
    return out


# ----------------------------------------------------------------------------
# Writers: a temporary file next to OUT, renamed into place by commit().
# ----------------------------------------------------------------------------


def _npy_header(dtype: np.dtype, shape: Tuple[int, int]) -> bytes:
    """A version-1.0 .npy header padded to a fixed size (valid: spaces then newline)."""
    d = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": tuple(shape),
    }
    text = repr(d)
    magic = np.lib.format.magic(1, 0)
    body_len = _NPY_HEADER_BYTES - len(magic) - 2
    text = text.ljust(body_len - 1) + "\n"
    if len(text) != body_len:
        raise CLIError(
            f"internal: .npy header for shape {shape} does not fit {_NPY_HEADER_BYTES} bytes"
        )
    return magic + body_len.to_bytes(2, "little") + text.encode("latin1")


class _Sink:
    """Writes OUT through a temporary file in OUT's directory; ``commit`` renames it into place.

    Until ``commit``, OUT (and any older file under that name) is untouched;
    ``abort`` removes the temporary file. A SIGKILL can leave only a
    ``.OUT.*.tmp`` file behind, never a partial OUT.
    """

    def __init__(self, path: str, delimiter: str, header: bool):
        self.path = path
        self.fmt = _format(path, "output")
        self.delimiter = delimiter
        self.header = header
        self.rows = 0
        self.cols = None
        self.dtype = None
        self.writer = None
        fd, self.tmp = tempfile.mkstemp(
            dir=os.path.dirname(os.path.abspath(path)),
            prefix=f".{os.path.basename(path)}.",
            suffix=".tmp",
        )
        self.f = os.fdopen(fd, "wb")

    def write_array(self, y: np.ndarray) -> None:
        """.npy output: the scaled matrix."""
        if self.cols is None:
            self.cols, self.dtype = y.shape[1], y.dtype
            self.f.write(_npy_header(self.dtype, (0, self.cols)))
        self.rows += y.shape[0]
        self.f.write(np.ascontiguousarray(y).tobytes())

    def write_batch(self, batch) -> None:
        """CSV / Parquet / Arrow output: a RecordBatch (scaled and pass-through columns)."""
        if self.writer is None:
            self._open(batch.schema)
        self.rows += batch.num_rows
        self.writer.write_batch(batch)

    def _open(self, schema) -> None:
        import pyarrow as pa

        if self.fmt == "csv":
            import pyarrow.csv as pcsv

            if self.header:
                self.f.write((self.delimiter.join(schema.names) + "\n").encode("utf-8"))
            opts = pcsv.WriteOptions(include_header=False, delimiter=self.delimiter)
            self.writer = pcsv.CSVWriter(self.f, schema, write_options=opts)
        elif self.fmt == "parquet":
            import pyarrow.parquet as pq

            self.writer = pq.ParquetWriter(self.f, schema)
        else:
            self.writer = pa.ipc.new_file(self.f, schema)

    def commit(self, n_cols: int, dtype, empty_schema=None) -> None:
        if self.fmt == "npy":
            if self.cols is None:
                self.cols, self.dtype = n_cols, np.dtype(dtype)
                self.f.write(_npy_header(self.dtype, (0, self.cols)))
            self.f.seek(0)
            self.f.write(_npy_header(self.dtype, (self.rows, self.cols)))
        else:
            if self.writer is None and empty_schema is not None:
                self._open(empty_schema)
            if self.writer is not None:
                self.writer.close()
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        # close the format writer first: left open, pyarrow's ParquetWriter would try to
        # finish the file from its __del__ after the file object below is closed
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # the temporary file is deleted below whatever it holds
                pass
        try:
            self.f.close()
        except Exception:  # a half-initialised writer: the temporary file goes anyway
            pass
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


# ----------------------------------------------------------------------------
# Commands.
# ----------------------------------------------------------------------------


def _progress(src: _Source, desc: str, disable: bool):
    from tqdm import tqdm

    return tqdm(
        total=src.total,
        unit=src.unit,
        unit_scale=True,
        desc=desc,
        file=sys.stderr,
        disable=disable,
        dynamic_ncols=True,
    )


def _advance(bar, src: _Source, units: int) -> None:
    if src.unit == "B":  # CSV: units is the reader's byte position
        bar.update(max(0, units - bar.n))
    else:
        bar.update(units)


class _rows_context:
    """Re-raise a scaler's data error with the chunk's place in the file."""

    def __init__(self, path: str, start: int, rows: int):
        self.where = f"{path}, data rows {start}..{start + rows - 1}"
        self.start = start

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, ValueError):
            raise CLIError(
                f"{self.where} (0-based, header excluded; 'row r' below means "
                f"data row {self.start} + r): {exc}"
            ) from None
        return False


def _check_output(out: str, inputs: List[str], force: bool) -> None:
    """Refuse to write over an input (ever) or over an existing file (without --force)."""
    if os.path.isdir(out):
        raise CLIError(f"-o {out} is a directory; give a file name")
    if not os.path.exists(out):
        return
    for src in inputs:
        if os.path.exists(src) and os.path.samefile(out, src):
            raise CLIError(
                f"-o {out} is the input file {src}; writing it would destroy the "
                "data being read: choose another output path"
            )
    if not force:
        raise CLIError(
            f"-o {out} already exists; pass --force to replace it (it is replaced "
            "only once the new file is complete)"
        )


class _Terminated(SystemExit):
    """SIGTERM/SIGHUP, raised in the main thread so partial outputs are cleaned up."""


def _on_signal(signum, frame):
    raise _Terminated(128 + signum)


def _split_columns(text: Optional[str]) -> Optional[List[str]]:
    if text is None:
        return None
    cols = [c.strip() for c in text.split(",") if c.strip()]
    if not cols:
        raise CLIError(f"--columns {text!r} names no column; e.g. --columns price,qty")
    return cols


def _select(src: _Source, wanted: Optional[List[str]], what: str) -> List[str]:
    if wanted is None:
        if not src.numeric:
            raise CLIError(
                f"{src.path}: no numeric column to scale (columns: "
                f"{src.names[:10]}); pick them with --columns"
            )
        return list(src.numeric)
    missing = [c for c in wanted if c not in src.names]
    if missing:
        raise CLIError(
            f"{src.path}: {what} column(s) {missing} not in the file (it has "
            f"{src.names[:20]}{' ...' if len(src.names) > 20 else ''})"
        )
    return wanted


def _as_float_matrix(src: _Source, batch, columns: List[str]) -> np.ndarray:
    if src.fmt == "npy":
        return batch
    return _matrix(batch, columns)


def _fit(args) -> int:
    from . import preprocessing as P

    cls = getattr(P, METHODS[args.method])
    kwargs = {}
    if args.method == "minmax":
        if args.feature_range is not None:
            kwargs["feature_range"] = tuple(args.feature_range)
        kwargs["clip"] = bool(args.clip)
    elif args.feature_range is not None or args.clip:
        raise CLIError(
            f"--feature-range and --clip apply to --method minmax only, not {args.method}"
        )
    scaler = cls(**kwargs)
    wanted = _split_columns(args.columns)
    _check_output(args.output, [args.data], args.force)
    src = _Source(args.data, args.chunk_rows, args.delimiter, float_columns=wanted)
    columns = _select(src, wanted, "--columns")
    if src.fmt != "npy":
        for c in columns:
            field = src.schema.field(c)
            if not _is_numeric(_pyarrow(), field.type):
                raise CLIError(
                    f"{args.data}: column {c!r} has type {field.type}, not numbers; "
                    "scale numeric columns only (see --columns)"
                )
    with _progress(src, f"fit {args.method}", args.no_progress) as bar:
        start = 0
        for batch, units in src.batches():
            X = _as_float_matrix(src, batch, columns)
            if len(X):
                with _rows_context(args.data, start, len(X)):
                    scaler.partial_fit(X)
            start += len(X)
            _advance(bar, src, units)
    if not hasattr(scaler, "n_features_in_"):
        raise CLIError(f"{args.data}: no data rows")
    scaler.save(
        args.output,
        meta={
            "source": os.path.basename(args.data),
            "columns": columns if src.named else None,
            "method": args.method,
        },
    )
    passed = [c for c in src.names if c not in columns]
    note = f"; not scaled (pass through transform): {passed[:10]}" if passed else ""
    print(
        f"normkit scale fit: {scaler!r} on {scaler._st_rows} rows x "
        f"{scaler.n_features_in_} columns -> {args.output}{note}",
        file=sys.stderr,
    )
    return 0


def _transform(args) -> int:
    from . import preprocessing as P

    _check_output(args.output, [args.data, args.stats], args.force)
    _format(args.output, "output")
    scaler = P.load(args.stats)
    fitted = (getattr(scaler, "meta_", {}) or {}).get("columns")
    if fitted is not None and not (
        isinstance(fitted, list) and all(isinstance(c, str) for c in fitted)
    ):
        raise CLIError(f"{args.stats}: meta.columns must be a list of column names")
    wanted = _split_columns(args.columns) or fitted
    src = _Source(
        args.data, args.chunk_rows, args.delimiter, float_columns=wanted if wanted else None
    )
    columns = _select(src, wanted if src.named else None, "fitted")
    out_fmt = _format(args.output, "output")
    passthrough = [c for c in src.names if c not in columns]
    if out_fmt == "npy" and passthrough and src.fmt != "npy":
        raise CLIError(
            f"-o {args.output}: a .npy output holds only the scaled columns, but "
            f"{args.data} has other columns {passthrough[:10]}; write .parquet, "
            ".arrow or .csv to keep them, or select them away"
        )
    below = np.zeros(scaler.n_features_in_, dtype=np.int64)
    above = np.zeros_like(below)
    sink = None
    out_dtype = None
    try:
        sink = _Sink(args.output, args.delimiter, header=src.named)
        with _progress(src, "transform", args.no_progress) as bar:
            start = 0
            for batch, units in src.batches():
                X = _as_float_matrix(src, batch, columns)
                if src.fmt == "npy":
                    from .preprocessing._dtypes import output_dtype

                    X = X.astype(output_dtype(X.dtype), copy=False)
                with _rows_context(args.data, start, len(X)):
                    if args.inverse:
                        y = scaler.inverse_transform(X)
                    else:
                        with warnings.catch_warnings():
                            # one summary at the end instead of a warning per chunk
                            warnings.simplefilter("ignore", P.OutOfRangeWarning)
                            y = scaler.transform(X)
                        counts = scaler.out_of_range(X)
                        below += counts.below
                        above += counts.above
                start += len(X)
                out_dtype = y.dtype
                _write(sink, src, batch, columns, y)
                _advance(bar, src, units)
        sink.commit(
            scaler.n_features_in_,
            out_dtype or np.float64,
            empty_schema=None if src.fmt == "npy" else src.schema,
        )
    except BaseException:
        if sink is not None:
            sink.abort()  # OUT, old or absent, stays as it was
        raise
    out = below + above
    print(f"normkit scale transform: {sink.rows} rows -> {args.output}", file=sys.stderr)
    if out.any():
        cols = np.flatnonzero(out)
        names = columns if src.named else [str(i) for i in range(scaler.n_features_in_)]
        detail = "; ".join(f"{names[c]}: {below[c]} below, {above[c]} above" for c in cols[:10])
        more = f"; and {len(cols) - 10} more column(s)" if len(cols) > 10 else ""
        print(
            f"normkit scale transform: {int(out.sum())} value(s) outside the fitted range "
            f"({detail}{more})" + ("; clipped" if getattr(scaler, "clip", False) else ""),
            file=sys.stderr,
        )
    return 0


def _write(sink: _Sink, src: _Source, batch, columns: List[str], y: np.ndarray) -> None:
    if sink.fmt == "npy":
        sink.write_array(y)
        return
    import pyarrow as pa

    if src.fmt == "npy":
        names = columns
        arrays = [pa.array(y[:, j]) for j in range(y.shape[1])]
    else:
        names = list(batch.schema.names)
        arrays = list(batch.columns)
        for j, c in enumerate(columns):
            i = names.index(c)
            col = y[:, j]
            # per column, the dtype policy: a floating column keeps its type
            if pa.types.is_floating(arrays[i].type):
                col = col.astype(arrays[i].type.to_pandas_dtype(), copy=False)
            arrays[i] = pa.array(col)
    sink.write_batch(pa.RecordBatch.from_arrays(arrays, names=names))


def main(args) -> int:
    if getattr(args, "scale_command", None) is None:
        print(
            "usage: normkit scale {fit,transform} ...  (see normkit scale fit --help)",
            file=sys.stderr,
        )
        return 2
    previous = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            try:
                previous[sig] = signal.signal(sig, _on_signal)
            except ValueError:  # not the main thread: signals cannot be handled here
                pass
    try:
        return _fit(args) if args.scale_command == "fit" else _transform(args)
    except (CLIError, ValueError, TypeError, RuntimeError, OSError) as exc:
        print(f"normkit scale {args.scale_command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():  # callers (tests, notebooks) keep theirs
            signal.signal(sig, handler)
