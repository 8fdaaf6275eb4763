"""Reading a ``genrec backfill sequences`` output: the one validated reader of its histories.

``train-offline --data DIR`` / ``evaluate --data DIR`` (``event_logs``, which the command
passes to ``pipeline.lake.datasets``) and ``backfill recommend --histories DIR`` read the
output through here, so they refuse the same things.
The output is untrusted (copied, edited, damaged, or crafted): before any of it is used,

- ``manifest.json`` is parsed into ``BackfillManifest`` (``until`` an integer in
  ``0..MAX_UNTIL`` or null; ``shards`` the names of the files the job wrote), no larger than
  ``MAX_MANIFEST_BYTES``;
- the shard files are the manifest's, each present, a regular file and, on a local disk,
  inside the directory after following symlinks;
- a shard's footer is read before its data: a Parquet file with the writer's columns and
  types (``user`` int64 or string; lists ``item`` of int64 or string, ``timestamp`` and
  ``action`` of int64), at most ``HistoryLimits.max_users`` rows and ``max_events`` list
  values, so nothing is allocated for a file that would inflate past the limits;
- each batch of rows: no nulls, a user's three lists of one length, item and user keys
  valid keys of the event schema, actions in ``0..MAX_ACTION_CODE``, times in
  ``0..MAX_UNTIL``, before ``until`` and in time order.

A breach is a ``HistoryError``: one line naming the file (and row or field), what is wrong
and what to do. See docs/backfill.md, "Reading backfill output: what is validated".
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from pipeline.backfill.sequences import MANIFEST, shard_of
from pipeline.events.batch import concat_keys, key_column
from pipeline.events.schema import MAX_ACTION_CODE, EventError, canonical_key
from pipeline.lake import paths
from pipeline.lake.datasets import EventLog
from pipeline.state.grouping import factorize

# The latest second ``--until`` can spell as an ISO 8601 time (9999-12-31T23:59:59 UTC).
MAX_UNTIL = 253_402_300_799
MAX_MANIFEST_BYTES = 16 << 20
SHARD_PATTERN = re.compile(r"shard-(\d{5,})-of-(\d{5,})\.parquet")
HISTORY_COLUMNS = ("user", "item", "timestamp", "action")
# Read when a shard has it (outputs written before values were read have not): each event's
# value, NaN where it had none.
VALUE_COLUMN = "value"
VALUE_TYPES = ("float", "double")
LIST_VALUES = {"item": ("int64", "string"), "timestamp": ("int64",), "action": ("int64",)}
MAX_USERS_ENV = "GENREC_BACKFILL_MAX_SHARD_USERS"
MAX_EVENTS_ENV = "GENREC_BACKFILL_MAX_SHARD_EVENTS"
REGENERATE = "regenerate the output with `genrec backfill sequences`"


class HistoryError(ValueError):
    """A backfill output breaks the rules above; the message names the file and the fix."""


class BackfillManifest(BaseModel):
    """What readers take from ``manifest.json`` (the job's other fields are its report)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    until: StrictInt | None = Field(None, ge=0, le=MAX_UNTIL)
    shards: list[str] = Field(max_length=1 << 20)


@dataclass(frozen=True)
class HistoryLimits:
    """Per-shard bounds, checked on the footer before any data is read."""

    max_users: int = 10_000_000
    max_events: int = 100_000_000

    @classmethod
    def from_env(cls) -> HistoryLimits:
        """The defaults, or ``GENREC_BACKFILL_MAX_SHARD_USERS`` / ``..._EVENTS`` when set."""
        return cls(
            _env_limit(MAX_USERS_ENV, cls.max_users), _env_limit(MAX_EVENTS_ENV, cls.max_events)
        )


def _env_limit(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"{name}={text!r}: expected a positive integer (or leave it unset)")
    return int(text)


@dataclass(frozen=True)
class BackfillOutput:
    """A backfill output directory whose manifest and shard footers passed."""

    until: int | None
    shards: tuple[str, ...]  # paths, in the manifest's order (sorted by the job)
    limits: HistoryLimits


@dataclass(frozen=True)
class HistoryBatch:
    """Consecutive users of one shard: user b owns ``offsets[b]:offsets[b+1]`` of the
    flat columns (its events in time order, ties in lake order)."""

    users: Any  # pyarrow array (int64 or string), as stored
    user_keys: np.ndarray  # canonical user keys: int64, or object (str and int keys)
    items: np.ndarray  # canonical item keys: int64, or object (str and int keys)
    timestamps: np.ndarray  # int64
    actions: np.ndarray  # int64
    offsets: np.ndarray  # int64 [B+1], from 0
    values: np.ndarray  # float32, NaN where an event has none (or the shard no value column)


def open_output(directory: str, flag: str, limits: HistoryLimits | None = None) -> BackfillOutput:
    """The manifest and the shard footers of a ``backfill sequences`` output, checked
    (``flag`` names the setting the directory came from, for the messages)."""
    limits = limits or HistoryLimits.from_env()
    paths.check(directory, flag)
    manifest_path = paths.join(directory, MANIFEST)
    if not paths.exists(manifest_path):
        raise HistoryError(
            f"{flag} {directory}: no {MANIFEST}; pass the --out directory of "
            "`genrec backfill sequences`"
        )
    manifest = read_manifest(directory, manifest_path)
    shards = tuple(paths.join(directory, name) for name in manifest.shards)
    if not shards:
        raise HistoryError(
            f"{manifest_path}: lists no shards (the lake had no valid event): nothing to read"
        )
    for shard in shards:
        _check_file(directory, shard)
        with _parquet(shard) as parquet:
            _check_footer(shard, parquet, limits)
    return BackfillOutput(manifest.until, shards, limits)


def read_manifest(directory: str, manifest_path: str) -> BackfillManifest:
    """``manifest.json`` as a ``BackfillManifest``; a ``HistoryError`` naming the field."""
    _check_file(directory, manifest_path)
    size = paths.size(manifest_path)
    if size > MAX_MANIFEST_BYTES:
        raise HistoryError(
            f"{manifest_path}: {size} bytes, more than the {MAX_MANIFEST_BYTES} a backfill "
            f"manifest has; {REGENERATE}"
        )
    try:
        manifest = BackfillManifest.model_validate_json(paths.read_bytes(manifest_path))
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or "the file"
        raise HistoryError(
            f"{manifest_path}: {field}: {first['msg']}{_got(first.get('input'))}; {REGENERATE}"
        ) from None
    totals = set()
    for name in manifest.shards:
        number, total = _shard_number(name)
        if number is None or number >= total or manifest.shards.count(name) > 1:
            raise HistoryError(
                f"{manifest_path}: shards: {name!r} is not the name of one shard S of N "
                f"(shard-SSSSS-of-NNNNN.parquet, S < N, listed once); {REGENERATE}"
            )
        totals.add(total)
    if len(totals) > 1:
        raise HistoryError(
            f"{manifest_path}: shards: names of {len(totals)} different shard counts "
            f"(of-{min(totals):05d}, of-{max(totals):05d}); {REGENERATE}"
        )
    listed = set(manifest.shards)
    stray = [
        p for p in paths.matching(paths.join(directory, "shard-*")) if paths.name(p) not in listed
    ]
    if stray:
        raise HistoryError(
            f"{stray[0]}: not among the manifest's shards (left from another run?); remove "
            f"it or {REGENERATE}"
        )
    return manifest


def _shard_number(name: str) -> tuple[int | None, int]:
    """(S, N) of a ``shard-SSSSS-of-NNNNN.parquet`` name; (None, 0) for another name."""
    match = SHARD_PATTERN.fullmatch(name)
    return (int(match[1]), int(match[2])) if match else (None, 0)


def _got(value: Any) -> str:
    """`` (got VALUE)`` for a JSON value, shortened; nothing for the file's raw bytes."""
    if isinstance(value, bytes | bytearray):
        return ""
    text = (
        json.dumps(value) if isinstance(value, int | float | str | None) else type(value).__name__
    )
    return f" (got {text if len(text) <= 40 else text[:37] + '...'})"


def _check_file(directory: str, path: str) -> None:
    """A present, regular file that stays in ``directory`` after symlinks (local disks)."""
    if not paths.exists(path):
        raise HistoryError(f"{path}: listed in {MANIFEST} but missing; {REGENERATE}")
    if "://" in path:  # object stores have neither directories nor symlinks
        return
    if not os.path.isfile(path):
        raise HistoryError(f"{path}: not a regular file; {REGENERATE}")
    inside = os.path.realpath(directory)
    if os.path.commonpath([inside, os.path.realpath(path)]) != inside:
        raise HistoryError(
            f"{path}: a symlink to {os.path.realpath(path)}, outside {directory}; backfill "
            "output files are read only inside their directory: copy the file in instead"
        )


@contextmanager
def _parquet(path: str) -> Iterator[Any]:
    """``paths.parquet_file``, with a file that does not open as Parquet a ``HistoryError``."""
    with ExitStack() as stack:
        try:
            parquet = stack.enter_context(paths.parquet_file(path))
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise HistoryError(
                f"{path}: not a readable Parquet file ({_one_line(err)}); {REGENERATE}"
            ) from None
        yield parquet


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _check_footer(path: str, parquet: Any, limits: HistoryLimits) -> None:
    """Columns, types and sizes from the footer alone."""
    import pyarrow as pa

    schema = parquet.schema_arrow
    for name in HISTORY_COLUMNS:
        found = schema.get_all_field_indices(name)
        if len(found) != 1:
            raise HistoryError(
                f"{path}: {'no' if not found else 'more than one'} column {name!r} (columns: "
                f"{', '.join(schema.names)[:200]}); a history shard has user, item, "
                f"timestamp, action; {REGENERATE}"
            )
    user = schema.field("user").type
    if user not in (pa.int64(), pa.string()):
        raise HistoryError(f"{path}: column 'user' is {user}, not int64 or string; {REGENERATE}")
    checked_lists = dict(LIST_VALUES)
    if VALUE_COLUMN in schema.names:
        checked_lists[VALUE_COLUMN] = VALUE_TYPES
    for name, values in checked_lists.items():
        kind = schema.field(name).type
        if not pa.types.is_list(kind) or str(kind.value_type) not in values:
            raise HistoryError(
                f"{path}: column {name!r} is {kind}, not a list of {' or '.join(values)}; "
                f"{REGENERATE}"
            )
    metadata = parquet.metadata
    if metadata.num_rows > limits.max_users:
        raise HistoryError(
            f"{path}: {metadata.num_rows} users, more than the limit of {limits.max_users} per "
            f"shard; rerun `genrec backfill sequences` with more --shards, or raise "
            f"{MAX_USERS_ENV}"
        )
    events = max(_list_values(parquet, name) for name in LIST_VALUES)
    if events > limits.max_events:
        raise HistoryError(
            f"{path}: {events} events, more than the limit of {limits.max_events} per shard; "
            f"rerun `genrec backfill sequences` with more --shards, or raise {MAX_EVENTS_ENV}"
        )


def _list_values(parquet: Any, name: str) -> int:
    """The values a list column holds in the footer's count (an empty list counts one)."""
    metadata = parquet.metadata
    leaf = [
        i
        for i in range(metadata.num_columns)
        if metadata.schema.column(i).path.split(".")[0] == name
    ]
    return sum(
        metadata.row_group(g).column(c).num_values
        for g in range(metadata.num_row_groups)
        for c in leaf
    )


def read_output(output: BackfillOutput, batch_users: int) -> Iterator[HistoryBatch]:
    """Every shard's batches, in the manifest's order."""
    for shard in output.shards:
        yield from read_shard(shard, batch_users, output.limits, output.until)


def event_logs(directory: str, chunk_rows: int) -> Iterator[EventLog]:
    """The events of an output as EventLogs of about ``chunk_rows`` rows (whole users), each
    user's in their stored order (time, ties in lake order), keys as str (``EventLog``'s
    readers make them int64 when all are integers), every file checked first (``HistoryError``
    naming a bad one): ``pipeline.lake.datasets``'s ``OutputReader``."""
    output = open_output(directory, "--data")
    users: list[str] = []
    items: list[str] = []
    times: list[np.ndarray] = []
    actions: list[np.ndarray] = []
    values: list[np.ndarray] = []

    def take() -> EventLog:
        log = EventLog(
            np.array(users, dtype=object),
            np.array(items, dtype=object),
            np.concatenate([np.zeros(0, np.int64), *times]),
            np.concatenate([np.zeros(0, np.int64), *actions]),
            np.concatenate([np.zeros(0, np.float64), *values]),
        )
        for column in (users, items, times, actions, values):
            column.clear()
        return log

    for batch in read_output(output, batch_users=min(chunk_rows, 65_536)):
        bounds = batch.offsets.tolist()
        batch_items = [str(item) for item in batch.items.tolist()]
        cut = 0  # the batch's events before it are taken
        for row, user in enumerate(batch.users.to_pylist()):
            start, stop = bounds[row], bounds[row + 1]
            users.extend([str(user)] * (stop - start))
            items.extend(batch_items[start:stop])
            if len(users) >= chunk_rows:
                times.append(batch.timestamps[cut:stop])
                actions.append(batch.actions[cut:stop])
                values.append(batch.values[cut:stop])
                cut = stop
                yield take()
        times.append(batch.timestamps[cut:])
        actions.append(batch.actions[cut:])
        values.append(batch.values[cut:])
    yield take()


def read_shard(
    path: str, batch_users: int, limits: HistoryLimits, until: int | None
) -> Iterator[HistoryBatch]:
    """A shard's users, ``batch_users`` (at most) per ``HistoryBatch``, each checked; at the
    end, that no user has two rows."""
    place = _shard_number(paths.name(path))
    seen: list[np.ndarray] = []
    with _parquet(path) as parquet:
        _check_footer(path, parquet, limits)  # again: a worker may open a changed file
        first = 0
        try:
            has_value = VALUE_COLUMN in parquet.schema_arrow.names
            columns = [*HISTORY_COLUMNS, VALUE_COLUMN] if has_value else list(HISTORY_COLUMNS)
            for batch in parquet.iter_batches(batch_size=batch_users, columns=columns):
                checked = _checked(path, first, batch, until, place)
                seen.append(checked.user_keys)
                yield checked
                first += batch.num_rows
        except HistoryError:
            raise
        except (OSError, ValueError) as err:  # pyarrow's errors on a damaged page
            raise HistoryError(
                f"{path}: rows from {first} do not decode ({_one_line(err)}); {REGENERATE}"
            ) from None
    _check_unique(path, seen)


def _check_unique(path: str, parts: list[np.ndarray]) -> None:
    """One row per user in the shard (the job writes each user's history once)."""
    if not parts:
        return
    distinct, index = factorize(concat_keys(parts))
    if len(distinct) == len(index):
        return
    order = np.argsort(index, kind="stable")
    repeats = order[1:][index[order][1:] == index[order][:-1]]
    row = int(repeats.min())
    user = distinct.tolist()[index[row]]
    raise HistoryError(
        f"{path}: row {row}: user {user!r} has an earlier row too (one row per user); {REGENERATE}"
    )


def _checked(
    path: str, first: int, batch: Any, until: int | None, place: tuple[int | None, int]
) -> HistoryBatch:
    """One record batch as a ``HistoryBatch``, or a ``HistoryError`` for the first rule it
    breaks, naming the shard row (the user) it is in."""
    import pyarrow as pa

    def fail(row: int, what: str) -> HistoryError:
        return HistoryError(f"{path}: row {first + row}: {what}; {REGENERATE}")

    users = batch.column("user")
    if users.null_count:
        raise fail(_first_null(users), "user is null")
    flat: dict[str, np.ndarray] = {}
    offsets = np.zeros(1, np.int64)
    optional = [VALUE_COLUMN] if VALUE_COLUMN in batch.schema.names else []
    for name in (*LIST_VALUES, *optional):
        column = batch.column(name)
        if column.null_count:
            raise fail(_first_null(column), f"{name} is null, not a list")
        starts = column.offsets.to_numpy().astype(np.int64)
        starts -= starts[0]
        if name == "item":
            offsets = starts
        elif not np.array_equal(offsets, starts):
            row = int(np.flatnonzero(np.diff(offsets) != np.diff(starts))[0])
            raise fail(
                row,
                f"{name} has {int(np.diff(starts)[row])} entries, item "
                f"{int(np.diff(offsets)[row])} (a user's lists have one length)",
            )
        values = column.flatten()
        if values.null_count:
            raise fail(_owner(offsets, _first_null(values)), f"{name} has a null entry")
        flat[name] = values.to_numpy(zero_copy_only=False)
    _check_times(flat["timestamp"], offsets, until, fail)
    actions = flat["action"]
    bad = np.flatnonzero((actions < 0) | (actions > MAX_ACTION_CODE))
    if bad.size:
        at = int(bad[0])
        raise fail(_owner(offsets, at), f"action {actions[at]} is not in 0..{MAX_ACTION_CODE}")
    if pa.types.is_string(users.type):
        user_keys = _keys(users.to_pylist(), "user", fail)
    else:
        user_keys = users.to_numpy()
    number, total = place
    if number is not None:
        wrong = np.flatnonzero(shard_of(user_keys, total) != number)
        if wrong.size:
            row = int(wrong[0])
            user = user_keys.tolist()[row]
            raise fail(row, f"user {user!r} hashes to another shard of {total} (moved rows?)")
    items = flat["item"]
    if items.dtype.kind != "i":  # "5" in a string shard is the key 5, as in the stream
        items = _keys(items.tolist(), "item", lambda at, what: fail(_owner(offsets, at), what))
    values = flat.get(VALUE_COLUMN, np.full(len(actions), np.nan)).astype(np.float32)
    return HistoryBatch(users, user_keys, items, flat["timestamp"], actions, offsets, values)


def _first_null(array: Any) -> int:
    return int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])


def _owner(offsets: np.ndarray, at: int) -> int:
    """The row (user) whose list holds flat entry ``at``."""
    return int(np.searchsorted(offsets, at, side="right")) - 1


def _check_times(
    times: np.ndarray, offsets: np.ndarray, until: int | None, fail: Callable[[int, str], Exception]
) -> None:
    """Times in 0..MAX_UNTIL, before the manifest's ``until``, in order within each user."""
    last = MAX_UNTIL if until is None else until - 1
    bad = np.flatnonzero((times < 0) | (times > last))
    if bad.size:
        at = int(bad[0])
        why = "" if until is None else f" (the manifest's until is {until})"
        raise fail(_owner(offsets, at), f"timestamp {times[at]} is outside 0..{last}{why}")
    user_start = np.zeros(len(times) + 1, dtype=bool)
    user_start[offsets] = True
    back = np.flatnonzero((np.diff(times) < 0) & ~user_start[1:-1])
    if back.size:
        at = int(back[0]) + 1
        raise fail(_owner(offsets, at), f"timestamp {times[at]} is earlier than the one before it")


def _keys(values: list[Any], field: str, fail: Callable[[int, str], Exception]) -> np.ndarray:
    """String keys in their canonical form (the event schema's ``canonical_key``)."""
    keys = []
    for at, value in enumerate(values):
        try:
            keys.append(canonical_key(value, field))
        except EventError as err:
            raise fail(at, err.message) from None
    return key_column(keys)
