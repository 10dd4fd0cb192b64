"""The common form every trace format is converted to before it is split into records.

Messages follow the OpenAI chat convention used by `sdft.data.records`. Two private keys
travel with a message until the record is built: `_images` (the number of images in it)
and `_weight0` (the source marked the assistant message as not to be trained on).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from sdft.data.records import Message, normalize_arguments

PRIVATE_KEYS = ("_images", "_weight0")


@dataclass
class Conversation:
    """One dialogue in the common form.

    `tool_names` lists the tools the expert may call, from `tools` or from a `<tools>`
    block of the system prompt; None means unknown, so no tool call is rejected.
    `last_turn_only` keeps the convention of record formats where only the final
    assistant message is the target.
    """

    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    tool_names: set[str] | None = None
    line: int | None = None
    item: int | None = None
    last_turn_only: bool = False
    reasoning_removed: int = 0
    name: str | None = None


@dataclass
class Parts:
    """Content parts of one message, sorted by kind."""

    texts: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    reasoning: int = 0


def make_tool_call(name: Any, arguments: Any, call_id: Any, where: str) -> dict[str, Any]:
    """Build one OpenAI-style tool call; arguments encoded once or twice are decoded."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: the tool call has no function name")
    try:
        decoded = normalize_arguments(arguments)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    call: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": decoded}}
    if call_id is not None and str(call_id):
        call["id"] = str(call_id)
    return call


def parse_call_json(value: Any, where: str) -> list[dict[str, Any]]:
    """Parse `{"name": ..., "arguments": ...}` (or a list of them) given as JSON text or object."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: the tool call is not valid JSON: {exc.msg}") from exc
    calls = value if isinstance(value, list) else [value]
    out = []
    for index, call in enumerate(calls):
        if not isinstance(call, dict):
            raise ValueError(f"{where}: expected a tool call object, got {type(call).__name__}")
        function = call.get("function", call)
        if not isinstance(function, dict):
            raise ValueError(f"{where}: expected a tool call object")
        arguments = function.get("arguments", function.get("parameters"))
        out.append(
            make_tool_call(function.get("name"), arguments, call.get("id"), f"{where}[{index}]")
        )
    return out


def parse_parts(content: Any, where: str) -> Parts:
    """Sort message content (a string or a list of typed parts) into text, images and calls.

    Reasoning parts are counted and left out. Unknown part types raise ValueError.
    """
    parts = Parts()
    if content is None:
        return parts
    if isinstance(content, str):
        parts.texts.append(content)
        return parts
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, list):
        raise ValueError(f"{where}: expected a string or a list of content parts")
    for index, part in enumerate(content):
        _add_part(parts, part, f"{where}[{index}]")
    return parts


def _add_part(parts: Parts, part: Any, where: str) -> None:
    if isinstance(part, str):
        parts.texts.append(part)
        return
    if not isinstance(part, dict):
        raise ValueError(f"{where}: expected a content part object, got {type(part).__name__}")
    kind = part.get("type", "text")
    if kind in ("text", "input_text", "output_text"):
        text = part.get("text", part.get("value", ""))
        parts.texts.append(text if isinstance(text, str) else json.dumps(text, ensure_ascii=False))
    elif kind == "refusal":
        parts.texts.append(str(part.get("refusal", "")))
    elif kind in ("reasoning", "thinking", "redacted_thinking"):
        parts.reasoning += 1
    elif kind in ("tool_call", "function_call"):
        value = part.get("value", part.get("function", part))
        parts.tool_calls.extend(parse_call_json(value, where))
    elif kind == "tool_use":
        parts.tool_calls.append(
            make_tool_call(part.get("name"), part.get("input"), part.get("id"), where)
        )
    elif kind in ("image", "image_url", "input_image"):
        parts.images.append(_image_reference(part))
    else:
        raise ValueError(
            f"{where}: unsupported content part type {kind!r}; supported: text, reasoning, "
            "thinking, tool_call, tool_use, image, image_url"
        )


def _image_reference(part: dict[str, Any]) -> str:
    """Return a URL or data URL for an image part of the OpenAI or Anthropic shape."""
    source = part.get("source")
    if isinstance(source, dict):
        if source.get("type") == "base64":
            return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
        return str(source.get("url", ""))
    url = part.get("image_url", part.get("image", part.get("url", "")))
    if isinstance(url, dict):
        url = url.get("url", "")
    return str(url)


_THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)


def strip_inline_reasoning(text: str) -> tuple[str, int]:
    """Remove reasoning written into assistant text; return the text and the blocks removed.

    Removes `<think>...</think>` blocks. A lone `</think>` with text after it closes
    reasoning whose opening tag was in the generation prompt (Qwen-style traces), so the
    text before it goes too. A lone `</think>` at the end is a stray tag and only the tag
    goes.
    """
    stripped, count = _THINK_BLOCK.subn("", text)
    if "</think>" in stripped and "<think>" not in stripped:
        before, _, after = stripped.partition("</think>")
        if after.strip():
            stripped, count = after.lstrip(), count + 1
        else:
            stripped = before.rstrip()
    return stripped, count


def build_message(role: str, parts: Parts, *, separator: str = "") -> Message:
    """Assemble a message in the common form from sorted parts.

    Assistant text loses inline `<think>` blocks; their count is added to
    `parts.reasoning` so the caller can report it.
    """
    texts = [t for t in parts.texts if t.strip()] if separator else parts.texts
    text = separator.join(texts)
    if role == "assistant":
        text, removed = strip_inline_reasoning(text)
        parts.reasoning += removed
    message: Message = {"role": role, "content": text}
    if parts.images:
        content: list[dict[str, Any]] = []
        if text:
            content.append({"type": "text", "text": text})
        content.extend({"type": "image", "image": url} for url in parts.images)
        message["content"] = content
        message["_images"] = len(parts.images)
    if role == "assistant" and parts.tool_calls:
        message["tool_calls"] = list(parts.tool_calls)
    return message


def tool_content(value: Any) -> str:
    """Render a tool result as text; structured results become compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def link_tool_results(messages: list[Message]) -> None:
    """Link every tool message to the call whose result it is, in place.

    If a call of a turn has no id, or the turn repeats an id (a placeholder such as
    `call_id`), every call of that turn gets `call_<n>`, numbered through the
    conversation, and its results are matched by position. Otherwise a result is matched
    by its id, or by position when the id names no call of its turn.
    """
    counter = 0
    calls: list[dict[str, Any]] = []
    renamed = False
    position = 0
    for message in messages:
        role = message["role"]
        if role == "assistant":
            calls = message.get("tool_calls") or []
            given_ids = [call.get("id") for call in calls]
            renamed = None in given_ids or len(set(given_ids)) != len(given_ids)
            for call in calls:
                if renamed:
                    counter += 1
                    call["id"] = f"call_{counter}"
            position = 0
        elif role == "tool":
            ids = [call["id"] for call in calls]
            result_id = message.get("tool_call_id")
            if not renamed and result_id in ids:
                call = calls[ids.index(result_id)]
            elif position < len(calls):
                call = calls[position]
            else:
                call = None
            position += 1
            if call is not None:
                message["tool_call_id"] = call["id"]
                message.setdefault("name", call["function"]["name"])
        else:
            calls, position = [], 0


def public_message(message: Message) -> Message:
    return {key: value for key, value in message.items() if key not in PRIVATE_KEYS}
