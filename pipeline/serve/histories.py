"""The per-user histories ``genrec serve`` answers from: the pipeline's ``SequenceStore``.

The store holds int64 item references; a trainer's are rows of its vocabulary, which change
from version to version, so the server stores a version-independent reference of each item
key instead (``item_refs``: an int key itself, a str key's 64-bit FNV-1a hash) and each
loaded version maps references to its rows (``pipeline.serve.version``). A str key whose
hash equals an int key in use would share its history entries: with 64-bit hashes, a
negligible chance.

Events come from the stream (``ingest``, the Kafka feed's decoded batches: the store's own
late / duplicate vetting, cap, TTL and user limit apply) and, at start, from a ``genrec
backfill bootstrap`` or trainer checkpoint (``from_checkpoint``). The store is guarded by a
lock: the feed thread writes while request batches read.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from pipeline.events import EventBatch
from pipeline.runtime.errors import ConfigError
from pipeline.state.grouping import hash_event_ids
from pipeline.state.keyindex import Key, split_keys
from pipeline.state.store import Histories, SequenceStore
from pipeline.state.vocab import ItemVocabulary

_LATEST = np.iinfo(np.int64).max


def item_refs(keys: np.ndarray) -> np.ndarray:
    """The version-independent int64 reference of each item key (module docstring)."""
    is_int, ints, others = split_keys(keys)
    out = np.empty(is_int.size, dtype=np.int64)
    out[is_int] = ints
    if others:
        out[~is_int] = hash_event_ids(np.array(others, dtype=object), len(others))
    return out


class ServeHistories:
    """Users' recent events, bounded (``SequenceStore``'s cap, TTL and user limit)."""

    def __init__(
        self, max_len: int, max_users: int, ttl_s: int | None = None, tolerance_s: int = 0
    ) -> None:
        self.store = SequenceStore(max_len, max_users, ttl_s, tolerance_s)
        self.lock = threading.Lock()
        self.cutoff: int | None = None  # a bootstrap's T: the stream starts there
        self.newest_event = 0  # event time of the newest stored event (0: none yet)

    def ingest(self, events: EventBatch) -> int:
        """Store a batch of validated events; returns how many were accepted."""
        if not len(events.timestamp):
            return 0
        refs = item_refs(events.item_id)
        with self.lock:
            plan = self.store.plan(events.user_id, events.timestamp, events.event_id)
            self.store.commit(plan, refs, events.action, events.value)
        accepted = int(plan.accepted.sum())
        if accepted:
            self.newest_event = max(self.newest_event, int(events.timestamp[plan.accepted].max()))
        return accepted

    def lookup(self, users: list[Key]) -> Histories:
        """The stored events of each user (empty for an unknown one), oldest first; items as
        references (``item_refs``)."""
        with self.lock:
            slots = np.array([self._slot(user) for user in users], dtype=np.int64)
            return self.store.history(slots, np.full(slots.size, _LATEST, np.int64))

    def _slot(self, user: Key) -> int:
        slot = self.store.slot_of(user)
        return -1 if slot is None else slot

    def counts(self) -> tuple[int, int]:
        """(users, events) stored."""
        with self.lock:
            return self.store.num_users, self.store.num_events

    @classmethod
    def from_checkpoint(
        cls,
        directory: Path,
        max_len: int,
        max_users: int,
        ttl_s: int | None = None,
        tolerance_s: int = 0,
    ) -> ServeHistories:
        """Histories from the newest checkpoint in ``directory`` (a ``backfill bootstrap``
        output or a trainer's ``checkpoint.dir``): each user's stored events whose item the
        checkpoint's vocabulary still knows, with the checkpoint's cut-off (``cutoff``)."""
        # the trainer's checkpoint code loads torch: only a server with a bootstrap needs it
        from pipeline.stream.checkpoint import CheckpointError, CheckpointStore
        from pipeline.stream.persistence import checkpoint_store

        if not directory.is_dir():
            raise ConfigError(
                f"history.bootstrap: {directory} is not a directory; give the checkpoint "
                "directory of 'genrec backfill bootstrap' (its checkpoint.dir)"
            )
        try:
            ckpt = CheckpointStore(directory).latest()
            if ckpt is None:
                raise ConfigError(f"history.bootstrap: {directory} holds no loadable checkpoint")
            stored = checkpoint_store(ckpt)
            vocab = ItemVocabulary.restore(ckpt.state["vocab"])
        except (CheckpointError, KeyError, ValueError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"history.bootstrap: {directory}: {err}") from None
        users = stored.users()
        slots = np.array([stored.slot_of(user) for user in users], dtype=np.int64)
        old = stored.history(slots, np.full(slots.size, _LATEST, np.int64))
        rows = vocab.resolve(old.item_refs)  # 0: the item's row was freed since
        known = rows > 0
        distinct, inverse = np.unique(rows[known], return_inverse=True)
        keys = np.empty(distinct.size, dtype=object)
        keys[:] = [vocab.key_of(int(row)) for row in distinct.tolist()]
        owners = np.empty(len(users), dtype=object)
        owners[:] = users
        histories = cls(max_len, max_users, ttl_s, tolerance_s)
        histories.ingest(
            EventBatch(
                user_id=np.repeat(owners, old.lengths())[known],
                item_id=keys[inverse],
                timestamp=old.timestamps[known],
                action=old.actions[known].astype(np.int64),
                value=old.values[known],
            )
        )
        cutoff = ckpt.meta.get("cutoff")
        histories.cutoff = cutoff if type(cutoff) is int else None
        return histories
