"""The train/valid/test splits of per-user sequences (leave-one-out, the HSTU paper's).

With a positives rule (``pipeline.events.positives``) the held-out events are positive ones:
each user's test target is the user's last positive event, with every event before it as
history; the validation target (holdout split) is the positive before that one. Users
without such a target keep an empty (or one-event) sequence there, which evaluation skips.
"""

from __future__ import annotations

import numpy as np

from pipeline.events.positives import PositiveRule
from pipeline.lake.datasets import SequenceDataset


def leave_one_out(
    ds: SequenceDataset,
) -> tuple[SequenceDataset, SequenceDataset, SequenceDataset]:
    """(train, valid, test): each user's sequence without its last 2, without its last 1,
    and whole. In valid and test the last event of each sequence is the target.

    Users need at least 3 events (build with ``min_length=3``); shorter ones raise.
    """
    short = np.flatnonzero(ds.lengths() < 3)
    if short.size:
        raise ValueError(
            f"leave-one-out needs >= 3 events per user; {short.size} users have fewer "
            f"(first: {ds.user_keys[short[0]]!r}); build_sequences(..., min_length=3) drops them"
        )
    return ds.drop_last(2), ds.drop_last(1), ds


def paper_split(
    ds: SequenceDataset,
) -> tuple[SequenceDataset, SequenceDataset, SequenceDataset]:
    """(train, valid, test) of the HSTU paper: train is each sequence without its last
    event, so the validation event (second-to-last) is also a training target; valid is
    that same prefix (its metrics are in-sample, for monitoring only); test is whole."""
    short = np.flatnonzero(ds.lengths() < 3)
    if short.size:
        raise ValueError(
            f"the paper's split needs >= 3 events per user; {short.size} users have fewer "
            f"(first: {ds.user_keys[short[0]]!r}); build_sequences(..., min_length=3) drops them"
        )
    train = ds.drop_last(1)
    return train, train, ds


def make_splits(
    ds: SequenceDataset, split: str, positives: PositiveRule | None = None
) -> tuple[SequenceDataset, SequenceDataset, SequenceDataset]:
    """``leave_one_out`` for split "holdout", ``paper_split`` for "paper"; with a
    ``positives`` rule other than "all", ``positive_splits``."""
    if split not in ("holdout", "paper"):
        raise ValueError(f"unknown split {split!r}; use 'holdout' or 'paper'")
    if positives is not None and not positives.is_all:
        return positive_splits(ds, split, positives)
    if split == "holdout":
        return leave_one_out(ds)
    return paper_split(ds)


def positive_splits(
    ds: SequenceDataset, split: str, positives: PositiveRule
) -> tuple[SequenceDataset, SequenceDataset, SequenceDataset]:
    """The splits of ``split`` with positive held-out events (module docstring): test ends
    at each user's last positive event; "paper": train = valid = the events before it;
    "holdout": valid ends at the positive before it, train is the events before that."""
    test = _cut_after_last_positive(ds, positives)
    if split == "paper":
        train = test.drop_last(1)
        return train, train, test
    valid = _cut_after_last_positive(test.drop_last(1), positives)
    return valid.drop_last(1), valid, test


def users_without_target(test: SequenceDataset) -> int:
    """Users whose test sequence has no target with history before it (skipped)."""
    return int((test.lengths() < 2).sum())


def _cut_after_last_positive(ds: SequenceDataset, positives: PositiveRule) -> SequenceDataset:
    """Each sequence up to and including its last positive event (empty without one)."""
    positive = positives.mask(ds.actions, ds.values)
    index = np.arange(ds.num_events)
    user = np.repeat(np.arange(ds.num_users), ds.lengths())
    last = np.full(ds.num_users, -1, dtype=np.int64)
    np.maximum.at(last, user[positive], index[positive])
    keep_len = np.where(last >= 0, last - ds.offsets[:-1] + 1, 0)
    return ds.prefixes(keep_len)
