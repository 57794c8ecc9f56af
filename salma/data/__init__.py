"""Dataset formats, the common sample record, synthetic data and sampling.

Readers (one module per on-disk format) turn a dataset split into ``SampleRecord`` objects;
``read_source(format, root, split, **options)`` dispatches on ``SOURCE_FORMATS``.
``salma.data.decode`` turns a record into frames and masks; ``salma.data.synthetic`` writes
small datasets in the same formats.
"""

from salma.data.errors import BadRecordError, DatasetFormatError, raise_bad_record
from salma.data.record import Referent, SampleRecord, Turn
from salma.data.sources import SOURCE_FORMAT_NAMES, SOURCE_FORMATS, read_source

__all__ = [
    "SOURCE_FORMATS",
    "SOURCE_FORMAT_NAMES",
    "BadRecordError",
    "DatasetFormatError",
    "Referent",
    "SampleRecord",
    "Turn",
    "raise_bad_record",
    "read_source",
]
