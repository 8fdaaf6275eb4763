"""Event sources behind one interface (see ``base.Source``)."""

from pipeline.events.records import Records, SourceRecord
from pipeline.sources.base import Source

__all__ = ["Records", "Source", "SourceRecord"]
