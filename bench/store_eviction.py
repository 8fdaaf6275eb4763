"""Sequence-store throughput before and after it fills with users; prints one JSON object.

Once ``store.max_users`` users are stored, every new user evicts the least recently active
one. This measures whether that makes a batch cost more: events/s of the store alone
(late/duplicate checks + commit, one thread) over ``--batches`` batches before the store is
full and as many after, with ``--users`` distinct users drawn uniformly. ``max_len`` and
``max_users`` are the trainer's defaults (``pipeline/stream/config.py``) unless given.

Example (the default store: max_users 1,000,000; ~1.6 GB of history at max_len 50)::

    python3 bench/store_eviction.py --users 5000000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.state.store import SequenceStore
from pipeline.stream.config import StoreSection


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = StoreSection()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--max-users", type=int, default=defaults.max_users, help="store.max_users")
    p.add_argument("--max-len", type=int, default=defaults.max_len, help="store.max_len")
    p.add_argument("--users", type=int, default=5 * defaults.max_users, help="distinct users")
    p.add_argument("--batch-events", type=int, default=4096, help="events per commit")
    p.add_argument("--batches", type=int, default=10, help="timed batches on each side")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    store = SequenceStore(max_len=args.max_len, max_users=args.max_users)
    size = args.batch_events
    clock = 0

    def commit_one() -> None:
        nonlocal clock
        users = rng.integers(0, args.users, size).astype(np.int64)
        ts = np.arange(clock, clock + size, dtype=np.int64)
        clock += size
        plan = store.plan(users, ts, None)
        store.commit(
            plan, np.arange(1, size + 1), np.zeros(size, np.int64), np.zeros(size, np.float32)
        )

    def rate() -> float:
        started = time.perf_counter()
        for _ in range(args.batches):
            commit_one()
        return args.batches * size / (time.perf_counter() - started)

    before = rate()
    with tqdm(total=args.max_users, desc="filling the store", unit="user", file=sys.stderr) as bar:
        while store.num_users < args.max_users:
            commit_one()
            bar.n = store.num_users
            bar.refresh()
    evicted_at_full = store.counters["users_evicted_lru"]
    after = rate()
    out: dict[str, Any] = {
        "benchmark": "store_eviction",
        "config": vars(args),
        "events_per_s_before_full": round(before),
        "events_per_s_full": round(after),
        "slowdown_when_full": round(before / after, 2),
        "evicted_while_timed": store.counters["users_evicted_lru"] - evicted_at_full,
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
