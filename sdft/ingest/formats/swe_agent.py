"""SWE-agent trajectories (`.traj`): one JSON document whose `history` is the model's input.

History entries are role/content messages. Assistant actions carry OpenAI-style
`tool_calls`; tool observations name their calls in a plural `tool_call_ids`. SWE-agent
reuses call ids across turns, so results are matched inside their own turn.
"""

from __future__ import annotations

from typing import Any

from sdft.data.records import Message
from sdft.ingest.conversation import (
    Conversation,
    build_message,
    link_tool_results,
    parse_call_json,
    parse_parts,
)

_ROLES = ("system", "user", "assistant", "tool")


def convert_swe_agent(obj: Any) -> Conversation:
    if not isinstance(obj, dict) or not isinstance(obj.get("history"), list):
        raise ValueError("expected a SWE-agent trajectory: a JSON object with a 'history' list")
    history = obj["history"]
    if not history:
        raise ValueError("history: the trajectory has no messages")

    messages: list[Message] = []
    reasoning = 0
    for index, entry in enumerate(history):
        where = f"history[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
        role = entry.get("role")
        if role not in _ROLES:
            raise ValueError(f"{where}.role: expected one of {', '.join(_ROLES)}, got {role!r}")
        parts = parse_parts(entry.get("content"), f"{where}.content")
        if role == "assistant":
            for call_index, call in enumerate(entry.get("tool_calls") or []):
                parts.tool_calls.extend(parse_call_json(call, f"{where}.tool_calls[{call_index}]"))
        message = build_message(role, parts)
        reasoning += parts.reasoning
        if role == "tool":
            ids = entry.get("tool_call_ids") or []
            if isinstance(ids, list) and len(ids) == 1:
                message["tool_call_id"] = str(ids[0])
            elif entry.get("tool_call_id") is not None:
                message["tool_call_id"] = str(entry["tool_call_id"])
        messages.append(message)

    link_tool_results(messages)
    # NOTE: the tool schemas are only in `replay_config` as SWE-agent command docs, not as
    # JSON Schema, so records from trajectories carry no tools and no call is rejected.
    return Conversation(messages=messages, reasoning_removed=reasoning)
