"""Acceptance: a trainer group (``genrec train --workers 2``: torchrun, gloo) on one topic.

* Two ranks on a 4-partition topic; a random rank is SIGKILLed at three random moments while
  a paced producer writes; torchrun restarts the group each time and every rank resumes the
  newest complete group checkpoint. At the end, per event: the ranks' stores together hold
  every produced event exactly once (the store keeps the whole history here), the counters
  add up to the stream, the positions are the end of every partition, both ranks' weights
  are one model (the same digest in both parts, and the shared part's), and every published
  version loads.
* Two ranks on a 1-partition topic: rank 1 owns nothing and takes empty steps; the group
  still trains everything once and stays one model, writes no checkpoint while the topic is
  quiet, and SIGTERM stops it cleanly: exit 0, no traceback.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from connectors.kafka.admin import TopicAdmin
from connectors.kafka.producer import EventReplayer
from connectors.registry import Registry
from connectors.registry.published import load_version
from pipeline.lake.datasets import EventLog
from pipeline.lake.synthetic import SyntheticConfig, generate_events
from pipeline.state.vocab import ItemVocabulary
from pipeline.stream.checkpoint import CheckpointError, state_from_bytes
from pipeline.stream.distributed.checkpoints import GroupCheckpoints, Marker
from pipeline.stream.distributed.trainer import weights_digest
from pipeline.stream.persistence import checkpoint_store

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(900)]

WORLD = 2
KILLS = 3
DEADLINE_S = 240.0  # one wait; a restart (two processes importing torch) takes 10-30 s here
SETTINGS = [
    "--threads", "1", "--metrics-port", "0", "--batch-events", "64", "--log-every", "2",
    "--checkpoint-every-events", "300", "--checkpoint-every-s", "1",
    "--publish-every-events", "800", "--publish-every-s", "3",
    "--set", "model.embedding_dim=16", "--set", "model.num_layers=1",
    "--set", "store.max_len=128", "--set", "vocab.capacity=1000",
    "--set", "train.num_negatives=16", "--set", "source.poll_timeout_s=0.2",
    "--set", "distributed.max_restarts=8", "--set", "distributed.timeout_s=60",
]  # fmt: skip
_PID = re.compile(r"rank (\d+) of \d+ \(pid (\d+)\) owns partitions")


class Group:
    """``genrec train --workers 2`` (torchrun) as a process group of its own."""

    def __init__(self, root: Path, bootstrap: str, topic: str) -> None:
        self.root, self.bootstrap, self.topic = root, bootstrap, topic
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.log_path = root / "train.log"
        self.tmp = root / "tmp"  # the group's temporary directory, to see what it leaves

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "pipeline.cli", "train", "--workers", str(WORLD),
            "--source", "kafka", "--topic", self.topic, "--bootstrap-servers", self.bootstrap,
            "--set", f"source.kafka.group_id=g-{self.topic}",
            "--run-dir", str(self.root / "run"), "--checkpoint-dir", str(self.root / "ckpt"),
            "--registry", str(self.root / "registry"), *SETTINGS,
        ]  # fmt: skip
        self.tmp.mkdir(exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "TMPDIR": str(self.tmp)},
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def generations(self) -> int:
        """How many times the ranks started (one line per rank per start)."""
        return len(_PID.findall(self.log())) // WORLD

    def pid_of(self, rank: int) -> int:
        return [int(p) for r, p in _PID.findall(self.log()) if int(r) == rank][-1]

    def newest(self) -> Marker | None:
        return next(GroupCheckpoints(self.root / "ckpt", 0, WORLD, keep=3).markers(), None)

    def seen(self, marker: Marker | None) -> int:
        """Events the group checkpoint ``marker`` has seen (0: none, or pruned meanwhile)."""
        if marker is None:
            return 0
        parts = [GroupCheckpoints(self.root / "ckpt", r, WORLD, keep=3) for r in range(WORLD)]
        try:
            return sum(p.load(marker).meta["counters"].get("events_seen", 0) for p in parts)
        except CheckpointError:  # retention removed it since it was listed: ask again
            return 0

    def wait_for(self, what: str, ready: Callable[[], Any], timeout_s: float = DEADLINE_S) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = ready()
            if found:
                return found
            assert self.running(), f"the group exited while waiting for {what}:\n{self.tail()}"
            time.sleep(0.2)
        raise AssertionError(f"no {what} within {timeout_s:.0f}s:\n{self.tail()}")

    def terminate(self, timeout_s: float = 90.0) -> None:
        """SIGTERM to ``genrec train --workers``: torchrun stops the ranks, which take a last
        group checkpoint; a clean stop exits 0."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError(
                f"the group did not stop in {timeout_s:.0f}s:\n{self.tail()}"
            ) from None
        assert self.proc.returncode == 0, self.tail()

    def close(self) -> None:
        if self.running():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def groups(tmp_path):
    made: list[Group] = []

    def make(name: str, bootstrap: str, topic: str) -> Group:
        made.append(Group(tmp_path / name, bootstrap, topic))
        return made[-1]

    yield make
    for group in made:
        group.close()


def _events(users: int, seed: int) -> EventLog:
    return generate_events(
        SyntheticConfig(num_users=users, num_items=300, events_per_user=25, seed=seed)
    )


def _produce(bootstrap: str, topic: str, events: EventLog, rate: float | None) -> int:
    with EventReplayer(bootstrap, topic, codec="json", batch_events=600, rate=rate) as replayer:
        return replayer.replay(events, progress=False).events


def _final_state(group: Group, marker: Marker) -> dict:
    """Counters, positions, weights digests and store contents of every rank's part."""
    stores: dict = {}
    counters: list[dict] = []
    positions: dict = {}
    digests = []
    for rank in range(WORLD):
        ckpt = GroupCheckpoints(group.root / "ckpt", rank, WORLD, keep=3).load(marker)
        vocab = ItemVocabulary.restore(ckpt.state["vocab"])
        store = checkpoint_store(ckpt)
        for user in store.users():
            assert user not in stores, f"user {user} is in two ranks' stores"
            slot = store.slot_of(user)
            history = store.history(np.array([slot]), np.array([2**62]))
            rows = vocab.resolve(history.item_refs)
            stores[user] = sorted(
                (vocab.key_of(int(r)), int(t), int(a))
                for r, t, a in zip(rows, history.timestamps, history.actions, strict=True)
            )
        counters.append(ckpt.meta["counters"])
        assert ckpt.meta["rejected"] == {}
        positions |= ckpt.meta["source_positions"]
        digests.append(ckpt.meta["weights_digest"])
        shared = weights_digest(state_from_bytes(ckpt.state["model"], "model"))
    return {
        "stores": stores,
        "counters": counters,
        "positions": positions,
        "digests": digests,
        "shared": shared,
    }


def _expected_stores(events: EventLog) -> dict:
    out: dict = defaultdict(list)
    for u, i, t, a in zip(
        events.user.tolist(),
        events.item.tolist(),
        events.timestamp.tolist(),
        events.action.tolist(),
        strict=True,
    ):
        out[u].append((i, t, a))
    return {u: sorted(v) for u, v in out.items()}


def _check_final(group: Group, admin: TopicAdmin, topic: str, events: EventLog) -> Marker:
    marker = group.newest()
    assert marker is not None
    final = _final_state(group, marker)
    total = len(events)
    assert sum(c["events_seen"] for c in final["counters"]) == total
    assert sum(c["events_trained"] for c in final["counters"]) == total
    assert final["stores"] == _expected_stores(events)  # every event once: none lost, none twice
    end = {f"{topic}:{p}": o for p, o in admin.end_offsets(topic).items()}
    assert final["positions"] == end
    assert len(set(final["digests"])) == 1, final["digests"]
    assert final["digests"][0] == final["shared"]
    registry = Registry.open(group.root / "registry")
    versions = registry.list_versions()
    assert versions, "nothing was published"
    for manifest in versions:
        load_version(registry, manifest.version)  # verified and loadable
    return marker


def test_group_sigkill_at_random_moments_trains_every_event_exactly_once(
    kafka_bootstrap, kafka_admin, create_topic, groups
):
    topic = create_topic(partitions=4)
    events = _events(users=160, seed=21)
    chunks = np.array_split(np.arange(len(events)), KILLS + 1)
    go_on = [threading.Event() for _ in range(KILLS)]
    produced: list[int] = []

    def produce() -> None:
        # chunk k+1 only after the restart that follows kill k: however slow a restart is on
        # a loaded machine, every kill lands while the stream still has events to come
        for k, chunk in enumerate(chunks):
            produced.append(_produce(kafka_bootstrap, topic, events.take(chunk), rate=100))
            if k < KILLS and not go_on[k].wait(DEADLINE_S):
                return

    producer = threading.Thread(target=produce, daemon=True)
    group = groups("killed", kafka_bootstrap, topic)
    group.start()
    producer.start()
    seed = random.randrange(1_000_000)
    rng = random.Random(seed)
    try:
        for kill in range(KILLS):
            group.wait_for(f"generation {kill + 1}", lambda k=kill: group.generations() >= k + 1)
            before = group.newest()
            seen_before = group.seen(before)
            group.wait_for(
                "a newer complete group checkpoint with progress",
                lambda b=before, s=seen_before: (
                    (m := group.newest()) is not None
                    and (b is None or m.n > b.n)
                    and group.seen(m) > s
                ),
            )
            time.sleep(rng.uniform(0.0, 1.5))
            os.kill(group.pid_of(rng.randrange(WORLD)), signal.SIGKILL)
            assert group.seen(group.newest()) < len(events), f"kill {kill} after the end ({seed})"
            go_on[kill].set()
    finally:
        for event in go_on:
            event.set()
        producer.join(timeout=DEADLINE_S)
    assert not producer.is_alive(), "the producer did not finish"
    assert sum(produced) == len(events)
    group.wait_for(
        "a group checkpoint covering the whole stream",
        lambda: group.seen(group.newest()) >= len(events),
    )
    group.terminate()
    _check_final(group, kafka_admin, topic, events)
    log = group.log()
    for rank in range(WORLD):
        assert log.count(f"rank {rank} resumed group checkpoint") >= KILLS, group.tail()


def test_group_with_an_idle_rank_trains_everything_once(
    kafka_bootstrap, kafka_admin, create_topic, groups
):
    topic = create_topic(partitions=1)  # rank 1 owns no partition
    events = _events(users=60, seed=4)
    assert _produce(kafka_bootstrap, topic, events, rate=None) == len(events)
    group = groups("idle", kafka_bootstrap, topic)
    group.start()
    group.wait_for(
        "a group checkpoint covering the whole stream",
        lambda: group.seen(group.newest()) >= len(events),
    )
    time.sleep(4)  # past the publish period (3 s): its checkpoint is the last one with news
    newest = group.newest()
    time.sleep(3)  # three checkpoint periods of a quiet topic
    assert group.newest() == newest, "an idle group wrote checkpoints"
    group.terminate()
    _check_final(group, kafka_admin, topic, events)
    log = group.log()
    assert "rank 1 of 2 owns no partition" in log
    # torchrun's log directory (torchelastic_*) is made inside genrec's, which goes
    # (torch's own per-user cache, torchinductor_<user>, is reused, not left per run)
    left = [p.name for p in group.tmp.iterdir() if p.name.startswith(("torchelastic", "genrec"))]
    assert not left, left
    assert "Traceback" not in log and "stopped after its final checkpoint" in log, group.tail()
