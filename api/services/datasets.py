"""Dataset uploads: convert every line with `sdft.ingest` while streaming records to S3.

Memory stays bounded: the upload is read in 1 MiB chunks and S3 receives 8 MiB parts, so a
multi-GB file never sits in memory. Nothing is kept when the upload is rejected: the S3
multipart upload is aborted, or the finished object deleted, and no row is written.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import zlib
from dataclasses import dataclass, field
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db.models import Dataset, new_id
from api.errors import NotFound, PayloadTooLarge, ValidationFailed
from api.storage import Storage, dataset_records_key, dataset_report_key
from sdft.ingest import FORMATS, Conversion, IngestError, IngestErrors, resolve_format
from sdft.ingest.errors import MAX_REPORTED_ERRORS

logger = logging.getLogger(__name__)

READ_CHUNK_BYTES = 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
SUPPORTED_FORMATS = ("auto", *FORMATS)


@dataclass
class LineError:
    line: int | None
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}" if self.line is not None else self.reason


@dataclass
class IngestOutcome:
    """Result of one pass over an upload: counts, hashes, the conversion report and the first
    invalid lines (at most MAX_REPORTED_ERRORS)."""

    input_bytes: int = 0
    input_sha256: str = ""
    compressed: bool = False
    records: int = 0
    invalid_lines: int = 0
    errors: list[LineError] = field(default_factory=list)
    conversion: dict[str, Any] = field(default_factory=dict)

    def report(self, strict: bool) -> dict[str, Any]:
        return {
            **self.conversion,
            "strict": strict,
            "compressed": self.compressed,
            "input_bytes": self.input_bytes,
            "records": self.records,
            "skipped": self.invalid_lines,
            "errors": [{"line": e.line, "reason": e.reason} for e in self.errors],
        }


class _CountingReader(io.RawIOBase):
    """Read-through wrapper that hashes and counts bytes, raising once `limit` is passed."""

    def __init__(self, raw: IO[bytes], limit: int, subject: str):
        self._raw = raw
        self._limit = limit
        self._subject = subject
        self.count = 0
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._raw.read(len(buffer))
        if not data:
            return 0
        self.count += len(data)
        if self.count > self._limit:
            raise PayloadTooLarge(
                f"the {self._subject} is larger than the limit of {self._limit} bytes "
                "(SDFT_MAX_UPLOAD_BYTES); split the dataset or ask an operator to raise the limit"
            )
        self.sha256.update(data)
        buffer[: len(data)] = data
        return len(data)


def stream_records(
    upload: IO[bytes],
    sink: Any,
    *,
    fmt: str,
    strict: bool,
    max_bytes: int,
    filename: str,
) -> IngestOutcome:
    """Convert `upload` with `sdft.ingest` and write each record as a JSON line to `sink.write`.

    Gzip input is detected from its magic bytes. In strict mode the converter stops emitting
    records at the first invalid line but reads on to list up to MAX_REPORTED_ERRORS of them.
    The byte limit applies to the upload and, for gzip, to its decompressed size, which
    bounds the work a small compressed file can cause.
    """
    outcome = IngestOutcome()
    counter = _CountingReader(upload, max_bytes, "upload")
    buffered = io.BufferedReader(counter, buffer_size=READ_CHUNK_BYTES)
    stream: IO[bytes] = buffered
    if buffered.peek(2)[:2] == GZIP_MAGIC:
        outcome.compressed = True
        decompressed = _CountingReader(
            gzip.GzipFile(fileobj=buffered, mode="rb"), max_bytes, "decompressed upload"
        )
        stream = io.BufferedReader(decompressed, buffer_size=READ_CHUNK_BYTES)

    conversion = Conversion(
        stream, format=None if fmt == "auto" else fmt, strict=strict, filename=filename
    )
    try:
        for record in conversion:
            line = json.dumps(record.to_json(), ensure_ascii=False).encode("utf-8") + b"\n"
            sink.write(line)
            outcome.records += 1
    except IngestErrors as exc:
        outcome.errors = [LineError(e.line, e.reason) for e in exc.errors]
        outcome.invalid_lines = exc.total
    except IngestError as exc:
        outcome.errors = [LineError(exc.line, exc.reason)]
        outcome.invalid_lines = 1
    except (OSError, EOFError, zlib.error) as exc:
        # The API decompresses below the converter, so gzip errors arrive here unconverted.
        reason = f"the gzip data is corrupted or truncated ({exc}); compress the file again"
        outcome.errors = [LineError(None, reason)]
        outcome.invalid_lines = 1

    report = conversion.report
    if not outcome.errors and report.errors:
        # Lenient mode: the converter skipped these lines and kept the rest.
        outcome.errors = [LineError(e.line, e.reason) for e in report.errors]
        outcome.invalid_lines = report.error_count
    outcome.conversion = report.to_dict()
    outcome.input_bytes = counter.count
    outcome.input_sha256 = counter.sha256.hexdigest()
    return outcome


@dataclass(frozen=True)
class UploadRequest:
    tenant_id: str
    filename: str
    format: str
    strict: bool


def sanitize_filename(name: str | None) -> str:
    """Keep the last path component, printable characters only, at most 200 characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c for c in base if c.isprintable() and c not in "\"'<>|:*?")
    cleaned = cleaned.strip().lstrip(".")
    return cleaned[:200] or "dataset.jsonl"


def check_format(fmt: str | None) -> str:
    """Return the canonical format name, or "auto" for detection from the content."""
    try:
        canonical = resolve_format(fmt)
    except ValueError as exc:
        raise ValidationFailed(
            f"format {fmt!r} is not supported; use one of {', '.join(SUPPORTED_FORMATS)}",
            problems=[f"format={fmt!r}: unsupported"],
        ) from exc
    return canonical or "auto"


@dataclass
class StoredUpload:
    """An accepted upload whose records are in S3 but whose row is not yet committed."""

    dataset_id: str
    outcome: IngestOutcome
    records_key: str
    report: dict[str, Any]


def store_upload(
    storage: Storage, request: UploadRequest, upload: IO[bytes], max_bytes: int
) -> StoredUpload:
    """Validate and store an upload in S3. Raises ValidationFailed or PayloadTooLarge, in
    which case nothing stays in S3."""
    dataset_id = new_id("ds")
    writer = storage.open_writer(dataset_records_key(dataset_id))
    try:
        outcome = stream_records(
            upload,
            writer,
            fmt=request.format,
            strict=request.strict,
            max_bytes=max_bytes,
            filename=request.filename,
        )
    except BaseException:
        writer.abort()
        raise

    rejected = (request.strict and outcome.errors) or outcome.records == 0
    if rejected:
        writer.abort()
        message = _rejection_message(request, outcome)
        logger.info("rejected dataset upload %s: %s", request.filename, message)
        raise ValidationFailed(message, problems=[str(e) for e in outcome.errors])

    try:
        writer.close()
        report = outcome.report(request.strict)
        storage.put_json(dataset_report_key(dataset_id), report)
    except BaseException:
        writer.abort()
        storage.delete(dataset_report_key(dataset_id))
        raise
    return StoredUpload(dataset_id, outcome, writer.key, report)


def _rejection_message(request: UploadRequest, outcome: IngestOutcome) -> str:
    name = repr(request.filename)
    if len(outcome.errors) == 1 and outcome.errors[0].line is None:
        return f"dataset {name} is invalid: {outcome.errors[0].reason}"
    if outcome.errors:
        # In strict mode the converter stops reading after MAX_REPORTED_ERRORS invalid lines.
        capped = request.strict and outcome.invalid_lines >= MAX_REPORTED_ERRORS
        count = f"at least {outcome.invalid_lines}" if capped else str(outcome.invalid_lines)
        return (
            f"dataset {name} has {count} invalid line(s) (first {len(outcome.errors)} listed); "
            "fix them, or upload with strict=false to skip them"
        )
    dropped = outcome.conversion.get("dropped") or {}
    detail = f" (turns dropped by reason: {dropped})" if dropped else ""
    return (
        f"dataset {name} contains no usable records{detail}; upload traces with at least one "
        f"assistant turn in a supported format ({', '.join(FORMATS)})"
    )


def discard_upload(storage: Storage, stored: StoredUpload) -> None:
    """Delete the objects of an upload whose row was not written."""
    storage.delete_prefix(f"datasets/{stored.dataset_id}/")


def insert_dataset(session: Session, request: UploadRequest, stored: StoredUpload) -> Dataset:
    dataset = Dataset(
        id=stored.dataset_id,
        tenant_id=request.tenant_id,
        filename=request.filename,
        format=stored.report.get("format") or request.format,
        records=stored.outcome.records,
        bytes=stored.outcome.input_bytes,
        sha256=stored.outcome.input_sha256,
        s3_key=stored.records_key,
        report=stored.report,
    )
    session.add(dataset)
    session.flush()
    return dataset


def get_dataset(session: Session, tenant_id: str, dataset_id: str) -> Dataset:
    dataset = session.scalars(
        select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id)
    ).one_or_none()
    if dataset is None:
        raise NotFound(f"dataset {dataset_id!r} not found; list your datasets with GET /datasets")
    return dataset


def list_datasets(
    session: Session, tenant_id: str, *, after: str | None, limit: int
) -> tuple[list[Dataset], bool]:
    """Return a page of the tenant's datasets, newest first, and whether more follow."""
    query = select(Dataset).where(Dataset.tenant_id == tenant_id)
    if after:
        query = query.where(Dataset.id < after)
    rows = list(session.scalars(query.order_by(Dataset.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
