"""Student and teacher prompts for one SDFT record, rendered with the model's chat template.

- Student prompt: the conversation (and tool schemas) with the generation prompt.
- Expert turn: the record's assistant turn as the template renders it right after the
  student prompt, with private reasoning removed. Its token ids are the cross-entropy
  targets when `lambda_on_policy` < 1, and its text (without the template's end-of-turn
  marker) is the expert reference shown to the teacher.
- Teacher prompt, by `teacher_layout`. `reference_block` puts the expert reference inside
  `config.teacher_instruction` as the final user turn. `demonstration` replays the record's
  own expert turn as an earlier user/assistant exchange, after `demonstration_examples`
  exchanges of other records.

Every prompt is returned as token ids together with its text, for debugging.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sdft.config import SDFTConfig, TeacherLayout
from sdft.data.records import Message, Record

logger = logging.getLogger(__name__)

_THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)
_PROBE_TOOL = "sdft_probe_tool_7f3a"


class PromptError(ValueError):
    """A record that cannot be rendered with the model's chat template."""


@dataclass(frozen=True)
class EncodedText:
    """Token ids together with the text they were encoded from."""

    token_ids: list[int]
    text: str

    def __len__(self) -> int:
        return len(self.token_ids)


@dataclass(frozen=True)
class ExamplePrompts:
    """The prompts of one record.

    `expert` contains the expert turn's tokens as they follow `student`, up to and including
    the first end-of-turn token. `reference` is the expert turn's text as placed in the
    teacher prompt.
    """

    student: EncodedText
    teacher: EncodedText
    expert: EncodedText
    reference: str


def strip_reasoning(message: Message) -> Message:
    """Return a copy of an assistant message without `reasoning_content` or `<think>` blocks."""
    clean = {key: value for key, value in message.items() if key != "reasoning_content"}
    content = clean.get("content")
    if isinstance(content, str):
        clean["content"] = _THINK_BLOCK.sub("", content).strip()
    return clean


class PromptBuilder:
    """Render the student prompt, teacher prompt and expert turn of records.

    `records` is the full dataset: the `demonstration` layout picks its extra example
    turns from it, so build with the record's index in that list. `eos_token_ids` are the
    ids that end an assistant turn; the default is the tokenizer's EOS token.
    """

    def __init__(
        self,
        tokenizer: Any,
        config: SDFTConfig,
        records: Sequence[Record] = (),
        *,
        eos_token_ids: Sequence[int] | None = None,
    ) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise PromptError(
                "the tokenizer has no chat template; SDFT renders prompts with the model's own "
                "template, so use an instruct checkpoint whose tokenizer_config.json sets one"
            )
        self.tokenizer = tokenizer
        self.config = config
        self.records = list(records)
        if eos_token_ids is None:
            eos_token_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.eos_token_ids = frozenset(int(i) for i in eos_token_ids)
        self._special_tokens = sorted(
            {t for t in tokenizer.all_special_tokens if t}, key=len, reverse=True
        )
        self.template_renders_tool_calls = self._probe_tool_calls()
        self.template_renders_tools = self._probe_tools()
        _warn_once(
            not self.template_renders_tool_calls,
            "the chat template drops assistant tool calls; expert tool calls are written "
            "into the message text as <tool_call> JSON lines instead",
        )
        _warn_once(
            not self.template_renders_tools,
            "the chat template ignores tool schemas; they are listed in the system "
            "message as <tools> JSON lines instead",
        )

    # Public API.

    def build(
        self, record: Record, index: int | None = None, *, layout: TeacherLayout | None = None
    ) -> ExamplePrompts:
        """Render all prompts of `record`; `index` is its position in `records`, if it has one.

        Raises PromptError when the template renders the expert turn in a way that does not
        continue the student prompt.
        """
        layout = layout or self.config.teacher_layout
        conversation, tools = self._conversation(record)
        expert_message = self._expert_message(record.completion)

        student_text = self._render(conversation, tools, add_generation_prompt=True)
        student_ids = self._encode(student_text)
        expert_text, expert_ids = self._expert_turn(
            conversation, expert_message, tools, student_text, student_ids
        )
        reference = self._reference_text(expert_text)

        if layout == "reference_block":
            teacher_messages = self._reference_block_messages(conversation, reference)
        elif layout == "demonstration":
            teacher_messages = self._demonstration_messages(record, index, conversation)
        else:
            raise PromptError(
                f"teacher_layout={layout!r} is not supported; use reference_block or demonstration"
            )
        teacher_text = self._render(teacher_messages, tools, add_generation_prompt=True)

        return ExamplePrompts(
            student=EncodedText(student_ids, student_text),
            teacher=EncodedText(self._encode(teacher_text), teacher_text),
            expert=EncodedText(expert_ids, expert_text),
            reference=reference,
        )

    # Rendering.

    def _render(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None,
        *,
        add_generation_prompt: bool,
    ) -> str:
        kwargs: dict[str, Any] = {}
        if tools:
            kwargs["tools"] = tools
        try:
            text = self.tokenizer.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                enable_thinking=self.config.enable_thinking,
                **kwargs,
            )
        except Exception as exc:  # jinja raises its own error types for template problems
            roles = ", ".join(m.get("role", "?") for m in messages)
            raise PromptError(
                f"the chat template failed on a conversation with roles [{roles}]: {exc}"
            ) from exc
        return str(text)

    def _encode(self, text: str) -> list[int]:
        # The rendered text already contains the template's special tokens (BOS included where
        # the template writes one), so the tokenizer must not add its own.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _expert_turn(
        self,
        conversation: list[Message],
        expert_message: Message,
        tools: list[dict[str, Any]] | None,
        student_text: str,
        student_ids: list[int],
    ) -> tuple[str, list[int]]:
        """Return the expert turn's text and token ids as they follow the student prompt."""
        full_text = self._render(
            conversation + [expert_message], tools, add_generation_prompt=False
        )
        if not full_text.startswith(student_text):
            raise PromptError(
                "the chat template renders the expert turn so that it does not start with the "
                "generation prompt, so the expert tokens cannot be placed after the student "
                f"prompt; student prompt ends with {student_text[-80:]!r}, the rendered "
                f"conversation has {full_text[len(student_text) - 80 : len(student_text) + 40]!r}"
            )
        expert_text = full_text[len(student_text) :]

        full_ids = self._encode(full_text)
        if full_ids[: len(student_ids)] == student_ids:
            expert_ids = full_ids[len(student_ids) :]
        else:
            # A BPE merge across the boundary changed the last prompt token. Encoding the
            # expert turn on its own keeps the student prompt's tokens as sampled.
            expert_ids = self._encode(expert_text)

        # Tokens after the end-of-turn token (a newline in ChatML) are never sampled.
        for position, token in enumerate(expert_ids):
            if token in self.eos_token_ids:
                expert_ids = expert_ids[: position + 1]
                break
        if not expert_ids:
            raise PromptError("the expert turn renders to no tokens")
        return expert_text, expert_ids

    def _reference_text(self, expert_text: str) -> str:
        """Strip the end-of-turn markers and an empty thinking block from the expert turn."""
        text = expert_text.strip()
        changed = True
        while changed:
            changed = False
            for token in self._special_tokens:
                if text.endswith(token):
                    text = text[: -len(token)].rstrip()
                    changed = True
        return _THINK_BLOCK.sub("", text).strip()

    # Messages.

    def _conversation(self, record: Record) -> tuple[list[Message], list[dict[str, Any]] | None]:
        """Return the record's conversation and the tools argument for the template."""
        conversation = copy.deepcopy(record.prompt)
        tools = copy.deepcopy(record.tools) if record.tools else None
        if not self.template_renders_tool_calls:
            conversation = [
                self._tool_calls_as_text(m) if m["role"] == "assistant" else m for m in conversation
            ]
        if tools and not self.template_renders_tools:
            conversation = _with_tools_in_system(conversation, tools)
            tools = None
        return conversation, tools

    def _expert_message(self, completion: Message) -> Message:
        message = strip_reasoning(copy.deepcopy(completion))
        if not self.template_renders_tool_calls:
            message = self._tool_calls_as_text(message)
        return message

    def _tool_calls_as_text(self, message: Message) -> Message:
        calls = message.get("tool_calls")
        if not calls:
            return message
        lines = [
            "<tool_call>\n"
            + json.dumps(
                {"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                ensure_ascii=False,
            )
            + "\n</tool_call>"
            for c in calls
        ]
        content = (
            "\n".join([message["content"], *lines]) if message.get("content") else "\n".join(lines)
        )
        out = {key: value for key, value in message.items() if key != "tool_calls"}
        out["content"] = content
        return out

    def _reference_block_messages(
        self, conversation: list[Message], reference: str
    ) -> list[Message]:
        block = self.config.teacher_instruction.replace("{reference}", reference)
        messages = copy.deepcopy(conversation)
        if messages and messages[-1]["role"] == "user":
            messages[-1]["content"] = f"{messages[-1]['content']}\n\n{block}"
        else:
            messages.append({"role": "user", "content": block})
        return messages

    def _demonstration_messages(
        self, record: Record, index: int | None, conversation: list[Message]
    ) -> list[Message]:
        leading_system = 1 if conversation and conversation[0]["role"] == "system" else 0
        messages: list[Message] = conversation[:leading_system]
        for example in [*self._demonstration_records(index), record]:
            example_conversation, _ = self._conversation(example)
            messages.extend(m for m in example_conversation if m["role"] != "system")
            messages.append(self._expert_message(example.completion))
        messages.extend(conversation[leading_system:])
        return messages

    def _demonstration_records(self, index: int | None) -> list[Record]:
        """Pick `demonstration_examples` other records, the same ones for a given seed and index."""
        wanted = self.config.demonstration_examples
        candidates = [i for i in range(len(self.records)) if i != index]
        if wanted == 0 or not candidates:
            return []
        if wanted > len(candidates):
            logger.warning(
                "demonstration_examples=%d but only %d other records exist; using %d",
                wanted,
                len(candidates),
                len(candidates),
            )
        rng = random.Random(f"{self.config.seed}:{index}")
        chosen = rng.sample(candidates, min(wanted, len(candidates)))
        return [self.records[i] for i in chosen]

    # Template probes.

    def _probe_tool_calls(self) -> bool:
        call = {"type": "function", "function": {"name": _PROBE_TOOL, "arguments": {"x": 1}}}
        messages: list[Message] = [
            {"role": "user", "content": "probe"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
        ]
        try:
            text = self._render(messages, None, add_generation_prompt=False)
        except PromptError:
            return False
        return _PROBE_TOOL in text

    def _probe_tools(self) -> bool:
        tool = {
            "type": "function",
            "function": {
                "name": _PROBE_TOOL,
                "description": "probe",
                "parameters": {"type": "object", "properties": {}},
            },
        }
        try:
            text = self._render(
                [{"role": "user", "content": "probe"}], [tool], add_generation_prompt=True
            )
        except PromptError:
            return False
        return _PROBE_TOOL in text


_warned: set[str] = set()


def _warn_once(condition: bool, message: str) -> None:
    # Builders are created per run and per teacher-check layout; one warning per process
    # is enough to explain the fallback.
    if condition and message not in _warned:
        _warned.add(message)
        logger.warning(message)


def _with_tools_in_system(
    conversation: list[Message], tools: list[dict[str, Any]]
) -> list[Message]:
    """List the tool schemas in the system message, for templates that ignore `tools`."""
    schemas = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
    text = (
        "You can call these tools:\n<tools>\n"
        f"{schemas}\n</tools>\n"
        "To call one, reply with a JSON object "
        '{"name": <tool name>, "arguments": <arguments object>} '
        "inside <tool_call></tool_call> tags."
    )
    messages = copy.deepcopy(conversation)
    if messages and messages[0]["role"] == "system":
        messages[0]["content"] = f"{messages[0]['content']}\n\n{text}"
    else:
        messages.insert(0, {"role": "system", "content": text})
    return messages
