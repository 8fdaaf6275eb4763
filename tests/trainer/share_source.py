"""``Share``: a partitioned stand-in for a Kafka topic, for trainer-group tests without a broker
(tests/trainer/test_group_lifecycle.py runs it in ``genrec train`` rank processes)."""

from __future__ import annotations

import time

import numpy as np

from pipeline.events.records import Records
from pipeline.lake.synthetic import SyntheticConfig, generate_events
from pipeline.sources.eventlog import EventLogSource

SYNTHETIC = SyntheticConfig(num_users=60, num_items=200, events_per_user=30)


class Share(EventLogSource):
    """One rank's partition of a synthetic stream (users with ``user % world == rank``): its
    first ``available`` records, then quiet without ending, like a drained Kafka partition."""

    def __init__(self, available: int) -> None:
        self.available = available
        self.share = (0, 1)
        super().__init__(self._events, "p0", codec="json")

    def _events(self):
        events = generate_events(SYNTHETIC).sorted_by_time()
        rank, world = self.share
        return events.take(np.flatnonzero(events.user % world == rank))

    def assign_share(self, rank: int, world: int, timeout_s: float = 60.0) -> list[str]:
        self.share, self.partition = (rank, world), f"p{rank}"
        return [self.partition]

    def poll(self, max_records: int, timeout_s: float = 0.0) -> Records:
        allowed = min(max_records, self.available - self.positions()[self.partition])
        if allowed <= 0:
            time.sleep(min(timeout_s, 0.05))
            return Records()
        return super().poll(allowed, timeout_s)

    def exhausted(self) -> bool:
        return False
