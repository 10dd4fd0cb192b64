"""Bad input: each kind gets its own message; strict and lenient modes; gzip; determinism."""

from __future__ import annotations

import gzip
import io
import json
import tempfile
import tracemalloc
from pathlib import Path

import pytest

from sdft.ingest import IngestError, IngestErrors, convert

DATA = Path(__file__).parent.parent / "data" / "traces"
GOOD = json.dumps(
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
)


def _lines(*lines: str | bytes) -> bytes:
    return b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines)


def _convert_bytes(data: bytes, **options: object) -> tuple[list, object]:
    conversion = convert(io.BytesIO(data), **options)  # type: ignore[arg-type]
    return list(conversion), conversion.report


def test_empty_input_message() -> None:
    for data in (b"", b"  \n\n\t\n"):
        with pytest.raises(IngestError, match="the input is empty"):
            _convert_bytes(data)


def test_invalid_utf8_line_and_offset() -> None:
    data = _lines(GOOD, b'{"messages": "caf\xe9"}')

    with pytest.raises(IngestErrors) as raised:
        _convert_bytes(data)

    error = raised.value.errors[0]
    assert error.line == 2
    assert "invalid UTF-8 at byte 17 of the line" in error.reason
    assert f"byte {len(GOOD) + 1 + 17} of the file" in error.reason


def test_overlong_line_message_and_recovery() -> None:
    long_line = json.dumps({"messages": [{"role": "user", "content": "x" * 500}]})
    data = _lines(GOOD, long_line, GOOD.replace("hello", "hello again"))

    with pytest.raises(IngestErrors) as raised:
        _convert_bytes(data, max_line_bytes=200)
    records, report = _convert_bytes(data, max_line_bytes=200, strict=False)

    assert raised.value.errors[0].line == 2
    assert "longer than the limit of 200 bytes" in raised.value.errors[0].reason
    assert len(records) == 2
    assert report.error_count == 1


def test_json_array_where_jsonl_expected() -> None:
    data = json.dumps([json.loads(GOOD), json.loads(GOOD)]).encode()

    expected = "one JSON array of 2 items, but openai input must be JSONL"
    with pytest.raises(IngestError, match=expected):
        _convert_bytes(data)


def test_json_array_line_in_jsonl() -> None:
    data = _lines(GOOD, "[1, 2]")

    records, report = _convert_bytes(data, strict=False)

    assert len(records) == 1
    assert report.errors[0].line == 2
    assert "a JSONL line must hold one JSON object" in report.errors[0].reason


def test_unknown_format_names_what_was_found() -> None:
    data = _lines('{"instruction": "add", "output": "4"}')

    with pytest.raises(IngestError) as raised:
        _convert_bytes(data)

    message = str(raised.value)
    assert "unknown format" in message
    assert "keys: instruction, output" in message
    assert "claude_code, openai, messages_parts, sharegpt, swe_agent, records" in message


def test_not_json_message() -> None:
    with pytest.raises(IngestError, match="the input is not JSON: it starts with b'p'"):
        _convert_bytes(b"prompt,completion\n")


def test_corrupted_gzip_message() -> None:
    packed = bytearray(gzip.compress(_lines(GOOD) * 50))
    packed[20:40] = b"\x00" * 20

    with pytest.raises(IngestError, match="gzip data is corrupted or truncated"):
        _convert_bytes(bytes(packed))


def test_truncated_gzip_message() -> None:
    packed = gzip.compress(_lines(GOOD) * 50)

    with pytest.raises(IngestError, match="gzip data is corrupted or truncated"):
        _convert_bytes(packed[: len(packed) // 2])


def test_gzip_accepted_by_content(tmp_path: Path) -> None:
    plain = (DATA / "openai/tricky.jsonl").read_bytes()
    path = tmp_path / "no_gz_suffix.jsonl"
    path.write_bytes(gzip.compress(plain))

    packed = list(convert(path))
    expected = list(convert(DATA / "openai/tricky.jsonl"))

    assert packed == expected


def test_gzip_json_document(tmp_path: Path) -> None:
    path = tmp_path / "traj.gz"
    path.write_bytes(gzip.compress((DATA / "swe_agent/repeated_ids.traj").read_bytes()))

    conversion = convert(path)

    assert len(list(conversion)) == 3
    assert conversion.report.format == "swe_agent"


def test_strict_collects_all_bad_lines() -> None:
    bad = ['{"messages": ', '{"messages": [{"role": "robot", "content": "x"}]}', "{}"]
    data = _lines(GOOD, *bad, GOOD.replace("hi", "hey"))

    with pytest.raises(IngestErrors) as raised:
        _convert_bytes(data)

    errors = raised.value.errors
    assert raised.value.total == 3
    assert [error.line for error in errors] == [2, 3, 4]
    assert "invalid JSON" in errors[0].reason
    assert "messages[0].role" in errors[1].reason
    assert "messages: expected a non-empty list" in errors[2].reason


def test_strict_stops_output_at_first_error() -> None:
    data = _lines(GOOD, "not json", GOOD.replace("hi", "hey"))
    conversion = convert(io.BytesIO(data))
    seen = []

    with pytest.raises(IngestErrors):
        for record in conversion:
            seen.append(record)

    assert len(seen) == 1


def test_strict_caps_errors_at_fifty() -> None:
    data = _lines(GOOD, *(["{oops"] * 120))

    with pytest.raises(IngestErrors) as raised:
        _convert_bytes(data)
    records, report = _convert_bytes(data, strict=False)

    assert len(raised.value.errors) == 50
    assert raised.value.total == 50
    assert len(records) == 1
    assert report.error_count == 120
    assert len(report.to_dict()["errors"]) == 50


def test_lenient_first_line_invalid() -> None:
    data = _lines('{"messages": [', GOOD)

    records, report = _convert_bytes(data, strict=False)

    assert len(records) == 1
    assert report.format == "openai"
    assert report.errors[0].line == 1


def test_error_list_in_report_dict() -> None:
    _, report = _convert_bytes(_lines(GOOD, "{oops"), strict=False)

    data = report.to_dict()
    assert data["error_count"] == 1
    assert data["errors"][0]["line"] == 2
    assert data["errors"][0]["reason"].startswith("invalid JSON")
    json.dumps(data)


def test_byte_order_mark_accepted() -> None:
    records, _ = _convert_bytes(b"\xef\xbb\xbf" + _lines(GOOD))

    assert len(records) == 1


def test_unicode_line_separator_inside_string() -> None:
    text = json.dumps(
        {
            "messages": [
                {"role": "user", "content": "a\u2028b"},
                {"role": "assistant", "content": "c\u0085d"},
            ]
        },
        ensure_ascii=False,
    )

    records, _ = _convert_bytes(_lines(text))

    assert records[0].prompt[0]["content"] == "a\u2028b"


def test_conversion_twice_same_bytes(tmp_path: Path) -> None:
    def run(path: Path) -> bytes:
        conversion = convert(path)
        body = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in conversion)
        return (body + json.dumps(conversion.report.to_dict())).encode()

    for path in sorted(DATA.rglob("*.*")):
        assert run(path) == run(path), path


def test_iterating_twice_rejected() -> None:
    conversion = convert(io.BytesIO(_lines(GOOD)))
    list(conversion)

    with pytest.raises(RuntimeError, match="already iterated"):
        list(conversion)


def _write_jsonl(path: Path, count: int) -> int:
    filler = "y" * 2000
    with path.open("w") as handle:
        for index in range(count):
            record = {
                "messages": [
                    {"role": "user", "content": f"question {index} {filler}"},
                    {"role": "assistant", "content": f"answer {index}"},
                ]
            }
            handle.write(json.dumps(record) + "\n")
    return path.stat().st_size


def _peak_memory(path: Path) -> tuple[int, int]:
    tracemalloc.start()
    count = sum(1 for _ in convert(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return count, peak


def test_memory_bounded_for_jsonl(tmp_path: Path) -> None:
    small_size = _write_jsonl(tmp_path / "small.jsonl", 500)
    large_size = _write_jsonl(tmp_path / "large.jsonl", 4000)

    small_count, small_peak = _peak_memory(tmp_path / "small.jsonl")
    large_count, large_peak = _peak_memory(tmp_path / "large.jsonl")

    assert (small_count, large_count) == (500, 4000)
    # Lines are streamed: the read buffers are a fixed cost and only the 64-bit
    # duplicate keys grow with the input, so 7 MB more input costs far less than 1 MB.
    assert large_peak - small_peak < (large_size - small_size) / 10


def test_pretty_printed_document_complete(tmp_path: Path) -> None:
    trajectory = json.loads((DATA / "swe_agent/repeated_ids.traj").read_text())
    path = tmp_path / "pretty.traj"
    # The history starts on line 2, the line read ahead to tell a document from JSONL.
    path.write_text('{\n"history":\n' + json.dumps(trajectory["history"], indent=2) + "\n}\n")

    records = list(convert(path))

    assert len(records) == 3
    assert records[0].prompt[0]["content"] == "You are an autonomous programmer."


def test_spooled_upload_accepted() -> None:
    # FastAPI hands uploads over as a SpooledTemporaryFile, which has no peek().
    with tempfile.SpooledTemporaryFile(max_size=1024) as upload:
        upload.write(gzip.compress(_lines(GOOD) * 100))
        upload.seek(0)

        conversion = convert(upload, filename="upload.jsonl.gz")  # type: ignore[arg-type]
        records = list(conversion)

    assert len(records) == 1
    assert conversion.report.dropped == {"duplicate": 99}
    assert conversion.bytes_read > 0


def test_jsonl_of_arrays_message() -> None:
    data = _lines('[{"from": "human", "value": "hi"}]', '[{"from": "human", "value": "yo"}]')

    with pytest.raises(IngestError) as raised:
        _convert_bytes(data)

    assert raised.value.line == 2
    assert "every line must be one JSON object, not an array" in raised.value.reason


def test_ingest_errors_to_dict() -> None:
    with pytest.raises(IngestErrors) as raised:
        _convert_bytes(_lines(GOOD, "{oops", "[2]"))

    data = raised.value.to_dict()
    assert data["total"] == 2
    assert [error["line"] for error in data["errors"]] == [2, 3]
    assert data["reason"].startswith("2 invalid input line(s)")
    json.dumps(data)
