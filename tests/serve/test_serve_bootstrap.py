"""``genrec serve`` starting from a ``backfill bootstrap`` checkpoint: each user's history
is the lake's events before the cut-off, the item keys carried over from the trainer's
vocabulary to the served version's rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from serving import T0, config, recommend, serving

from bench.serve_latency import publish_version
from pipeline.backfill.bootstrap import BootstrapJob, run_bootstrap
from pipeline.runtime.errors import ConfigError
from pipeline.serve.histories import ServeHistories
from pipeline.stream.config import load_config

# user -> items, one event a minute from T0; the cut-off falls after the third minute
LAKE = {1: [5, 6, 7, 8, 9], 2: [10, 11], 3: [40, 41, 42, 43]}
UNTIL = T0 + 3 * 60


def bootstrap(tmp_path: Path) -> Path:
    rows = [
        {"user_id": user, "item_id": item, "action": "click", "timestamp": T0 + 60 * n}
        for user, items in LAKE.items()
        for n, item in enumerate(items)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "lake.parquet")
    cfg = load_config(
        overrides={
            "checkpoint": {"dir": str(tmp_path / "ckpt")},
            "run_dir": str(tmp_path / "run"),
            "registry": {"enabled": False},
            "observability": {"prometheus_port": 0},
        },
        environ={},
    )
    run_bootstrap(BootstrapJob([str(tmp_path / "lake.parquet")], UNTIL, cfg))
    return tmp_path / "ckpt"


def test_serving_starts_from_the_bootstrap_histories(tmp_path: Path) -> None:
    checkpoints = bootstrap(tmp_path)
    publish_version(tmp_path / "registry", 50, dim=16)
    with serving(tmp_path / "registry", history={"bootstrap": str(checkpoints)}) as (base, svc):
        assert svc.histories.cutoff == UNTIL
        for user, items in LAKE.items():
            got = recommend(base, user_id=user, k=45)
            assert got.status_code == 200, got.text
            before = [item for n, item in enumerate(items) if T0 + 60 * n < UNTIL]
            assert got.json()["history_length"] == len(before)
            served = {entry["item_id"] for entry in got.json()["items"]}
            assert not served & set(before) and len(served) == 45  # seen items left out
        assert recommend(base, user_id=99, k=3).status_code == 404


def test_a_bootstrap_that_is_no_checkpoint_directory_is_refused(tmp_path: Path) -> None:
    h = config(history={"bootstrap": str(tmp_path / "missing")}).history
    with pytest.raises(ConfigError, match=r"history.bootstrap: .* is not a directory"):
        ServeHistories.from_checkpoint(h.bootstrap, h.max_len, h.max_users)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no loadable checkpoint"):
        ServeHistories.from_checkpoint(tmp_path / "empty", h.max_len, h.max_users)
