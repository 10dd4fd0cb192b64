"""Errors raised while converting traces into training records."""

from __future__ import annotations

from typing import Any

MAX_REPORTED_ERRORS = 50


class IngestError(ValueError):
    """Invalid input. `line` is 1-based and None when the problem is not tied to one line.

    `item` is the 0-based position inside a JSON array document, when the input is one.
    """

    def __init__(self, line: int | None, reason: str, *, item: int | None = None):
        self.line = line
        self.reason = reason
        self.item = item
        super().__init__(f"{self.location()}: {reason}" if self.location() else reason)

    def location(self) -> str:
        parts = []
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.item is not None:
            parts.append(f"item {self.item}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"line": self.line, "reason": self.reason}
        if self.item is not None:
            data["item"] = self.item
        return data


class IngestErrors(IngestError):
    """Several invalid lines found in strict mode.

    `errors` contains the first MAX_REPORTED_ERRORS of them and `total` counts all of them.
    """

    def __init__(self, errors: list[IngestError], total: int):
        if not errors:
            raise ValueError("IngestErrors needs at least one error")
        self.errors = errors
        self.total = total
        self.line = errors[0].line
        self.item = errors[0].item
        listed = "; ".join(str(error) for error in errors[:5])
        more = f" (the first 5 of {total})" if total > 5 else ""
        self.reason = (
            f"{total} invalid input line(s){more}: {listed}. "
            "Fix them, or convert in lenient mode to skip them and keep the rest"
        )
        ValueError.__init__(self, self.reason)

    def to_dict(self) -> dict[str, Any]:
        """Return the summary, the total count and the listed errors, for a 422 response."""
        return {
            "reason": self.reason,
            "total": self.total,
            "errors": [error.to_dict() for error in self.errors],
        }
