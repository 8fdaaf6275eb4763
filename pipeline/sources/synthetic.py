"""``SyntheticSource``: a seeded synthetic generator as a stream of records.

Two generators: ``SyntheticConfig`` (``pipeline.lake.synthetic``: item sequences, retrieval)
and ``ActionStreamConfig`` (``pipeline.lake.synthetic_actions``: impressions with click/view
actions, ranking). Both are deterministic, so the stream is too: the same config gives the
same records, and a fresh source seeked to a checkpointed position continues exactly where
the old one stopped (it regenerates the log and skips the records before that position).
Events come in event-time order. The stream is finite: it ends, and ``exhausted()`` turns
True, after the config's events; for a longer run use a larger config.

Positions are ``{partition: number of records emitted}``; one record holds
``events_per_record`` events (Arrow; default 4096) or exactly one event (JSON).
"""

from __future__ import annotations

from pipeline.lake.datasets import EventLog
from pipeline.lake.synthetic import SyntheticConfig, generate_events
from pipeline.lake.synthetic_actions import ActionStreamConfig, generate_action_events
from pipeline.sources.eventlog import EventLogSource


def generate(cfg: SyntheticConfig | ActionStreamConfig) -> EventLog:
    """The log of either generator, in event-time order."""
    if isinstance(cfg, ActionStreamConfig):
        return generate_action_events(cfg).sorted_by_time()
    return generate_events(cfg).sorted_by_time()


class SyntheticSource(EventLogSource):
    """Records of synthetic events; see the module docstring."""

    def __init__(
        self,
        cfg: SyntheticConfig | ActionStreamConfig,
        codec: str = "arrow",
        events_per_record: int | None = None,
        partition: str = "synthetic",
    ) -> None:
        self.cfg = cfg
        super().__init__(lambda: generate(cfg), partition, codec, events_per_record)
