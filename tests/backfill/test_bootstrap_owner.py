"""``backfill bootstrap`` writes one trainer's state: never into a trainer group's checkpoint
directory (docs/trainer.md, "Who owns a checkpoint directory")."""

from __future__ import annotations

from pathlib import Path

from handoff_lake import make_lake

from pipeline.cli import main
from pipeline.stream.checkpoint import CheckpointStore


def test_a_bootstrap_refuses_a_trainer_groups_directory(tmp_path: Path, capsys) -> None:
    lake = make_lake(tmp_path / "lake", num_users=10)
    ckpt = tmp_path / "ckpt"
    for rank in range(2):  # what a stopped group of 2 left
        CheckpointStore(ckpt / f"rank-{rank}-of-2").save({"store": b"s"}, {})
    argv = ["backfill", "bootstrap", "--input", str(lake.files[0]), "--until", str(lake.until),
            "--set", f"checkpoint.dir={ckpt}", "--set", "train.threads=1"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "trainer group of 2 ranks" in err and "Traceback" not in err
    assert not list(ckpt.glob("ckpt-*"))
