"""Format names, detection from content, and the converter of each format."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sdft.ingest.conversation import Conversation
from sdft.ingest.formats.claude_code import looks_like_claude_code
from sdft.ingest.formats.messages import convert_messages, convert_record, uses_typed_parts
from sdft.ingest.formats.sharegpt import convert_sharegpt
from sdft.ingest.formats.swe_agent import convert_swe_agent

FORMATS: dict[str, str] = {
    "claude_code": "Claude Code session log (JSONL, one event per line)",
    "openai": "OpenAI chat / fine-tuning JSONL: messages with tool_calls, plus tools",
    "messages_parts": "messages whose content is a list of typed parts (text, reasoning, "
    "tool_call), JSONL or a JSON array",
    "sharegpt": "ShareGPT / Hermes conversations (from: human, gpt, function_call, "
    "observation), JSONL or a JSON array",
    "swe_agent": "SWE-agent trajectory (.traj): one JSON object with a history list",
    "records": "our prompt/completion records (only the completion is a target)",
}
ALIASES = {
    "hermes": "sharegpt",
    "chatml": "openai",
    "messages": "openai",
    "sweagent": "swe_agent",
    "traj": "swe_agent",
    "claude": "claude_code",
    "prompt_completion": "records",
}
# Formats whose files may be one JSON array of conversations instead of JSONL.
ARRAY_FORMATS = frozenset({"sharegpt", "messages_parts"})

Converter = Callable[[Any], Conversation]
CONVERTERS: dict[str, Converter] = {
    "openai": convert_messages,
    "messages_parts": convert_messages,
    "sharegpt": convert_sharegpt,
    "swe_agent": convert_swe_agent,
    "records": convert_record,
}


def supported_formats() -> str:
    return ", ".join(FORMATS)


def resolve_format(name: str | None) -> str | None:
    """Return the canonical format name, or raise ValueError listing the supported ones.

    None, "" and "auto" mean detection from the content and return None.
    """
    if name is None:
        return None
    key = name.strip().lower().replace("-", "_")
    if key in ("", "auto"):
        return None
    key = ALIASES.get(key, key)
    if key not in FORMATS:
        raise ValueError(f"unknown format {name!r}; supported formats: {supported_formats()}")
    return key


def detect_format(obj: Any) -> str | None:
    """Name the format of one decoded JSON value (a line, a document or an array item)."""
    if isinstance(obj, list):
        first = next((item for item in obj if isinstance(item, dict)), None)
        return detect_format(first) if first is not None else None
    if not isinstance(obj, dict):
        return None
    if looks_like_claude_code(obj):
        return "claude_code"
    if isinstance(obj.get("history"), list):
        return "swe_agent"
    if "conversations" in obj or "conversation" in obj:
        return "sharegpt"
    if "prompt" in obj and "completion" in obj:
        return "records"
    if "messages" in obj:
        return "messages_parts" if uses_typed_parts(obj) else "openai"
    return None


def wrapped_conversations(obj: Any) -> list[tuple[str, dict[str, Any]]]:
    """Return the `(key, value)` pairs of an object that wraps whole conversations.

    Some exports store one conversation in several versions, e.g. `{"BEFORE": {...},
    "AFTER": {...}}`; each such value is a conversation of its own.
    """
    if not isinstance(obj, dict):
        return []
    return [
        (key, value)
        for key, value in obj.items()
        if isinstance(value, dict) and detect_format(value) not in (None, "claude_code")
    ]


def describe_unknown(obj: Any) -> str:
    if isinstance(obj, dict):
        found = ", ".join(sorted(map(str, obj))[:12]) or "none"
        return f"found an object with keys: {found}"
    return f"found a JSON {type(obj).__name__}"
