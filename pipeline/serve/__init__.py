"""``genrec serve``: top-K retrieval and candidate ranking of a registry's model over HTTP.

- ``config.py``: ``ServeConfig`` (YAML, ``GENREC_SERVE__`` variables, flags);
- ``histories.py``: per-user histories the server keeps (the pipeline's ``SequenceStore``),
  from a bootstrap checkpoint and the event stream;
- ``feed.py``: the Kafka consumer thread that keeps those histories fresh;
- ``version.py``: a loaded version ready to answer (item keys -> rows), scored with
  ``pipeline.backfill.topk``;
- ``reload.py``: follows an alias and swaps to each verified new version atomically;
- ``batcher.py``: concurrent requests micro-batched into one model call;
- ``app.py``: the FastAPI application (routes, request limits, Prometheus metrics).
"""
