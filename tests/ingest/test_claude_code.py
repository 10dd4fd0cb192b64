"""Claude Code session logs: message assembly and what counts as dialogue."""

from __future__ import annotations

import json
from pathlib import Path

from sdft.ingest import convert

DATA = Path(__file__).parent.parent / "data" / "traces" / "claude_code"


def test_split_message_becomes_one_turn() -> None:
    conversion = convert(DATA / "split_message.jsonl")
    first, second = list(conversion)

    # Five lines of msg_A (blank text, thinking, text, two calls) make one turn, even
    # though the result of the first call arrives before the second call's line.
    assert first.prompt == [{"role": "user", "content": "Which Python files are in src and tests?"}]
    assert first.completion["content"] == "I'll list both folders."
    assert [c["id"] for c in first.completion["tool_calls"]] == ["toolu_1", "toolu_2"]
    results = second.prompt[2:]
    assert [m["role"] for m in results] == ["tool", "tool"]
    assert [m["tool_call_id"] for m in results] == ["toolu_1", "toolu_2"]
    assert [m["content"] for m in results] == ["src/app.py", "tests/test_app.py"]
    assert conversion.report.reasoning_removed == 1
    assert conversion.report.skipped_events == {"progress": 1, "queue_operation": 1}


def test_thinking_never_in_output() -> None:
    output = json.dumps([r.to_json() for r in convert(DATA / "split_message.jsonl")])

    assert "both folders at once" not in output
    assert "signature" not in output


def test_non_dialogue_lines_skipped() -> None:
    conversion = convert(DATA / "non_dialogue.jsonl")
    records = list(conversion)

    assert conversion.report.skipped_events == {
        "file_history_snapshot": 1,
        "local_command": 3,  # the caveat and two command lines written as user lines
        "system_local_command": 1,
        "sidechain": 1,
        "interruption": 1,
        "synthetic_message": 1,
        "repeated_event": 1,
        "summary": 1,
    }
    assert len(records) == 3
    contexts = [json.dumps(r.prompt) for r in records]
    assert not any("Subagent" in c or "Caveat" in c or "interrupted" in c for c in contexts)
    assert not any("No response requested" in c for c in contexts)


def test_answered_meta_line_kept() -> None:
    records = list(convert(DATA / "non_dialogue.jsonl"))

    # The last turn replies to the stop-hook feedback, so the feedback ends its context.
    last = records[-1]
    assert last.prompt[-1] == {
        "role": "user",
        "content": "Stop hook feedback:\nCommit your changes before stopping.",
    }
    assert last.completion["content"] == "I'll commit the changes first."


def test_compaction_starts_new_conversation() -> None:
    conversion = convert(DATA / "compaction.jsonl")
    before, after = list(conversion)

    assert conversion.report.conversations == 2
    assert before.prompt == [{"role": "user", "content": "Refactor the parser."}]
    assert len(after.prompt) == 1
    assert after.prompt[0]["content"].startswith("This session is being continued")
    assert "Refactor the parser." not in json.dumps(after.prompt)


def test_image_result_dropped_without_vision() -> None:
    conversion = convert(DATA / "image_result.jsonl")
    records = list(conversion)

    assert len(records) == 1
    assert conversion.report.dropped == {"has_images": 1}


def test_image_result_kept_with_vision() -> None:
    records = list(convert(DATA / "image_result.jsonl", has_vision=True))

    assert len(records) == 2
    tool = records[1].prompt[-1]
    assert tool["role"] == "tool"
    assert tool["content"] == [{"type": "image", "image": "data:image/png;base64,iVBORw0KGgo="}]


def test_sessions_kept_apart(tmp_path: Path) -> None:
    lines = (DATA / "split_message.jsonl").read_text().splitlines()
    other = [line.replace('"s1"', '"s9"').replace('"uuid":"', '"uuid":"x') for line in lines]
    merged = tmp_path / "two_sessions.jsonl"
    merged.write_text("\n".join(lines + other) + "\n")

    conversion = convert(merged)
    records = list(conversion)

    assert conversion.report.conversations == 2
    # The second session repeats the first one's dialogue, so its turns are duplicates.
    assert len(records) == 2
    assert conversion.report.dropped == {"duplicate": 2}


def test_meta_lines_kept_when_replied_to() -> None:
    conversion = convert(DATA / "meta_lines.jsonl")
    _, second, third = list(conversion)

    # Two meta lines in a row before a reply both stay, after the tool result.
    assert [m["role"] for m in second.prompt] == ["user", "assistant", "tool", "user", "user"]
    assert second.prompt[-1]["content"] == "Read deploy.log before you reply."
    # A meta line followed by a user message is skipped.
    assert "not a reply" not in json.dumps(third.prompt)
    assert conversion.report.skipped_events == {"meta": 1}
