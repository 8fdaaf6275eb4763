"""Apache Beam batch backfill: an event lake -> the validated history a trainer starts from.

``sequences``: lake files (Parquet, JSON Lines) -> the stream's own validation -> per-user
histories in user-hash shards (Parquet), dead letters and a manifest. See docs/backfill.md.
"""
