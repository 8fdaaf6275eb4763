"""The train/valid/test splits of per-user sequences (leave-one-out, the HSTU paper's).

With a positives rule (``pipeline.events.positives``) the held-out events are positive ones:
each user's test target is the user's last positive event, with every event before it as
history; the validation target (holdout split) is the positive before that one. Users
without such a target keep an empty (or one-event) sequence there, which evaluation skips.

``time_split`` is the ranking task's split (``pipeline.offline.ranking``): one global cutoff
time; the events before it train, the later ones are test candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class TimeSplit:
    """A time-ordered split of per-user sequences at one global ``cutoff`` time.

    ``ds`` is every user's whole sequence; the first ``before[u]`` events of user u (those
    with ``timestamp < cutoff``; sequences are in time order, so a prefix) train, the others
    are u's test events. ``train`` is those prefixes as a dataset.
    """

    ds: SequenceDataset
    cutoff: int
    before: np.ndarray  # [U] int64
    # [U] int64: the first end[u] events of user u are split, the rest left out (None: all)
    end: np.ndarray | None = None

    @property
    def train(self) -> SequenceDataset:
        return self.ds.prefixes(self.before)

    def ends(self) -> np.ndarray:
        """[U] how many of each user's events the split covers (train and test)."""
        return self.ds.lengths() if self.end is None else self.end

    def test_events(self) -> int:
        return int(self.ends().sum() - self.before.sum())


def time_split(ds: SequenceDataset, test_fraction: float) -> TimeSplit:
    """Split at the ``1 - test_fraction`` quantile of all event times (rounded up to a whole
    second present in the data): about ``test_fraction`` of the events, the latest, test.

    >>> ds = SequenceDataset(
    ...     item_ids=np.array([1, 2, 3, 1, 2]), timestamps=np.array([10, 20, 30, 15, 40]),
    ...     actions=np.zeros(5, np.int64), offsets=np.array([0, 3, 5]),
    ...     item_keys=np.array([None, 7, 8, 9], dtype=object), user_keys=np.array([1, 2]),
    ... )
    >>> split = time_split(ds, 0.4)
    >>> split.cutoff, split.before.tolist(), split.test_events()
    (30, [2, 1], 2)
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if ds.num_events == 0:
        raise ValueError("no events to split in time")
    times = np.sort(ds.timestamps)
    cutoff = int(times[min(int(np.floor((1.0 - test_fraction) * times.size)), times.size - 1)])
    user = np.repeat(np.arange(ds.num_users), ds.lengths())
    before = np.bincount(user[ds.timestamps < cutoff], minlength=ds.num_users).astype(np.int64)
    return TimeSplit(ds, cutoff, before)


def validation_split(split: TimeSplit, fraction: float) -> TimeSplit | None:
    """``split``'s training events split again in time: the latest ``fraction`` of them
    validate, the earlier ones train; the test events are left out (``end``). None when
    ``fraction`` is 0.

    >>> ds = SequenceDataset(
    ...     item_ids=np.array([1, 2, 3, 1, 2]), timestamps=np.array([10, 20, 30, 15, 40]),
    ...     actions=np.zeros(5, np.int64), offsets=np.array([0, 3, 5]),
    ...     item_keys=np.array([None, 7, 8, 9], dtype=object), user_keys=np.array([1, 2]),
    ... )
    >>> val = validation_split(time_split(ds, 0.4), 0.5)
    >>> val.cutoff, val.before.tolist(), val.ends().tolist(), val.test_events()
    (15, [1, 0], [2, 1], 2)
    """
    if fraction == 0.0:
        return None
    inner = time_split(split.train, fraction)
    return TimeSplit(split.ds, inner.cutoff, inner.before, end=split.before)
