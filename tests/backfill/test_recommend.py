"""``backfill recommend``: a version published by a real tiny ``genrec train``, histories from
``backfill sequences``, and top-K lists equal to the project's retrieval run in Python."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from backfill import memfs

from connectors.registry import Registry
from model.hstu import HSTU, HSTUConfig
from model.jagged import JaggedBatch
from model.retrieval import top_k
from pipeline.backfill.recommend import RecommendJob, run_recommend
from pipeline.cli import main
from pipeline.lake.synthetic import SyntheticConfig, generate_events
from pipeline.offline.training import next_item_scores
from pipeline.state.vocab import ItemVocabulary
from pipeline.stream.checkpoint import state_from_bytes

REPO = Path(__file__).resolve().parents[2]
MAX_LEN = 10
K = 8
# vocab.capacity 100 < 150 items: the version knows only part of the catalogue
TRAIN_FLAGS = [
    "--metrics-port", "0", "--threads", "1", "--batch-events", "64",
    "--set", "model.embedding_dim=16", "--set", f"store.max_len={MAX_LEN}",
    "--set", "vocab.capacity=100", "--set", "train.num_negatives=16",
    "--publish-every-events", "1000000", "--checkpoint-dir", "ckpt", "--run-dir", "run",
]  # fmt: skip
MODEL = "file-stream"  # the run name genrec train derives from stream.parquet
NEW_ITEMS = (9001, 9002, 9003)  # never trained on: unknown to the version
NEW_USER = 777_777  # only unknown items: no context, no recommendations


def train_on_file(root: Path, *flags: str) -> None:
    """``genrec train`` over ``root/stream.parquet`` with ``TRAIN_FLAGS`` and ``flags``,
    publishing to ``root/registry``."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "train", "--source", "file",
         "--path", str(root / "stream.parquet"), "--registry", str(root / "registry"),
         *TRAIN_FLAGS, *flags],
        cwd=root, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def event_columns(log: Any, rows: np.ndarray) -> dict[str, list]:
    return {
        "user_id": log.user[rows].tolist(),
        "item_id": log.item[rows].tolist(),
        "action": ["view"] * rows.size,
        "timestamp": log.timestamp[rows].tolist(),
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A registry with a trained version and a backfill of a lake of the same users."""
    root = tmp_path_factory.mktemp("recommend")
    log = generate_events(
        SyntheticConfig(num_users=60, num_items=150, num_clusters=10, events_per_user=40, seed=11)
    )
    order = np.argsort(log.timestamp, kind="stable")  # the stream in time order
    pq.write_table(pa.table(event_columns(log, order)), root / "stream.parquet")
    train_on_file(root)
    lake = root / "lake"
    lake.mkdir()
    pq.write_table(pa.table(event_columns(log, np.arange(len(log.user)))), lake / "a.parquet")
    t_end = int(log.timestamp.max())
    extra = [(int(log.user[0]), NEW_ITEMS[0]), (NEW_USER, NEW_ITEMS[1]), (NEW_USER, NEW_ITEMS[2])]
    (lake / "b.jsonl").write_text(
        "".join(
            json.dumps({"user_id": u, "item_id": i, "action": "click", "timestamp": t_end - n})
            + "\n"
            for n, (u, i) in enumerate(extra)
        )
    )
    until = t_end + 1
    histories = root / "histories"
    args = ["backfill", "sequences", "--input", f"{lake}/*.parquet", "--input", f"{lake}/*.jsonl"]
    assert main([*args, "--out", str(histories), "--shards", "3", "--until", str(until)]) == 0
    return {
        "registry": root / "registry",
        "histories": histories,
        "until": until,
        "first_user": int(log.user[0]),
    }


def recommend_cli(world: dict[str, Any], out: Path, *extra: str) -> int:
    return main(
        [
            "backfill", "recommend", "--registry", str(world["registry"]),
            "--version", "latest", "--histories", str(world["histories"]),
            "--k", str(K), "--out", str(out), "--batch-users", "7", *extra,
        ]
    )  # fmt: skip


def read_output(out: Path) -> dict[Any, tuple[list, list, int]]:
    got = {}
    for part in sorted(out.glob("part-*.parquet")):
        for row in pq.read_table(part).to_pylist():
            assert row["user"] not in got
            got[row["user"]] = (row["items"], row["scores"], row["version"])
    return got


def read_histories(directory: Path) -> dict[Any, dict[str, list]]:
    out = {}
    for shard in sorted(directory.glob("shard-*.parquet")):
        for row in pq.read_table(shard).to_pylist():
            out[row["user"]] = row
    return out


def load_latest(registry_dir: Path) -> tuple[HSTU, ItemVocabulary, int]:
    """The latest version, loaded the way tests/trainer/test_acceptance.py loads one."""
    registry = Registry.open(registry_dir)
    version = registry.resolve("latest")
    config = json.loads(registry.read_file(version, "config.json"))
    model = HSTU(HSTUConfig(**config["hstu"]))
    model.load_state_dict(state_from_bytes(registry.read_file(version, "model.pt")))
    vocab = ItemVocabulary.restore(registry.read_file(version, "vocab.npz"))
    return model.eval(), vocab, version


def python_top_k(
    model: HSTU,
    vocab: ItemVocabulary,
    history: dict[str, list],
    query_time: int,
    keep_history: bool,
) -> tuple[list, list]:
    """The project's retrieval on one user: known items only, the last max_len of them,
    query time T, the live catalogue, the user's known items excluded unless kept."""
    rows = vocab.lookup(np.asarray(history["item"], dtype=np.int64))
    known = rows > 0
    if not known.any():
        return [], []
    context = slice(-MAX_LEN, None)
    batch = JaggedBatch.from_numpy(
        rows[known][context],
        np.asarray(history["timestamp"])[known][context],
        np.array([0, min(MAX_LEN, int(known.sum()))]),
        action_types=np.asarray(history["action"])[known][context],
        query_time=np.array([query_time]),
    )
    with torch.no_grad():
        scores = next_item_scores(model, batch)
    exclude = torch.from_numpy(rows[known])
    best, best_rows = top_k(
        scores,
        K,
        exclude_items=None if keep_history else exclude,
        exclude_offsets=None if keep_history else torch.tensor([0, exclude.numel()]),
        candidate_rows=torch.from_numpy(vocab.live_rows()),
    )
    finite = torch.isfinite(best[0])
    items = [vocab.key_of(int(r)) for r in best_rows[0][finite].tolist()]
    return items, best[0][finite].tolist()


def assert_matches_python(world: dict[str, Any], out: Path, keep_history: bool) -> None:
    got = read_output(out)
    histories = read_histories(world["histories"])
    assert set(got) == set(histories)
    model, vocab, version = load_latest(world["registry"])
    for user, history in histories.items():
        items, scores, got_version = got[user]
        want_items, want_scores = python_top_k(model, vocab, history, world["until"], keep_history)
        assert got_version == version
        assert items == want_items, user
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6, err_msg=str(user))


def test_top_k_equals_the_python_retrieval_and_excludes_history(world, tmp_path, capsys) -> None:
    out = tmp_path / "recs"
    assert recommend_cli(world, out) == 0
    printed = json.loads(capsys.readouterr().out.split("\n}\n")[-2] + "\n}")
    manifest = json.loads((out / "manifest.json").read_text())
    assert printed["users"] == manifest["users"] == len(read_histories(world["histories"]))
    assert manifest["users_without_items"] == 1  # NEW_USER: no item the version knows
    assert manifest["version"] == Registry.open(world["registry"]).resolve("latest")
    assert (manifest["k"], manifest["query_time"], manifest["runner"]) == (
        K, world["until"], "DirectRunner (in-process)",
    )  # fmt: skip
    assert_matches_python(world, out, keep_history=False)
    got = read_output(out)
    for user, history in read_histories(world["histories"]).items():
        assert not set(got[user][0]) & set(history["item"]), user  # history excluded
    assert got[NEW_USER][:2] == ([], [])
    assert any(len(items) == K for items, _, _ in got.values())
    assert not any(set(NEW_ITEMS) & set(items) for items, _, _ in got.values())
    # an unknown item in a history is skipped in the context, not an error
    assert NEW_ITEMS[0] in read_histories(world["histories"])[world["first_user"]]["item"]
    assert len(got[world["first_user"]][0]) == K


def test_keep_history_recommends_seen_items(world, tmp_path) -> None:
    out = tmp_path / "recs"
    assert recommend_cli(world, out, "--keep-history") == 0
    assert json.loads((out / "manifest.json").read_text())["keep_history"] is True
    assert_matches_python(world, out, keep_history=True)
    got = read_output(out)
    histories = read_histories(world["histories"])
    assert any(set(got[u][0]) & set(h["item"]) for u, h in histories.items())


def test_a_bad_checksum_or_a_missing_version_is_a_clear_error(world, tmp_path, capsys) -> None:
    registry = tmp_path / "registry"
    shutil.copytree(world["registry"], registry)
    version = Registry.open(registry).resolve("latest")
    vname = f"v{version:06d}"
    weights = registry / "models" / MODEL / "versions" / vname / "model.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    base = ["backfill", "recommend", "--registry", str(registry), "--histories",
            str(world["histories"]), "--k", "3", "--out", str(tmp_path / "recs")]  # fmt: skip
    assert main(base) == 1
    err = capsys.readouterr().err
    assert f"{vname}/model.pt: content does not match its manifest" in err, err
    assert "Traceback" not in err
    assert main([*base, "--version", "99"]) == 1
    assert "v000099 is not a published version" in capsys.readouterr().err
    assert not list((tmp_path / "recs").glob("part-*"))


def test_help_explains_every_flag(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["backfill", "recommend", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--registry", "--version", "--histories", "--k", "--out", "--keep-history",
                 "--batch-users", "--runner", "--dask-address", "--dask-workers", "--model",
                 "--max-vocab-bytes"):  # fmt: skip
        assert flag in text, flag


def test_histories_and_output_on_a_beam_filesystem_equal_a_local_run(world, tmp_path) -> None:
    """--histories and --out on memfs:// (tests/backfill/memfs.py), a non-local Beam
    filesystem: the same part files, byte for byte, as a local run."""

    def job(histories: str, out: str) -> RecommendJob:
        return RecommendJob(str(world["registry"]), "latest", histories, K, out, batch_users=7)

    with memfs.empty() as store:
        memfs.upload(world["histories"], "memfs://bucket/histories")
        store["memfs://bucket/recs/part-00009-00009.parquet"] = b"an old run's part"
        local = run_recommend(job(str(world["histories"]), str(tmp_path / "recs")))
        remote = run_recommend(job("memfs://bucket/histories", "memfs://bucket/recs"))
        written = memfs.names("memfs://bucket/recs")
    assert remote["parts"] == local["parts"] and len(local["parts"]) > 3
    assert sorted(written) == sorted([*local["parts"], "manifest.json"])  # the old part: gone
    for name in local["parts"]:
        assert written[name] == (tmp_path / "recs" / name).read_bytes(), name
    same = ("version", "query_time", "k", "users", "users_without_items", "runner")
    assert {k: remote[k] for k in same} == {k: local[k] for k in same}
    assert json.loads(written["manifest.json"])["histories"] == "memfs://bucket/histories"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_dask_runner_gives_the_same_output(world, tmp_path) -> None:
    def job(out: str, **runner: Any) -> RecommendJob:
        return RecommendJob(
            str(world["registry"]), "latest", str(world["histories"]), K, out,
            batch_users=7, **runner,
        )  # fmt: skip

    direct = run_recommend(job(str(tmp_path / "direct")))
    dask = run_recommend(job(str(tmp_path / "dask"), runner="dask", dask_workers=2))
    assert dask["runner"] == "DaskRunner on a local cluster of 2 worker processes"
    assert dask["parts"] == direct["parts"] and len(direct["parts"]) > 3
    assert (dask["users"], dask["version"]) == (direct["users"], direct["version"])
    for name in direct["parts"]:
        a = pq.read_table(tmp_path / "direct" / name)
        b = pq.read_table(tmp_path / "dask" / name)
        assert a.schema == b.schema and a.to_pylist() == b.to_pylist(), name


def test_recommend_prints_no_beam_warnings(world, tmp_path) -> None:
    """Beam logs "apitools not found ..." (at import) and "Resource module is not available
    ..." (at every model load) on the root logger; a backfill command prints neither."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "backfill", "recommend",
         "--registry", str(world["registry"]), "--histories", str(world["histories"]),
         "--k", "3", "--out", str(tmp_path / "recs")],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "apache_beam" not in done.stderr and " root: " not in done.stderr, done.stderr
