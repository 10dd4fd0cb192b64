"""A background thread that proves, every few seconds, that a job's worker is alive.

The reaper treats a job whose `heartbeat_at` is older than the stale-after setting as abandoned.
Each beat is also a fencing check: the update matches only while this attempt still owns the row,
so a worker whose job was taken over or ended elsewhere learns it within one interval.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class Heartbeat:
    """Call `beat()` every `interval_s` seconds on a daemon thread until stopped.

    `beat` returns False when the job no longer belongs to this attempt; the thread then sets
    `lost` and stops beating. Errors from `beat` (database unreachable) are logged and the next
    beat tries again, because a short outage must not stop a healthy job.
    """

    def __init__(self, beat: Callable[[], bool], interval_s: float, *, name: str = "heartbeat"):
        if interval_s <= 0:
            raise ValueError(f"heartbeat interval must be > 0 seconds, got {interval_s}")
        self._beat = beat
        self._interval_s = interval_s
        self._stop = threading.Event()
        self.lost = threading.Event()
        self.failures = 0
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._loop,), name=name, daemon=True
        )

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self._interval_s + 5)

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                owned = self._beat()
            except Exception as error:  # noqa: BLE001 - any failure is retried on the next beat
                self.failures += 1
                # Log the first failure and then every tenth, so an outage does not flood the log.
                if self.failures == 1 or self.failures % 10 == 0:
                    logger.warning(
                        "heartbeat failed %d time(s) in a row: %s: %s",
                        self.failures,
                        type(error).__name__,
                        error,
                    )
                continue
            if self.failures:
                logger.info("heartbeat recovered after %d failure(s)", self.failures)
                self.failures = 0
            if not owned:
                logger.warning("this attempt no longer owns the job; stopping its heartbeat")
                self.lost.set()
                return
