"""``genrec backfill recommend``: top-K items for every backfilled user, as a Beam batch job.

Named steps, in flow order (one linear pipeline, as ``backfill sequences``: Beam's Dask
runner computes only one branch of a fan-out):

- ``ListShards`` / ``ReadHistories``: the ``shard-*.parquet`` files ``backfill sequences``
  wrote (one row per user: ``user`` and the lists ``item``, ``timestamp``, ``action``), read
  ``batch_users`` users at a time. One element is one ``UserBatch``: the inference batch.
  The output is untrusted: ``pipeline.backfill.histories`` checks its manifest and every
  shard (in the driver first, so a bad file is one error before any worker starts).
- ``TopK``: Beam's ``RunInference`` with ``TopKHandler``, which loads one registry version
  (the ``genrec.registries`` plugin's ``load_version``: every artefact verified against its
  manifest's sha256) and scores each batch with ``pipeline.backfill.topk`` (shared with
  ``genrec serve``), the project's own retrieval: ``pipeline.offline.training.next_item_scores`` (the model's state after
  each user's last event against the whole item table, ``model.retrieval.score_items``) and
  ``model.retrieval.top_k`` over the version's live catalogue. A user's context is the last
  ``max_len`` events whose item the version's vocabulary knows (others are skipped); the
  query time is the backfill's cut-off (``until``) when it had one, else the user's last
  event time. The user's known history items are excluded unless ``keep_history``.
  With ``rerank`` (``--rerank``), each user's top K is then re-ordered by a ranking task's
  probability (``rerank_top_k``): the K items as candidate tokens after the user's last
  ``max_len - 1`` known events, scored by the version's ranking head; the scores written are
  those probabilities. A version without ranking heads is refused in the driver.
- ``WriteParts``: one ``part-SSSSS-BBBBB.parquet`` per batch (shard S, batch B of it):
  ``user``, ``items`` (item keys, best first), ``scores`` (float32), ``version``.

The handler runs ``with_no_batching``: the job batches users itself, because Beam's
``BatchElements`` emits a bundle's last batch from ``finish_bundle``, whose output Beam's
Dask runner (2.77) drops (observed: a bundle's last users vanished). ``manifest.json`` holds
the registry, version, k, users, runner and wall time. The histories and the output go
through Beam's ``FileSystems`` (``pipeline.lake.paths``): local, ``gs://``, ``s3://``, ...;
the runners are ``backfill sequences``' (``sequences.runner_options``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from apache_beam.ml.inference.base import ModelHandler, RunInference

from pipeline import plugins
from pipeline.backfill import histories, sequences
from pipeline.backfill.topk import RowHistories, TopK, recommend_rows, rerank_index
from pipeline.lake import paths
from pipeline.runtime.errors import ConfigError
from pipeline.stream.publishing import (
    DEFAULT_BATCH_USERS,
    DEFAULT_MAX_VOCAB_BYTES,
    PublishedModel,
)

PART_NAME = "part-{:05d}-{:05d}.parquet"
PART_GLOB = "part-*.parquet"
MANIFEST = "manifest.json"
# torch's reductions split by thread count, so scores differed in their last bits between
# the driver (all cores) and Dask workers (one thread each): one thread scores everywhere,
# so every runner writes the same bytes; parallelism comes from the runner's workers.
SCORING_THREADS = 1


@dataclass(frozen=True)
class UserBatch:
    """One inference element: up to ``batch_users`` users of one shard, their histories
    flat (user b owns ``offsets[b]:offsets[b+1]``) in the shard's order (event time)."""

    part: tuple[int, int]  # (shard, batch within the shard): names the output file
    users: Any  # pyarrow array of the shard's user keys (int64 or string), kept as stored
    items: np.ndarray  # canonical item keys (int64, or object for str keys)
    timestamps: np.ndarray  # int64
    actions: np.ndarray  # int64
    offsets: np.ndarray  # int64 [B+1]
    values: np.ndarray  # float32, NaN where an event has none

    def __len__(self) -> int:
        """Users in the batch (RunInference counts a batch's elements with it)."""
        return len(self.users)


def read_user_batches(
    shard: tuple[int, str], batch_users: int, output: histories.BackfillOutput
) -> Iterator[UserBatch]:
    """The users of one shard file, ``batch_users`` (at most) per ``UserBatch``, checked by
    ``pipeline.backfill.histories``."""
    index, path = shard
    batches = histories.read_shard(path, batch_users, output.limits, output.until)
    for number, batch in enumerate(batches):
        yield UserBatch(
            (index, number),
            batch.users,
            batch.items,
            batch.timestamps,
            batch.actions,
            batch.offsets,
            batch.values,
        )


def recommend(
    published: PublishedModel,
    batch: UserBatch,
    k: int,
    keep_history: bool = False,
    query_time: int | None = None,
    rerank: int | None = None,
) -> TopK:
    """Top ``k`` live rows for each user of ``batch`` (``pipeline.backfill.topk``); with
    ``rerank`` (a task's column) re-ordered by that task's probability."""
    rows = published.vocab.lookup(batch.items)  # 0: a key the version does not know
    users = RowHistories(rows, batch.timestamps, batch.actions, batch.values, batch.offsets)
    return recommend_rows(published, users, k, keep_history, query_time, rerank)


class TopKHandler(ModelHandler[UserBatch, tuple[tuple[int, int], Any], PublishedModel]):
    """Beam ``ModelHandler``: loads a registry version, turns a ``UserBatch`` into its part
    of the output (``(part, pyarrow table)``). Give ``RunInference`` the handler
    ``with_no_batching()``: each element already is a batch."""

    def __init__(
        self,
        registry: str,
        model: str,
        version: int,
        k: int,
        keep_history: bool = False,
        query_time: int | None = None,
        max_vocab_bytes: int = DEFAULT_MAX_VOCAB_BYTES,
        rerank: int | None = None,
    ) -> None:
        super().__init__()
        self.registry = registry
        self.model = model  # a name and
        self.version = version  # a number: every worker loads the same version as the driver
        self.k = k
        self.keep_history = keep_history
        self.query_time = query_time
        self.max_vocab_bytes = max_vocab_bytes
        self.rerank = rerank  # a ranking task's column (checked in the driver)

    def load_model(self) -> PublishedModel:
        """The version, verified (on each worker)."""
        return open_registry(self.registry, self.model).load_version(
            self.version, self.max_vocab_bytes
        )

    def run_inference(
        self,
        batch: UserBatch,
        model: PublishedModel,
        inference_args: dict[str, Any] | None = None,
    ) -> list[tuple[tuple[int, int], Any]]:
        """One output part per user batch."""
        with _torch_threads(SCORING_THREADS):
            found = recommend(model, batch, self.k, self.keep_history, self.query_time, self.rerank)
        return [(batch.part, _part_table(model, batch, found))]

    def get_num_bytes(self, batch: UserBatch) -> int:
        """The batch's array bytes (Beam's default pickles the whole batch to count them)."""
        return (
            batch.items.nbytes
            + batch.timestamps.nbytes
            + batch.actions.nbytes
            + batch.values.nbytes
        )

    def get_metrics_namespace(self) -> str:
        return "genrec_recommend"


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` for the block, then restored (the direct
    runner scores in the caller's process)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _part_table(published: PublishedModel, batch: UserBatch, found: TopK) -> Any:
    import pyarrow as pa

    keys = published.row_keys[found.rows]
    offsets = pa.array(found.offsets, pa.int32())
    item_type = pa.int64() if keys.dtype == np.int64 else pa.string()
    return pa.table(
        {
            "user": batch.users,
            "items": pa.ListArray.from_arrays(offsets, pa.array(keys, item_type)),
            "scores": pa.ListArray.from_arrays(offsets, pa.array(found.scores, pa.float32())),
            "version": pa.array(np.full(len(batch), published.version, np.int64)),
        }
    )


def write_part(result: tuple[tuple[int, int], Any], out_dir: str) -> int:
    """Write one batch's recommendations (``(part, table)``); returns its users."""
    part, table = result
    paths.write_parquet(table, paths.join(out_dir, PART_NAME.format(*part)))
    return table.num_rows


@dataclass(frozen=True)
class RecommendJob:
    """What ``backfill recommend`` runs on (the CLI's flags)."""

    registry: str
    version: str  # "latest", another alias, or a version number
    histories: str  # a ``backfill sequences`` output directory
    k: int
    out: str
    keep_history: bool = False
    batch_users: int = DEFAULT_BATCH_USERS
    runner: str = "direct"  # or "dask", or a Beam runner (sequences.runner_options)
    dask_address: str | None = None
    dask_workers: int = 2
    beam_options: tuple[str, ...] = ()  # PipelineOptions flags (sequences.beam_flag)
    model: str | None = None  # the registry's model; None: its only one
    max_vocab_bytes: int = DEFAULT_MAX_VOCAB_BYTES
    rerank: bool = False  # re-order each top K by a ranking task's probability
    rerank_task: str | None = None  # None: the version's first task


def history_shards(directory: str, batch_users: int) -> histories.BackfillOutput:
    """The ``backfill sequences`` output, every shard checked here in the driver: a bad file
    is one error naming it before any worker starts (``pipeline.backfill.histories``)."""
    output = histories.open_output(directory, "--histories")
    for _ in histories.read_output(output, batch_users):
        pass
    return output


def open_registry(uri: str, model: str | None) -> Any:
    """Model ``model`` (None: the only one) of the registry at ``uri``, opened by the
    ``genrec.registries`` plugin (``pipeline.stream.publishing``: its ``model`` and
    ``load_version``): a ``PublishError`` when the registry or model does not exist, a
    ``PluginNotFoundError`` when no connector provides registries."""
    open_model = plugins.load("genrec.registries", "default", "backfill recommend")
    return open_model(uri, model=model)


def run_recommend(job: RecommendJob) -> dict[str, Any]:
    """Run the pipeline on the chosen runner; returns the manifest (also written)."""
    import apache_beam as beam

    if job.k < 1 or job.batch_users < 1:
        raise ValueError(f"--k and --batch-users must be >= 1, got {job.k}, {job.batch_users}")
    started = time.monotonic()
    paths.use_options(sequences.pipeline_flags(job))  # a bad runner or option fails here, first
    paths.check_out(job.out, [job.histories], "--histories", [MANIFEST])
    output = history_shards(job.histories, job.batch_users)
    until = output.until
    # In the driver first: a missing version or a bad file fails here, naming it, before any
    # worker starts; and "latest" becomes one number for every worker.
    registry = open_registry(job.registry, job.model)
    published = registry.load_version(job.version, job.max_vocab_bytes)
    version = published.version
    if job.rerank_task is not None and not job.rerank:
        raise ConfigError("--rerank-task: add --rerank to re-rank by a task")
    rerank = rerank_index(published, job.rerank_task) if job.rerank else None
    handler = TopKHandler(
        job.registry,
        registry.model,
        version,
        job.k,
        job.keep_history,
        until,
        job.max_vocab_bytes,
        rerank,
    )
    out, parts = job.out, paths.join(job.out, PART_GLOB)
    paths.make_dirs(out)
    # a rerun into the same directory keeps nothing old
    paths.delete([*paths.matching(parts), paths.join(out, MANIFEST)])
    with sequences.runner_options(job) as options:
        with beam.Pipeline(options=options) as pipeline:
            _ = (
                pipeline
                | "ListShards" >> beam.Create(list(enumerate(output.shards)))
                | "ReadHistories" >> beam.FlatMap(read_user_batches, job.batch_users, output)
                | "TopK" >> RunInference(handler.with_no_batching())
                | "WriteParts" >> beam.Map(write_part, out)
            )
        sequences.close_runner_client(pipeline)
    manifest = _manifest(job, registry.model, version, until, paths.matching(parts))
    manifest["rerank_task"] = (
        None if rerank is None else published.model.cfg.ranking_tasks[rerank]["name"]
    )
    manifest["wall_seconds"] = round(time.monotonic() - started, 2)
    paths.write_bytes(paths.join(out, MANIFEST), (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def _manifest(
    job: RecommendJob, model: str, version: int, until: int | None, parts: Sequence[str]
) -> dict[str, Any]:
    import pyarrow.compute as pc

    users = empty = 0
    for path in parts:
        with paths.parquet_file(path) as parquet:
            items = parquet.read(columns=["items"]).column("items")
        users += len(items)
        empty += int(pc.sum(pc.equal(pc.list_value_length(items), 0)).as_py() or 0)
    return {
        "created_at": datetime.now(UTC).isoformat(),
        "registry": job.registry,
        "model": model,
        "version": version,
        "histories": job.histories,
        "query_time": until,
        "k": job.k,
        "keep_history": job.keep_history,
        "batch_users": job.batch_users,
        "users": users,
        "users_without_items": empty,
        "parts": [paths.name(path) for path in parts],
        "runner": sequences.describe_runner(job),
    }
