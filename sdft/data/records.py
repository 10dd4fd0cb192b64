"""SDFT training records: one conversation prefix, one expert assistant turn, optional tools.

Two JSONL conventions are accepted, one object per line:

- conversational prompt/completion, as TRL uses it:
  `{"prompt": [messages], "completion": [one assistant message], "tools": [schemas]}`
- OpenAI fine-tuning chat: `{"messages": [..., assistant message], "tools": [schemas]}`,
  where the final assistant message is the expert turn.

Messages follow the OpenAI / Hugging Face chat convention. Tool-call `arguments` are
normalised to a JSON object, whether they arrive as an object, a JSON string, or a JSON
string encoded twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Message = dict[str, Any]

ROLES = ("system", "user", "assistant", "tool")


class RecordError(ValueError):
    """An invalid dataset line; `line` is 1-based."""

    def __init__(self, line: int, reason: str):
        self.line = line
        self.reason = reason
        super().__init__(f"line {line}: {reason}")


@dataclass(frozen=True)
class Record:
    """One training example: the student gets `prompt`, the teacher also `completion`."""

    prompt: list[Message]
    completion: Message
    tools: list[dict[str, Any]] | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"prompt": self.prompt, "completion": [self.completion]}
        if self.tools:
            data["tools"] = self.tools
        return data


def parse_record(obj: Any) -> Record:
    """Validate one decoded JSON object and return it as a normalised Record.

    Raises ValueError with a reason that names the offending field.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")

    tools = _parse_tools(obj.get("tools"))
    if "prompt" in obj or "completion" in obj:
        prompt = _parse_messages(obj.get("prompt"), "prompt")
        completion_list = obj.get("completion")
        if isinstance(completion_list, dict):
            completion_list = [completion_list]
        completion = _parse_messages(completion_list, "completion")
        if len(completion) != 1:
            raise ValueError(
                f"completion: expected exactly one assistant message, got {len(completion)}"
            )
        expert = completion[0]
    elif "messages" in obj:
        messages = _parse_messages(obj["messages"], "messages")
        prompt, expert = messages[:-1], messages[-1]
    else:
        raise ValueError(
            "expected either 'prompt' and 'completion' or 'messages' "
            f"(found keys: {', '.join(sorted(obj)) or 'none'})"
        )

    if expert["role"] != "assistant":
        raise ValueError(
            f"the expert turn must be an assistant message, got role {expert['role']!r}"
        )
    if not _has_text(expert) and not expert.get("tool_calls"):
        raise ValueError("the expert turn has neither text content nor tool calls")
    if not prompt:
        raise ValueError("the conversation before the expert turn is empty")
    if prompt[-1]["role"] == "assistant":
        raise ValueError("the conversation before the expert turn ends with an assistant message")
    return Record(prompt=prompt, completion=expert, tools=tools)


def iter_records(lines: Iterable[str | bytes], *, start_line: int = 1) -> Iterator[Record]:
    """Parse JSONL lines lazily. Blank lines are skipped; the first invalid line raises
    RecordError with its line number."""
    for line_no, raw in enumerate(lines, start=start_line):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RecordError(line_no, f"invalid UTF-8 at byte {exc.start}") from exc
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise RecordError(line_no, f"invalid JSON: {exc.msg} at column {exc.colno}") from exc
        try:
            yield parse_record(obj)
        except ValueError as exc:
            raise RecordError(line_no, str(exc)) from exc


def validate_lines(
    lines: Iterable[str | bytes], *, max_errors: int = 50
) -> tuple[int, list[RecordError]]:
    """Check every line; return the count of valid records and up to `max_errors` errors."""
    count = 0
    errors: list[RecordError] = []
    for line_no, raw in enumerate(lines, start=1):
        try:
            for _ in iter_records([raw], start_line=line_no):
                count += 1
        except RecordError as exc:
            if len(errors) < max_errors:
                errors.append(exc)
    return count, errors


def read_records(path: str | Path) -> list[Record]:
    with open(path, "rb") as handle:
        return list(iter_records(handle))


def normalize_arguments(arguments: Any) -> dict[str, Any]:
    """Decode tool-call arguments to a JSON object; some exporters encode them twice."""
    value = arguments
    for _ in range(3):
        if not isinstance(value, str):
            break
        if not value.strip():
            return {}
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"tool call arguments are not valid JSON: {exc.msg}") from exc
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"tool call arguments must be a JSON object, got {type(value).__name__}")
    return value


def normalize_message(message: Any, where: str) -> Message:
    if not isinstance(message, dict):
        raise ValueError(f"{where}: expected a message object, got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES:
        raise ValueError(f"{where}.role: expected one of {', '.join(ROLES)}, got {role!r}")

    out: Message = {"role": role, "content": _normalize_content(message.get("content"), where)}
    if role == "assistant":
        calls = message.get("tool_calls") or []
        if not isinstance(calls, list):
            raise ValueError(f"{where}.tool_calls: expected a list")
        if calls:
            out["tool_calls"] = [
                _normalize_tool_call(c, f"{where}.tool_calls[{i}]") for i, c in enumerate(calls)
            ]
        reasoning = message.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            out["reasoning_content"] = reasoning
    if role == "tool":
        if message.get("tool_call_id") is not None:
            out["tool_call_id"] = str(message["tool_call_id"])
        if message.get("name"):
            out["name"] = str(message["name"])
    return out


def _normalize_content(content: Any, where: str) -> str | list[dict[str, Any]]:
    """Return the text of a message, or a list of parts when it has images.

    Image parts (`{"type": "image", "image": url}`, written by `sdft dataset convert` for
    vision models) keep the list form that vision chat templates expect, text first.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        images: list[str] = []
        for i, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text":
                texts.append(str(part.get("text", "")))
            elif (
                isinstance(part, dict)
                and part.get("type") == "image"
                and isinstance(part.get("image"), str)
            ):
                images.append(part["image"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(
                    f"{where}.content[{i}]: unsupported content part {kind!r}; "
                    "convert the trace with `sdft dataset convert` first"
                )
        text = "".join(texts)
        if not images:
            return text
        parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
        return parts + [{"type": "image", "image": url} for url in images]
    raise ValueError(f"{where}.content: expected a string or a list of text parts")


def _normalize_tool_call(call: Any, where: str) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise ValueError(f"{where}: expected an object")
    function = call.get("function", call)
    if (
        not isinstance(function, dict)
        or not isinstance(function.get("name"), str)
        or not function["name"]
    ):
        raise ValueError(f"{where}.function.name: missing tool name")
    try:
        arguments = normalize_arguments(function.get("arguments"))
    except ValueError as exc:
        raise ValueError(f"{where}.function.arguments: {exc}") from exc
    out: dict[str, Any] = {
        "type": "function",
        "function": {"name": function["name"], "arguments": arguments},
    }
    if call.get("id") is not None:
        out["id"] = str(call["id"])
    return out


def _parse_messages(value: Any, where: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list of messages")
    return [normalize_message(m, f"{where}[{i}]") for i, m in enumerate(value)]


def _parse_tools(value: Any) -> list[dict[str, Any]] | None:
    if value is None or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"tools: not valid JSON: {exc.msg}") from exc
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ValueError("tools: expected a list of tool schemas")
    tools = []
    for i, tool in enumerate(value):
        schema = tool.get("function", tool)
        if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
            raise ValueError(f"tools[{i}]: missing function name")
        tools.append({"type": "function", "function": schema})
    return tools


def _has_text(message: Message) -> bool:
    content = message.get("content", "")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if p.get("type") == "text")
    return bool(content.strip())
