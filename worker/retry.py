"""Retries with exponential backoff for calls to PostgreSQL, Redis and S3.

A brief outage of one of them (a restart, a failover, a dropped connection) should delay a job,
not fail it. Calls that still fail after `max_wait_s` raise the last error, and the runner then
ends the job in `failed` with that error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import botocore.exceptions
import redis.exceptions
import sqlalchemy.exc
import tenacity

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that mean "the service is unreachable right now", not "the request is wrong".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
    ConnectionError,
    TimeoutError,
)


def is_transient(error: BaseException) -> bool:
    if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, TRANSIENT_ERRORS)


def call_with_retry(
    operation: str,
    fn: Callable[[], T],
    *,
    max_wait_s: float = 60.0,
    initial_s: float = 0.5,
    max_backoff_s: float = 8.0,
) -> T:
    """Call `fn` until it succeeds, retrying transient errors with exponential backoff for up to
    `max_wait_s` seconds in all. Each retry is logged at WARNING with `operation` and the error."""

    def log_retry(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        logger.warning(
            "%s failed (attempt %d, %s: %s); retrying in %.1f s",
            operation,
            state.attempt_number,
            type(error).__name__,
            error,
            state.next_action.sleep if state.next_action else 0.0,
        )

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        wait=tenacity.wait_exponential(multiplier=initial_s, max=max_backoff_s),
        stop=tenacity.stop_after_delay(max_wait_s),
        before_sleep=log_retry,
        reraise=True,
    )
    return retrying(fn)
