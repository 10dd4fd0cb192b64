"""Stream a trace file of any supported format into training records and a report."""

from __future__ import annotations

import json
import logging
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from sdft.data.records import Record
from sdft.ingest import report as reasons
from sdft.ingest.conversation import Conversation
from sdft.ingest.dedup import DigestSet, digest_tools, record_key
from sdft.ingest.detect import (
    ARRAY_FORMATS,
    CONVERTERS,
    FORMATS,
    describe_unknown,
    detect_format,
    resolve_format,
    supported_formats,
    wrapped_conversations,
)
from sdft.ingest.errors import MAX_REPORTED_ERRORS, IngestError, IngestErrors
from sdft.ingest.formats.claude_code import ClaudeCodeAssembler
from sdft.ingest.reader import InputStream, Line, decode_document, decode_line, open_source
from sdft.ingest.report import ConversionReport
from sdft.ingest.split import split_turns
from sdft.ingest.tokens import LengthFunction, make_length_function

logger = logging.getLogger(__name__)

DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_DOCUMENT_BYTES = 1024 * 1024 * 1024
_UTF8_BOM = b"\xef\xbb\xbf"


class Conversion:
    """One pass over one input: iterate it (or call `records()`) for records, then read `report`.

    In strict mode the first invalid line stops the output of records, reading goes on to
    collect up to 50 invalid lines, and IngestErrors is raised at the end. In lenient mode
    invalid lines are skipped and listed in `report.errors`. Problems with the input as a
    whole (empty, corrupted gzip, unknown format, a JSON array where JSONL is expected)
    raise IngestError in both modes.
    """

    def __init__(
        self,
        source: BinaryIO | Path | str,
        *,
        format: str | None = None,
        strict: bool = True,
        tokenizer: Any = None,
        max_teacher_prompt_tokens: int | None = None,
        has_vision: bool = False,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
        filename: str | None = None,
        teacher_prompt_length: LengthFunction | None = None,
        dedup_keys: DigestSet | None = None,
    ):
        try:
            self._format = resolve_format(format)
        except ValueError as exc:
            raise IngestError(None, str(exc)) from exc
        if max_line_bytes <= 0:
            raise ValueError(f"max_line_bytes must be positive, got {max_line_bytes}")
        self._source = source
        self._strict = strict
        self._has_vision = has_vision
        self._max_line_bytes = max_line_bytes
        self._max_document_bytes = max_document_bytes
        self._max_teacher_prompt_tokens = max_teacher_prompt_tokens
        self.filename = filename or (str(source) if isinstance(source, str | Path) else None)
        if teacher_prompt_length is None and tokenizer is not None:
            teacher_prompt_length = make_length_function(tokenizer)
        self._length = teacher_prompt_length
        if max_teacher_prompt_tokens is not None and teacher_prompt_length is None:
            logger.warning(
                "max_teacher_prompt_tokens=%d is ignored: pass a tokenizer to measure prompts",
                max_teacher_prompt_tokens,
            )
        self.report = ConversionReport(format=self._format)
        # Pass one set to several conversions to drop duplicates across their inputs too.
        self._seen = dedup_keys if dedup_keys is not None else DigestSet()
        self._stream: InputStream | None = None
        self._started = False

    @property
    def bytes_read(self) -> int:
        """Bytes read from the source so far, for progress bars (compressed size for gzip)."""
        return self._stream.bytes_read if self._stream is not None else 0

    def __iter__(self) -> Iterator[Record]:
        return self.records()

    def records(self) -> Iterator[Record]:
        """Yield the records in input order. A Conversion can be iterated once."""
        if self._started:
            raise RuntimeError("this Conversion was already iterated; create a new one")
        self._started = True
        handle, owned = open_source(self._source)
        try:
            self._stream = InputStream(handle, max_line_bytes=self._max_line_bytes)
            yield from self._read()
        finally:
            if owned:
                handle.close()
        logger.info(
            "converted %s (%s): %d records from %d conversations, dropped %s, %d invalid lines",
            self.filename or "input",
            self.report.format,
            self.report.records,
            self.report.conversations,
            dict(self.report.dropped),
            self.report.error_count,
        )
        if self._strict and self.report.error_count:
            raise IngestErrors(self.report.errors, self.report.error_count)

    # Reading -----------------------------------------------------------------

    def _read(self) -> Iterator[Record]:
        stream = self._stream
        assert stream is not None
        first = self._first_byte(stream)
        if first == b"[":
            yield from self._read_document(stream.read_rest(self._max_document_bytes), 1)
            return
        if first != b"{":
            raise IngestError(
                stream.line_number,
                f"the input is not JSON: it starts with {first!r}, expected '{{' (JSONL or one "
                f"JSON object) or '[' (a JSON array). Supported formats: {supported_formats()}",
            )
        lines = stream.lines()
        head = next(lines)
        if isinstance(head, IngestError):
            self._fail(head)
            yield from self._read_jsonl(lines, None)
            return
        if self._is_document_start(head, stream):
            rest = stream.read_rest(self._max_document_bytes)
            yield from self._read_document(head.data + b"\n" + rest, head.number)
            return
        yield from self._read_jsonl(lines, head)

    def _first_byte(self, stream: InputStream) -> bytes:
        stream.skip_prefix(_UTF8_BOM)
        first = stream.skip_whitespace()
        if not first:
            raise IngestError(None, "the input is empty; upload a file with at least one record")
        return first

    def _is_document_start(self, head: Line, stream: InputStream) -> bool:
        """Tell a pretty-printed JSON object from a JSONL file whose first line is invalid.

        The first line of a JSONL file parses on its own, or else the next line starts
        another object at column 0; a multi-line document does neither.
        """
        try:
            json.loads(head.data)
            return False
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
        following = stream.peek_line()
        return following is None or not following.startswith(b"{")

    def _read_jsonl(
        self, lines: Iterator[Line | IngestError], head: Line | None
    ) -> Iterator[Record]:
        assembler: ClaudeCodeAssembler | None = None
        pending = [head] if head is not None else []
        for line in _chain(pending, lines):
            if self._strict and self.report.error_count >= MAX_REPORTED_ERRORS:
                break
            if isinstance(line, IngestError):
                self._fail(line)
                continue
            obj = self._parse_line(line)
            if obj is None:
                continue
            if self.report.format is None:
                self.report.format = self._detect(obj, line.number)
            if self.report.format == "claude_code":
                assembler = assembler or ClaudeCodeAssembler()
                try:
                    assembler.add(obj, line.number)
                except ValueError as exc:
                    self._fail(IngestError(line.number, str(exc)))
                continue
            for conversation in self._convert(obj, line.number, None):
                yield from self._emit(conversation)
        if assembler is not None:
            for conversation in assembler.conversations():
                yield from self._emit(conversation)
            self.report.skipped_events.update(assembler.skipped)
        if self.report.format is None and not self.report.error_count:
            raise IngestError(None, "the input has no records: every line is blank")

    def _parse_line(self, line: Line) -> Any:
        try:
            text = decode_line(line)
        except IngestError as exc:
            self._fail(exc)
            return None
        if not text.strip():
            return None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            self._fail(IngestError(line.number, f"invalid JSON: {exc.msg} at column {exc.colno}"))
            return None
        if isinstance(obj, list):
            self._fail(
                IngestError(
                    line.number,
                    "the line is a JSON array; a JSONL line must hold one JSON object",
                )
            )
            return None
        return obj

    def _read_document(self, data: bytes, first_line: int) -> Iterator[Record]:
        text = decode_document(data, first_line)
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            hint = ""
            if exc.msg == "Extra data":
                hint = (
                    "; the input holds several JSON values, so if it is JSONL, every line "
                    "must be one JSON object, not an array"
                )
            raise IngestError(
                first_line + exc.lineno - 1,
                f"invalid JSON document: {exc.msg} at column {exc.colno}{hint}",
            ) from exc
        if self.report.format is None:
            self.report.format = self._detect(document, first_line, document=True)
        fmt = self.report.format
        if isinstance(document, list):
            if fmt not in ARRAY_FORMATS:
                raise IngestError(
                    None,
                    f"the input is one JSON array of {len(document)} items, but {fmt} input "
                    "must be JSONL: one JSON object per line (for example "
                    "`jq -c '.[]' in.json > out.jsonl`)",
                )
            for index, item in enumerate(document):
                for conversation in self._convert(item, None, index):
                    yield from self._emit(conversation)
                if self._strict and self.report.error_count >= MAX_REPORTED_ERRORS:
                    break
            return
        if fmt == "claude_code":
            assembler = ClaudeCodeAssembler()
            try:
                assembler.add(document, first_line)
            except ValueError as exc:
                self._fail(IngestError(first_line, str(exc)))
            for conversation in assembler.conversations():
                yield from self._emit(conversation)
            self.report.skipped_events.update(assembler.skipped)
            return
        for conversation in self._convert(document, first_line, None):
            yield from self._emit(conversation)

    def _detect(self, obj: Any, line: int | None, *, document: bool = False) -> str:
        detected = detect_format(obj)
        if detected is None and isinstance(obj, dict):
            wrapped = wrapped_conversations(obj)
            if wrapped:
                detected = detect_format(wrapped[0][1])
        if detected is None:
            raise IngestError(
                line,
                f"unknown format: {describe_unknown(obj)}. Supported formats: "
                f"{supported_formats()}; name one with --from / format= if the input is one "
                "of them",
            )
        logger.info("detected input format %s (%s)", detected, FORMATS[detected])
        return detected

    def _convert(self, obj: Any, line: int | None, item: int | None) -> list[Conversation]:
        """Convert one decoded object; a wrapper of several conversations gives several."""
        fmt = self.report.format
        assert fmt is not None and fmt != "claude_code"
        targets: list[tuple[str | None, Any]] = [(None, obj)]
        if isinstance(obj, dict) and detect_format(obj) is None:
            targets = list(wrapped_conversations(obj)) or targets
        out = []
        for name, target in targets:
            try:
                conversation = CONVERTERS[fmt](target)
            except ValueError as exc:
                where = f"{name}: " if name else ""
                self._fail(IngestError(line, f"{where}{exc}", item=item))
                continue
            conversation.line, conversation.item, conversation.name = line, item, name
            out.append(conversation)
        return out

    def _fail(self, error: IngestError) -> None:
        if self.report.error_count < MAX_REPORTED_ERRORS:
            logger.warning("invalid input: %s", error)
        self.report.add_error(error)

    # Records ------------------------------------------------------------------

    def _emit(self, conversation: Conversation) -> Iterator[Record]:
        report = self.report
        report.conversations += 1
        report.reasoning_removed += conversation.reasoning_removed
        turns = 0
        tools_digest = digest_tools(conversation.tools)
        for record, reason in split_turns(conversation, has_vision=self._has_vision):
            turns += 1
            if record is not None:
                reason = self._filter(record, tools_digest)
            if reason is not None:
                report.dropped[reason] += 1
                continue
            assert record is not None
            report.records += 1
            for call in record.completion.get("tool_calls") or []:
                report.tools_used[call["function"]["name"]] += 1
            if not (self._strict and report.error_count):
                yield record
        report.turns += turns
        report.turns_per_conversation_counts[turns] += 1

    def _filter(self, record: Record, tools_digest: bytes) -> str | None:
        if not self._seen.add(record_key(record, tools_digest)):
            return reasons.DUPLICATE
        if self._length is None:
            return None
        try:
            lengths = self._length(record)
        except ValueError as exc:
            # The chat template cannot render this record, so training could not use it.
            if self.report.dropped[reasons.TEMPLATE_ERROR] < 10:
                logger.warning("dropped a record the chat template cannot render: %s", exc)
            return reasons.TEMPLATE_ERROR
        for name, value in lengths.items():
            self.report.token_lengths.setdefault(name, array("I")).append(value)
        limit = self._max_teacher_prompt_tokens
        if limit is not None and lengths["teacher_prompt"] > limit:
            return reasons.TEACHER_PROMPT_TOO_LONG
        return None


def convert(
    source: BinaryIO | Path | str,
    *,
    format: str | None = None,
    strict: bool = True,
    tokenizer: Any = None,
    max_teacher_prompt_tokens: int | None = None,
    has_vision: bool = False,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
    filename: str | None = None,
    teacher_prompt_length: LengthFunction | None = None,
    dedup_keys: DigestSet | None = None,
) -> Conversion:
    """Convert a trace file into per-turn records.

    Returns a Conversion: iterate it for records (streamed in input order), then read
    `.report` for what was kept, dropped and why. See Conversion for strict and lenient
    mode. With `tokenizer` (a chat model's tokenizer) every record is measured and turns
    whose teacher prompt exceeds `max_teacher_prompt_tokens` are dropped;
    `teacher_prompt_length` replaces the length function built from it. `has_vision` keeps
    turns with images. `max_line_bytes` bounds one JSONL line and `max_document_bytes` an
    input that is one JSON document. `filename` only names the input in logs, and
    `dedup_keys` shares duplicate detection across several conversions.
    Raises IngestError for an unknown `format`, and ValueError (the trainer's PromptError)
    for a tokenizer without a chat template.
    """
    return Conversion(
        source,
        format=format,
        strict=strict,
        tokenizer=tokenizer,
        max_teacher_prompt_tokens=max_teacher_prompt_tokens,
        has_vision=has_vision,
        max_line_bytes=max_line_bytes,
        max_document_bytes=max_document_bytes,
        filename=filename,
        teacher_prompt_length=teacher_prompt_length,
        dedup_keys=dedup_keys,
    )


def _chain(head: list[Line], rest: Iterator[Line | IngestError]) -> Iterator[Line | IngestError]:
    yield from head
    yield from rest
