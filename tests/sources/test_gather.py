"""``gather``: one micro-batch of records per call, polled the way the trainer polls."""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.events.records import Records
from pipeline.sources.base import gather


class KafkaLikeSource:
    """Hands out up to ``max_records`` per poll and, like ``KafkaSource``, answers the poll
    after a non-empty one with ``[]``."""

    def __init__(self, records: int) -> None:
        self.pending = Records.run([b"{}"] * records, "json", "t:0", 0)
        self.asked: list[int] = []
        self.handed_out = False

    def poll(self, max_records: int, timeout_s: float) -> Records:
        self.asked.append(max_records)
        if self.handed_out:
            self.handed_out = False
            return Records()
        got, self.pending = self.pending[:max_records], self.pending[max_records:]
        self.handed_out = bool(got)
        return got

    def positions(self) -> dict[str, int]:
        return {}

    def seek(self, positions: Mapping[str, int]) -> None: ...

    def commit(self, positions: Mapping[str, int]) -> None: ...

    def exhausted(self) -> bool:
        return not self.pending

    def close(self) -> None: ...


def test_one_event_per_record_fills_the_micro_batch_in_one_poll() -> None:
    source = KafkaLikeSource(10_000)
    batch = gather(source, 4096, 1.0, None, 0.0)
    assert len(batch) == 4096 and source.asked == [4096]
    assert [r.offset for r in batch] == list(range(4096))


def test_unknown_record_size_asks_for_a_single_record() -> None:
    source = KafkaLikeSource(10)
    assert len(gather(source, 4096, None, None, 0.0)) == 1
    assert source.asked == [1]


def test_many_events_per_record_and_a_poll_cap() -> None:
    source = KafkaLikeSource(100)
    assert len(gather(source, 4096, 1000.0, None, 0.0)) == 5  # ceil(4096 / 1000)
    source = KafkaLikeSource(100)
    assert len(gather(source, 4096, 1.0, 64, 0.0)) == 64  # capped, then the clean-point []
    assert source.asked == [64, 64]


def test_stops_at_an_empty_poll() -> None:
    source = KafkaLikeSource(0)
    assert gather(source, 256, 1.0, None, 0.0) == []
