"""Trainer defects found by attacking it: single writer, idle tail, restore fallback, signals,
concurrent publishers, checkpoints of another source."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from test_trainer import small_cfg
from waits import read_line, wait_until

from connectors.registry import Registry
from connectors.registry.errors import ConcurrentPublishError
from pipeline.events.records import Records
from pipeline.lake.synthetic import SyntheticConfig
from pipeline.runtime.runlock import DirectoryLock, DirectoryLockedError
from pipeline.sources.synthetic import SyntheticSource
from pipeline.stream.checkpoint import CheckpointError, CheckpointStore
from pipeline.stream.deadletter import MemoryDeadLetterSink
from pipeline.stream.trainer import OnlineTrainer

REPO = Path(__file__).resolve().parents[2]
SYNTHETIC = SyntheticConfig(num_users=60, num_items=200, num_clusters=8, events_per_user=30)
# `genrec train` flags with the shapes of small_cfg (so its checkpoints fit).
SMALL_FLAGS = [
    "--metrics-port", "0", "--threads", "1", "--batch-events", "64", "--run-dir", "run",
    "--set", "model.embedding_dim=16", "--set", "store.max_len=10",
    "--set", "vocab.capacity=120", "--set", "vocab.ttl_s=432000",
    "--set", "train.num_negatives=16", "--set", "source.synthetic.num_users=60",
]  # fmt: skip


def genrec(*args: str, cwd: Path, timeout_s: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


class IdleAfter:
    """A finite source that then stays quiet without ending, like a drained Kafka topic."""

    def __init__(self, inner: SyntheticSource) -> None:
        self.inner = inner
        self.polls_after_end = 0

    def poll(self, max_records: int, timeout_s: float) -> Records:
        if self.inner.exhausted():
            self.polls_after_end += 1
            time.sleep(min(timeout_s, 0.02))
            return Records()
        return self.inner.poll(max_records, timeout_s)

    def positions(self) -> dict[str, int]:
        return self.inner.positions()

    def seek(self, positions) -> None:
        self.inner.seek(positions)

    def commit(self, positions) -> None:
        self.inner.commit(positions)

    def exhausted(self) -> bool:
        return False

    def close(self) -> None:
        self.inner.close()


def trainer_for(cfg, source, registry=None) -> OnlineTrainer:
    return OnlineTrainer(
        cfg,
        source,
        MemoryDeadLetterSink(),
        checkpoints=CheckpointStore(cfg.checkpoint.dir),
        registry=registry,
    )


# ------------------------------------------------------------------ single writer (item 4)
def test_directory_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    with (
        DirectoryLock(tmp_path / "ckpt"),
        pytest.raises(DirectoryLockedError, match=rf"pid {os.getpid()} on "),
    ):
        DirectoryLock(tmp_path / "ckpt").acquire()
    DirectoryLock(tmp_path / "ckpt").acquire().release()  # free again after release


def test_a_lock_left_by_a_killed_trainer_is_taken_over(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(REPO)!r})
            from pipeline.runtime.runlock import DirectoryLock
            DirectoryLock({str(tmp_path / "ckpt")!r}).acquire()
            print("locked", flush=True)
            time.sleep(120)
        """)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert read_line(holder.stdout, 120, "the holder to take the lock").strip() == "locked"
        with pytest.raises(DirectoryLockedError, match=rf"pid {holder.pid}"):
            DirectoryLock(tmp_path / "ckpt").acquire()
        holder.kill()
        holder.wait(timeout=30)
        lock = DirectoryLock(tmp_path / "ckpt").acquire()  # stale after SIGKILL: recovered
        assert json.loads((tmp_path / "ckpt" / ".lock").read_text())["pid"] == os.getpid()
        lock.release()
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_second_genrec_train_on_one_checkpoint_dir_refuses_to_start(tmp_path):
    with DirectoryLock(tmp_path / "ckpt"):
        done = genrec(
            "train", *SMALL_FLAGS, "--checkpoint-dir", "ckpt", "--no-publish",
            "--max-events", "100", cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "is in use by another trainer" in done.stderr and "Traceback" not in done.stderr
    assert not list((tmp_path / "ckpt").glob("ckpt-*"))  # it trained nothing


def test_a_publish_after_another_writer_moved_latest_fails_instead_of_forking(tmp_path):
    cfg = small_cfg(tmp_path, max_events=800)
    cfg.registry.every_events = 200
    registry = Registry.open(cfg.registry.uri, create=True)
    other = Registry.open(cfg.registry.uri)
    source = SyntheticSource(SYNTHETIC, events_per_record=64)
    trainer = trainer_for(cfg, source, registry)
    original_poll = source.poll
    intruded = []

    def poll_and_intrude(max_records, timeout_s):
        if not intruded:  # the trainer has read `latest` by now: another writer publishes
            intruded.append(other.publish({"weights.bin": b"other"}).version)
        return original_poll(max_records, timeout_s)

    source.poll = poll_and_intrude
    with pytest.raises(ConcurrentPublishError):
        trainer.run()
    assert [m.version for m in registry.list_versions()] == intruded  # nothing forked
    assert registry.alias("latest").version == intruded[0]
    ckpt = CheckpointStore(cfg.checkpoint.dir).latest()  # progress was still saved
    assert ckpt is not None and ckpt.meta["counters"]["events_trained"] > 0


# ---------------------------------------------------------------------- idle tail (item 5)
def test_an_idle_tail_is_checkpointed_and_published_on_time(tmp_path):
    cfg = small_cfg(tmp_path)
    cfg.checkpoint.every_events = 10**9
    cfg.checkpoint.every_s = 0.3
    cfg.registry.every_events = 10**9
    cfg.registry.every_s = 0.3
    cfg.source.poll_timeout_s = 0.05
    registry = Registry.open(cfg.registry.uri, create=True)
    source = IdleAfter(SyntheticSource(SYNTHETIC, events_per_record=64))
    trainer = trainer_for(cfg, source, registry)
    stop = threading.Event()
    runner = threading.Thread(target=trainer.run, args=(stop,), daemon=True)
    runner.start()
    store = CheckpointStore(cfg.checkpoint.dir)
    end = {"synthetic": source.inner.num_records}

    def tail_saved() -> bool:
        ckpt = store.latest()
        return ckpt is not None and ckpt.meta["source_positions"] == end

    try:
        wait_until(lambda: source.polls_after_end > 0, 120, "the source to drain")
        wait_until(tail_saved, 30, "a checkpoint covering the idle tail")
        # the checkpoint is written before the version: 'latest' may not exist yet
        wait_until(
            lambda: (
                registry.latest_version() is not None
                and registry.show("latest").source_positions == end
            ),
            30,
            "a version of the tail",
        )
        # Nothing new while idle: no more checkpoints or versions pile up.
        newest, version = store.sequences()[-1], registry.show("latest").version
        time.sleep(1.0)
        assert store.sequences()[-1] == newest and registry.show("latest").version == version
    finally:
        stop.set()
        runner.join(timeout=60)
    assert not runner.is_alive()


# --------------------------------------------------------------- restore fallback (item 6)
def _rewrite(ckpt_dir: Path, blob: str | None = None, data: bytes | None = None, **manifest_edits):
    """Damage a checkpoint so that its hashes still match (what a loader must survive)."""
    manifest_path = ckpt_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if blob is not None:
        (ckpt_dir / blob).write_bytes(data)
        manifest["files"][blob] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    for key, value in manifest_edits.items():
        if key.startswith("meta_"):
            name = key.removeprefix("meta_")
            if value is None:
                manifest["meta"].pop(name)
            else:
                manifest["meta"][name] = value
        else:
            manifest[key] = value
    manifest_path.write_text(json.dumps(manifest))


DAMAGE = {
    "model_not_a_zip": {"blob": "model", "data": b"PK not a zip at all"},
    # the newest is a delta on the older one: its store is the users written since
    "store_not_an_archive": {"blob": "store_delta", "data": b"\x00" * 64},
    "format_version_text": {"format_version": "x"},
    "files_a_list": {"files": ["model"]},
    "counters_missing": {"meta_counters": None},
    "counters_not_counts": {"meta_counters": {"events_trained": "many"}},
    "positions_missing": {"meta_source_positions": None},
}


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A checkpoint directory with two good checkpoints (the older at 512 events)."""
    tmp = tmp_path_factory.mktemp("two")
    cfg = small_cfg(tmp, max_events=512)
    cfg.registry.enabled = False
    cfg.checkpoint.every_events = 10**9  # one checkpoint per run, at its end
    trainer_for(cfg, SyntheticSource(SYNTHETIC, events_per_record=64)).run()
    second = trainer_for(cfg, SyntheticSource(SYNTHETIC, events_per_record=64))
    assert second.restore()
    second.run()
    store = CheckpointStore(cfg.checkpoint.dir)
    assert len(store.sequences()) == 2
    assert [p.seq for p in store.latest().parents] == store.sequences()[:1]
    return tmp


def _copy_state(src: Path, dst: Path) -> None:
    subprocess.run(["cp", "-r", str(src / "ckpt"), str(dst / "ckpt")], check=True)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_bad_newest_checkpoint_falls_back_to_the_older_one(
    tmp_path, two_checkpoints, damage, caplog
):
    _copy_state(two_checkpoints, tmp_path)
    cfg = small_cfg(tmp_path)
    store = CheckpointStore(cfg.checkpoint.dir)
    newest = store.directory / f"ckpt-{store.sequences()[-1]:08d}"
    _rewrite(newest, **DAMAGE[damage])
    trainer = trainer_for(cfg, SyntheticSource(SYNTHETIC, events_per_record=64))
    with caplog.at_level("WARNING"):
        assert trainer.restore()
    assert trainer.state.counters["events_trained"] == 512  # the older checkpoint's state
    assert trainer.source.positions() == {"synthetic": 512 // 64}
    assert newest.name in caplog.text  # says which checkpoint it skipped


def test_no_restorable_checkpoint_is_one_clear_error(tmp_path, two_checkpoints):
    _copy_state(two_checkpoints, tmp_path)
    store = CheckpointStore(tmp_path / "ckpt")
    for seq in store.sequences():
        _rewrite(store.directory / f"ckpt-{seq:08d}", meta_counters=None)
    trainer = trainer_for(small_cfg(tmp_path), SyntheticSource(SYNTHETIC, events_per_record=64))
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* can be restored.*--no-resume"):
        trainer.restore()
    done = genrec(
        "train", *SMALL_FLAGS, "--checkpoint-dir", "ckpt", "--no-publish", "--max-events", "64",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "genrec train: error: no checkpoint in" in done.stderr


# ------------------------------------------------------- another source's state (item 9)
def test_a_checkpoint_of_another_source_is_refused_with_what_to_do(tmp_path, two_checkpoints):
    _copy_state(two_checkpoints, tmp_path)
    events = tmp_path / "events.jsonl"
    events.write_text(
        json.dumps({"user_id": "u", "item_id": "i", "action": "click", "timestamp": 1e9}) + "\n"
    )
    done = genrec(
        "train", *SMALL_FLAGS, "--source", "file", "--path", str(events),
        "--checkpoint-dir", "ckpt", "--no-publish", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "synthetic" in done.stderr and "--no-resume" in done.stderr


# -------------------------------------------------------------------------- signals (item 7)
def test_sigterm_before_the_loop_starts_exits_zero(tmp_path):
    # SIGTERM lands while the trainer restores: after the metrics endpoint started, before
    # the loop. The default handler would end the process with 143.
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        from pipeline import cli
        from pipeline.stream.trainer import OnlineTrainer
        restore = OnlineTrainer.restore
        def restore_then_term(self):
            os.kill(os.getpid(), signal.SIGTERM)
            return restore(self)
        OnlineTrainer.restore = restore_then_term
        sys.exit(cli.main(sys.argv[1:]))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script, "train", *SMALL_FLAGS, "--checkpoint-dir", "ckpt",
         "--no-publish", "--max-events", "100000"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    assert summary["events_seen"] == 0  # stopped before training anything


def test_dead_letter_counts_reach_the_summary_and_prometheus(tmp_path):
    cfg = small_cfg(tmp_path)
    trainer = trainer_for(cfg, SyntheticSource(SYNTHETIC, events_per_record=64))
    bad = Records([b"{not json", b"[]"], ["json", "json"], ["bad:0", "bad:0"], [0, 1])
    trainer.process_records(bad)
    snap = trainer.snapshot(time.monotonic(), 0)
    assert snap["dead_letters"]["sent"] == 2 and snap["dead_letters"]["truncated"] == 0
    sample = trainer.metrics.registry.get_sample_value("genrec_dead_letters", {"kind": "sent"})
    assert sample == 2
