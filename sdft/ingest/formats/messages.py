"""Role/content message lists: OpenAI chat, typed-part messages, and our record format.

- `openai`: `{"messages": [...], "tools": [...]}` with `tool_calls` and `role: tool`
  results. Every assistant message is a target unless it carries `"weight": 0`.
- `messages_parts`: the same layout where `content` is a list of typed parts
  (`{"type": "text" | "reasoning" | "tool_call", "value": ...}`), `tools` may be a JSON
  string, and the results of parallel calls may be grouped in one tool message.
- `records`: `{"prompt": [...], "completion": [...]}` as written by `sdft dataset
  convert`; only the completion is a target. `messages` read as `records` also keeps
  only its last assistant message as the target.
"""

from __future__ import annotations

import json
from typing import Any

from sdft.data.records import Message
from sdft.ingest.conversation import (
    Conversation,
    Parts,
    build_message,
    link_tool_results,
    parse_call_json,
    parse_parts,
    tool_content,
)
from sdft.ingest.schemas import parse_tools, tool_names

_ROLE_ALIASES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
    "ipython": "tool",
}
_REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")


def uses_typed_parts(obj: dict[str, Any]) -> bool:
    """Tell the typed-part layout (`value` parts, reasoning or tool_call parts) from OpenAI's."""
    for message in obj.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and (
                    "value" in part or part.get("type") in ("reasoning", "tool_call")
                ):
                    return True
    return False


def convert_messages(obj: Any, *, last_turn_only: bool = False) -> Conversation:
    """Convert one `messages` object (OpenAI or typed-part layout)."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object with 'messages', got {type(obj).__name__}")
    raw_messages = obj.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise ValueError("messages: expected a non-empty list of messages")
    tools = parse_tools(obj.get("tools", obj.get("functions")))

    messages: list[Message] = []
    reasoning = 0
    for index, raw in enumerate(raw_messages):
        where = f"messages[{index}]"
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: expected a message object, got {type(raw).__name__}")
        converted, removed = _convert_message(raw, where)
        reasoning += removed
        if converted["role"] == "tool" and messages:
            messages.extend(_split_grouped_results(converted, messages))
        else:
            messages.append(converted)

    link_tool_results(messages)
    return Conversation(
        messages=messages,
        tools=tools,
        tool_names=tool_names(tools),
        last_turn_only=last_turn_only,
        reasoning_removed=reasoning,
    )


def convert_record(obj: Any) -> Conversation:
    """Convert one prompt/completion record; its completion is the only target."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "prompt" not in obj and "completion" not in obj:
        return convert_messages(obj, last_turn_only=True)
    prompt = obj.get("prompt")
    completion = obj.get("completion")
    if isinstance(completion, dict):
        completion = [completion]
    if not isinstance(prompt, list) or not isinstance(completion, list):
        raise ValueError("prompt and completion: expected lists of messages")
    if len(completion) != 1:
        raise ValueError(
            f"completion: expected exactly one assistant message, got {len(completion)}"
        )
    merged = {"messages": prompt + completion, "tools": obj.get("tools")}
    return convert_messages(merged, last_turn_only=True)


def _convert_message(raw: dict[str, Any], where: str) -> tuple[Message, int]:
    role = _ROLE_ALIASES.get(str(raw.get("role", "")).lower())
    if role is None:
        raise ValueError(
            f"{where}.role: expected one of system, user, assistant, tool, got {raw.get('role')!r}"
        )
    content = raw.get("content")
    if role == "tool" and not isinstance(content, str | list):
        # Structured tool results (a JSON object) are kept as their JSON text.
        parts = Parts(texts=[tool_content(content)])
    else:
        parts = parse_parts(content, f"{where}.content")
    removed = 0
    if role == "assistant":
        removed += sum(1 for key in _REASONING_KEYS if raw.get(key))
        calls = raw.get("tool_calls") or []
        if not isinstance(calls, list):
            raise ValueError(f"{where}.tool_calls: expected a list")
        for index, call in enumerate(calls):
            parts.tool_calls.extend(parse_call_json(call, f"{where}.tool_calls[{index}]"))
        if isinstance(raw.get("function_call"), dict):
            parts.tool_calls.extend(parse_call_json(raw["function_call"], f"{where}.function_call"))

    message = build_message(role, parts)
    removed += parts.reasoning
    if role == "tool":
        if raw.get("tool_call_id") is not None:
            message["tool_call_id"] = str(raw["tool_call_id"])
        if raw.get("name"):
            message["name"] = str(raw["name"])
    if role == "assistant" and raw.get("weight") == 0:
        message["_weight0"] = True
    return message, removed


def _split_grouped_results(tool: Message, before: list[Message]) -> list[Message]:
    """Split one tool message holding the results of several parallel calls.

    Some exporters write `[{"tool_call_id": ..., "name": ..., "content": ...}, ...]` as the
    text of a single tool message. It is split only when the list has one entry per call
    of the preceding assistant turn, so a tool that returns a list is left alone.
    """
    calls = _pending_calls(before)
    content = tool.get("content")
    if len(calls) < 2 or not isinstance(content, str) or not content.lstrip().startswith("["):
        return [tool]
    try:
        results = json.loads(content)
    except json.JSONDecodeError:
        return [tool]
    if not (
        isinstance(results, list)
        and len(results) == len(calls)
        and all(isinstance(r, dict) and "content" in r for r in results)
    ):
        return [tool]
    split = []
    for result in results:
        message: Message = {"role": "tool", "content": tool_content(result["content"])}
        if result.get("tool_call_id") is not None:
            message["tool_call_id"] = str(result["tool_call_id"])
        if result.get("name"):
            message["name"] = str(result["name"])
        split.append(message)
    return split


def _pending_calls(before: list[Message]) -> list[dict[str, Any]]:
    """Return the calls of the assistant turn that the next tool message belongs to."""
    for message in reversed(before):
        if message["role"] == "assistant":
            return message.get("tool_calls") or []
        if message["role"] != "tool":
            return []
    return []
