"""Streaming pipeline: events -> validation -> sequence store -> jagged batches -> trainer."""
