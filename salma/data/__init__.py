"""Dataset formats, the common sample record, synthetic data and sampling.

Readers (one module per on-disk format) turn a dataset split into ``SampleRecord`` objects;
``read_source(format, root, split, **options)`` dispatches through the format registry
(``salma.data.formats``; ``register_format`` adds a format).
``salma.data.decode`` turns a record into frames and masks; ``salma.data.synthetic`` writes
small datasets in the same formats.
"""

from salma.data.errors import BadRecordError, DatasetFormatError, raise_bad_record
from salma.data.record import Referent, SampleRecord, Turn
from salma.data.formats import SourceFormat, register_format, source_format, source_format_names
from salma.data.sources import BUILTIN_FORMATS, read_source

__all__ = [
    "BUILTIN_FORMATS",
    "SourceFormat",
    "BadRecordError",
    "DatasetFormatError",
    "Referent",
    "SampleRecord",
    "Turn",
    "raise_bad_record",
    "read_source",
    "register_format",
    "source_format",
    "source_format_names",
]
