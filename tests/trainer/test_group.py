"""Unit tests of the trainer group's parts (``pipeline.stream.distributed``); the group itself, on a
real broker, is tested in tests/kafka/test_trainer_group.py.

* group checkpoints: markers from untrusted bytes, incomplete checkpoints ignored, another
  world size or a single trainer's directory refused with what to do;
* the gradient exchange: two gloo ranks end with the gradient of the mean loss over both
  ranks' targets, dense parameters and sparse item rows alike;
* the group's progressive ranking figures: every rank's sums added, then the ratios taken;
* the launcher's command and each rank's own settings.
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from pipeline.stream.checkpoint import CheckpointError, CheckpointStore
from pipeline.stream.config import load_config
from pipeline.stream.distributed.checkpoints import SHARED, GroupCheckpoints, Marker
from pipeline.stream.distributed.group import Group, world_from_env
from pipeline.stream.distributed.launch import rank_config, torchrun_command
from pipeline.stream.distributed.trainer import GroupStep, GroupTrainer
from pipeline.stream.progressive import ProgressiveMetrics
from pipeline.stream.ranking import figures, new_metrics

WORLD = 2


def _write_group_checkpoint(root: Path, n: int, *, mark: bool = True) -> dict[str, int]:
    """Every rank's part and the shared part of group checkpoint ``n`` (+ its marker)."""
    parts = {}
    for rank in range(WORLD):
        store = GroupCheckpoints(root, rank, WORLD, keep=3)
        meta = {"group": {"n": n, "world": WORLD, "rank": rank}, "counters": {"r": rank}}
        parts[store.own_key] = int(store.own.save({"store": b"s"}, meta).name[5:])
    lead = GroupCheckpoints(root, 0, WORLD, keep=3)
    shared = {"group": {"n": n, "world": WORLD, "steps": 7, "watermark": 9}}
    parts[SHARED] = int(lead.shared.save({"model": b"m"}, shared).name[5:])
    if mark:
        lead.write_marker(n, parts)
    return parts


def test_a_group_checkpoint_without_its_marker_is_not_restored(tmp_path):
    _write_group_checkpoint(tmp_path, 1)
    _write_group_checkpoint(tmp_path, 2, mark=False)  # a rank died before the marker
    view = GroupCheckpoints(tmp_path, 1, WORLD, keep=3)
    assert [m.n for m in view.markers()] == [1]
    ckpt = view.load(next(view.markers()))
    assert ckpt.meta["counters"] == {"r": 1}  # this rank's part ...
    assert ckpt.meta["group"]["steps"] == 7  # ... and the shared part's group state
    assert set(ckpt.state) == {"store", "model"}
    assert view.next_n() == 2


@pytest.mark.parametrize(
    "text",
    [
        b"not json",
        b"[1, 2]",
        json.dumps({"n": 0, "world": 2, "parts": {}}).encode(),
        json.dumps({"n": 1, "world": 2, "parts": {"shared": 1, "rank-0-of-2": 1}}).encode(),
        json.dumps(
            {"n": 1, "world": 2, "parts": {"shared": 1, "rank-0-of-2": 1, "rank-1-of-2": -3}}
        ).encode(),
        json.dumps(
            {"n": 1, "world": 2, "parts": {"shared": 1, "rank-0-of-2": 1, "../x": 1}}
        ).encode(),
    ],
)
def test_bad_markers_are_refused_and_skipped(tmp_path, text):
    with pytest.raises(CheckpointError):
        Marker.parse(text, tmp_path / "m.json")
    _write_group_checkpoint(tmp_path, 1)
    view = GroupCheckpoints(tmp_path, 0, WORLD, keep=3)
    (view.markers_dir / "00000005.json").write_bytes(text)  # a newer, damaged marker
    assert [m.n for m in view.markers()] == [1]


def test_a_marker_naming_parts_of_another_checkpoint_does_not_load(tmp_path):
    parts = _write_group_checkpoint(tmp_path, 1)
    view = GroupCheckpoints(tmp_path, 0, WORLD, keep=3)
    (view.markers_dir / "00000004.json").write_text(Marker(4, WORLD, parts).to_json())
    with pytest.raises(CheckpointError, match="not part of group checkpoint 4"):
        view.load(next(view.markers()))


def test_markers_are_pruned_to_keep(tmp_path):
    for n in range(1, 6):
        _write_group_checkpoint(tmp_path, n)
    view = GroupCheckpoints(tmp_path, 0, WORLD, keep=3)
    assert [m.n for m in view.markers()] == [5, 4, 3]
    assert all(len(view.load(m).state) == 2 for m in view.markers())


def test_another_world_size_is_refused_with_what_to_do(tmp_path):
    _write_group_checkpoint(tmp_path, 1)
    with pytest.raises(CheckpointError, match=r"group of 2 ranks.*--workers 2"):
        GroupCheckpoints(tmp_path, 0, 3, keep=3)


def test_a_single_trainers_directory_is_refused(tmp_path):
    CheckpointStore(tmp_path).save({"x": b"1"}, {})
    with pytest.raises(CheckpointError, match="single trainer process"):
        GroupCheckpoints(tmp_path, 0, WORLD, keep=3)


def test_world_from_env():
    assert world_from_env({}) == (0, 1)
    assert world_from_env({"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    with pytest.raises(ValueError, match="not a rank"):
        world_from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="not integers"):
        world_from_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_torchrun_command_drops_workers_and_keeps_everything_else():
    argv = ["--log-level", "DEBUG", "train", "--workers", "2", "--topic", "t", "--workers=3"]
    command = torchrun_command(argv, 2, 5, python="py")
    assert command == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "--max-restarts", "5", "-m", "pipeline.cli", "--log-level", "DEBUG", "train",
        "--topic", "t",
    ]  # fmt: skip


def test_rank_config_gives_each_rank_its_own_files_and_port(tmp_path):
    cfg = load_config(
        None,
        {
            "run_dir": str(tmp_path / "run"),
            "dead_letter": {"path": str(tmp_path / "dl.jsonl")},
            "observability": {"prometheus_port": 9464, "targets_log": str(tmp_path / "t.txt")},
        },
    )
    one = rank_config(cfg, 1, 2)
    assert one.run_dir == str(tmp_path / "run" / "rank-1")
    assert one.dead_letter_path == tmp_path / "dl.rank-1.jsonl"
    assert one.observability.targets_log == str(tmp_path / "t.rank-1.txt")
    assert one.observability.prometheus_port == 9465
    assert one.metrics_log_path == tmp_path / "run" / "rank-1" / "metrics.jsonl"
    assert one.checkpoint.dir == cfg.checkpoint.dir  # the group's
    assert one.train.batch_events == cfg.train.batch_events // 2  # its share of the step
    off = load_config(None, {"observability": {"prometheus_port": 0}})
    assert rank_config(off, 1, 3).observability.prometheus_port == 0
    assert rank_config(off, 1, 3).train.batch_events == 86  # ceil(256 / 3)


class _Tiny(torch.nn.Module):
    """An item table with sparse gradients and one dense layer, like the model's."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.item_emb = torch.nn.Embedding(10, 3, sparse=True)
        self.dense = torch.nn.Linear(3, 3)

    def loss(self, items: torch.Tensor) -> torch.Tensor:
        return self.dense(self.item_emb(items)).pow(2).sum(-1).mean()


_TARGETS = [torch.tensor([1, 2, 2, 5]), torch.tensor([5, 7])]  # rank 0's, rank 1's


def _exchange(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD))
    group = Group.join("gloo", "cpu", 30.0)
    model = _Tiny()
    model.loss(_TARGETS[rank]).backward()
    step = SimpleNamespace(group=group)
    state = SimpleNamespace(model=model, lap=lambda *_: 0.0)
    total = GroupStep.reduce_gradients(step, state, len(_TARGETS[rank]))
    grads = {
        "total": total,
        "table": model.item_emb.weight.grad.to_dense(),
        "dense": model.dense.weight.grad,
    }
    torch.save(grads, f"{out}/rank-{rank}.pt")
    group.leave()


def test_two_ranks_get_the_gradient_of_the_mean_over_all_targets(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_exchange, args=(port, str(tmp_path)), nprocs=WORLD, join=True)
    model = _Tiny()
    model.loss(torch.cat(_TARGETS)).backward()  # one process, every target
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank-{rank}.pt")
        assert got["total"] == 6
        torch.testing.assert_close(got["table"], model.item_emb.weight.grad.to_dense())
        torch.testing.assert_close(got["dense"], model.dense.weight.grad)
    first, second = (torch.load(tmp_path / f"rank-{r}.pt") for r in range(WORLD))
    assert torch.equal(first["table"], second["table"]) and torch.equal(
        first["dense"], second["dense"]
    )  # bit for bit: the ranks stay one model


# rank 0 sees many easy examples, rank 1 few hard ones: averaging their AUCs would be wrong
_LABELS = [[1, 0, 1, 0, 1, 0, 0, 0], [1, 0]]
_PROBS = [[0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.2, 0.1], [0.2, 0.9]]


def _group_ranking(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD))
    group = Group.join("gloo", "cpu", 30.0)
    ranking = new_metrics(["click"])
    assert ranking is not None
    ranking.update(_LABELS[rank], _PROBS[rank])
    state = SimpleNamespace(
        progressive=ProgressiveMetrics(), counters=Counter(), ranking=ranking,
        step_seconds=Counter(),
    )  # fmt: skip
    trainer = SimpleNamespace(state=state, group=group, cfg=load_config(None, {}, environ={}))
    extra = GroupTrainer.summary_extra(trainer)
    (Path(out) / f"rank-{rank}.json").write_text(json.dumps(extra["group"]["ranking"]))
    group.leave()


def test_the_groups_ranking_figures_are_those_of_every_ranks_examples(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_group_ranking, args=(port, str(tmp_path)), nprocs=WORLD, join=True)
    whole = new_metrics(["click"])
    assert whole is not None
    whole.update(_LABELS[0] + _LABELS[1], _PROBS[0] + _PROBS[1])
    for rank in range(WORLD):
        got = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        assert got == pytest.approx(figures(whole))
        assert got["click/count"] == 10


def test_workers_with_an_unpartitioned_source_is_refused_before_launching(capsys):
    from pipeline.cli import main

    assert main(["train", "--workers", "2", "--source", "synthetic", "--no-publish"]) == 2
    assert "cannot be split between trainers" in capsys.readouterr().err
