"""Job context on log lines: every record logged while a job runs carries its `job_id` and `step`.

The context is a mutable object in a context variable. Threads that a job starts (the heartbeat)
copy the context, so they share the object and log the current step too.
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
_installed = False


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


def install() -> None:
    """Wrap the log record factory so that every record has `job_id` and `step` attributes
    ("-" outside a job), which LOG_FORMAT needs. Safe to call more than once."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        context = _current.get()
        record.job_id = context.job_id if context else "-"
        record.step = context.step if context and context.step is not None else "-"
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


install()
