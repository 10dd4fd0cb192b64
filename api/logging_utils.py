"""Logging helpers: `job_id` on every line about a job, and redaction of known secrets."""

from __future__ import annotations

import logging
from collections.abc import Iterable, MutableMapping
from typing import Any

REDACTED = "***"


class JobLogAdapter(logging.LoggerAdapter[logging.Logger]):
    """Prefix messages with `job_id=…` and set `record.job_id` for structured formatters."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return f"job_id={extra.get('job_id')} {msg}", kwargs


def job_logger(logger: logging.Logger, job_id: str) -> JobLogAdapter:
    return JobLogAdapter(logger, {"job_id": job_id})


class RedactSecretsFilter(logging.Filter):
    """Replace each known secret in a formatted log message with `***`.

    A second line of defence: code never logs secrets on purpose, but a library's exception
    text could contain a URL with a password.
    """

    def __init__(self, secrets: Iterable[str]):
        super().__init__()
        # Short values would redact ordinary words; real secrets here are long random strings.
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret in self._secrets:
            redacted = redacted.replace(secret, REDACTED)
        if redacted != message:
            record.msg = redacted
            record.args = None
        return True


def install_redaction(secrets: Iterable[str]) -> None:
    """Attach a RedactSecretsFilter to every handler of the root logger."""
    log_filter = RedactSecretsFilter(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(log_filter)
