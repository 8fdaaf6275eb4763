"""Fresh histories: the server's own consumer of the event topic.

A daemon thread polls the source (the ``genrec.sources`` plugin's Kafka source, built as
the trainer builds it, with the server's own consumer group), decodes and validates the
records with the pipeline's codecs (``decode_records``) and stores the valid events
(``ServeHistories.ingest``); rejects are counted, nothing else (the trainer dead-letters
them). Offsets are never committed: the histories live in memory, so a restarted server
reads the topic again from ``history.kafka.start`` (or a bootstrap's cut-off).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pipeline.events import decode_records
from pipeline.serve.histories import ServeHistories

log = logging.getLogger(__name__)

POLL_RECORDS = 2048


class HistoryFeed:
    """Polls ``source`` into ``histories`` on a daemon thread until ``stop``."""

    def __init__(self, source: Any, histories: ServeHistories, poll_timeout_s: float) -> None:
        self.source = source
        self.histories = histories
        self.poll_timeout_s = poll_timeout_s
        self.events = 0  # valid events read
        self.stored = 0  # of them, accepted by the store
        self.rejected = 0  # records or rows that did not validate
        self.errors = 0  # polls that failed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="genrec-serve-feed", daemon=True)
        self._thread.start()

    def poll_once(self) -> int:
        """One poll; returns the events stored."""
        records = self.source.poll(POLL_RECORDS, self.poll_timeout_s)
        if not len(records):
            return 0
        result = decode_records(records)
        self.rejected += len(result.rejects)
        self.events += len(result.events)
        stored = self.histories.ingest(result.events)
        self.stored += stored
        return stored

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # a broken poll must not end the feed: log, wait, go on
                self.errors += 1
                log.exception("history feed: a poll failed; retrying")
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.source.close()
