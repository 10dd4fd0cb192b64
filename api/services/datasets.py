"""Dataset uploads: validate every line while streaming converted records to S3.

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
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db.models import Dataset, new_id
from api.errors import NotFound, PayloadTooLarge, ValidationFailed
from api.storage import Storage, dataset_records_key, dataset_report_key
from sdft.data.records import parse_record

logger = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 50
# A line longer than this is rejected without being held in memory whole.
MAX_LINE_BYTES = 32 * 1024 * 1024
READ_CHUNK_BYTES = 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
# NOTE: trace formats (Claude Code logs, ShareGPT, agent trajectories) need the converter of
# the `sdft.ingest` package; until it is wired in, only JSONL record formats are accepted.
SUPPORTED_FORMATS = ("auto", "jsonl")


@dataclass
class LineError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class IngestOutcome:
    """What one pass over an upload found: counts, hashes and the first bad lines."""

    input_bytes: int = 0
    input_sha256: str = ""
    compressed: bool = False
    input_lines: int = 0
    records: int = 0
    invalid_lines: int = 0
    errors: list[LineError] = field(default_factory=list)

    def report(self, fmt: str, strict: bool) -> dict[str, Any]:
        return {
            "format": fmt,
            "strict": strict,
            "compressed": self.compressed,
            "input_bytes": self.input_bytes,
            "input_lines": self.input_lines,
            "records": self.records,
            "skipped": self.invalid_lines,
            "errors": [{"line": e.line, "reason": e.reason} for e in self.errors],
        }


class _CountingReader(io.RawIOBase):
    """Read-through wrapper that hashes and counts bytes, raising once `limit` is passed."""

    def __init__(self, raw: IO[bytes], limit: int, what: str):
        self._raw = raw
        self._limit = limit
        self._what = what
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
                f"the {self._what} is larger than the limit of {self._limit} bytes "
                "(SDFT_MAX_UPLOAD_BYTES); split the dataset or ask an operator to raise the limit"
            )
        self.sha256.update(data)
        buffer[: len(data)] = data
        return len(data)


def _iter_lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes | None]]:
    """Yield (line number, line) pairs; the line is None when it exceeds MAX_LINE_BYTES."""
    number = 0
    while True:
        line = stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            # Skip the rest of the oversized line in bounded reads.
            while True:
                rest = stream.readline(READ_CHUNK_BYTES)
                if not rest or rest.endswith(b"\n"):
                    break
            yield number, None
            continue
        yield number, line


def _convert_line(raw: bytes) -> bytes | None:
    """Return the normalised record as one JSON line, or None for a blank line.

    Raises ValueError with the reason the line is invalid.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"invalid UTF-8 at byte {exc.start}") from exc
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} at column {exc.colno}") from exc
    record = parse_record(obj)
    return json.dumps(record.to_json(), ensure_ascii=False).encode("utf-8") + b"\n"


def stream_records(
    upload: IO[bytes],
    sink: Any,
    *,
    strict: bool,
    max_bytes: int,
) -> IngestOutcome:
    """Validate `upload` line by line and write converted records to `sink.write`.

    Gzip input is detected from its magic bytes. In strict mode writing stops at the first
    invalid line, but reading goes on to report up to MAX_REPORTED_ERRORS bad lines. The byte
    limit applies to the upload and, for gzip, to its decompressed size.
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

    try:
        for number, raw in _iter_lines(stream):
            outcome.input_lines = number
            try:
                if raw is None:
                    raise ValueError(f"line longer than {MAX_LINE_BYTES} bytes")
                converted = _convert_line(raw)
            except ValueError as exc:
                outcome.invalid_lines += 1
                if len(outcome.errors) < MAX_REPORTED_ERRORS:
                    outcome.errors.append(LineError(number, str(exc)))
                continue
            if converted is None:
                continue
            outcome.records += 1
            if not (strict and outcome.errors):
                sink.write(converted)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        # A truncated or corrupt gzip stream; the line count says how far it got.
        outcome.errors.append(LineError(outcome.input_lines + 1, f"invalid gzip stream: {exc}"))
        outcome.invalid_lines += 1

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
    fmt = (fmt or "auto").strip().lower()
    if fmt not in SUPPORTED_FORMATS:
        raise ValidationFailed(
            f"format {fmt!r} is not supported; use one of {', '.join(SUPPORTED_FORMATS)}",
            problems=[f"format={fmt!r}: unsupported"],
        )
    return fmt


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
        outcome = stream_records(upload, writer, strict=request.strict, max_bytes=max_bytes)
    except BaseException:
        writer.abort()
        raise

    rejected = (request.strict and outcome.errors) or outcome.records == 0
    if rejected:
        writer.abort()
        problems = [str(e) for e in outcome.errors]
        if outcome.errors:
            shown = len(outcome.errors)
            message = (
                f"dataset {request.filename!r} has {outcome.invalid_lines} invalid line(s) "
                f"(first {shown} listed); fix them, or upload with strict=false to skip them"
            )
        else:
            message = f"dataset {request.filename!r} contains no records; upload a JSONL file"
        logger.info("rejected dataset upload %s: %s", request.filename, message)
        raise ValidationFailed(message, problems=problems)

    try:
        writer.close()
        report = outcome.report(
            request.format if request.format != "auto" else "jsonl", request.strict
        )
        storage.put_json(dataset_report_key(dataset_id), report)
    except BaseException:
        writer.abort()
        storage.delete(dataset_report_key(dataset_id))
        raise
    return StoredUpload(dataset_id, outcome, writer.key, report)


def discard_upload(storage: Storage, stored: StoredUpload) -> None:
    """Delete the objects of an upload whose row was not written."""
    storage.delete_prefix(f"datasets/{stored.dataset_id}/")


def insert_dataset(session: Session, request: UploadRequest, stored: StoredUpload) -> Dataset:
    dataset = Dataset(
        id=stored.dataset_id,
        tenant_id=request.tenant_id,
        filename=request.filename,
        format=stored.report["format"],
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
