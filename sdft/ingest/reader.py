"""Byte-level input: gzip detection, bounded line reads, UTF-8 checks, whole-document reads.

JSONL is split on b"\\n" only. `str.splitlines` would also split on U+2028 and other
separators, which JSON allows unescaped inside strings.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sdft.ingest.errors import IngestError

GZIP_MAGIC = b"\x1f\x8b"
_READ_CHUNK = 1 << 20


class _CountingReader(io.RawIOBase):
    """Raw stream over `source` that counts the bytes taken from it, compressed or not."""

    def __init__(self, source: BinaryIO):
        self._source = source
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._source.read(len(buffer))
        if not data:
            return 0
        size = len(data)
        buffer[:size] = data
        self.bytes_read += size
        return size


@dataclass
class Line:
    """One raw input line without its newline; `number` is 1-based, `offset` in bytes."""

    number: int
    offset: int
    data: bytes


class InputStream:
    """Decompressed input read as bounded lines or as one document.

    Gzip input is detected by its magic bytes, whatever the file name is.
    """

    def __init__(self, source: BinaryIO, *, max_line_bytes: int):
        self._counter = _CountingReader(source)
        buffered = io.BufferedReader(self._counter, buffer_size=_READ_CHUNK)
        self.compressed = buffered.peek(2)[:2] == GZIP_MAGIC
        self._stream: BinaryIO = (
            gzip.GzipFile(fileobj=buffered, mode="rb") if self.compressed else buffered  # type: ignore[assignment]
        )
        self._max_line_bytes = max_line_bytes
        # A line read by peek_line: the line, whether it is overlong, and its raw bytes.
        self._pushed_back: tuple[Line, bool, bytes] | None = None
        self._next_number = 1
        self._offset = 0

    @property
    def bytes_read(self) -> int:
        """Bytes consumed from the source so far (compressed bytes for gzip input)."""
        return self._counter.bytes_read

    def _read(self, reader_call: str, size: int) -> bytes:
        try:
            return getattr(self._stream, reader_call)(size)
        except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as exc:
            if not self.compressed:
                raise
            raise self._gzip_error(exc) from exc

    def _gzip_error(self, exc: BaseException) -> IngestError:
        return IngestError(
            None,
            f"the gzip data is corrupted or truncated ({exc}); "
            "check the upload, or compress the file again with `gzip`",
        )

    @property
    def line_number(self) -> int:
        """1-based number of the next line to be read."""
        return self._next_number

    def skip_prefix(self, prefix: bytes) -> None:
        """Consume `prefix` (a byte order mark, say) if the input starts with it."""
        if self._peek(len(prefix)).startswith(prefix):
            self._consume(len(prefix))

    def skip_whitespace(self) -> bytes:
        """Consume leading whitespace and return the next byte without consuming it.

        Returns b"" at the end of the input.
        """
        while True:
            chunk = self._peek(_READ_CHUNK)
            if not chunk:
                return b""
            significant = chunk.lstrip(b" \t\r\n")
            skipped = len(chunk) - len(significant)
            self._next_number += chunk.count(b"\n", 0, skipped)
            self._consume(skipped)
            if significant:
                return significant[:1]

    def peek_line(self) -> bytes | None:
        """Return the next line (its first max_line_bytes) without consuming it."""
        if self._pushed_back is None:
            number, offset = self._next_number, self._offset
            data = self._read("readline", self._max_line_bytes)
            if not data:
                return None
            self._next_number += 1
            self._offset += len(data)
            overlong = len(data) >= self._max_line_bytes and not data.endswith(b"\n")
            line = Line(number, offset, data.rstrip(b"\n").rstrip(b"\r"))
            self._pushed_back = (line, overlong, data)
        return self._pushed_back[0].data

    def lines(self) -> Iterator[Line | IngestError]:
        """Yield each line, or an IngestError in place of a line over max_line_bytes.

        An overlong line is skipped to its end so that reading can go on after it.
        """
        while True:
            if self._pushed_back is not None:
                line, overlong, _ = self._pushed_back
                self._pushed_back = None
                if overlong:
                    self._offset += self._skip_to_line_end()
                    yield self._too_long(line.number)
                else:
                    yield line
                continue
            number, offset = self._next_number, self._offset
            data = self._read("readline", self._max_line_bytes + 1)
            if not data:
                return
            self._next_number += 1
            self._offset += len(data)
            if len(data) > self._max_line_bytes and not data.endswith(b"\n"):
                self._offset += self._skip_to_line_end()
                yield self._too_long(number)
                continue
            yield Line(number, offset, data.rstrip(b"\n").rstrip(b"\r"))

    def _too_long(self, number: int) -> IngestError:
        return IngestError(
            number,
            f"the line is longer than the limit of {self._max_line_bytes} bytes; "
            "split the record, or raise max_line_bytes",
        )

    def _peek(self, size: int) -> bytes:
        try:
            return self._stream.peek(size)  # type: ignore[attr-defined]
        except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as exc:
            raise self._gzip_error(exc) from exc

    def _consume(self, size: int) -> None:
        if size:
            self._read("read", size)
            self._offset += size

    def _skip_to_line_end(self) -> int:
        skipped = 0
        while True:
            chunk = self._read("readline", _READ_CHUNK)
            skipped += len(chunk)
            if not chunk or chunk.endswith(b"\n"):
                return skipped

    def read_rest(self, limit: int) -> bytes:
        """Read everything left, a line read by peek_line included, failing once more than
        `limit` bytes are buffered."""
        chunks, size = [], 0
        if self._pushed_back is not None:
            chunks.append(self._pushed_back[2])
            size = len(self._pushed_back[2])
            self._pushed_back = None
        while True:
            chunk = self._read("read", _READ_CHUNK)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                raise IngestError(
                    None,
                    f"the JSON document is larger than the limit of {limit} bytes; "
                    "write it as JSONL, one record per line, so it can be streamed",
                )
            chunks.append(chunk)


def decode_line(line: Line) -> str:
    """Decode one line as UTF-8; the error names the byte offset in the line and the file."""
    try:
        return line.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IngestError(
            line.number,
            f"invalid UTF-8 at byte {exc.start} of the line (byte {line.offset + exc.start} "
            "of the file); save the file as UTF-8",
        ) from exc


def decode_document(data: bytes, first_line: int = 1) -> str:
    """Decode a whole document as UTF-8; the error names the line and the byte offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data.count(b"\n", 0, exc.start)
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        raise IngestError(
            line,
            f"invalid UTF-8 at byte {exc.start - line_start} of the line "
            f"(byte {exc.start} of the document); save the file as UTF-8",
        ) from exc


def open_source(source: BinaryIO | Path | str) -> tuple[BinaryIO, bool]:
    """Return a binary stream for `source` and whether the caller must close it."""
    if isinstance(source, str | Path):
        return open(source, "rb"), True
    return source, False
