"""SyntheticSource: the generator's events in time order, positions and deterministic seek."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.events import EventBatch, decode_records
from pipeline.events.records import SourceRecord
from pipeline.lake.synthetic import SyntheticConfig, generate_events
from pipeline.sources.base import Source
from pipeline.sources.synthetic import SyntheticSource

CFG = SyntheticConfig(num_users=30, num_items=60, events_per_user=8, churn=0.2, seed=3)


def drain(source: Source, step: int) -> list[SourceRecord]:
    records = []
    while not source.exhausted():
        batch = source.poll(step, 0.0)
        assert batch, "a source that is not exhausted must return records"
        records.extend(batch)
    return records


@pytest.mark.parametrize("codec, events_per_record", [("arrow", 50), ("json", None)])
def test_streams_every_generated_event_in_time_order(
    codec: str, events_per_record: int | None
) -> None:
    source = SyntheticSource(CFG, codec=codec, events_per_record=events_per_record)
    assert isinstance(source, Source)
    records = drain(source, 7)
    assert [r.offset for r in records] == list(range(len(records)))
    assert {r.codec for r in records} == {codec} and {r.partition for r in records} == {"synthetic"}
    assert source.positions() == {"synthetic": len(records)}
    assert source.poll(10, 0.0) == []

    result = decode_records(records)
    assert result.rejects == []
    expected = generate_events(CFG)
    assert list(result.events.rows()) == list(EventBatch.from_event_log(expected).rows())
    assert np.all(np.diff(result.events.timestamp) >= 0)
    per_record = 1 if codec == "json" else events_per_record
    assert len(records) == -(-len(expected) // per_record)


def test_seek_continues_like_the_uninterrupted_stream() -> None:
    full = drain(SyntheticSource(CFG, events_per_record=40), 3)
    first = SyntheticSource(CFG, events_per_record=40)
    head = first.poll(4, 0.0)
    checkpoint = first.positions()
    first.commit(checkpoint)
    assert first.committed == checkpoint == {"synthetic": 4}

    resumed = SyntheticSource(CFG, events_per_record=40)
    resumed.seek(checkpoint)
    assert [*head, *drain(resumed, 5)] == full

    resumed.seek({})  # no position: back to the start
    assert resumed.poll(1, 0.0) == full[:1]


def test_bad_arguments_are_explained() -> None:
    source = SyntheticSource(CFG, events_per_record=40)
    with pytest.raises(ValueError, match="cannot seek synthetic to offset 999"):
        source.seek({"synthetic": 999})
    with pytest.raises(ValueError, match="one event per record"):
        SyntheticSource(CFG, codec="json", events_per_record=10)
    with pytest.raises(ValueError, match="unknown codec"):
        SyntheticSource(CFG, codec="avro")
