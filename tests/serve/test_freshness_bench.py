"""bench/freshness.py's summary and its reading of a version's source positions (the bench
itself needs a broker, a trainer and a server: it is run by hand, docs/benchmarks.md)."""

from __future__ import annotations

from bench.freshness import VersionWatcher, percentiles


def test_percentiles_summarise_seconds_and_say_none_without_any() -> None:
    assert percentiles([float(n) for n in range(1, 101)]) == {
        "count": 100, "p50_s": 50.5, "p95_s": 95.05, "p99_s": 99.01, "max_s": 100.0,
    }  # fmt: skip
    assert percentiles([]) == {
        "count": 0, "p50_s": None, "p95_s": None, "p99_s": None, "max_s": None,
    }  # fmt: skip


def test_a_version_covers_an_offset_once_its_next_offset_to_read_is_past_it() -> None:
    watcher = VersionWatcher("http://unused", registry=None)  # type: ignore[arg-type]
    watcher.seen = [
        (1.0, 1, {"t:0": 7}),  # next offset 7: offset 7 not read yet
        (2.0, 2, {"t:0": 8, "t:1": 3}),
        (3.0, 3, {"t:0": 9, "t:1": 3}),
    ]
    assert watcher.covering("t:0", 7, since=0.0) == 2.0
    assert watcher.covering("t:0", 6, since=1.5) == 2.0  # only versions seen after the send
    assert watcher.covering("t:1", 3, since=0.0) is None
    assert watcher.covers({"t:0": 9, "t:1": 3}) and not watcher.covers({"t:0": 10})
