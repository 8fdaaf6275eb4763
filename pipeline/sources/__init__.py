"""Event sources behind one interface (see ``base.Source``)."""

from pipeline.sources.base import Records, Source, SourceRecord

__all__ = ["Records", "Source", "SourceRecord"]
