"""One reader of lake files: the same MovieLens ``ratings.csv`` read by ``train-offline``'s
loader, by file replay (``genrec train --source file``) and by ``genrec backfill sequences``
gives the same events: users, items, times, each user's order (time, ties in file order) and
ratings (the event's ``value``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.cli import main
from pipeline.events import decode_records
from pipeline.lake.datasets import read_event_log
from pipeline.offline.training import load_sequences
from pipeline.sources.files import FileSource

T0 = 964_982_703  # ml-latest-small's first timestamp
# userId,movieId,rating,timestamp; file order is not time order, and user 1 has a tie
ROWS = [
    (1, 31, 2.5, T0 + 30),
    (2, 10, 4.0, T0 + 5),
    (1, 1029, 3.0, T0 + 10),
    (3, 7, 0.5, T0 + 1),
    (1, 1061, 3.5, T0 + 10),
    (2, 11, 5.0, T0 + 2),
    (3, 8, 4.5, T0 + 3),
    (1, 1129, 4.0, T0 + 20),
    (2, 12, 1.5, T0 + 9),
    (3, 9, 3.5, T0 + 2),
]

Events = dict[int, list[tuple[int, int, float]]]  # user -> [(item, timestamp, value)]


def write_ratings(path: Path) -> Path:
    lines = ["userId,movieId,rating,timestamp"] + [f"{u},{i},{r:.1f},{t}" for u, i, r, t in ROWS]
    path.write_text("\n".join(lines) + "\n")
    return path


def by_user(users, items, times, values) -> Events:
    """Each user's events in time order, ties in the order given (a stable sort)."""
    events: Events = {}
    for k in np.argsort(np.asarray(times), kind="stable").tolist():
        events.setdefault(int(users[k]), []).append(
            (int(items[k]), int(times[k]), float(values[k]))
        )
    return events


def offline_events(path: Path) -> Events:
    """What train-offline reads (``read_event_log``, which ``load_sequences`` runs), and its
    sequences in the same order."""
    event_log, stats = read_event_log(path)
    assert stats.format == "movielens-csv" and stats.skipped_total == 0
    events = by_user(event_log.user, event_log.item, event_log.timestamp, event_log.value)
    ds, _ = load_sequences(str(path))
    for row, user in enumerate(ds.user_keys.tolist()):
        start, stop = ds.offsets[row], ds.offsets[row + 1]
        items = ds.item_keys[ds.item_ids[start:stop]].tolist()
        assert items == [item for item, _, _ in events[user]]
        assert ds.timestamps[start:stop].tolist() == [t for _, t, _ in events[user]]
    return events


def replay_events(path: Path) -> Events:
    """What ``genrec train --source file --path FILE`` polls, through the stream's decoder."""
    source = FileSource(path)
    records = []
    while not source.exhausted():
        records.extend(source.poll(3, 0.0))
    source.close()
    result = decode_records(records)
    assert result.rejects == []
    batch = result.events
    return by_user(batch.user_id, batch.item_id, batch.timestamp, batch.value)


def backfill_events(path: Path, out: Path) -> Events:
    """The histories ``genrec backfill sequences`` writes (Beam's direct runner)."""
    argv = ["backfill", "sequences", "--input", str(path), "--out", str(out), "--shards", "2"]
    assert main(argv) == 0
    events: Events = {}
    for shard in sorted(out.glob("shard-*.parquet")):
        for row in pq.read_table(shard).to_pylist():
            events[int(row["user"])] = [
                (int(item), t, math.nan if v is None else v)
                for item, t, v in zip(row["item"], row["timestamp"], row["value"], strict=True)
            ]
    return events


def test_the_three_readers_give_the_same_events(tmp_path: Path) -> None:
    path = write_ratings(tmp_path / "ratings.csv")
    expected = by_user(*zip(*((u, i, t, r) for u, i, r, t in ROWS), strict=True))
    assert expected[1] == [(1029, T0 + 10, 3.0), (1061, T0 + 10, 3.5), (1129, T0 + 20, 4.0),
                           (31, T0 + 30, 2.5)]  # fmt: skip
    assert offline_events(path) == expected
    assert replay_events(path) == expected
    assert backfill_events(path, tmp_path / "out") == expected


def test_a_file_that_is_not_parquet_is_named_with_the_fix(tmp_path: Path, capsys) -> None:
    """--format parquet on a CSV: one line naming the file and the flag, exit 2."""
    data = tmp_path / "ratings.csv"
    data.write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n")
    out = tmp_path / "out"
    assert (
        main(["train-offline", "--data", str(data), "--format", "parquet", "--out", str(out)]) == 2
    )
    err = capsys.readouterr().err
    assert f"{data}: not a Parquet file" in err and "pass the --format" in err
    assert "Traceback" not in err
