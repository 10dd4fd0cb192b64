"""Every real trace sample converts with exactly the counts established by reading it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdft.data.records import parse_record
from sdft.ingest import convert

TRACES = Path("../shared/data/traces")

# (file, format, records, conversations, dropped by reason, non-dialogue lines skipped)
CASES = [
    pytest.param(
        # One user prompt, then one assistant message (msg_01MKH…) written over five lines:
        # an empty text block, a signed thinking block, a text block and two parallel tool
        # calls (Bash, Glob), with a hook progress line between the calls. The user rejects
        # both calls. An interruption notice and two /model local-command lines follow,
        # and none of them is dialogue, so the single turn is the only record.
        "claude_code/session_short.jsonl",
        "claude_code",
        1,
        1,
        {},
        {
            "file_history_snapshot": 1,
            "progress": 3,
            "interruption": 1,
            "system_local_command": 2,
        },
        id="claude_code_short",
    ),
    pytest.param(
        # 14 assistant messages (by message.id) after one user request. The next assistant
        # message replies to each of the two `isMeta` stop-hook feedback lines, so they stay
        # as user messages. The first line is a queue operation.
        "claude_code/session_coverage_fix.jsonl",
        "claude_code",
        14,
        1,
        {},
        {"queue_operation": 1},
        id="claude_code_coverage_fix",
    ),
    pytest.param(
        # 88 lines: 2 file-history snapshots and 72 progress lines (some embed subagent
        # messages) are skipped. The dialogue is one user message and 4 assistant
        # messages: two Bash calls over 4 lines, one Bash call, thinking + Bash, and
        # text + a Task call whose result was cut off (the turn itself is complete).
        "claude_code/session_progress_heavy_head.jsonl",
        "claude_code",
        4,
        1,
        {},
        {"file_history_snapshot": 2, "progress": 72},
        id="claude_code_progress_heavy",
    ),
    pytest.param(
        # 8 records, each a system and a user message and one assistant tool call. The
        # calls repeat, but no two user texts are the same, so nothing is a duplicate.
        "openai_chat/drone_tools_head.jsonl",
        "openai",
        8,
        8,
        {},
        {},
        id="openai_drone",
    ),
    pytest.param(
        # 48 conversations with 160 gpt and function_call turns in all. Every call names
        # a tool of its record, no turn is empty, and no first message repeats.
        "sharegpt/glaive_toolcall_zh_head.json",
        "sharegpt",
        160,
        48,
        {},
        {},
        id="sharegpt_glaive",
    ),
    pytest.param(
        # 112 assistant turns in 50 conversations. Lines 12, 17, 30 and 32 share the
        # prompt, the tools and the `extract` call and differ only in their reasoning,
        # which is removed, so three of the four are duplicates.
        "messages_tools/reason_tool_use_50.jsonl",
        "messages_parts",
        109,
        50,
        {"duplicate": 3},
        {},
        id="messages_parts_reasoning",
    ),
    pytest.param(
        # One object wrapping BEFORE and AFTER, two assistant turns each. The last turn of
        # each has no content and no call (AFTER's call is written inside its reasoning
        # text, which is not parsed), and AFTER's first turn repeats BEFORE's call with
        # another id, so it is a duplicate.
        "messages_tools/rerollout_with_thinking.json",
        "openai",
        1,
        2,
        {"empty_turn": 2, "duplicate": 1},
        {},
        id="rerollout_wrapper",
    ),
    pytest.param(
        # 11 action messages in `history`, each with thought text and one tool call.
        "agent_trajectories/sweagent_function_calling.traj",
        "swe_agent",
        11,
        1,
        {},
        {},
        id="swe_agent",
    ),
]


@pytest.mark.parametrize(("name", "fmt", "records", "conversations", "dropped", "skipped"), CASES)
def test_shared_trace_counts(
    name: str,
    fmt: str,
    records: int,
    conversations: int,
    dropped: dict[str, int],
    skipped: dict[str, int],
) -> None:
    conversion = convert(TRACES / name)
    converted = list(conversion)
    report = conversion.report.to_dict()

    assert report["format"] == fmt
    assert len(converted) == records
    assert report["records"] == records
    assert report["conversations"] == conversations
    assert report["dropped"] == dropped
    assert report["skipped_events"] == skipped
    assert report["turns"] == records + sum(dropped.values())
    assert report["error_count"] == 0
    for record in converted:
        assert parse_record(record.to_json()) == record


def test_claude_code_short_record_content() -> None:
    [record] = list(convert(TRACES / "claude_code/session_short.jsonl"))

    assert record.prompt == [{"role": "user", "content": "mix phx.server doesnt seem to start"}]
    assert record.completion["content"] == (
        "Let me check the project structure and try running the server to see the error."
    )
    names = [call["function"]["name"] for call in record.completion["tool_calls"]]
    assert names == ["Bash", "Glob"]
    assert "reasoning_content" not in record.completion
    assert "Phoenix" not in str(record.to_json())


def test_drone_double_encoded_arguments() -> None:
    records = list(convert(TRACES / "openai_chat/drone_tools_head.jsonl"))

    arguments = [r.completion["tool_calls"][0]["function"]["arguments"] for r in records]
    assert arguments[0] == {"altitude": 100}
    assert arguments[2] == {"location": "current"}
    assert all(isinstance(a, dict) for a in arguments)
    assert len(records[0].tools) == 16


def test_reasoning_parts_grouped_results_split() -> None:
    records = list(convert(TRACES / "messages_tools/reason_tool_use_50.jsonl"))

    # Line 3: one tool message contains the results of both circle_area calls.
    with_results = [
        r for r in records if r.prompt[-1]["role"] == "tool" and "circle" in str(r.prompt)
    ]
    prompt = with_results[0].prompt
    tool_messages = [m for m in prompt if m["role"] == "tool"]
    call_ids = [c["id"] for c in prompt[2]["tool_calls"]]
    assert len(tool_messages) == 2
    assert [m["tool_call_id"] for m in tool_messages] == call_ids
    assert "7.0686" in tool_messages[0]["content"]
    assert "28.2743" in tool_messages[1]["content"]


def test_reasoning_parts_schema_types_normalized() -> None:
    first = next(iter(convert(TRACES / "messages_tools/reason_tool_use_50.jsonl")))
    schema = first.tools[0]["function"]["parameters"]

    # The source declares "dict" and "str", with `required` beside `parameters`.
    assert schema["type"] == "object"
    assert schema["properties"]["identifier"]["type"] == "string"
    assert schema["required"] == ["identifier"]


def test_sweagent_keeps_crlf_output() -> None:
    records = list(convert(TRACES / "agent_trajectories/sweagent_function_calling.traj"))
    last = records[-1]
    tool_messages = [m for m in last.prompt if m["role"] == "tool"]

    assert last.completion["tool_calls"][0]["function"]["name"] == "submit"
    assert len(tool_messages) == 10
    assert "\r\n" in tool_messages[0]["content"]


def test_sweagent_tools_from_command_docs() -> None:
    first = next(iter(convert(TRACES / "agent_trajectories/sweagent_function_calling.traj")))
    names = [tool["function"]["name"] for tool in first.tools]
    by_name = {tool["function"]["name"]: tool["function"] for tool in first.tools}

    assert names == [
        "bash", "goto", "open", "create", "scroll_up", "scroll_down", "find_file",
        "search_dir", "search_file", "edit", "insert", "submit",
    ]  # fmt: skip
    assert by_name["open"]["parameters"]["required"] == ["path"]
    assert by_name["open"]["parameters"]["properties"]["line_number"]["type"] == "integer"
    assert by_name["edit"]["parameters"]["properties"]["replace-all"]["type"] == "boolean"
    assert by_name["submit"]["parameters"]["properties"] == {}


def test_reasoning_parts_stray_think_tags() -> None:
    conversion = convert(TRACES / "messages_tools/reason_tool_use_50.jsonl")
    records = list(conversion)
    texts = [r.completion["content"] for r in records]

    # Line 6: reasoning leaked into the text part and ends with "</think>" before the
    # reply, so only the reply stays. Line 7: the reply ends with a stray "</think>".
    assert any(t.startswith("I'm sorry, but the email scheduling tool") for t in texts)
    assert any(t.endswith("Let me know if you have any other questions!") for t in texts)
    assert not any("think>" in t for t in texts)
    # 112 reasoning parts, plus the reasoning before line 6's lone "</think>".
    assert conversion.report.reasoning_removed == 113
