"""OpenAI, ShareGPT/Hermes, typed-part, SWE-agent and record inputs written by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdft.ingest import FORMATS, IngestError, convert, detect_format, resolve_format

DATA = Path(__file__).parent.parent / "data" / "traces"


def test_openai_drop_reasons() -> None:
    conversion = convert(DATA / "openai/tricky.jsonl")
    records = list(conversion)

    # Line 1: two turns. Line 2: calls open_garage, which is not in its tools. Line 3:
    # weight 0, then a blank turn, then a kept one. Line 4 repeats line 1's first turn
    # with other call ids and arguments encoded once.
    assert len(records) == 3
    assert conversion.report.dropped == {
        "unknown_tool": 1,
        "weight_zero": 1,
        "empty_turn": 1,
        "duplicate": 1,
    }
    assert conversion.report.turns == 7


def test_openai_placeholder_ids_renamed() -> None:
    records = list(convert(DATA / "openai/tricky.jsonl"))
    prompt = records[1].prompt

    calls = prompt[2]["tool_calls"]
    assert [c["id"] for c in calls] == ["call_1", "call_2"]
    assert [c["function"]["arguments"] for c in calls] == [{"city": "Oslo"}, {"city": "Rome"}]
    assert [(m["tool_call_id"], m["content"]) for m in prompt[3:]] == [
        ("call_1", "-3"),
        ("call_2", "14"),
    ]


def test_openai_inline_think_removed() -> None:
    records = list(convert(DATA / "openai/tricky.jsonl"))

    assert records[2].completion == {"role": "assistant", "content": "Hi again!"}


def test_hermes_tags_parsed() -> None:
    conversion = convert(DATA / "sharegpt/hermes.jsonl")
    first, second = list(conversion)

    calls = first.completion["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_stock_price", "get_news"]
    assert first.completion["content"] == ""
    results = second.prompt[3:]
    assert [m["tool_call_id"] for m in results] == [c["id"] for c in calls]
    assert json.loads(results[1]["content"]) == {"headline": "ACME ships anvils"}
    assert conversion.report.reasoning_removed == 1
    # Schemas inside the system prompt stay there; no tools are added to the record.
    assert first.tools is None
    assert second.completion["content"].startswith("ACME trades at 12.5")


def test_hermes_tools_block_checks_calls() -> None:
    conversion = convert(DATA / "sharegpt/hermes.jsonl")
    records = list(conversion)

    # The system prompt names <tools></tools> in prose before the real block, which lists
    # get_stock_price and get_news only, so the get_weather turn is dropped.
    assert len(records) == 2
    assert conversion.report.dropped == {"unknown_tool": 1}


def test_sharegpt_parallel_calls_by_position() -> None:
    conversion = convert(DATA / "sharegpt/parallel.json")
    records = list(conversion)

    assert conversion.report.format == "sharegpt"
    assert len(records) == 2
    assert conversion.report.dropped == {"duplicate": 1}
    results = records[1].prompt[2:]
    assert [(m["tool_call_id"], m["content"]) for m in results] == [
        ("call_1", '{"eur": 9.2}'),
        ("call_2", '{"eur": 18.4}'),
    ]


def test_grouped_results_and_schema_types() -> None:
    records = list(convert(DATA / "messages_parts/grouped_results.jsonl"))
    schema = records[0].tools[0]["function"]["parameters"]
    results = records[1].prompt[2:]

    assert schema["type"] == "object"
    assert schema["properties"]["radius"]["type"] == "number"
    assert schema["properties"]["unit"]["type"] == "string"
    assert schema["properties"]["samples"] == {"type": "array", "items": {"type": "integer"}}
    assert schema["required"] == ["radius"]  # "unit" was declared "str, optional"
    assert [m["tool_call_id"] for m in results] == ["call_1", "call_2"]
    assert [m["content"] for m in results] == ["3.14", '{"area": 12.57}']


def test_swe_agent_repeated_ids_per_turn() -> None:
    records = list(convert(DATA / "swe_agent/repeated_ids.traj"))

    assert len(records) == 3
    last = records[-1].prompt
    tool_messages = [m for m in last if m["role"] == "tool"]
    assert [m["content"].split("\r\n")[0] for m in tool_messages] == [
        "1 failed",
        "def test(): assert 1 == 2",
    ]
    assert last[1]["content"] == "Fix the failing test."


def test_records_format_last_turn_only() -> None:
    conversion = convert(DATA / "records/prompt_completion.jsonl")
    records = list(conversion)

    # The third record has an earlier assistant message; only its completion is a target.
    assert conversion.report.format == "records"
    assert [r.completion["content"] for r in records] == ["4", "Rome."]
    assert conversion.report.dropped == {"duplicate": 1}


def test_records_roundtrip(tmp_path: Path) -> None:
    records = list(convert(DATA / "openai/tricky.jsonl"))
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r.to_json()) + "\n" for r in records))

    again = list(convert(path))

    assert again == records


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("claude_code/split_message.jsonl", "claude_code"),
        ("openai/tricky.jsonl", "openai"),
        ("sharegpt/hermes.jsonl", "sharegpt"),
        ("sharegpt/parallel.json", "sharegpt"),
        ("messages_parts/grouped_results.jsonl", "messages_parts"),
        ("swe_agent/repeated_ids.traj", "swe_agent"),
        ("records/prompt_completion.jsonl", "records"),
    ],
)
def test_detection_names_format(path: str, expected: str) -> None:
    conversion = convert(DATA / path)
    list(conversion)

    assert conversion.report.format == expected
    assert conversion.report.to_dict()["format"] == expected


def test_detect_format_values() -> None:
    assert detect_format({"messages": [{"role": "user", "content": "hi"}]}) == "openai"
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"history": []}) == "swe_agent"
    assert detect_format({"text": "plain"}) is None


def test_format_names_resolved() -> None:
    assert resolve_format("hermes") == "sharegpt"
    assert resolve_format("auto") is None
    assert resolve_format("SWE-agent") == "swe_agent"
    with pytest.raises(ValueError, match="supported formats: claude_code"):
        resolve_format("alpaca")
    assert set(FORMATS) >= {"claude_code", "openai", "sharegpt", "swe_agent"}


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    path = tmp_path / "multi.jsonl"
    path.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                    {"role": "assistant", "content": "d"},
                ]
            }
        )
        + "\n"
    )

    assert len(list(convert(path))) == 2
    assert len(list(convert(path, format="records"))) == 1


def test_unknown_format_name_rejected() -> None:
    with pytest.raises(IngestError, match="unknown format 'alpaca'"):
        convert(DATA / "openai/tricky.jsonl", format="alpaca")


def test_swe_agent_without_command_docs() -> None:
    records = list(convert(DATA / "swe_agent/repeated_ids.traj"))

    assert all(record.tools is None for record in records)


def test_lone_think_end_removed(tmp_path: Path) -> None:
    path = tmp_path / "qwen.jsonl"
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "Adding two and two.\n</think>\n\n4"},
    ]
    path.write_text(json.dumps({"messages": messages}) + "\n")

    conversion = convert(path)
    [record] = list(conversion)

    assert record.completion["content"] == "4"
    assert conversion.report.reasoning_removed == 1


def test_trailing_think_tag_dropped(tmp_path: Path) -> None:
    path = tmp_path / "stray.jsonl"
    messages = [
        {"role": "user", "content": "Status?"},
        {"role": "assistant", "content": "All systems run.\n</think>"},
    ]
    path.write_text(json.dumps({"messages": messages}) + "\n")

    conversion = convert(path)
    [record] = list(conversion)

    assert record.completion["content"] == "All systems run."
    assert conversion.report.reasoning_removed == 0
