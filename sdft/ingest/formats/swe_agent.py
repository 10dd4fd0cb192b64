"""SWE-agent trajectories (`.traj`): one JSON document whose `history` is the model's input.

History entries are role/content messages. Assistant actions carry OpenAI-style
`tool_calls`; tool observations name their calls in a plural `tool_call_ids`. SWE-agent
reuses call ids across turns, so results are matched inside their own turn. The tool
schemas are rebuilt from the command docs in `replay_config`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sdft.data.records import Message
from sdft.ingest.conversation import (
    Conversation,
    build_message,
    link_tool_results,
    parse_call_json,
    parse_parts,
)
from sdft.ingest.schemas import tool_names

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
    tools = tools_from_command_docs(obj)
    return Conversation(
        messages=messages,
        tools=tools,
        tool_names=tool_names(tools),
        reasoning_removed=reasoning,
    )


def tools_from_command_docs(trajectory: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Rebuild the tool schemas from the command docs stored in `replay_config`.

    In function-calling mode SWE-agent sends its commands as tools, and the trajectory
    keeps them only as the `command_docs` text, one block per command:
    `name:`, `  docstring: ...`, `  arguments:`, `    - arg (type) [required]: text`.
    NOTE: this is a reconstruction; descriptions and types match the docs text, but the
    schemas SWE-agent sent may differ in details such as enums. Returns None when the
    trajectory has no command docs.
    """
    config = trajectory.get("replay_config")
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except json.JSONDecodeError:
            return None
    docs = _dig(config, "agent", "tools", "command_docs")
    if not isinstance(docs, str) or not docs.strip():
        return None

    tools: list[dict[str, Any]] = []
    function: dict[str, Any] | None = None
    for line in docs.splitlines():
        command = _COMMAND.match(line)
        argument = _ARGUMENT.match(line)
        if command:
            function = {
                "name": command.group(1),
                "description": "",
                "parameters": {"type": "object", "properties": {}, "required": []},
            }
            tools.append({"type": "function", "function": function})
        elif function is None:
            continue
        elif line.strip().startswith("docstring:"):
            function["description"] = line.split("docstring:", 1)[1].strip()
        elif argument:
            name, kind, need, text = argument.groups()
            function["parameters"]["properties"][name] = {"type": kind, "description": text}
            if need == "required":
                function["parameters"]["required"].append(name)
    return tools or None


_COMMAND = re.compile(r"^([A-Za-z_][\w-]*):\s*$")
_ARGUMENT = re.compile(r"^\s+-\s+([\w-]+)\s+\(([^)]+)\)\s+\[(required|optional)\]:\s*(.*)$")


def _dig(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value
