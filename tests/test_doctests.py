"""The examples in the docstrings of the main public types run and still show what they say.

Only the modules listed: ``--doctest-modules`` over the whole tree would import modules that
need a GPU, a Kafka broker or Beam's runners.
"""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = (
    "kernels.offsets",  # segment_ids, positions_in_sequence
    "model.jagged",  # JaggedBatch
    "model.ranking_metrics",  # log loss, NE, AUC, ProgressiveMetrics
    "model.candidates",  # split_candidates
    "model.dlrm",  # DLRM
    "model.hstu",  # hstu_form
    "model.ranking_heads",  # labels_from_events
    "pipeline.events",  # decode_records
    "pipeline.events.positives",  # parse_positives
    "pipeline.events.ranking_tasks",  # parse_ranking_tasks
    "pipeline.offline.splits",  # time_split
    "pipeline.offline.config",  # TrainConfig.averaged_epochs
    "pipeline.offline.training",  # TailAverage
    "pipeline.state.store",  # SequenceStore
    "connectors.registry.registry",  # Registry
)


@pytest.mark.parametrize("name", MODULES)
def test_the_docstring_examples_pass(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))  # failures are printed
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"
