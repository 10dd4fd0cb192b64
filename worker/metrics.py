"""Batched metric rows: PostgreSQL is the record, Redis pub/sub only wakes up live streams.

Rows are written in batches of `batch_size`, or sooner when the oldest buffered row is older than
`max_delay_s`, so a slow job still streams each step promptly. After each commit every stored row
is published to the job's channel. A failed publish is logged and dropped, because the stream
reads the rows back from the database.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from worker.jobstore import AttemptStore, JobLost

logger = logging.getLogger(__name__)

# Rows kept in memory while the database is unreachable; past this the job fails rather than
# grow without bound.
MAX_BUFFERED_ROWS = 10_000


class MetricsWriter:
    def __init__(
        self,
        store: AttemptStore,
        redis_client: Any | None,
        *,
        batch_size: int,
        channel: str,
        max_delay_s: float = 2.0,
    ):
        if batch_size < 1:
            raise ValueError(f"metrics batch size must be >= 1, got {batch_size}")
        self.store = store
        self.redis = redis_client
        self.batch_size = batch_size
        self.channel = channel
        self.max_delay_s = max_delay_s
        self.last_step: int | None = None
        self._buffer: dict[int, dict[str, Any]] = {}
        self._oldest_at: float | None = None
        self._publish_failures = 0

    def add(self, step: int, metrics: dict[str, Any]) -> None:
        self._buffer[step] = _finite(metrics)
        self.last_step = step
        if self._oldest_at is None:
            self._oldest_at = time.monotonic()
        if len(self._buffer) >= self.batch_size:
            self._try_flush()

    def maybe_flush(self) -> None:
        """Flush when the oldest buffered row has waited longer than `max_delay_s`."""
        if self._oldest_at is not None and time.monotonic() - self._oldest_at >= self.max_delay_s:
            self._try_flush()

    def flush(self) -> None:
        """Write every buffered row now; raise if the database stays unreachable."""
        if not self._buffer:
            return
        rows = sorted(self._buffer.items())
        stored = self.store.upsert_metrics(rows)
        for step, _ in rows:
            self._buffer.pop(step, None)
        self._oldest_at = time.monotonic() if self._buffer else None
        self._publish(stored)

    def _try_flush(self) -> None:
        try:
            self.flush()
        except JobLost:
            raise
        except Exception as error:  # noqa: BLE001 - keep the rows and retry on the next flush
            logger.warning(
                "could not write %d metric rows (%s: %s); keeping them for the next flush",
                len(self._buffer),
                type(error).__name__,
                error,
            )
            if len(self._buffer) > MAX_BUFFERED_ROWS:
                raise RuntimeError(
                    f"{len(self._buffer)} metric rows could not be written to the database; "
                    "check that PostgreSQL is reachable"
                ) from error

    def _publish(self, rows: list[dict[str, Any]]) -> None:
        if self.redis is None or not rows:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for row in rows:
                pipe.publish(self.channel, json.dumps(row))
            pipe.execute()
            self._publish_failures = 0
        except Exception as error:  # noqa: BLE001 - the stream re-reads rows from the database
            self._publish_failures += 1
            if self._publish_failures == 1 or self._publish_failures % 100 == 0:
                logger.warning(
                    "could not publish metrics to Redis (%d failure(s)): %s: %s",
                    self._publish_failures,
                    type(error).__name__,
                    error,
                )


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    """Replace NaN and infinities with None: PostgreSQL's jsonb rejects them."""
    clean: dict[str, Any] = {}
    for name, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            clean[name] = None
        elif hasattr(value, "item") and callable(value.item):
            number = value.item()
            clean[name] = number if not isinstance(number, float) or math.isfinite(number) else None
        else:
            clean[name] = value
    return clean
