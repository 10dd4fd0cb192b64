"""Trace ingestion: turn agent traces in the formats tools write into per-turn SDFT records.

`convert(source)` detects the format, splits every conversation into one record per
assistant turn, drops unusable turns by reason, and fills a ConversionReport.
"""

from sdft.ingest.convert import (
    DEFAULT_MAX_DOCUMENT_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    Conversion,
    convert,
)
from sdft.ingest.dedup import DigestSet, record_key
from sdft.ingest.detect import FORMATS, detect_format, resolve_format
from sdft.ingest.errors import MAX_REPORTED_ERRORS, IngestError, IngestErrors
from sdft.ingest.report import ConversionReport
from sdft.ingest.tokens import make_length_function, render_expert_turn

__all__ = [
    "DEFAULT_MAX_DOCUMENT_BYTES",
    "DEFAULT_MAX_LINE_BYTES",
    "FORMATS",
    "MAX_REPORTED_ERRORS",
    "Conversion",
    "ConversionReport",
    "DigestSet",
    "IngestError",
    "IngestErrors",
    "convert",
    "detect_format",
    "make_length_function",
    "record_key",
    "render_expert_turn",
    "resolve_format",
]
