"""Token lengths and the teacher-prompt limit, with the tiny Qwen3.5 tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from sdft.config import SDFTConfig
from sdft.data.records import Record
from sdft.ingest import convert, make_length_function
from sdft.ingest.tokens import _estimate
from sdft.prompts import PromptBuilder

TRACES = Path("../shared/data/traces")
DATA = Path(__file__).parent.parent / "data" / "traces"


@pytest.fixture(scope="module")
def tokenizer(tiny_qwen3_5_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(tiny_qwen3_5_dir), local_files_only=True)


def test_lengths_match_trainer_prompts(tokenizer: Any) -> None:
    conversion = convert(TRACES / "openai_chat/drone_tools_head.jsonl", tokenizer=tokenizer)
    records = list(conversion)
    builder = PromptBuilder(tokenizer, SDFTConfig())

    lengths = conversion.report.token_lengths
    assert len(lengths["teacher_prompt"]) == len(records) == 8
    for index, record in enumerate(records):
        prompts = builder.build(record)
        assert lengths["student_prompt"][index] == len(prompts.student)
        assert lengths["teacher_prompt"][index] == len(prompts.teacher)
        assert lengths["expert_turn"][index] == len(prompts.expert)


def test_long_teacher_prompts_dropped(tokenizer: Any) -> None:
    path = TRACES / "claude_code/session_coverage_fix.jsonl"
    measured = convert(path, tokenizer=tokenizer)
    list(measured)
    teacher = measured.report.token_lengths["teacher_prompt"]
    limit = sorted(teacher)[len(teacher) // 2]

    limited = convert(path, tokenizer=tokenizer, max_teacher_prompt_tokens=limit)
    kept_records = list(limited)

    too_long = sum(1 for value in teacher if value > limit)
    assert too_long > 0
    assert limited.report.dropped == {"teacher_prompt_too_long": too_long}
    assert len(kept_records) == 14 - too_long


def test_percentiles_in_report(tokenizer: Any) -> None:
    conversion = convert(TRACES / "claude_code/session_coverage_fix.jsonl", tokenizer=tokenizer)
    list(conversion)

    stats = conversion.report.to_dict()["token_lengths"]
    teacher = sorted(conversion.report.token_lengths["teacher_prompt"])
    assert set(stats) == {"student_prompt", "teacher_prompt", "expert_turn"}
    assert stats["teacher_prompt"]["max"] == teacher[-1]
    assert stats["teacher_prompt"]["p50"] == teacher[6]  # nearest rank of 14 values
    assert stats["teacher_prompt"]["p50"] <= stats["teacher_prompt"]["p90"]


def test_estimate_bounds_trainer_count(tokenizer: Any) -> None:
    record = next(iter(convert(TRACES / "openai_chat/drone_tools_head.jsonl")))

    estimate = _estimate(tokenizer, SDFTConfig())(record)
    exact = make_length_function(tokenizer)(record)

    assert estimate["student_prompt"] == exact["student_prompt"]
    assert estimate["teacher_prompt"] > estimate["student_prompt"] + estimate["expert_turn"]
    assert abs(estimate["teacher_prompt"] - exact["teacher_prompt"]) < 0.1 * exact["teacher_prompt"]


def test_custom_length_function() -> None:
    def by_messages(record: Record) -> dict[str, int]:
        size = len(record.prompt)
        return {"student_prompt": size, "expert_turn": 1, "teacher_prompt": size + 1}

    conversion = convert(
        DATA / "sharegpt/hermes.jsonl",
        teacher_prompt_length=by_messages,
        max_teacher_prompt_tokens=3,
    )
    records = list(conversion)

    # The first turn has 2 messages before it (3 with the turn); the second has 4.
    assert len(records) == 1
    assert conversion.report.dropped == {"teacher_prompt_too_long": 1, "unknown_tool": 1}
