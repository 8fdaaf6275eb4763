"""Event logs on disk -> per-user sequences -> leave-one-out splits.

Readers cover MovieLens ``ratings.dat`` (``user::item::rating::timestamp``), MovieLens
``ratings.csv`` and generic CSV/Parquet logs whose header names user, item and timestamp
columns (an action column is optional). A malformed line is an error naming file and line,
unless the caller asks to skip such lines, in which case they are counted by reason.
``read_event_log`` returns the whole log; ``iter_event_log`` hands it over in chunks of a
bounded number of rows, for readers that must not hold a whole file (file replay).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.events.schema import ACTION_CODES, MAX_ACTION_CODE

log = logging.getLogger(__name__)

FORMATS = ("auto", "movielens-dat", "movielens-csv", "csv", "parquet", "backfill")
USER_COLUMNS = ("user_id", "user", "userid", "uid")
ITEM_COLUMNS = ("item_id", "item", "itemid", "movieid", "movie_id", "iid")
TIME_COLUMNS = ("timestamp", "ts", "time", "event_time")
ACTION_COLUMNS = ("action", "action_type", "event_type")
MAX_ERRORS_KEPT = 20


class DataFormatError(ValueError):
    """The input file is malformed; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class EventLog:
    """One row per event, raw keys, in file order.

    ``user``/``item`` are int64 when every key is an integer, else object arrays of str.
    ``timestamp`` is int64 seconds; ``action`` int64 codes (see ``ACTION_CODES``).
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    action: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.user)
        for name in ("item", "timestamp", "action"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"EventLog column {name} has {len(getattr(self, name))} rows, user has {n}"
                )

    def __len__(self) -> int:
        return len(self.user)

    def take(self, index: np.ndarray | slice) -> EventLog:
        return EventLog(
            self.user[index], self.item[index], self.timestamp[index], self.action[index]
        )

    def slice(self, start: int, stop: int) -> EventLog:
        """Rows ``start:stop``."""
        return self.take(slice(start, stop))

    def sorted_by_time(self) -> EventLog:
        """Event-time order; ties keep file order (stable sort)."""
        return self.take(np.argsort(self.timestamp, kind="stable"))


@dataclass
class ReadStats:
    """What a reader did: rows kept, rows skipped by reason, the first few errors."""

    path: str
    format: str
    rows: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


class _LineErrors:
    """Raises on the first malformed row, or counts it when skipping is allowed."""

    def __init__(self, stats: ReadStats, skip: bool) -> None:
        self.stats = stats
        self.skip = skip

    def __call__(self, where: str, reason: str, message: str) -> None:
        text = f"{where}: {message}"
        if not self.skip:
            raise DataFormatError(
                f"{text}. Fix the input, or pass --skip-malformed to skip and count such rows."
            )
        self.stats.skipped[reason] += 1
        if len(self.stats.errors) < MAX_ERRORS_KEPT:
            self.stats.errors.append(text)


def text_format(first_line: str) -> str:
    """The format of a text event file by its first line: MovieLens's ``ratings.csv``
    header, MovieLens's ``::``-separated rows, else CSV with the event schema's columns."""
    header = first_line.strip().lower()
    if header.replace(" ", "") == "userid,movieid,rating,timestamp":
        return "movielens-csv"
    if "::" in header:
        return "movielens-dat"
    return "csv"


def detect_format(path: str | Path) -> str:
    """Recognise MovieLens files by name and header, a ``genrec backfill sequences`` output
    directory by its manifest; else CSV/Parquet by extension."""
    p = Path(path)
    if p.is_dir():
        if (p / "manifest.json").is_file():
            return "backfill"
        raise DataFormatError(
            f"{p} is a directory but not the output of genrec backfill sequences (no "
            "manifest.json); pass an event file or a backfill output directory"
        )
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".dat":
        return "movielens-dat"
    if suffix in (".csv", ".tsv", ".txt"):
        with p.open(encoding="utf-8", errors="replace") as fh:
            return text_format(fh.readline())
    raise DataFormatError(
        f"{p}: cannot tell the format from the name; pass --format "
        f"({', '.join(f for f in FORMATS if f != 'auto')})"
    )


def read_event_log(
    path: str | Path, format: str = "auto", skip_malformed: bool = False
) -> tuple[EventLog, ReadStats]:
    """Read an event log; raise DataFormatError on the first malformed row unless skipping."""
    chunks, stats = _column_chunks(path, format, skip_malformed, chunk_rows=None)
    whole: _Columns = ([], [], [], [])
    for chunk in chunks:
        for column, part in zip(whole, chunk, strict=True):
            column.extend(part)
    # int keys only when every key of the file is an integer (one chunk may not tell)
    event_log = _event_log(whole)
    _finish_stats(stats, len(event_log))
    return event_log, stats


def iter_event_log(
    path: str | Path, format: str = "auto", skip_malformed: bool = False, chunk_rows: int = 1 << 20
) -> tuple[Iterator[EventLog], ReadStats]:
    """The log in file order, in ``EventLog`` chunks of at most ``chunk_rows`` rows, and the
    ``ReadStats`` that the iteration fills in (complete once it is exhausted).

    Each chunk decides on its own whether its keys are int64 or str: a consumer that mixes
    chunks must canonicalise keys (``EventBatch.from_event_log`` does).
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    chunks, stats = _column_chunks(path, format, skip_malformed, chunk_rows)

    def generate() -> Iterator[EventLog]:
        rows = 0
        for chunk in chunks:
            rows += len(chunk[0])
            yield _event_log(chunk)
        _finish_stats(stats, rows)

    return generate(), stats


_Columns = tuple[list, list, list, list]


def _column_chunks(
    path: str | Path, format: str, skip_malformed: bool, chunk_rows: int | None
) -> tuple[Iterator[_Columns], ReadStats]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file (check the --data path)")
    if format not in FORMATS:
        raise DataFormatError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    fmt = detect_format(p) if format == "auto" else format
    stats = ReadStats(path=str(p), format=fmt)
    on_error = _LineErrors(stats, skip_malformed)
    limit = chunk_rows or 1 << 62
    if fmt == "parquet":
        return _read_parquet(p, on_error, limit), stats
    if fmt == "movielens-dat":
        return _read_movielens_dat(p, on_error, limit), stats
    if fmt == "backfill":
        return _read_backfill(p, limit), stats
    return _read_csv(p, on_error, fmt == "movielens-csv", limit), stats


def _event_log(columns: _Columns) -> EventLog:
    users, items, times, actions = columns
    return EventLog(
        user=_keys_array(users),
        item=_keys_array(items),
        timestamp=np.asarray(times, dtype=np.int64),
        action=np.asarray(actions, dtype=np.int64),
    )


def _finish_stats(stats: ReadStats, rows: int) -> None:
    stats.rows = rows
    if stats.skipped_total:
        log.warning(
            "%s: skipped %d malformed rows (%s); first: %s",
            stats.path,
            stats.skipped_total,
            dict(stats.skipped),
            stats.errors[0],
        )


class _Chunker:
    """Collects rows and hands them out ``limit`` at a time."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.cols: _Columns = ([], [], [], [])

    def full(self) -> bool:
        return len(self.cols[0]) >= self.limit

    def take(self) -> _Columns:
        out, self.cols = self.cols, ([], [], [], [])
        return out


def _parse_time(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if np.isfinite(value) else None


def _parse_action(text: str) -> int | None:
    text = text.strip()
    if text.lstrip("-").isdigit():
        code = int(text)
        return code if 0 <= code <= MAX_ACTION_CODE else None
    return ACTION_CODES.get(text.lower())


def _append_row(
    cols: _Columns, where: str, user: str, item: str, ts: str, action: str | None, on_error
) -> None:
    user, item = user.strip(), item.strip()
    if not user or not item:
        on_error(where, "empty_id", "empty user or item id")
        return
    t = _parse_time(ts.strip())
    if t is None:
        on_error(where, "bad_timestamp", f"timestamp {ts.strip()!r} is not a finite number")
        return
    code = 0
    if action is not None:
        parsed = _parse_action(action)
        if parsed is None:
            on_error(
                where,
                "bad_action",
                f"action {action.strip()!r} is neither an integer code in 0..{MAX_ACTION_CODE} nor one of "
                f"{sorted(ACTION_CODES)}",
            )
            return
        code = parsed
    cols[0].append(user)
    cols[1].append(item)
    cols[2].append(t)
    cols[3].append(code)


def _read_movielens_dat(path: Path, on_error, limit: int) -> Iterator[_Columns]:
    chunk = _Chunker(limit)
    with path.open(encoding="latin-1") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            parts = line.split("::")
            if len(parts) != 4:
                on_error(
                    f"{path}:{lineno}",
                    "field_count",
                    f"expected 4 fields 'user::item::rating::timestamp', got {len(parts)}: {line[:80]!r}",
                )
                continue
            _append_row(
                chunk.cols, f"{path}:{lineno}", parts[0], parts[1], parts[3], None, on_error
            )
            if chunk.full():
                yield chunk.take()
    yield chunk.take()


def _find_column(header: list[str], names: tuple[str, ...]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    for name in names:
        if name in lowered:
            return lowered.index(name)
    return None


def _required_columns(path: Path, header: list[str]) -> tuple[int, int, int, int | None]:
    idx = [_find_column(header, names) for names in (USER_COLUMNS, ITEM_COLUMNS, TIME_COLUMNS)]
    missing = [
        kind for kind, i in zip(("user", "item", "timestamp"), idx, strict=True) if i is None
    ]
    if missing:
        raise DataFormatError(
            f"{path}:1: header {header} has no {', '.join(missing)} column; expected names like "
            f"user_id/userId, item_id/movieId, timestamp (see docs/data.md)"
        )
    return idx[0], idx[1], idx[2], _find_column(header, ACTION_COLUMNS)  # type: ignore[return-value]


def _read_csv(path: Path, on_error, movielens: bool, limit: int) -> Iterator[_Columns]:
    chunk = _Chunker(limit)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return
        u, i, t, a = _required_columns(path, header)
        if movielens:
            a = None  # MovieLens' rating column is a score, not an action type
        width = len(header)
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row:
                continue
            if len(row) != width:
                on_error(
                    where, "field_count", f"expected {width} fields, got {len(row)}: {row[:6]}"
                )
                continue
            _append_row(
                chunk.cols, where, row[u], row[i], row[t], None if a is None else row[a], on_error
            )
            if chunk.full():
                yield chunk.take()
    yield chunk.take()


def _read_parquet(path: Path, on_error, limit: int) -> Iterator[_Columns]:
    import pyarrow.parquet as pq  # lazy: only this reader needs it

    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    u, i, t, a = _required_columns(path, names)
    wanted = [names[c] for c in (u, i, t)] + ([] if a is None else [names[a]])
    chunk = _Chunker(limit)
    row = 0
    # row groups are read batch by batch: never more than one batch of the file in memory
    for batch in parquet.iter_batches(batch_size=min(limit, 65_536), columns=wanted):
        data = [batch.column(k).to_pylist() for k in range(3)]
        actions = batch.column(3).to_pylist() if a is not None else None
        for k, (user, item, ts) in enumerate(zip(*data, strict=True)):
            where = f"{path}: row {row + k}"
            if user is None or item is None or ts is None:
                on_error(where, "missing_field", "null user, item or timestamp")
                continue
            ts_text = str(ts.timestamp()) if hasattr(ts, "timestamp") else str(ts)
            act = None if actions is None or actions[k] is None else str(actions[k])
            _append_row(chunk.cols, where, str(user), str(item), ts_text, act, on_error)
            if chunk.full():
                yield chunk.take()
        row += batch.num_rows
    yield chunk.take()


def _read_backfill(path: Path, limit: int) -> Iterator[_Columns]:
    """The events of a ``genrec backfill sequences`` output: its shards' histories, each
    user's in their stored order (time, ties in lake order), every file checked first by
    ``pipeline.backfill.histories`` (a bad one is a ``HistoryError`` naming it)."""
    from pipeline.backfill import histories  # lazy: Beam's filesystems load with it

    output = histories.open_output(str(path), "--data")
    chunk = _Chunker(limit)
    for batch in histories.read_output(output, batch_users=min(limit, 65_536)):
        bounds = batch.offsets.tolist()
        items, times, actions = (
            batch.items.tolist(),
            batch.timestamps.tolist(),
            batch.actions.tolist(),
        )
        for row, user in enumerate(batch.users.to_pylist()):
            start, stop = bounds[row], bounds[row + 1]
            users_, items_, times_, actions_ = chunk.cols
            users_.extend([str(user)] * (stop - start))
            items_.extend(str(item) for item in items[start:stop])
            times_.extend(times[start:stop])
            actions_.extend(actions[start:stop])
            if chunk.full():
                yield chunk.take()
    yield chunk.take()


def _keys_array(keys: list[str]) -> np.ndarray:
    """int64 when every key is an integer literal (MovieLens), else str objects."""
    try:
        return np.asarray([int(k) for k in keys], dtype=np.int64)
    except ValueError:
        return np.asarray(keys, dtype=object)


@dataclass(frozen=True)
class SequenceDataset:
    """Per-user sequences in time order (ties in input order), items remapped to rows.

    ``item_ids`` are embedding rows 1..num_items (0 is padding); ``item_keys[row]`` is the
    original key (``item_keys[0]`` is None). Sequence u spans ``offsets[u]:offsets[u+1]`` and
    belongs to ``user_keys[u]``.
    """

    item_ids: np.ndarray
    timestamps: np.ndarray
    actions: np.ndarray
    offsets: np.ndarray
    item_keys: np.ndarray
    user_keys: np.ndarray

    @property
    def num_items(self) -> int:
        return len(self.item_keys) - 1

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_events(self) -> int:
        return int(self.offsets[-1])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def drop_last(self, k: int) -> SequenceDataset:
        """Each sequence without its last k events (sequences never go below length 0)."""
        lengths = self.lengths()
        keep_len = np.maximum(lengths - k, 0)
        pos = np.arange(self.num_events) - np.repeat(self.offsets[:-1], lengths)
        keep = pos < np.repeat(keep_len, lengths)
        offsets = np.concatenate([[0], np.cumsum(keep_len)]).astype(np.int64)
        return SequenceDataset(
            self.item_ids[keep],
            self.timestamps[keep],
            self.actions[keep],
            offsets,
            self.item_keys,
            self.user_keys,
        )


def build_sequences(event_log: EventLog, min_length: int = 1) -> SequenceDataset:
    """Group by user, sort by time (stable), remap item keys to rows 1..num_items.

    Users with fewer than ``min_length`` events are dropped; item rows cover only the
    remaining events.
    """
    user_keys, user_idx = np.unique(event_log.user, return_inverse=True)
    counts = np.bincount(user_idx, minlength=len(user_keys))
    kept_users = counts >= min_length
    mask = kept_users[user_idx]
    user_keys = user_keys[kept_users]
    user_idx = np.cumsum(kept_users)[user_idx[mask]] - 1
    ev = event_log.take(mask)
    order = np.lexsort((ev.timestamp, user_idx))  # lexsort is stable: ties keep file order
    item_keys, item_rows = np.unique(ev.item[order], return_inverse=True)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(user_idx, minlength=len(user_keys)))])
    return SequenceDataset(
        item_ids=(item_rows + 1).astype(np.int64),
        timestamps=ev.timestamp[order].astype(np.int64),
        actions=ev.action[order].astype(np.int64),
        offsets=offsets.astype(np.int64),
        item_keys=np.concatenate([np.array([None], dtype=object), item_keys.astype(object)]),
        user_keys=user_keys,
    )


def leave_one_out(
    ds: SequenceDataset,
) -> tuple[SequenceDataset, SequenceDataset, SequenceDataset]:
    """(train, valid, test): each user's sequence without its last 2, without its last 1,
    and whole. In valid and test the last event of each sequence is the target.

    Users need at least 3 events (build with ``min_length=3``); shorter ones raise.
    """
    short = np.flatnonzero(ds.lengths() < 3)
    if short.size:
        raise ValueError(
            f"leave-one-out needs >= 3 events per user; {short.size} users have fewer "
            f"(first: {ds.user_keys[short[0]]!r}); build_sequences(..., min_length=3) drops them"
        )
    return ds.drop_last(2), ds.drop_last(1), ds


def paper_split(
    ds: SequenceDataset,
) -> tuple[SequenceDataset, SequenceDataset, SequenceDataset]:
    """(train, valid, test) of the HSTU paper: train is each sequence without its last
    event, so the validation event (second-to-last) is also a training target; valid is
    that same prefix (its metrics are in-sample, for monitoring only); test is whole."""
    short = np.flatnonzero(ds.lengths() < 3)
    if short.size:
        raise ValueError(
            f"the paper's split needs >= 3 events per user; {short.size} users have fewer "
            f"(first: {ds.user_keys[short[0]]!r}); build_sequences(..., min_length=3) drops them"
        )
    train = ds.drop_last(1)
    return train, train, ds


def make_splits(
    ds: SequenceDataset, split: str
) -> tuple[SequenceDataset, SequenceDataset, SequenceDataset]:
    """``leave_one_out`` for split "holdout", ``paper_split`` for "paper"."""
    if split == "holdout":
        return leave_one_out(ds)
    if split == "paper":
        return paper_split(ds)
    raise ValueError(f"unknown split {split!r}; use 'holdout' or 'paper'")
