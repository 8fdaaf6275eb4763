"""Event sources behind one interface (see ``base.Source``)."""

from pipeline.sources.base import Source, SourceRecord

__all__ = ["Source", "SourceRecord"]
