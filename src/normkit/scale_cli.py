"""``normkit scale``: fit and apply the data scalers to files too big for memory.

    normkit scale fit DATA --method minmax|zscore|reciprocal|log10|arctan -o stats.json
    normkit scale fit DATA --method zscore --column-method price=log10,age=minmax -o stats.json
    normkit scale transform DATA --stats stats.json -o OUT

DATA and OUT are chosen by extension: ``.csv``, ``.parquet``/``.pq``,
``.arrow``/``.feather``/``.ipc`` (Arrow IPC file or stream) and ``.npy``;
any other extension is refused. CSV, Parquet and Arrow are streamed as
record batches through pyarrow (CSV pieces parsed on a thread pool, memory bounded
by the pieces in flight, not the file); ``.npy`` is read ``--chunk-rows`` rows at a time.

``--columns a,b`` picks the columns to scale (default: every numeric column);
``--column-method col=method,...`` gives some columns their own method (the
others use ``--method``). The other columns pass through ``transform``
unchanged (``.npy`` output holds the scaled columns only). Statistics go to a
JSON file with the column names and methods, so ``transform`` selects the same
columns by name and applies each one's method.

Each column is streamed as a zero-copy NumPy view of its Arrow buffer through
a one-feature scaler (per-feature statistics do not depend on the other
columns), so no row-major copy of the table is made and the arithmetic is the
scalers' own. Outputs are written to a
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
from typing import Dict, Iterator, List, Optional, Tuple


class _LazyNumPy:
    """Stands for ``np`` until first used, so ``--help`` does not import NumPy.

    ``normkit scale --help`` only builds this module's parser: importing NumPy for it
    was ~0.12 s of its start-up. The first ``np.x`` imports NumPy and replaces this
    object in the module's globals.
    """

    def __getattr__(self, name):
        import numpy

        globals()["np"] = numpy
        return getattr(numpy, name)


np = _LazyNumPy()

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
_CSV_BLOCK_BYTES = 1 << 20  # the first block, read once for the header's column types
_CSV_PIECE_BYTES = 4 << 20  # parsed on its own thread; workers + 1 are in memory at a time
_PARQUET_GROUP_ROWS = 1 << 17  # rows per Parquet row group (polars wrote ~87k here)


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
        description="Stream DATA column by column through the scalers' partial_fit and save "
        "their statistics (one scaler per method; see --column-method).",
    )
    fit.add_argument(
        "--method",
        default=None,
        choices=sorted(METHODS),
        help="the method of every scaled column: minmax (MinMaxScaler), zscore "
        "(StandardScaler), reciprocal (1/(1+x)), log10, arctan (atan(x)*2/pi); "
        "optional when --column-method names every column to scale",
    )
    fit.add_argument(
        "--column-method",
        default=None,
        metavar="COL=METHOD,...",
        help="per-column methods, e.g. price=log10,age=zscore: these columns use "
        "their own method (and are scaled even if --columns omits them), the others "
        "--method's",
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
        help="minmax columns only: target range (default 0 1)",
    )
    fit.add_argument(
        "--clip",
        action="store_true",
        help="minmax columns only: clip transformed values to the feature range",
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
    ):
        if chunk_rows is not None and chunk_rows < 1:
            raise CLIError(f"--chunk-rows must be >= 1, got {chunk_rows}")
        self.fmt = _format(path, "input")
        if not os.path.isfile(path):
            raise CLIError(f"input file {path!r} does not exist")
        self.path = path
        self.chunk_rows = chunk_rows
        self.delimiter = delimiter
        self.read_columns: Optional[List[str]] = None
        self.float_columns: List[str] = []
        self.named = True  # the file has column names (CSV header, Parquet/Arrow schema)
        if self.fmt == "npy":
            self._open_npy()
            self.named = False
            self.names = [f"x{i}" for i in range(self.n_cols)]
            self.numeric = list(self.names)
            return
        pa = _pyarrow()
        if self.fmt == "csv":
            self._open_csv(pa)
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

    def _open_csv(self, pa) -> None:
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
        self._csv_read = dict(
            block_size=_CSV_BLOCK_BYTES,
            use_threads=True,
            column_names=names,
            skip_rows=int(has_header),
        )
        self._csv_parse = pcsv.ParseOptions(delimiter=self.delimiter)
        self._pcsv = pcsv
        self._data_offset = len(first) if has_header else 0
        self.total, self.unit = os.path.getsize(self.path), "B"
        # the first block fixes the column types (pyarrow's rule for streaming); read it
        # once here for the schema, then the real reader gets every type up front,
        # which parses about twice as fast as inferring (measured, docs/scalers.md)
        try:
            with pa.OSFile(self.path) as f:
                sniff = pcsv.open_csv(
                    f,
                    read_options=pcsv.ReadOptions(**self._csv_read),
                    parse_options=self._csv_parse,
                    convert_options=pcsv.ConvertOptions(
                        column_types=types, strings_can_be_null=True
                    ),
                )
                self.schema = sniff.schema
        except pa.ArrowInvalid as exc:
            raise CLIError(f"{self.path}: cannot parse CSV ({exc})") from None

    def select(self, read_columns: Optional[List[str]], float_columns: List[str]) -> None:
        """Read only ``read_columns`` (None: all), parsing ``float_columns`` as float64."""
        self.read_columns = read_columns
        self.float_columns = list(float_columns)

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
        keep = self.read_columns
        if self.fmt == "parquet":
            for b in self._pf.iter_batches(batch_size=self.chunk_rows or 65536, columns=keep):
                yield b, b.num_rows
        elif self.fmt == "ipc":
            if hasattr(self._ipc, "num_record_batches"):
                batches = (self._ipc.get_batch(i) for i in range(self._ipc.num_record_batches))
            else:
                batches = iter(self._ipc)
            for b in batches:
                yield (b.select(keep) if keep is not None else b), b.num_rows
        else:
            yield from self._csv_batches(pa)

    def _csv_pieces(self) -> Iterator[Tuple[memoryview, int]]:
        """The data bytes in pieces of about _CSV_PIECE_BYTES that end at a line end.

        Each piece is a view of one read (no copy); the next read starts after its last
        line end.
        """
        size = _CSV_PIECE_BYTES
        pos = self._data_offset
        with open(self.path, "rb") as f:
            while True:
                f.seek(pos)
                block = f.read(size)
                if len(block) < size:  # the end of the file
                    if block:
                        yield memoryview(block), pos + len(block)
                    return
                cut = block.rfind(b"\n") + 1
                if cut == 0:  # one line longer than a piece: read more at once
                    size *= 2
                    continue
                yield memoryview(block)[:cut], pos + cut
                pos += cut

    def _csv_batches(self, pa):
        """Parse pieces on a few threads (pyarrow releases the GIL), in file order.

        pyarrow's streaming reader parses one block at a time; polars parses in
        parallel. Pieces are cut at line ends, which is pyarrow's own block rule
        (``newlines_in_values=False``); at most workers + 1 pieces are in memory.
        """
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        pcsv = self._pcsv
        wanted = self.read_columns or list(self.schema.names)
        types = {n: self.schema.field(n).type for n in wanted}
        for n in self.float_columns:
            types[n] = pa.float64()
        read = pcsv.ReadOptions(
            use_threads=False,
            column_names=list(self.schema.names),
            block_size=_CSV_PIECE_BYTES * 4,  # one batch per piece
        )
        convert = pcsv.ConvertOptions(
            column_types=types, strings_can_be_null=True, include_columns=self.read_columns or []
        )

        def parse(piece: bytes):
            return pcsv.read_csv(
                pa.BufferReader(piece),
                read_options=read,
                parse_options=self._csv_parse,
                convert_options=convert,
            )

        workers = max(1, min(4, os.cpu_count() or 1))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="normkit-csv")
        pending: deque = deque()
        pieces = self._csv_pieces()
        seen = 0
        try:
            for piece, end in pieces:
                pending.append((pool.submit(parse, piece), end))
                if len(pending) > workers:
                    seen = yield from self._csv_take(pa, pending.popleft(), seen)
            while pending:
                seen = yield from self._csv_take(pa, pending.popleft(), seen)
        finally:
            for fut, _ in pending:
                fut.cancel()
            pool.shutdown(wait=False)

    def _csv_take(self, pa, item, seen: int):
        fut, end = item
        try:
            table = fut.result()
        except pa.ArrowInvalid as exc:
            raise CLIError(
                f"{self.path}: cannot parse CSV after data row {seen} "
                f"({exc}); write missing values as empty fields or nan"
            ) from None
        for b in table.to_batches():
            seen += b.num_rows
            yield b, end
        return seen

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


def _bits(buf, offset: int, n: int) -> np.ndarray:
    """An Arrow bitmap (validity or boolean values) as n bools."""
    packed = np.frombuffer(buf, dtype=np.uint8)
    return np.unpackbits(packed, bitorder="little")[offset : offset + n].view(bool)


def _column(arr) -> np.ndarray:
    """A numeric Arrow array as a 1-D NumPy array; nulls become NaN.

    A view of the Arrow buffer when the column has no null and a NumPy dtype
    (the usual float64 case): no copy. Written on the buffers because
    ``Array.to_numpy`` imports pandas (about 0.3 s of start-up, measured).
    Integers and booleans keep their dtype here; the scalers cast to float64.
    """
    import pyarrow as pa

    t, n, off = arr.type, len(arr), arr.offset
    bufs = arr.buffers()
    if n == 0:
        return np.empty(0, dtype=np.float64)
    if pa.types.is_boolean(t):
        values = _bits(bufs[1], off, n).astype(np.float64)
    else:
        kind = "f" if pa.types.is_floating(t) else "i" if pa.types.is_signed_integer(t) else "u"
        dtype = np.dtype(f"{kind}{t.bit_width // 8}")
        values = np.frombuffer(bufs[1], dtype=dtype, count=off + n)[off:]
    if arr.null_count:
        values = values.astype(values.dtype if values.dtype.kind == "f" else np.float64)
        values[~_bits(bufs[0], off, n)] = np.nan
    return values


def _arrow_array(y: np.ndarray):
    """A contiguous float NumPy array as an Arrow array, sharing its memory.

    ``pa.array`` would import pandas (start-up time); the buffer keeps ``y`` alive.
    """
    import pyarrow as pa

    y = np.ascontiguousarray(y)
    t = {2: pa.float16(), 4: pa.float32(), 8: pa.float64()}[y.dtype.itemsize]
    return pa.Array.from_buffers(t, len(y), [None, pa.py_buffer(y)])


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
        self._pending: list = []  # Parquet: batches gathered into one row group
        self._pending_rows = 0
        self._thread = None  # Parquet: writes row groups (see _flush)
        self._error: Optional[BaseException] = None
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
        if self.fmt != "parquet":
            self.writer.write_batch(batch)
            return
        # one row group per batch (~8k rows for a 1 MiB CSV block) made a slow, large
        # file: gather batches into row groups of ~128k rows
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        if self._pending_rows >= _PARQUET_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        """Hand the gathered batches, as one row group, to the writer thread.

        Compressing and writing a row group releases the GIL, so on its own thread it
        overlaps the parsing and scaling of the next rows. The queue holds at most two
        row groups (bounded memory); a write error is raised here or by ``commit``.
        """
        if not self._pending:
            return
        import pyarrow as pa

        table = pa.Table.from_batches(self._pending)
        self._pending, self._pending_rows = [], 0
        if self._thread is None:
            import queue
            import threading

            self._queue = queue.Queue(maxsize=2)
            self._thread = threading.Thread(
                target=self._write_groups, name="normkit-parquet", daemon=True
            )
            self._thread.start()
        self._put(table)

    def _put(self, item) -> None:
        import queue

        while True:
            if self._error is not None:
                raise self._error
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _write_groups(self) -> None:
        while True:
            table = self._queue.get()
            if table is None:
                return
            if self._error is None:
                try:
                    self.writer.write_table(table, row_group_size=max(1, table.num_rows))
                except BaseException as exc:  # re-raised in the main thread
                    self._error = exc

    def _stop_thread(self) -> None:
        """Let the writer thread finish what it holds, then end it (commit and abort)."""
        if self._thread is None:
            return
        import queue

        while self._thread.is_alive():
            try:
                self._queue.put(None, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join()
        self._thread = None

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

            # zstd: polars's default (a fair comparison, and smaller than snappy here);
            # no dictionary for floating columns: scaled values are all distinct, and
            # trying a dictionary first made writing ~5x slower (measured)
            dictionary = [f.name for f in schema if not pa.types.is_floating(f.type)]
            self.writer = pq.ParquetWriter(
                self.f, schema, compression="zstd", use_dictionary=dictionary or False
            )
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
                if self.fmt == "parquet":
                    self._flush()
                    self._stop_thread()
                    if self._error is not None:
                        raise self._error
                self.writer.close()
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        # close the format writer first: left open, pyarrow's ParquetWriter would try to
        # finish the file from its __del__ after the file object below is closed
        self._pending = []
        if self._thread is not None:
            self._error = self._error or CLIError("aborted")  # the thread skips the rest
            while True:  # drop queued row groups: they are not written
                try:
                    self._queue.get_nowait()
                except Exception:
                    break
            self._stop_thread()
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


class _NoProgress:
    """--no-progress: the part of tqdm's interface used here, without importing it (~35 ms)."""

    n = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, k) -> None:
        self.n += k


def _progress(src: _Source, desc: str, disable: bool):
    if disable:
        return _NoProgress()
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
    """Re-raise a scaler's data error with the chunk's place in the file and the column."""

    def __init__(self, path: str, start: int, rows: int, column: str, method: str):
        self.where = f"{path}, data rows {start}..{start + rows - 1}"
        self.start = start
        self.column = column
        self.method = method

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, ValueError):
            # each column has its own one-feature scaler: its "column 0" is this column
            text = str(exc).replace("column 0:", f"column {self.column!r}:")
            hint = ""
            if self.method in ("log10", "reciprocal"):
                other = "zscore" if self.method == "log10" else "minmax"
                hint = (
                    f" (or give this column a method defined for every value: "
                    f"--column-method {self.column}=arctan, or {self.column}={other})"
                )
            raise CLIError(
                f"{self.where}, column {self.column!r} ({self.method}) (0-based, header "
                f"excluded; 'row r' below means data row {self.start} + r): {text}{hint}"
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


def _parse_column_methods(text: Optional[str]) -> Dict[str, str]:
    """``price=log10,age=zscore`` as {column: method}."""
    if text is None:
        return {}
    out: Dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        col, sep, method = part.rpartition("=")
        col, method = col.strip(), method.strip()
        if not sep or not col:
            raise CLIError(
                f"--column-method {text!r}: {part.strip()!r} is not COLUMN=METHOD; "
                "write e.g. --column-method price=log10,age=zscore"
            )
        if method not in METHODS:
            raise CLIError(
                f"--column-method: unknown method {method!r} for column {col!r}; "
                f"choose one of {', '.join(sorted(METHODS))}"
            )
        if col in out:
            raise CLIError(
                f"--column-method: column {col!r} is given twice ({out[col]} and "
                f"{method}); give each column one method"
            )
        out[col] = method
    if not out:
        raise CLIError(
            f"--column-method {text!r} names no column; e.g. --column-method price=log10"
        )
    return out


def _method_of(scaler) -> str:
    for method, cls in METHODS.items():
        if type(scaler).__name__ == cls:
            return method
    raise CLIError(f"internal: no method for {type(scaler).__name__}")


def _combine(scalers: list):
    """One k-feature scaler from k fitted one-feature scalers of the same kind."""
    first = scalers[0]
    states = [sc._get_state() for sc in scalers]
    state = {"n_rows": states[0]["n_rows"]}
    for key in first._STATE_KEYS:
        state[key] = np.concatenate([st[key] for st in states])
    out = type(first)(**first.get_params())
    out._set_state(len(scalers), state)
    return out


def _split(scaler) -> list:
    """The one-feature scalers of a fitted k-feature scaler (per-feature statistics)."""
    state = scaler._get_state()
    parts = []
    for j in range(scaler.n_features_in_):
        one = {"n_rows": state["n_rows"]}
        for key in scaler._STATE_KEYS:
            one[key] = state[key][j : j + 1]
        part = type(scaler)(**scaler.get_params())
        part._set_state(1, one)
        parts.append(part)
    return parts


def _rows(src: _Source, batch) -> int:
    return len(batch) if src.fmt == "npy" else batch.num_rows


def _getter(src: _Source, batch):
    """column name -> 1-D NumPy array of that column in this batch."""
    if src.fmt == "npy":
        index = {c: i for i, c in enumerate(src.names)}
        return lambda c: batch[:, index[c]]
    return lambda c: _column(batch.column(batch.schema.get_field_index(c)))


def _check_numeric(src: _Source, columns: List[str]) -> None:
    if src.fmt == "npy":
        return
    pa = _pyarrow()
    for c in columns:
        t = src.schema.field(c).type
        # null: the first block had no value (parsed as float64 all the same)
        if not (_is_numeric(pa, t) or pa.types.is_null(t)):
            raise CLIError(
                f"{src.path}: column {c!r} has type {t}, not numbers; "
                "scale numeric columns only (see --columns)"
            )


def _fit(args) -> int:
    from . import preprocessing as P

    per_column = _parse_column_methods(args.column_method)
    if args.method is None and not per_column:
        raise CLIError(
            "give --method (for every scaled column) and/or --column-method "
            "COL=METHOD,... (e.g. --method zscore, or --column-method price=log10)"
        )
    kwargs = {}
    if args.feature_range is not None:
        kwargs["feature_range"] = tuple(args.feature_range)
    if args.clip:
        kwargs["clip"] = True
    if kwargs and "minmax" not in [args.method, *per_column.values()]:
        raise CLIError(
            "--feature-range and --clip apply to minmax only (the columns that use it), "
            f"and no column uses minmax (--method {args.method})"
        )
    wanted = _split_columns(args.columns)
    _check_output(args.output, [args.data], args.force)
    src = _Source(args.data, args.chunk_rows, args.delimiter)
    unknown = [c for c in per_column if c not in src.names]
    if unknown:
        raise CLIError(
            f"--column-method: column(s) {unknown} not in {args.data} (it has "
            f"{src.names[:20]}{' ...' if len(src.names) > 20 else ''}); fix the name"
        )
    if args.method is None:
        if wanted is not None:
            missing = [c for c in wanted if c not in per_column]
            if missing:
                raise CLIError(
                    f"--columns {missing} have no method: give --method for them, or "
                    "add them to --column-method"
                )
        columns = list(wanted or per_column)
    else:
        columns = _select(src, wanted, "--columns")
        columns = columns + [c for c in per_column if c not in columns]
    _check_numeric(src, columns)
    methods = {c: per_column.get(c, args.method) for c in columns}
    scalers = {}
    for c in columns:
        cls = getattr(P, METHODS[methods[c]])
        scalers[c] = cls(**kwargs) if methods[c] == "minmax" else cls()
        if methods[c] == "minmax":
            scalers[c]._check_params()  # a bad --feature-range fails before the data is read
    src.select(columns if src.fmt != "npy" else None, columns)
    label = args.method or "per column"
    with _progress(src, f"fit {label}", args.no_progress) as bar:
        start = 0
        for batch, units in src.batches():
            n = _rows(src, batch)
            if n:
                get = _getter(src, batch)
                for c in columns:
                    with _rows_context(args.data, start, n, c, methods[c]):
                        scalers[c].partial_fit(get(c)[:, None])
            start += n
            _advance(bar, src, units)
    if start == 0:
        raise CLIError(f"{args.data}: no data rows")
    groups: Dict[str, List[str]] = {}
    for c in columns:
        groups.setdefault(methods[c], []).append(c)
    source = os.path.basename(args.data)
    if len(groups) == 1:
        ((method, cols),) = groups.items()
        scaler = _combine([scalers[c] for c in cols])
        meta = {"source": source, "columns": cols if src.named else None, "method": method}
        scaler.save(args.output, meta=meta)
        what = repr(scaler)
    else:
        from .preprocessing._persist import save_set

        save_set(
            [
                (
                    _combine([scalers[c] for c in cols]),
                    # positions: each column's place in fit's order, which transform
                    # uses for files without column names (.npy, header-less CSV)
                    {"columns": cols, "method": m, "positions": [columns.index(c) for c in cols]},
                )
                for m, cols in groups.items()
            ],
            args.output,
            meta={"source": source},
        )
        what = "; ".join(f"{m}: {', '.join(cols)}" for m, cols in groups.items())
    passed = [c for c in src.names if c not in columns]
    note = f"; not scaled (pass through transform): {passed[:10]}" if passed else ""
    print(
        f"normkit scale fit: {what} on {start} rows x {len(columns)} columns "
        f"-> {args.output}{note}",
        file=sys.stderr,
    )
    return 0


def _fitted_columns(args) -> List[Tuple[Optional[str], str, object]]:
    """(column name or None, method, one-feature scaler) per fitted column, in fit's order."""
    from . import preprocessing as P

    entries = []
    scalers = P.load_set(args.stats)
    for i, scaler in enumerate(scalers):
        where = "meta" if len(scalers) == 1 else f"scalers[{i}].meta"
        meta = getattr(scaler, "meta_", {}) or {}
        cols = meta.get("columns")
        if cols is not None and not (
            isinstance(cols, list)
            and all(isinstance(c, str) for c in cols)
            and len(cols) == scaler.n_features_in_
        ):
            raise CLIError(
                f"{args.stats}: {where}.columns must be a list of "
                f"{scaler.n_features_in_} column names; the file was edited: fit again"
            )
        if cols is None and len(scalers) > 1:
            raise CLIError(f"{args.stats}: {where}.columns is missing; the file was edited")
        n = scaler.n_features_in_
        positions = meta.get("positions", list(range(len(entries), len(entries) + n)))
        if not (
            isinstance(positions, list)
            and len(positions) == scaler.n_features_in_
            and all(isinstance(p, int) and not isinstance(p, bool) for p in positions)
        ):
            raise CLIError(
                f"{args.stats}: {where}.positions must be a list of "
                f"{scaler.n_features_in_} integers; the file was edited: fit again"
            )
        method = _method_of(scaler)
        for j, part in enumerate(_split(scaler)):
            entries.append((positions[j], cols[j] if cols else None, method, part))
    if sorted(e[0] for e in entries) != list(range(len(entries))):
        raise CLIError(
            f"{args.stats}: the scalers' meta.positions are not 0..{len(entries) - 1} "
            "each once; the file was edited: fit again"
        )
    return [e[1:] for e in sorted(entries, key=lambda e: e[0])]


def _transform(args) -> int:
    from . import preprocessing as P

    _check_output(args.output, [args.data, args.stats], args.force)
    _format(args.output, "output")
    entries = _fitted_columns(args)
    fitted = [e[0] for e in entries]
    wanted = _split_columns(args.columns)
    if wanted is not None and len(wanted) != len(entries):
        raise CLIError(
            f"--columns names {len(wanted)} column(s) but {args.stats} holds statistics "
            f"for {len(entries)} ({fitted[:10]}); name one column per fitted column, in "
            "fit's order"
        )
    names = wanted or (fitted if all(c is not None for c in fitted) else None)
    src = _Source(args.data, args.chunk_rows, args.delimiter)
    columns = _select(src, names if src.named else None, "fitted")
    if len(columns) != len(entries):
        raise CLIError(
            f"{args.data} has {len(columns)} numeric column(s) to scale but {args.stats} "
            f"was fitted on {len(entries)}; pass data with fit's columns (or --columns)"
        )
    _check_numeric(src, columns)
    out_fmt = _format(args.output, "output")
    passthrough = [c for c in src.names if c not in columns]
    if out_fmt == "npy" and passthrough and src.fmt != "npy":
        raise CLIError(
            f"-o {args.output}: a .npy output holds only the scaled columns, but "
            f"{args.data} has other columns {passthrough[:10]}; write .parquet, "
            ".arrow or .csv to keep them, or select them away"
        )
    src.select(None, columns if src.named else [])
    k = len(entries)
    below = np.zeros(k, dtype=np.int64)
    above = np.zeros_like(below)
    sink = None
    out_dtype = None
    try:
        sink = _Sink(args.output, args.delimiter, header=src.named)
        with _progress(src, "transform", args.no_progress) as bar, warnings.catch_warnings():
            # one summary at the end instead of a warning per chunk and column
            warnings.simplefilter("ignore", P.OutOfRangeWarning)
            start = 0
            for batch, units in src.batches():
                n = _rows(src, batch)
                get = _getter(src, batch)
                outs = []
                for j, (c, (_, method, scaler)) in enumerate(zip(columns, entries)):
                    x = get(c)[:, None]
                    with _rows_context(args.data, start, n, c, method):
                        if args.inverse:
                            y = scaler.inverse_transform(x)
                        else:
                            y = scaler.transform(x)
                            counts = scaler.out_of_range(x)
                            below[j] += counts.below[0]
                            above[j] += counts.above[0]
                    outs.append(y[:, 0])
                    out_dtype = (
                        y.dtype if out_dtype is None else np.promote_types(out_dtype, y.dtype)
                    )
                start += n
                _write(sink, src, batch, columns, outs)
                _advance(bar, src, units)
        sink.commit(
            k,
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
        shown = columns if src.named else [str(i) for i in range(k)]
        detail = "; ".join(f"{shown[c]}: {below[c]} below, {above[c]} above" for c in cols[:10])
        more = f"; and {len(cols) - 10} more column(s)" if len(cols) > 10 else ""
        clipped = any(getattr(e[2], "clip", False) for e in entries)
        print(
            f"normkit scale transform: {int(out.sum())} value(s) outside the fitted range "
            f"({detail}{more})" + ("; clipped" if clipped else ""),
            file=sys.stderr,
        )
    return 0


def _write(sink: _Sink, src: _Source, batch, columns: List[str], outs: List[np.ndarray]) -> None:
    if sink.fmt == "npy":
        sink.write_array(np.column_stack(outs))
        return
    import pyarrow as pa

    if src.fmt == "npy":
        names = columns
        arrays = [_arrow_array(y) for y in outs]
    else:
        names = list(batch.schema.names)
        arrays = list(batch.columns)
        for c, y in zip(columns, outs):
            i = names.index(c)
            t = arrays[i].type
            # per column, the dtype policy: a floating column keeps its type
            if pa.types.is_floating(t):
                y = y.astype(np.dtype(f"f{t.bit_width // 8}"), copy=False)
            arrays[i] = _arrow_array(y)
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
