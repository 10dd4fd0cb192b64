"""Prompt rendering: only the teacher prompt contains the expert turn, placed by its layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from sdft.config import SDFTConfig
from sdft.data.records import Record, parse_record, read_records
from sdft.prompts import PromptBuilder, PromptError, strip_reasoning

DRONE_TRACES = Path("../shared/data/traces/openai_chat/drone_tools_head.jsonl")


@pytest.fixture(scope="module")
def tokenizer(tiny_qwen3_5_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_qwen3_5_dir)


@pytest.fixture(scope="module")
def drone_records() -> list[Record]:
    return read_records(DRONE_TRACES)


def chat_record(question: str, answer: str, **expert_fields) -> Record:
    return parse_record(
        {
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer, **expert_fields},
            ]
        }
    )


def test_teacher_block_holds_expert_turn(tokenizer) -> None:
    record = chat_record("What is the capital of Peru?", "LIMA-7781 is the code answer.")
    prompts = PromptBuilder(tokenizer, SDFTConfig()).build(record, 0)

    assert "LIMA-7781" not in prompts.student.text
    assert "<expert_reference>\nLIMA-7781 is the code answer.\n</expert_reference>" in (
        prompts.teacher.text
    )
    # The block is appended to the final user message, then comes the generation prompt.
    assert prompts.teacher.text.count("<|im_start|>user") == 1
    assert prompts.teacher.text.endswith(prompts.student.text[-len("<|im_start|>assistant\n") :])
    assert "in your own words" in prompts.teacher.text
    assert prompts.reference == "LIMA-7781 is the code answer."


def test_token_ids_match_text(tokenizer) -> None:
    record = chat_record("Say hi.", "Hi!")
    prompts = PromptBuilder(tokenizer, SDFTConfig()).build(record, 0)

    for encoded in (prompts.student, prompts.teacher):
        assert tokenizer.decode(encoded.token_ids) == encoded.text
    # The expert tokens continue the student prompt and stop at the end-of-turn token.
    full = tokenizer.decode(prompts.student.token_ids + prompts.expert.token_ids)
    assert full.endswith("Hi!<|im_end|>")
    assert prompts.expert.token_ids[-1] == tokenizer.eos_token_id
    assert prompts.expert.token_ids.count(tokenizer.eos_token_id) == 1


def test_tool_calls_in_template_format(tokenizer, drone_records) -> None:
    builder = PromptBuilder(tokenizer, SDFTConfig(), drone_records)
    prompts = builder.build(drone_records[0], 0)

    expected_call = '<tool_call>\n{"name": "takeoff_drone", "arguments": {"altitude": 100}}\n'
    assert prompts.reference == expected_call + "</tool_call>"
    assert prompts.expert.text.startswith(expected_call)
    assert expected_call in prompts.teacher.text
    assert "takeoff_drone" in prompts.student.text  # listed among the 16 tool schemas
    assert expected_call not in prompts.student.text
    # All 16 schemas reach both prompts through the template's tools section.
    for tool in drone_records[0].tools or []:
        schema = json.dumps(tool, ensure_ascii=False)
        assert schema in prompts.student.text
        assert schema in prompts.teacher.text


def test_reasoning_excluded(tokenizer) -> None:
    record = chat_record(
        "Add 2 and 3.",
        "<think>SECRET-SCRATCH</think>The sum is 5.",
        reasoning_content="PRIVATE-PLAN",
    )
    for enable_thinking in (False, True):
        builder = PromptBuilder(tokenizer, SDFTConfig(enable_thinking=enable_thinking))
        prompts = builder.build(record, 0)
        for text in (prompts.teacher.text, prompts.expert.text, prompts.reference):
            assert "SECRET-SCRATCH" not in text
            assert "PRIVATE-PLAN" not in text
        assert prompts.reference == "The sum is 5."


def test_strip_reasoning_keeps_answer() -> None:
    message = {
        "role": "assistant",
        "content": "<think>a\nb</think>\nAnswer.",
        "reasoning_content": "plan",
    }
    assert strip_reasoning(message) == {"role": "assistant", "content": "Answer."}


def test_tool_result_gets_new_user_turn(tokenizer) -> None:
    record = parse_record(
        {
            "messages": [
                {"role": "user", "content": "Weather in Oslo?"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"function": {"name": "weather", "arguments": {"city": "Oslo"}}}
                    ],
                },
                {"role": "tool", "content": "-3 C, snow"},
                {"role": "assistant", "content": "It is -3 C and snowing in Oslo."},
            ]
        }
    )
    prompts = PromptBuilder(tokenizer, SDFTConfig()).build(record, 0)

    tail = prompts.teacher.text.split("</tool_response><|im_end|>\n", 1)[1]
    assert tail.startswith("<|im_start|>user\n<expert_reference>\nIt is -3 C and snowing")


def test_demonstration_layout_replays_expert(tokenizer) -> None:
    records = [
        chat_record("Capital of Peru?", "ANSWER: Lima"),
        chat_record("Capital of Chile?", "ANSWER: Santiago"),
        chat_record("Capital of Bolivia?", "ANSWER: Sucre"),
    ]
    config = SDFTConfig(teacher_layout="demonstration", demonstration_examples=1)
    builder = PromptBuilder(tokenizer, config, records)
    prompts = builder.build(records[0], 0)
    teacher = prompts.teacher.text

    own_turn = "<|im_start|>user\nCapital of Peru?<|im_end|>\n<|im_start|>assistant\nANSWER: Lima"
    assert own_turn in teacher
    # The real question comes after the demonstrations, and the teacher answers it.
    assert teacher.rindex("Capital of Peru?") > teacher.index("ANSWER: Lima")
    assert teacher.endswith(
        "<|im_start|>user\nCapital of Peru?<|im_end|>\n"
        + "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert "<expert_reference>" not in teacher
    # One other record is shown, and the system message stays first and single.
    others = [q for q in ("Chile", "Bolivia") if q in teacher]
    assert len(others) == 1
    assert teacher.count("You are terse.") == 1
    assert teacher.startswith("<|im_start|>system\nYou are terse.")
    # The choice is fixed by the seed and the index.
    assert builder.build(records[0], 0).teacher.text == teacher
    assert "ANSWER: Lima" not in prompts.student.text


def test_demonstration_choice_follows_seed(tokenizer) -> None:
    records = [chat_record(f"Question {i}?", f"Answer {i}.") for i in range(8)]
    chosen = set()
    for seed in range(6):
        config = SDFTConfig(teacher_layout="demonstration", demonstration_examples=2, seed=seed)
        teacher = PromptBuilder(tokenizer, config, records).build(records[0], 0).teacher.text
        shown = tuple(i for i in range(1, 8) if f"Answer {i}." in teacher)
        assert len(shown) == 2
        chosen.add(shown)
    assert len(chosen) > 1


def test_template_without_tool_support(tmp_path: Path, tokenizer, drone_records) -> None:
    # A ChatML template that prints only role and content, as SmolLM2's does.
    plain = (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>\\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}{% endif %}"
    )
    tokenizer.save_pretrained(tmp_path)
    plain_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    plain_tokenizer.chat_template = plain

    builder = PromptBuilder(plain_tokenizer, SDFTConfig(), drone_records)
    prompts = builder.build(drone_records[2], 2)

    assert not builder.template_renders_tool_calls
    assert not builder.template_renders_tools
    assert '"name": "land_drone", "arguments": {"location": "current"}' in prompts.reference
    assert "<tools>" in prompts.student.text
    assert "reject_request" in prompts.student.text


def test_missing_chat_template_rejected(tmp_path: Path, tokenizer) -> None:
    tokenizer.save_pretrained(tmp_path)
    bare = AutoTokenizer.from_pretrained(tmp_path)
    bare.chat_template = None
    with pytest.raises(PromptError, match="no chat template"):
        PromptBuilder(bare, SDFTConfig())
