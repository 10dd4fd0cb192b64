"""Token lengths of a record under a model's tokenizer and chat template."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sdft.config import SDFTConfig
from sdft.data.records import Message, Record

LengthFunction = Callable[[Record], dict[str, int]]


def render_expert_turn(message: Message) -> str:
    """Render the expert turn as reference text: its text, then each call as a
    `<tool_call>` block in the JSON layout Qwen chat templates use."""
    content = message.get("content", "")
    if isinstance(content, list):
        content = "".join(part.get("text", "") for part in content if part.get("type") == "text")
    pieces = [content] if content else []
    for call in message.get("tool_calls") or []:
        function = call["function"]
        body = json.dumps(
            {"name": function["name"], "arguments": function["arguments"]}, ensure_ascii=False
        )
        pieces.append(f"<tool_call>\n{body}\n</tool_call>")
    return "\n".join(pieces)


def make_length_function(tokenizer: Any, config: SDFTConfig | None = None) -> LengthFunction:
    """Return a function that measures `student_prompt`, `expert_turn` and `teacher_prompt`.

    With the trainer's prompt builder (`sdft.prompts`) the three are the exact token
    counts of the prompts training renders, under `config` (defaults when None). The
    function raises ValueError for a record the chat template cannot render.
    """
    config = config or SDFTConfig()
    try:
        from sdft.prompts import PromptBuilder
    except ImportError:
        return _estimate(tokenizer, config)
    builder = PromptBuilder(tokenizer, config)

    def lengths(record: Record) -> dict[str, int]:
        prompts = builder.build(record)
        return {
            "student_prompt": len(prompts.student),
            "expert_turn": len(prompts.expert),
            "teacher_prompt": len(prompts.teacher),
        }

    return lengths


def _estimate(tokenizer: Any, config: SDFTConfig) -> LengthFunction:
    """Estimate the teacher prompt as student prompt + expert turn + instruction tokens.

    NOTE: used only where `sdft.prompts` is missing (the library without the trainer);
    it can differ from the trainer's count by the tokens the template adds per turn.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the tokenizer has no chat template; use the tokenizer of a chat model "
            "(its tokenizer_config.json must define chat_template)"
        )
    overhead = _count(tokenizer, config.teacher_instruction.replace("{reference}", ""))

    def lengths(record: Record) -> dict[str, int]:
        prompt_text = tokenizer.apply_chat_template(
            record.prompt,
            tools=record.tools,
            add_generation_prompt=True,
            tokenize=False,
            enable_thinking=config.enable_thinking,
        )
        student = _count(tokenizer, prompt_text)
        expert = _count(tokenizer, render_expert_turn(record.completion))
        return {
            "student_prompt": student,
            "expert_turn": expert,
            "teacher_prompt": student + expert + overhead,
        }

    return lengths


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
