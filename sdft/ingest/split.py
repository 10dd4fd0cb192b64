"""Split a conversation into one record per assistant turn, with the reason for each drop."""

from __future__ import annotations

from collections.abc import Iterator

from sdft.data.records import Message, Record, parse_record
from sdft.ingest import report as reasons
from sdft.ingest.conversation import Conversation, public_message


def split_turns(
    conversation: Conversation, *, has_vision: bool
) -> Iterator[tuple[Record | None, str | None]]:
    """Yield `(record, None)` for each usable assistant turn and `(None, reason)` otherwise.

    The record's prompt is every message before the turn, its completion the turn itself.
    """
    messages = conversation.messages
    indices = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
    if conversation.last_turn_only:
        indices = indices[-1:]
    for index in indices:
        expert = messages[index]
        prompt = messages[:index]
        reason = _drop_reason(expert, prompt, conversation, has_vision=has_vision)
        if reason:
            yield None, reason
            continue
        raw = Record(
            prompt=[public_message(m) for m in prompt],
            completion=public_message(expert),
            tools=conversation.tools,
        )
        # The record goes back through the reader the trainer and API use, so every
        # emitted record is one they accept.
        yield parse_record(raw.to_json()), None


def _drop_reason(
    expert: Message, prompt: list[Message], conversation: Conversation, *, has_vision: bool
) -> str | None:
    if expert.get("_weight0"):
        return reasons.WEIGHT_ZERO
    if not _text_of(expert).strip() and not expert.get("tool_calls"):
        return reasons.EMPTY_TURN
    if not any(message["role"] == "user" for message in prompt):
        return reasons.NO_USER_MESSAGE
    if prompt[-1]["role"] == "assistant":
        return reasons.CONTEXT_ENDS_WITH_ASSISTANT
    known = conversation.tool_names
    if known is not None:
        called = {call["function"]["name"] for call in expert.get("tool_calls") or []}
        if called - known:
            return reasons.UNKNOWN_TOOL
    if not has_vision and any(m.get("_images") for m in (*prompt, expert)):
        return reasons.HAS_IMAGES
    return None


def _text_of(message: Message) -> str:
    content = message.get("content", "")
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if part.get("type") == "text")
    return content
