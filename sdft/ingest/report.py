"""Conversion reports: counts of the records kept and of the turns and lines left out, by reason."""

from __future__ import annotations

import math
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sdft.ingest.errors import MAX_REPORTED_ERRORS, IngestError

# Reasons an assistant turn does not become a record.
EMPTY_TURN = "empty_turn"
NO_USER_MESSAGE = "no_user_message"
CONTEXT_ENDS_WITH_ASSISTANT = "context_ends_with_assistant"
UNKNOWN_TOOL = "unknown_tool"
DUPLICATE = "duplicate"
TEACHER_PROMPT_TOO_LONG = "teacher_prompt_too_long"
HAS_IMAGES = "has_images"
WEIGHT_ZERO = "weight_zero"
TEMPLATE_ERROR = "template_error"

TOKEN_LENGTH_KEYS = ("student_prompt", "teacher_prompt", "expert_turn")


@dataclass
class ConversionReport:
    """Counts of one conversion.

    `records` counts the records emitted and `turns` every assistant turn found;
    `dropped` counts the turns left out, by reason. `errors` keeps the first 50 invalid
    lines and `error_count` counts all of them. `skipped_events` counts input lines that
    are not dialogue (Claude Code progress lines and the like), by kind.
    """

    format: str | None = None
    records: int = 0
    conversations: int = 0
    turns: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    errors: list[IngestError] = field(default_factory=list)
    error_count: int = 0
    skipped_events: Counter[str] = field(default_factory=Counter)
    reasoning_removed: int = 0
    tools_used: Counter[str] = field(default_factory=Counter)
    turns_per_conversation_counts: Counter[int] = field(default_factory=Counter)
    # Token counts per kind, one entry per measured record, as compact unsigned-int arrays.
    token_lengths: dict[str, array[int]] = field(default_factory=dict)

    def add_error(self, error: IngestError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(error)

    @property
    def turns_per_conversation(self) -> dict[str, float]:
        """min, median, mean and max of assistant turns per conversation (zeros if none)."""
        return _histogram_stats(self.turns_per_conversation_counts)

    def token_length_stats(self) -> dict[str, dict[str, int]]:
        """p50, p90, p99 and max per length kind, for the records that were measured."""
        stats = {}
        for key in TOKEN_LENGTH_KEYS:
            values = sorted(self.token_lengths.get(key, []))
            if values:
                stats[key] = {
                    "p50": _percentile(values, 50),
                    "p90": _percentile(values, 90),
                    "p99": _percentile(values, 99),
                    "max": values[-1],
                }
        return stats

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary; keys are sorted so output is deterministic."""
        data: dict[str, Any] = {
            "format": self.format,
            "records": self.records,
            "conversations": self.conversations,
            "turns": self.turns,
            "dropped": dict(sorted((k, v) for k, v in self.dropped.items() if v)),
            "errors": [error.to_dict() for error in self.errors],
            "error_count": self.error_count,
            "skipped_events": dict(sorted((k, v) for k, v in self.skipped_events.items() if v)),
            "reasoning_removed": self.reasoning_removed,
            "turns_per_conversation": self.turns_per_conversation,
            "tools_used": dict(sorted(self.tools_used.items(), key=lambda kv: (-kv[1], kv[0]))),
        }
        lengths = self.token_length_stats()
        if lengths:
            data["token_lengths"] = lengths
        return data


def _percentile(sorted_values: list[int], percent: int) -> int:
    """Nearest-rank percentile of a sorted, non-empty list."""
    rank = max(1, math.ceil(percent / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _histogram_stats(counts: Counter[int]) -> dict[str, float]:
    total = sum(counts.values())
    if not total:
        return {"min": 0, "median": 0, "mean": 0.0, "max": 0}
    values = sorted(counts)
    seen, median = 0, values[0]
    for value in values:
        seen += counts[value]
        if seen * 2 >= total:
            median = value
            break
    mean = sum(value * count for value, count in counts.items()) / total
    return {"min": values[0], "median": median, "mean": round(mean, 3), "max": values[-1]}
