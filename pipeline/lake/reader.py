"""Lake files read in chunks: the one reader of event files, for ``genrec backfill
sequences`` and ``backfill bootstrap`` (``read_chunks``: through Beam's ``FileSystems``, local
or object storage) and for ``train-offline`` and file replay (``read_file`` on an open file,
through ``pipeline.lake.datasets``). Its rules are docs/data.md's "Reading event logs".

Each file is read in chunks of at most ``chunk_rows`` rows, as the stream's own records: a
Parquet file's record batches become Arrow IPC payloads, a JSON Lines file's lines JSON
payloads. Delimited text (``csv``, MovieLens's ``ratings.csv`` and ``ratings.dat``:
``_TEXT_FORMATS``) is read by pyarrow's streaming CSV reader as bytes, typed (text ->
numbers) and sent on as Arrow payloads. Columns are the event schema's (``user_id``,
``item_id``, ``action``, ``timestamp``, optional ``value`` and ``event_id``), found by the
names ``_TABLE_COLUMNS`` lists for each (a rating is the ``value``; without an action column
every event is an ``interaction``). A row that cannot be split into its fields or typed, or
whose line is not UTF-8 text or holds a NUL byte (``_TextBytes``), is a dead letter of its
own; an empty line is a row of empty fields (rejected after reading). What becomes of a
dead letter is the caller's: the backfill writes it, ``train-offline`` raises or skips it.
A file that ``read_chunks`` cannot read (corrupt, not Parquet, a header without the required
columns) becomes one dead letter naming it; ``read_file`` raises.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from pipeline.events.reject import Reject
from pipeline.events.schema import ACTION_CODES, RejectReason
from pipeline.lake import paths

FORMATS = ("auto", "parquet", "jsonl", "csv", "movielens-csv", "movielens-dat")


class DataFormatError(ValueError):
    """The input file is malformed; the message names the file, the line and the fix."""


def text_format(first_line: str) -> str:
    """The format of a text event file by its first line: MovieLens's ``ratings.csv``
    header, MovieLens's ``::``-separated rows, else CSV with the event schema's columns."""
    header = first_line.strip().lower()
    if header.replace(" ", "") == "userid,movieid,rating,timestamp":
        return "movielens-csv"
    if "::" in header:
        return "movielens-dat"
    return "csv"


@dataclass(frozen=True)
class LakeFile:
    """One input file: its position in lake order, path, size and format."""

    index: int
    path: str
    size: int
    format: str


def match_inputs(patterns: Sequence[str], format: str = "auto") -> list[LakeFile]:
    """The files the patterns (paths or globs) name, in lake order: patterns as given, each
    one's matches sorted by path. ``FileNotFoundError`` for a pattern that matches nothing."""
    from apache_beam.io.filesystems import FileSystems  # lazy: quiet_beam runs before Beam loads

    if format not in FORMATS:
        raise ValueError(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    files: list[LakeFile] = []
    seen: set[str] = set()
    for pattern in patterns:
        paths.check(pattern, "--input")
        matched = FileSystems.match([pattern])[0].metadata_list
        if not matched:
            raise FileNotFoundError(f"--input {pattern!r} matches no file; check the path")
        for meta in sorted(matched, key=lambda m: m.path):
            if meta.path not in seen:
                seen.add(meta.path)
                fmt = _file_format(meta.path, format)
                files.append(LakeFile(len(files), meta.path, meta.size_in_bytes, fmt))
    return files


def _file_format(path: str, format: str) -> str:
    if format != "auto":
        return format
    fmt = suffix_format(path)
    if fmt is None:
        raise ValueError(
            f"{path}: cannot tell the format from the name; pass --format ({', '.join(FORMATS[1:])})"
        )
    return _csv_format(path) if fmt == "text" else fmt


def suffix_format(path: str) -> str | None:
    """The format a file's name says (``text``: CSV or MovieLens CSV, by ``text_format`` on
    its first line), or None."""
    suffix = Path(path).suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".dat":
        return "movielens-dat"
    if suffix in (".csv", ".tsv", ".txt"):
        return "text"
    return None


def _csv_format(path: str) -> str:
    """``text_format`` (MovieLens's ratings.csv by its header, else csv) on the file's first
    line, read through Beam's ``FileSystems``."""
    from apache_beam.io.filesystems import FileSystems  # lazy: quiet_beam runs before Beam loads

    try:
        with FileSystems.open(path) as handle:
            header = handle.readline(MAX_HEADER_BYTES)
    except OSError:  # unreadable (a directory, say)
        return "csv"  # reading it makes the file's dead letter
    return text_format(header.decode("utf-8", errors="replace"))


class Chunk(NamedTuple):
    """A chunk of one file's rows, as the decoder takes them (``Records.run``)."""

    file: LakeFile
    # from 0: a Parquet file's row, a text file's line index (the dead letters' ``file_row``
    # is the 1-based line)
    first: int
    rows: int
    codec: str  # "arrow": one IPC payload; "json": one payload per line
    payloads: list[bytes]


# Told (file, rows read, bytes of the file read so far) as a reader goes on.
Progress = Callable[[LakeFile, int, int], None]


def no_progress(lake_file: LakeFile, rows: int, position: int) -> None:
    """The ``Progress`` of a reading nobody follows."""


def read_chunks(
    lake_file: LakeFile, chunk_rows: int, progress: Progress = no_progress
) -> Iterator[Chunk | dict[str, Any]]:
    """The file's chunks of at most ``chunk_rows`` rows, and dead-letter dicts: one for a file
    that cannot be read (``file_row`` None, reason ``unreadable_file``; the chunks before it
    stand), one for each row of a text file that cannot be split into its fields or typed
    (``file_row`` its line). ``progress`` hears of the rows read as they are."""
    from apache_beam.io.filesystems import FileSystems  # lazy: quiet_beam runs before Beam loads

    try:
        with FileSystems.open(lake_file.path) as handle:
            yield from read_file(lake_file, handle, chunk_rows, progress)
    except Exception as err:  # corrupt or unreadable file: its dead letter, the rest goes on
        yield {
            "reason": "unreadable_file",
            "message": f"cannot read {lake_file.format} file {lake_file.path}: "
            f"{type(err).__name__}: {' '.join(str(err).split())[:500]}",
            "file": lake_file.path,
            "file_row": None,
        }


def read_file(
    lake_file: LakeFile, handle: Any, chunk_rows: int, progress: Progress = no_progress
) -> Iterator[Chunk | dict[str, Any]]:
    """As ``read_chunks``, from an open binary ``handle`` of the file, but a file that cannot
    be read raises (``DataFormatError`` for a header or columns that are not the format's)."""
    reader = {"parquet": _parquet_chunks, "jsonl": _jsonl_chunks}.get(
        lake_file.format, _text_chunks
    )
    yield from reader(lake_file, handle, chunk_rows, progress)


def _ipc(table: Any) -> bytes:
    """One Arrow IPC stream payload (what the stream's ``arrow`` codec carries)."""
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write(table)
    return sink.getvalue()


def _parquet_chunks(
    lake_file: LakeFile, handle: Any, chunk_rows: int, progress: Progress
) -> Iterator[Chunk]:
    try:
        parquet = pq.ParquetFile(handle)
    except pa.ArrowInvalid as err:
        raise DataFormatError(
            f"not a Parquet file ({err}); pass the --format that fits the file"
        ) from None
    names = parquet.schema_arrow.names
    # a file without a required column is the decoder's to reject, row by row (missing_field)
    fields = _columns(names, _TABLE_COLUMNS)
    renamed = [fields.get(name, name) for name in names]
    total = max(1, parquet.metadata.num_rows)
    row = 0
    for batch in parquet.iter_batches(batch_size=chunk_rows):
        batch = batch.rename_columns(renamed)
        if "action" not in fields.values():
            batch = batch.append_column("action", _interactions(batch.num_rows))
        yield Chunk(lake_file, row, batch.num_rows, "arrow", [_ipc(batch)])
        row += batch.num_rows
        # the handle's position says nothing (the reader seeks): the share of rows read does
        progress(lake_file, batch.num_rows, lake_file.size * row // total)


def _jsonl_chunks(
    lake_file: LakeFile, handle: Any, chunk_rows: int, progress: Progress
) -> Iterator[Chunk]:
    lines: list[bytes] = []
    first = 0
    for number, line in enumerate(handle):
        lines.append(line.rstrip(b"\r\n"))
        if len(lines) == chunk_rows:
            yield Chunk(lake_file, first, len(lines), "json", lines)
            progress(lake_file, len(lines), handle.tell())
            first, lines = number + 1, []
    if lines:
        yield Chunk(lake_file, first, len(lines), "json", lines)
        progress(lake_file, len(lines), handle.tell())


# The names a header row (or a Parquet file) may give each event field, in order of
# preference, compared without case; user, item and timestamp must be there. Without an action
# column every event has the unspecified action "interaction" (code 0); a rating is the value.
_TABLE_COLUMNS = {
    "user_id": ("user_id", "user", "userid", "uid"),
    "item_id": ("item_id", "item", "itemid", "movieid", "movie_id", "iid"),
    "timestamp": ("timestamp", "ts", "time", "event_time"),
    "action": ("action", "action_type", "event_type"),
    "value": ("value", "rating"),
    "event_id": ("event_id",),
}
REQUIRED = ("user_id", "item_id", "timestamp")


def _columns(names: Sequence[str], columns: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """file column -> event field, by ``columns`` (event field -> accepted names)."""
    lowered = {name.strip().lower(): name for name in reversed(names)}  # the first of equals
    fields = {}
    for field, accepted in columns.items():
        found = next((lowered[n] for n in accepted if n in lowered), None)
        if found is not None:
            fields[found] = field
    return fields


def check_columns(fields: Iterable[str], what: str) -> None:
    """A ``DataFormatError`` naming the required event fields (user, item, timestamp) that
    ``fields`` lacks; ``what`` names the header or schema."""
    missing = [f for f in REQUIRED if f not in set(fields)]
    if missing:
        raise DataFormatError(
            f"{what} has no {', '.join(missing)} column; expected names like user_id/userId, "
            "item_id/movieId, timestamp (docs/data.md), or pass the --format that fits the file"
        )


def _interactions(rows: int) -> Any:
    """The action column of a table without one."""
    return pa.array(np.full(rows, ACTION_CODES["interaction"], np.int16))


@dataclass(frozen=True)
class _TextFormat:
    """How a delimited text format's fields become the event schema's columns."""

    delimiter: str
    columns: dict[str, tuple[str, ...]]  # event field -> the file columns that may give it
    names: tuple[str, ...] | None = None  # the columns of a file without a header row
    quoting: bool = True
    separators: tuple[str, ...] = ()  # columns that must be empty (see movielens-dat)
    layout: str | None = None  # the row layout, for messages (None: the header's)


_MOVIELENS_DAT = ("UserID", "MovieID", "Rating", "Timestamp")
_TEXT_FORMATS = {
    "csv": _TextFormat(",", _TABLE_COLUMNS),
    # MovieLens's ratings.csv: its header's names; an action column, were there one, is not
    # MovieLens's (every event the unspecified action "interaction")
    "movielens-csv": _TextFormat(
        ",", {k: v for k, v in _TABLE_COLUMNS.items() if k not in ("action", "event_id")}
    ),
    # ratings.dat (UserID::MovieID::Rating::Timestamp, no header). pyarrow splits on one
    # character, so "::" reads as ':' twice with an empty field between; a row whose
    # in-between field is not empty does not have the layout.
    "movielens-dat": _TextFormat(
        ":",
        {
            field: (name.lower(),)
            for name, field in zip(
                _MOVIELENS_DAT, ("user_id", "item_id", "value", "timestamp"), strict=True
            )
        },
        names=("UserID", ":1", "MovieID", ":2", "Rating", ":3", "Timestamp"),
        quoting=False,
        separators=(":1", ":2", ":3"),
        layout="::".join(_MOVIELENS_DAT),
    ),
}
MAX_HEADER_BYTES = 1 << 20


def _text_chunks(
    lake_file: LakeFile, handle: Any, chunk_rows: int, progress: Progress
) -> Iterator[Chunk | dict[str, Any]]:
    """A delimited text file (``_TEXT_FORMATS``) read by pyarrow's streaming CSV reader, every
    column as bytes, so that no value can fail the read: each ``chunk_rows`` rows are typed
    (``_typed``), the rows that cannot be become dead letters of their own, and the others go
    on as Arrow payloads of consecutive lines (``first`` = the line index of their first)."""
    spec = _TEXT_FORMATS[lake_file.format]
    if lake_file.path.lower().endswith(".tsv"):
        spec = replace(spec, delimiter="\t")
    if lake_file.size == 0:  # no rows, as an empty JSON Lines file
        return
    names = spec.names or _header(handle, spec)
    fields = _columns(names, spec.columns)
    check_columns(fields.values(), f"the header row {list(names)}")
    if handle.tell() >= lake_file.size:  # a header and no rows (pyarrow would call it empty)
        return
    text = _TextBytes(handle, line=1 if spec.names else 2)
    lines = _Lines(text, width=len(names), spec=spec)
    reader = pcsv.open_csv(
        text,
        # one thread: pyarrow knows the line of a row it leaves out only then
        read_options=pcsv.ReadOptions(column_names=list(names), use_threads=False),
        parse_options=pcsv.ParseOptions(
            delimiter=spec.delimiter,
            quote_char='"' if spec.quoting else False,
            # an empty line is a row of empty fields (rejected), as in JSON Lines
            ignore_empty_lines=False,
            invalid_row_handler=lines.skip,
        ),
        convert_options=pcsv.ConvertOptions(column_types=dict.fromkeys(names, pa.binary())),
    )
    for table in _tables(reader, chunk_rows):
        at, ends, skipped = lines.place(table)
        yield from (_letter(lake_file, *s) for s in skipped)
        yield from _text_parts(lake_file, spec, fields, table, at, text.rows(at, ends))
        progress(lake_file, table.num_rows + len(skipped), handle.tell())
    rest = lines.rest()
    yield from (_letter(lake_file, *s) for s in rest)
    progress(lake_file, len(rest), lake_file.size)


def _header(handle: Any, spec: _TextFormat) -> tuple[str, ...]:
    """The header row's column names."""
    line = handle.readline(MAX_HEADER_BYTES)
    try:
        text = line.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError:
        raise DataFormatError("its first line (the header row) is not UTF-8 text") from None
    return tuple(next(csv.reader([text], delimiter=spec.delimiter), []))


def _tables(reader: Any, rows: int) -> Iterator[Any]:
    """The reader's rows as tables of ``rows`` rows (the last one shorter): its batches hold
    a block of bytes each, any number of rows."""
    pending: list[Any] = []
    size = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        pending.append(batch)
        size += batch.num_rows
        while size >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, size = rest.to_batches(), rest.num_rows
    if size:
        yield pa.Table.from_batches(pending)


class _TextBytes(io.RawIOBase):
    """A text file's bytes as pyarrow's CSV reader gets them, line by line: a line that is not
    UTF-8 text, or that holds a NUL byte, reaches it with U+FFFD in place of those bytes, and
    is kept as read (``flawed``) for its row's dead letter (``undecodable``). pyarrow decodes a
    row with a wrong field count strictly before its ``invalid_row_handler`` sees it, and one
    such row that was not UTF-8 stopped the read of the whole file."""

    def __init__(self, handle: Any, line: int) -> None:
        super().__init__()
        self.handle = handle
        self.line = line  # the number of the next line from ``handle``
        self.partial = b""  # the start of a line whose end is not read yet
        self.ready = bytearray()  # for pyarrow
        self.ended = False
        self.flawed: dict[int, bytes] = {}  # line -> its bytes as read, until its row takes it

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while not self.ended and (size < 0 or len(self.ready) < size):
            block = self.handle.read(max(size, 1 << 16))
            data, self.partial = self.partial + block, b""
            self.ended = not block
            if block:  # whole lines only (a \r at the end may be the start of a \r\n)
                cut = max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1)) + 1
                if not cut and len(data) <= MAX_HEADER_BYTES:
                    self.partial = data  # a line's start: wait for its end
                    continue
                if cut:
                    data, self.partial = data[:cut], data[cut:]
            self._add(data)
        n = len(self.ready) if size < 0 else min(size, len(self.ready))
        out = bytes(self.ready[:n])
        del self.ready[:n]
        return out

    def _add(self, data: bytes) -> None:
        """Lines (the last may lack its line break, or be the part of a line longer than
        ``MAX_HEADER_BYTES``) for pyarrow."""
        if _is_text(data):  # the usual case: at once
            self.ready += data
            self.line += data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")
            return
        parts = _LINE_BREAK.split(data)  # line, its break, line, ..., the last line
        for k in range(0, len(parts), 2):
            piece = parts[k]
            if not _is_text(piece):
                line = self.line + k // 2
                self.flawed[line] = self.flawed.get(line, b"") + piece
                piece = piece.decode("utf-8", "replace").replace("\0", "\ufffd").encode()
            self.ready += piece + (parts[k + 1] if k + 1 < len(parts) else b"")
        self.line += len(parts) // 2

    def take(self, start: int, stop: int) -> list[tuple[int, bytes]]:
        """(line, its bytes as read) of the flawed lines in [start, stop), now handed over."""
        lines = [line for line in self.flawed if start <= line < stop]
        return [(line, self.flawed.pop(line)) for line in lines]

    def rows(self, at: np.ndarray, ends: np.ndarray) -> dict[int, bytes]:
        """The rows of a table (lines from ``at`` up to ``ends``) with a flawed line, and their
        flawed lines as read."""
        found: dict[int, list[bytes]] = {}
        if self.flawed and len(at):
            for line, raw in self.take(int(at[0]), int(ends[-1])):
                row = int(np.searchsorted(at, line, side="right")) - 1
                found.setdefault(row, []).append(raw)
        return {row: b"\n".join(raw) for row, raw in found.items()}


_LINE_BREAK = re.compile(rb"(\r\n|\r|\n)")  # pyarrow's line ends


def _is_text(data: bytes) -> bool:
    """UTF-8 text without NUL bytes (a NUL marks binary data, or another encoding)."""
    if b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class _Lines:
    """The line numbers of a text reader's rows. pyarrow leaves out a row with a wrong field
    count (telling ``skip`` its line) and a quoted value may hold line breaks, so a row's line
    is the previous row's plus that row's breaks plus one, plus the lines of rows left out."""

    def __init__(self, text: _TextBytes, width: int, spec: _TextFormat) -> None:
        self.text = text
        self.next = text.line  # line of the next row
        self.before = text.line - 1  # lines before the reader's first (the header: pyarrow's 1)
        self.width = width
        self.spec = spec
        self.skipped: list[tuple[int, str, str, bytes]] = []  # in file order

    def skip(self, row: Any) -> str:
        """pyarrow's ``invalid_row_handler``: note the row as a dead letter, go on."""
        if self.spec.layout:  # a count of ':'-separated fields would only confuse
            message = f"the line is not {self.spec.layout}"
        else:
            message = f"{row.actual_columns} fields where the header has {self.width}"
        line = self.before + row.number  # pyarrow counts from its first line
        flawed = self.text.take(line, line + 1 + row.text.count("\n"))
        payload = b"\n".join(raw for _, raw in flawed) if flawed else row.text.encode()
        self.skipped.append((line, "field_count", message, payload))
        return "skip"

    def place(self, table: Any) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str, str, bytes]]]:
        """The first lines of the table's rows (the reader's next rows), the lines after
        each, and the rows left out before its last row (line, reason, message, payload)."""
        spans = np.ones(table.num_rows, np.int64)
        for column in table.columns:
            if _has_line_break(column):  # a per-row count only where some value has one
                spans += pc.fill_null(pc.count_substring(column, "\n"), 0).to_numpy()
        at = self.next + np.concatenate([[0], np.cumsum(spans)[:-1]])
        for line, _, _, payload in self.skipped:  # in file order: each one pushes the rest on
            at[at >= line] += 1 + payload.count(b"\n")
        self.next = int(at[-1] + spans[-1])
        done = [s for s in self.skipped if s[0] < self.next]
        self.skipped = self.skipped[len(done) :]
        return at, at + spans, done

    def rest(self) -> list[tuple[int, str, str, bytes]]:
        """The rows left out after the last row."""
        rest, self.skipped = self.skipped, []
        return rest


def _has_line_break(column: Any) -> bool:
    """Whether the bytes behind a binary column hold a line break (a slice's neighbours count
    too: a false yes only costs the exact count)."""
    return any(
        (data := chunk.buffers()[2]) is not None and b"\n" in data.to_pybytes()
        for chunk in column.chunks
    )


def _letter(
    lake_file: LakeFile, line: int, reason: str, message: str, payload: bytes
) -> dict[str, Any]:
    """The dead letter of a text row the reader rejects: the stream's fields (payload as UTF-8
    text or base64), a reason of the stream's (``undecodable``, ``bad_type``) or the reader's
    own (``field_count``), and the file and line."""
    # any reason will do here: it is replaced (field_count is not a RejectReason)
    where = Reject(RejectReason.BAD_TYPE, message, f"file:{lake_file.path}", line - 1, payload)
    return {**where.to_json_dict(), "reason": reason, "file": lake_file.path, "file_row": line}


def _text_parts(
    lake_file: LakeFile,
    spec: _TextFormat,
    fields: dict[str, str],
    table: Any,
    at: np.ndarray,
    flawed: dict[int, bytes],
) -> Iterator[Chunk | dict[str, Any]]:
    """One table of text rows: a dead letter per row ``_typed`` finds a flaw in, or with a
    line that is not text (``flawed``: row -> its lines as read, their dead letter's payload),
    and the other rows as chunks of consecutive lines."""
    columns, flaws = _typed(spec, fields, table, flawed)
    bad = np.zeros(table.num_rows, bool)
    for mask, reason, message in flaws:  # the first flaw of a row is its reason
        for row in np.flatnonzero(mask & ~bad).tolist():
            fields = (table.column(k)[row].as_py() or b"" for k in range(table.num_columns))
            payload = flawed.get(row) or spec.delimiter.encode().join(fields)
            yield _letter(lake_file, int(at[row]), reason, message(row), payload)
        bad |= mask
    good = np.flatnonzero(~bad)
    if not good.size:
        return
    # a run ends where a row was rejected or left out, or a row spans several lines
    ends = np.flatnonzero(np.diff(at[good]) != 1) + 1
    events = pa.table(columns)
    for run in np.split(good, ends):
        start, n = int(run[0]), len(run)
        yield Chunk(lake_file, int(at[start]) - 1, n, "arrow", [_ipc(events.slice(start, n))])


_Flaw = tuple[np.ndarray, str, Any]  # (rows, reason, row -> message)


def _typed(
    spec: _TextFormat, fields: dict[str, str], table: Any, flawed: dict[int, bytes]
) -> tuple[dict[str, Any], list[_Flaw]]:
    """The event columns of a table of text fields (bytes; ``fields``: file column -> event
    field, the others are left out), and its rows' flaws in the order
    they are checked: a field where the layout has none (``field_count``), a line that is not
    UTF-8 text or holds a NUL byte (``undecodable``: the rows in ``flawed``, see
    ``_TextBytes``), a number that is not one (``bad_type``). Everything else (ids, actions,
    time ranges, nulls) is left to the stream's decoder.

    Empty fields: ids stay ``""`` (the decoder's ``empty_id``), an empty action or timestamp
    is null (``missing_field``), an empty value or event id is absent."""
    flaws: list[_Flaw] = []
    for name in spec.separators:
        filled = pc.fill_null(pc.greater(pc.binary_length(table.column(name)), 0), False)
        flaws.append((filled.to_numpy(), "field_count", lambda _: f"the line is not {spec.layout}"))
    undecodable = np.zeros(table.num_rows, bool)
    undecodable[list(flawed)] = True
    flaws.append((undecodable, "undecodable", lambda r: _not_text(flawed[r])))
    texts = {  # UTF-8 without NUL bytes now (_TextBytes)
        field: table.column(name).combine_chunks().cast(pa.string())
        for name, field in fields.items()
    }
    columns = {}
    for field, text in texts.items():
        if field in ("user_id", "item_id"):
            columns[field] = text
            continue
        text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
        if field in ("timestamp", "value"):
            columns[field], number = parse_numbers(text, pa.float64())
            flaws.append((~number, "bad_type", lambda r, f=field, t=text: _not_a_number(f, t, r)))
        else:
            columns[field] = _actions(text) if field == "action" else text
    if "action" not in columns:
        columns["action"] = _interactions(table.num_rows)
    return columns, flaws


def _not_text(line: bytes) -> str:
    if b"\0" in line:
        return "the line holds a NUL byte (binary data?); remove it, or fix the file"
    return "the line is not UTF-8 text; convert the file to UTF-8 (iconv -f latin1 -t utf-8, say)"


def _not_a_number(field: str, text: Any, row: int) -> str:
    return f"{field} {text[row].as_py()!r} is not a number"


def parse_numbers(values: Any, to: Any) -> tuple[Any, np.ndarray]:
    """``values`` cast to ``to`` by Arrow's own parser (nulls stay null), and which ones it
    could parse: one that it cannot becomes null. One cast when all parse; else the halves
    are tried in turn, so finding k bad values among n takes about k log n casts."""
    try:
        return values.cast(to), np.ones(len(values), bool)
    except pa.ArrowInvalid:
        if len(values) == 1:
            return pa.nulls(1, to), np.zeros(1, bool)
    half = len(values) // 2
    head, head_ok = parse_numbers(values.slice(0, half), to)
    tail, tail_ok = parse_numbers(values.slice(half), to)
    return pa.concat_arrays([head, tail]), np.concatenate([head_ok, tail_ok])


def _actions(text: Any) -> Any:
    """The action column: codes when every action is an integer, else names. Arrow holds
    one type per column, so in a column of both, a code that has a name is written as it;
    one without a name is then an unknown name (the decoder's ``bad_action``)."""
    try:
        return text.cast(pa.int64())
    except pa.ArrowInvalid:
        pass
    names = {str(code): name for name, code in ACTION_CODES.items()}
    if not pc.any(pc.is_in(text, value_set=pa.array(list(names)))).as_py():
        return text
    return pa.array([names.get(v, v) for v in text.to_pylist()], pa.string())
