"""ShareGPT and Hermes conversations: `{"conversations": [{"from": ..., "value": ...}]}`.

Roles: `human`/`user`, `gpt`/`assistant`, `system`, `function_call` (an assistant turn
whose value is a `{"name", "arguments"}` object or a list of them), and `observation`/
`tool` (a result). Hermes data writes calls as `<tool_call>{...}</tool_call>` inside
assistant text, results as `<tool_response>...</tool_response>` inside a `tool` or
`human` message, and the tool schemas as `<tools>...</tools>` inside the system prompt.
None of these carry call ids, so results are matched to calls by position.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sdft.data.records import Message
from sdft.ingest.conversation import (
    Conversation,
    Parts,
    build_message,
    link_tool_results,
    parse_call_json,
    tool_content,
)
from sdft.ingest.schemas import parse_tools, tool_names

_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "system": "system",
    "function_call": "function_call",
    "observation": "tool",
    "tool": "tool",
    "function_response": "tool",
    "function": "tool",
}
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_TOOL_RESPONSE = re.compile(r"<tool_response>\s*(.*?)\s*</tool_response>", re.DOTALL)
_TOOLS_BLOCK = re.compile(r"<tools>\s*(.*?)\s*</tools>", re.DOTALL)


def convert_sharegpt(obj: Any) -> Conversation:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object with 'conversations', got {type(obj).__name__}")
    entries = obj.get("conversations", obj.get("conversation"))
    if not isinstance(entries, list) or not entries:
        raise ValueError("conversations: expected a non-empty list of messages")
    tools = parse_tools(obj.get("tools"))
    names = tool_names(tools)

    messages: list[Message] = []
    if isinstance(obj.get("system"), str) and obj["system"].strip():
        messages.append({"role": "system", "content": obj["system"]})
    reasoning = 0
    for index, entry in enumerate(entries):
        where = f"conversations[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
        speaker = entry.get("from", entry.get("role"))
        role = _ROLES.get(str(speaker).lower())
        if role is None:
            raise ValueError(f"{where}.from: expected one of {', '.join(_ROLES)}, got {speaker!r}")
        value = entry.get("value", entry.get("content"))

        if role == "system":
            text = tool_content(value)
            messages.append({"role": "system", "content": text})
            if names is None:
                names = _names_in_tools_block(text)
        elif role == "user":
            messages.extend(_user_or_results(tool_content(value)))
        elif role == "assistant":
            message, removed = _assistant(tool_content(value), where)
            reasoning += removed
            messages.append(message)
        elif role == "function_call":
            parts = Parts(tool_calls=parse_call_json(value, f"{where}.value"))
            messages.append(build_message("assistant", parts))
        else:
            messages.extend(_results(value, messages))

    link_tool_results(messages)
    return Conversation(
        messages=messages, tools=tools, tool_names=names, reasoning_removed=reasoning
    )


def _assistant(text: str, where: str) -> tuple[Message, int]:
    parts = Parts()
    for index, block in enumerate(_TOOL_CALL.findall(text)):
        parts.tool_calls.extend(parse_call_json(block, f"{where}.value <tool_call> {index}"))
    remainder = _TOOL_CALL.sub("", text).strip() if parts.tool_calls else text
    parts.texts.append(remainder)
    message = build_message("assistant", parts)
    return message, parts.reasoning


def _user_or_results(text: str) -> list[Message]:
    """Split `<tool_response>` blocks out of a human message into tool results."""
    blocks = _TOOL_RESPONSE.findall(text)
    if not blocks:
        return [{"role": "user", "content": text}]
    out: list[Message] = [{"role": "tool", "content": block} for block in blocks]
    rest = _TOOL_RESPONSE.sub("", text).strip()
    if rest:
        out.append({"role": "user", "content": rest})
    return out


def _results(value: Any, before: list[Message]) -> list[Message]:
    """Turn one observation into tool messages, one per call of the preceding turn."""
    text = tool_content(value)
    blocks = _TOOL_RESPONSE.findall(text)
    if blocks:
        return [{"role": "tool", "content": block} for block in blocks]
    pending = _pending_call_count(before)
    if pending > 1 and text.lstrip().startswith("["):
        try:
            results = json.loads(text)
        except json.JSONDecodeError:
            results = None
        if isinstance(results, list) and len(results) == pending:
            return [{"role": "tool", "content": tool_content(result)} for result in results]
    return [{"role": "tool", "content": text}]


def _pending_call_count(before: list[Message]) -> int:
    answered = 0
    for message in reversed(before):
        if message["role"] == "tool":
            answered += 1
            continue
        if message["role"] == "assistant":
            return len(message.get("tool_calls") or []) - answered
        return 0
    return 0


def _names_in_tools_block(system: str) -> set[str] | None:
    """Read the tool names of a Hermes `<tools>` block: a JSON list or one object per line.

    Hermes prompts also mention the tags in prose ("within <tools></tools> XML tags"),
    so the first block with content is the one read.
    """
    body = next((block for block in _TOOLS_BLOCK.findall(system) if block.strip()), None)
    if body is None:
        return None
    decoder = json.JSONDecoder()
    schemas: list[Any] = []
    position = 0
    while position < len(body):
        while position < len(body) and body[position] in " \t\r\n,":
            position += 1
        if position >= len(body):
            break
        try:
            value, position = decoder.raw_decode(body, position)
        except json.JSONDecodeError:
            return None
        schemas.extend(value if isinstance(value, list) else [value])
    try:
        return tool_names(parse_tools(schemas))
    except ValueError:
        return None
