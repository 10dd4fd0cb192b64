"""Job context on log lines: every record logged while a job runs carries its `job_id` and `step`.

The context is a mutable object in a context variable. Threads that a job starts (the heartbeat)
copy the context, so they share the object and log the current step too. A handler filter
adds the fields, and keeps a `job_id` that a caller passed in `extra` (as the API's helpers do).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from dataclasses import dataclass

LOG_FORMAT = (
    "[%(asctime)s: %(levelname)s/%(processName)s] job_id=%(job_id)s step=%(step)s "
    "%(name)s: %(message)s"
)


@dataclass
class JobLogContext:
    job_id: str
    step: int | None = None


_current: contextvars.ContextVar[JobLogContext | None] = contextvars.ContextVar(
    "sdft_job_log_context", default=None
)


def current() -> JobLogContext | None:
    return _current.get()


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[JobLogContext]:
    """Tag every log record made inside the block (in this thread and threads it starts with
    `contextvars.copy_context()`) with `job_id`."""
    context = JobLogContext(job_id=job_id)
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def set_step(step: int) -> None:
    context = _current.get()
    if context is not None:
        context.step = step


class JobContextFilter(logging.Filter):
    """Set `job_id` and `step` on each record ("-" outside a job) so LOG_FORMAT can use them."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get()
        if not hasattr(record, "job_id"):
            record.job_id = context.job_id if context else "-"
        if not hasattr(record, "step"):
            record.step = context.step if context and context.step is not None else "-"
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Add the filter to every handler of `logger` (the root logger by default)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, JobContextFilter) for f in handler.filters):
            handler.addFilter(JobContextFilter())
