"""FileSource: table files replayed in event-time order, JSONL lines as raw records, seek."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.events import decode_records
from pipeline.lake.datasets import DataFormatError
from pipeline.sources.base import Source
from pipeline.sources.files import FileSource
from pipeline.stream.deadletter import MemoryDeadLetterSink

T0 = 1_600_000_000
ROWS = [  # user, item, timestamp, file order deliberately not time order
    (1, "a", T0 + 30),
    (2, "b", T0 + 10),
    (1, "c", T0 + 20),
    (3, "a", T0 + 10),
    (2, "7", T0 + 0),
]
BY_TIME = sorted(ROWS, key=lambda r: r[2])  # stable: ties keep file order


def drain(source: Source, step: int) -> list:
    records = []
    while not source.exhausted():
        batch = source.poll(step, 0.0)
        assert batch, "a source that is not exhausted must return records"
        records.extend(batch)
    return records


def write_table(path: Path) -> None:
    if path.suffix == ".parquet":
        users, items, times = zip(*ROWS, strict=True)
        pq.write_table(pa.table({"user_id": users, "item_id": items, "timestamp": times}), path)
    else:
        lines = ["user_id,item_id,timestamp"] + [f"{u},{i},{t}" for u, i, t in ROWS]
        path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("name, codec", [("log.csv", "arrow"), ("log.parquet", "json")])
def test_table_replay_in_event_time_order(tmp_path: Path, name: str, codec: str) -> None:
    path = tmp_path / name
    write_table(path)
    source = FileSource(path, codec=codec, events_per_record=2 if codec == "arrow" else None)
    records = drain(source, 2)
    assert {r.partition for r in records} == {f"file:{name}"}
    assert [r.offset for r in records] == list(range(len(records)))
    result = decode_records(records)
    assert result.rejects == []
    got = list(
        zip(
            result.events.user_id.tolist(),
            result.events.item_id.tolist(),
            result.events.timestamp.tolist(),
            strict=True,
        )
    )
    assert got == [(u, 7 if i == "7" else i, t) for u, i, t in BY_TIME]  # "7" is canonically 7


def test_table_seek_and_malformed_rows(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    write_table(path)
    full = drain(FileSource(path, events_per_record=1), 10)
    resumed = FileSource(path, events_per_record=1)
    resumed.seek({"file:log.csv": 3})
    assert drain(resumed, 1) == full[3:]

    with path.open("a") as f:
        f.write("9,z,not-a-time\n")
    with pytest.raises(DataFormatError, match=r"log\.csv:7"):
        FileSource(path).poll(1, 0.0)
    skipping = FileSource(path, skip_malformed=True)
    assert len(decode_records(drain(skipping, 10)).events) == len(ROWS)
    assert skipping.read_stats is not None and skipping.read_stats.skipped_total == 1


def malformed_lines() -> list[tuple[bytes, str]]:
    """Bad JSONL lines of many kinds and the reason each must be rejected with."""
    good = {"user_id": 1, "item_id": 2, "action": "click", "timestamp": T0}
    return [
        (b"\xc3\x28 not utf-8", "undecodable"),
        (b'{"user_id": 1, "item_id"', "bad_json"),
        (b"", "bad_json"),
        (b"null", "bad_json"),
        (json.dumps({**good, "user_id": None}).encode(), "missing_field"),
        (json.dumps({k: v for k, v in good.items() if k != "timestamp"}).encode(), "missing_field"),
        (json.dumps({**good, "item_id": 2.5}).encode(), "bad_type"),
        (json.dumps({**good, "user_id": ""}).encode(), "empty_id"),
        (json.dumps({**good, "item_id": "x" * 400}).encode(), "oversized_id"),
        (json.dumps({**good, "action": "dance"}).encode(), "bad_action"),
        (b'{"user_id": 1, "item_id": 2, "action": 1, "timestamp": Infinity}', "bad_timestamp"),
        (json.dumps({**good, "timestamp": T0 * 1000}).encode(), "timestamp_out_of_range"),
        (json.dumps({**good, "value": 1e300}).encode(), "bad_value"),
        (json.dumps({**good, "pad": "y" * 70_000}).encode(), "oversized_payload"),
    ]


def test_jsonl_with_many_malformed_lines(tmp_path: Path) -> None:
    rng = random.Random(7)
    lines: list[bytes] = []
    expected_good: list[tuple[int | str, int, int]] = []
    expected_bad: dict[int, str] = {}
    bad_kinds = malformed_lines()
    for i in range(300):
        if i % 5 == 0:  # 20% malformed, cycling through every kind
            payload, reason = bad_kinds[(i // 5) % len(bad_kinds)]
            expected_bad[i] = reason
        else:
            user = rng.choice([rng.randrange(50), f"user-{rng.randrange(50)}"])
            event = {"user_id": user, "item_id": i, "action": "view", "timestamp": T0 + i, "x": 0}
            payload = json.dumps(event).encode()
            expected_good.append((user, i, T0 + i))
        lines.append(payload)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\r\n".join(lines))  # CRLF endings, no final line break

    source = FileSource(path)
    records = drain(source, 64)
    assert [r.offset for r in records] == list(range(300))
    assert [r.payload for r in records] == lines
    assert source.positions() == {"file:events.jsonl": 300}

    result = decode_records(records)
    sink = MemoryDeadLetterSink()
    for reject in result.rejects:
        sink.send(reject)
    got = list(
        zip(
            result.events.user_id.tolist(),
            result.events.item_id.tolist(),
            result.events.timestamp.tolist(),
            strict=True,
        )
    )
    assert got == expected_good
    assert {r.offset: str(r.reason) for r in sink.rejects} == expected_bad
    assert sink.counts() == dict(Counter(expected_bad.values()))
    assert set(expected_bad.values()) == {reason for _, reason in bad_kinds}  # every kind ran
    assert len(expected_bad) >= 0.1 * len(lines)


def test_jsonl_seek(tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_text("".join(f'{{"line": {i}}}\n' for i in range(10)))
    source = FileSource(path, partition="replay")
    head = source.poll(4, 0.0)
    resumed = FileSource(path, partition="replay")
    resumed.seek(source.positions())
    rest = drain(resumed, 3)
    assert [r.offset for r in [*head, *rest]] == list(range(10))
    assert rest[0].payload == b'{"line": 4}'
    assert resumed.exhausted() and resumed.poll(5, 0.0) == []
    with pytest.raises(ValueError, match="has only 10 lines"):
        resumed.seek({"replay": 11})
    with pytest.raises(ValueError, match="one json record per line"):
        FileSource(path, codec="arrow")
