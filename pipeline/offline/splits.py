"""The train/valid/test splits of per-user sequences (leave-one-out, the HSTU paper's)."""

from __future__ import annotations

import numpy as np

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
    ds: SequenceDataset, split: str
) -> tuple[SequenceDataset, SequenceDataset, SequenceDataset]:
    """``leave_one_out`` for split "holdout", ``paper_split`` for "paper"."""
    if split == "holdout":
        return leave_one_out(ds)
    if split == "paper":
        return paper_split(ds)
    raise ValueError(f"unknown split {split!r}; use 'holdout' or 'paper'")
