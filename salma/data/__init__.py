"""Dataset formats, the common sample record, synthetic data and sampling."""

from salma.data.record import Referent, SampleRecord, Turn

__all__ = ["Referent", "SampleRecord", "Turn"]
