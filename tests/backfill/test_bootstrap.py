"""``backfill bootstrap`` hands a trainer the state streaming would have built: a stream
trainer over the whole lake, and a bootstrap of the lake before T followed by a trainer that
resumes from it over the same stream, end with the same store, vocabulary, counters and
scored targets. In process, with a fake stream behind the ``Source`` interface (records in
lake order, stamped with their arrival time); tests/kafka/test_backfill_handoff.py runs the
same hand-off against a real broker."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from handoff_lake import TOLERANCE_S, Lake, make_lake, store_contents, vocab_contents

from pipeline.backfill.bootstrap import BootstrapJob, run_bootstrap
from pipeline.cli import main
from pipeline.events.records import Records
from pipeline.stream.checkpoint import CheckpointStore
from pipeline.stream.config import TrainerConfig, load_config
from pipeline.stream.deadletter import MemoryDeadLetterSink
from pipeline.stream.trainer import OnlineTrainer

BATCH = 32
# Every order-dependent rule is active: user cap with eviction, admission threshold,
# vocabulary capacity and TTL, duplicates, the late rule.
STATE = {
    "store": {"max_len": 16, "max_users": 40, "tolerance_s": TOLERANCE_S},
    "vocab": {"capacity": 64, "admission_threshold": 2, "ttl_s": 30 * 86_400},
    "model": {"embedding_dim": 16, "num_layers": 1, "num_heads": 1},
    "train": {"learn": False, "batch_events": BATCH, "threads": 1, "num_negatives": 8},
}
COMPARED = ("events_seen", "events_valid", "events_trained", "targets", "context_only",
            "unknown_item")  # fmt: skip


class LakeStream:
    """The lake's rows as one-row Arrow records of partition ``lake:0``, in event-time order
    (``Lake.time_order``)."""

    def __init__(self, lake: Lake) -> None:
        order = lake.time_order()
        payloads, times = lake.payloads(), lake.arrival_ms()
        self.payloads = [payloads[i] for i in order]
        self.times = [times[i] for i in order]
        self.next = 0
        self.gave = False

    def poll(self, max_records: int, timeout_s: float) -> Records:
        # Never across a multiple of the batch size, and nothing right after records (as the
        # Kafka source): a trainer's micro-batches are then cut where the bootstrap cuts its
        # own (a stream's cuts follow its polls; see pipeline/backfill/bootstrap.py).
        self.gave = not self.gave
        if not self.gave:
            return Records()
        lo = self.next
        hi = min(len(self.payloads), lo + max_records, (lo // BATCH + 1) * BATCH)
        self.next = hi
        n = hi - lo
        return Records(self.payloads[lo:hi], ["arrow"] * n, ["lake:0"] * n,
                       list(range(lo, hi)), self.times[lo:hi])  # fmt: skip

    def positions(self) -> dict[str, int]:
        return {"lake:0": self.next}

    def seek(self, positions: Mapping[str, int]) -> None:
        self.next = positions.get("lake:0", 0)

    def commit(self, positions: Mapping[str, int]) -> None:
        pass

    def exhausted(self) -> bool:
        return self.next >= len(self.payloads)

    def close(self) -> None:
        pass


def config(tmp_path: Path, name: str) -> TrainerConfig:
    return load_config(
        overrides={
            **STATE,
            "checkpoint": {"dir": str(tmp_path / name / "ckpt")},
            "run_dir": str(tmp_path / name / "run"),
            "observability": {"prometheus_port": 0, "targets_log": str(tmp_path / name / "t")},
            "registry": {"enabled": False},
        },
        environ={},
    )


def stream(cfg: TrainerConfig, lake: Lake, resume: bool) -> OnlineTrainer:
    trainer = OnlineTrainer(
        cfg, LakeStream(lake), MemoryDeadLetterSink(), CheckpointStore(cfg.checkpoint.dir)
    )
    if resume:
        assert trainer.restore()
    trainer.events_per_record = 1.0  # one event per record: the first poll is a whole batch
    trainer.run()
    return trainer


def targets(cfg: TrainerConfig) -> list[str]:
    path = Path(cfg.observability.targets_log or "")
    return path.read_text().split() if path.exists() else []


def state(trainer: OnlineTrainer) -> dict[str, Any]:
    return {
        "store": store_contents(trainer.state.store, trainer.state.vocab),
        "vocab": vocab_contents(trainer.state.vocab),
        "rejected": dict(trainer.state.rejected),
        "counters": {k: trainer.state.counters[k] for k in COMPARED},
        "watermark": trainer.state.store.watermark,
    }


def test_bootstrap_then_stream_equals_streaming_everything(tmp_path: Path) -> None:
    lake = make_lake(tmp_path / "lake")
    assert sum(lake.bad) >= 0.05 * len(lake.rows)
    whole = stream(config(tmp_path, "whole"), lake, resume=False)

    cfg = config(tmp_path, "warm")
    manifest = run_bootstrap(BootstrapJob([str(p) for p in lake.files], lake.until, cfg))
    boot_targets = targets(cfg)
    counts = manifest["counts"]
    assert counts["rows"] == len(lake.rows)
    assert 0 < counts["after_cutoff"] < len(lake.rows)
    warm = stream(cfg, lake, resume=True)

    got, want = state(warm), state(whole)
    assert got["store"] == want["store"]
    assert got["vocab"] == want["vocab"]
    assert got == want
    assert warm.state.counters["before_cutoff"] == manifest["trainer_counters"]["records"]
    # The rules did act: evictions, duplicates, rejects of several kinds, unknown items.
    assert (
        whole.state.vocab.counters["evicted_capacity"] + whole.state.vocab.counters["evicted_ttl"]
        > 0
    )
    assert {"duplicate", "missing_field", "bad_action"} <= set(whole.state.rejected)
    assert (
        whole.state.counters["unknown_item"] > 0
        and whole.state.store.counters["users_evicted_lru"] > 0
    )
    # Every event scored once, on exactly one side of the seam.
    all_targets = targets(config(tmp_path, "whole"))
    assert len(set(all_targets)) == len(all_targets) == whole.state.counters["targets"]
    split = boot_targets + targets(cfg)[len(boot_targets) :]
    assert sorted(split) == sorted(all_targets) and len(set(split)) == len(split)


def test_offline_weights_land_on_the_vocabulary_rows(tmp_path: Path) -> None:
    from model.serialize import save_checkpoint
    from pipeline.stream.state import build_model

    lake = make_lake(tmp_path / "lake")
    cfg = config(tmp_path, "boot")
    offline_cfg = cfg.model_copy(update={"vocab": cfg.vocab.model_copy(update={"capacity": 91})})
    offline = build_model(offline_cfg)  # items 1..90 in the offline numbering
    with torch.no_grad():
        offline.item_emb.weight.copy_(torch.arange(91.0)[:, None].expand(-1, 16))
    keys = [None, *range(90)]  # offline row r holds item key r - 1
    save_checkpoint(tmp_path / "offline" / "checkpoint", offline, {"item_keys": keys})
    run_bootstrap(
        BootstrapJob(
            [str(p) for p in lake.files], lake.until, cfg, weights=str(tmp_path / "offline")
        )
    )
    resumed = OnlineTrainer(cfg, LakeStream(lake), MemoryDeadLetterSink(),
                            CheckpointStore(cfg.checkpoint.dir))  # fmt: skip
    assert resumed.restore() and resumed.state.cutoff == lake.until
    table = resumed.state.model.item_emb.weight
    rows = resumed.state.vocab.live_rows().tolist()
    assert rows
    for row in rows:
        key = resumed.state.vocab.key_of(row)
        assert torch.equal(table[row], torch.full((16,), float(key + 1)))
    other = dict(offline.named_parameters())
    for name, param in resumed.state.model.named_parameters():
        if name != "item_emb.weight":
            assert torch.equal(param, other[name]), name


def test_bootstrap_refuses_a_directory_with_state(tmp_path: Path, capsys) -> None:
    lake = make_lake(tmp_path / "lake", num_users=10)
    cfg = config(tmp_path, "boot")
    run_bootstrap(BootstrapJob([str(lake.files[0])], lake.until, cfg))
    argv = ["backfill", "bootstrap", "--input", str(lake.files[0]), "--until", str(lake.until),
            "--set", f"checkpoint.dir={cfg.checkpoint.dir}"]  # fmt: skip
    assert main(argv) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main([*argv, "--force", "--set", "store.max_users=300"]) == 0


@pytest.mark.parametrize("until", ["yesterday"])
def test_bad_cutoff_is_a_usage_error(until: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["backfill", "bootstrap", "--input", "x.parquet", "--until", until])
    assert "--until" in capsys.readouterr().err
