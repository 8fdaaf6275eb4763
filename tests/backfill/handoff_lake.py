"""A lake for hand-off tests: a drifting synthetic stream with duplicate event ids, events
out of order within the store's tolerance and >= 5% malformed rows, as Parquet files and as
the one-row Arrow records a stream would carry (stamped with their arrival time)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.lake.synthetic import SyntheticConfig, generate_events
from pipeline.state.store import SequenceStore
from pipeline.state.vocab import ItemVocabulary

SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("action", pa.string()),
        ("timestamp", pa.int64()),
        ("event_id", pa.string()),
    ]
)
TOLERANCE_S = 3600


@dataclass(frozen=True)
class Lake:
    rows: list[dict]  # lake order
    bad: list[bool]  # rows the decoder rejects
    files: list[Path]
    until: int  # the cut-off T

    def arrival_ms(self) -> list[int]:
        """Each row's arrival time: its own event time, or for a malformed row the nearest
        valid row's before it (the first rows: 0)."""
        out, last = [], 0
        for row, bad in zip(self.rows, self.bad, strict=True):
            if not bad:
                last = row["timestamp"] * 1000
            out.append(last)
        return out

    def time_order(self) -> list[int]:
        """The rows' indices in the order ``backfill bootstrap`` folds them, which a stream
        replaying the lake in event-time order carries: by arrival time, ties in lake order."""
        return np.argsort(self.arrival_ms(), kind="stable").tolist()

    def payloads(self) -> list[bytes]:
        """One Arrow IPC record per row, as a stream would carry them."""
        out = []
        for row in self.rows:
            sink = io.BytesIO()
            table = pa.Table.from_pylist([row], schema=SCHEMA)
            with pa.ipc.new_stream(sink, SCHEMA) as writer:
                writer.write_table(table)
            out.append(sink.getvalue())
        return out


def make_lake(directory: Path, num_users: int = 60, files: int = 4, seed: int = 0) -> Lake:
    log = generate_events(
        SyntheticConfig(
            num_users=num_users, num_items=90, num_clusters=6, events_per_user=14,
            drift_at=0.5, seed=seed,
        )
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    bad: list[bool] = []
    malformed = [
        {"user_id": None},  # missing_field
        {"item_id": None},  # missing_field
        {"action": "teleport"},  # bad_action
        {"timestamp": 10},  # timestamp_out_of_range
        {"action": None},  # missing_field
    ]
    order = np.argsort(log.timestamp, kind="stable")
    for k, i in enumerate(order.tolist()):
        row = {
            "user_id": int(log.user[i]),
            "item_id": int(log.item[i]),
            "action": "view",
            "timestamp": int(log.timestamp[i]),
            "event_id": f"e{k}",
        }
        if rng.random() < 0.06:  # out of order, inside the tolerance
            row["timestamp"] -= int(rng.integers(1, TOLERANCE_S // 2))
        rows.append(row)
        bad.append(False)
        if rng.random() < 0.04:  # the same event again (a producer retry)
            rows.append(dict(row))
            bad.append(False)
        if rng.random() < 0.07:
            rows.append({**row, "event_id": f"bad{k}", **malformed[k % len(malformed)]})
            bad.append(True)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for f, part in enumerate(np.array_split(np.arange(len(rows)), files)):
        path = directory / f"part-{f}.parquet"
        pq.write_table(pa.Table.from_pylist([rows[j] for j in part], schema=SCHEMA), path)
        paths.append(path)
    valid_times = sorted(r["timestamp"] for r, b in zip(rows, bad, strict=True) if not b)
    return Lake(rows, bad, paths, valid_times[int(0.6 * len(valid_times))])


def store_contents(store: SequenceStore, vocab: ItemVocabulary) -> dict:
    """Every stored user's history as (item key, time, action), item keys via the vocabulary
    (None: the item's row was freed since)."""
    users = store.users()
    slots = np.array([store.slot_of(u) for u in users], dtype=np.int64)
    history = store.history(slots, np.full(len(users), np.iinfo(np.int64).max))
    rows = vocab.resolve(history.item_refs)
    out = {}
    for u, user in enumerate(users):
        lo, hi = history.offsets[u], history.offsets[u + 1]
        out[user] = [
            (None if r == 0 else vocab.key_of(int(r)), int(t), int(a))
            for r, t, a in zip(
                rows[lo:hi], history.timestamps[lo:hi], history.actions[lo:hi], strict=True
            )
        ]
    return out


def vocab_contents(vocab: ItemVocabulary) -> dict:
    """Which keys hold rows with their last-seen times, and the pending keys' counts.

    Not the admission/eviction counters: those count churn on the way, and the micro-batch
    that straddles the seam is two batches in a hand-off (one each side), which can churn a
    row once more under capacity pressure with the same rows held at the end."""
    rows = vocab.live_rows()
    held = {vocab.key_of(int(r)): int(vocab._last_seen[r]) for r in rows.tolist()}
    return {"held": held, "pending": dict(vocab._pending)}
