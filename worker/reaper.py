"""The reaper: no job stays active without a live worker, or past its time limit.

One pass, under row locks that skip rows another reaper has locked:
- an active job whose heartbeat is older than the stale-after setting lost its worker. It is
  requeued when attempts remain (the next attempt resumes from its last stored checkpoint),
  failed when none remain or its time limit has passed, and cancelled when a cancel was pending;
- an active job past `started_at + time_limit_s + grace` is failed even with a fresh heartbeat,
  because its worker may be stuck inside a step. That worker is fenced out and stops at its next
  progress update;
- a queued job is enqueued again when no message was sent for it (`celery_task_id` is null
  because the reaper's own send failed) for longer than the stale-after time, or when it has
  waited longer than the orphan delay, in case the broker lost its message (a Redis restart
  without persistence). A duplicate message is harmless because the claim drops it.
Messages are sent only after the database commit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from worker.jobstore import SessionFactory

logger = logging.getLogger(__name__)

# Seconds past the time limit before the reaper fails a job whose worker still beats: the
# runner checks the limit every step and should report it first.
TIME_LIMIT_GRACE_S = 60.0


@dataclass
class ReapReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.requeued or self.failed or self.cancelled or self.resent)


_STALE_SQL = text(
    """
    SELECT id, status, attempt, worker_id, heartbeat_at, last_checkpoint_step,
           (time_limit_s IS NOT NULL
            AND now() > started_at + make_interval(secs => time_limit_s)) AS over_time_limit
    FROM jobs
    WHERE status IN ('running', 'cancelling', 'merging', 'uploading')
      AND (heartbeat_at IS NULL OR heartbeat_at < now() - make_interval(secs => :stale_after_s))
    ORDER BY heartbeat_at NULLS FIRST
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)

_OVERTIME_SQL = text(
    """
    SELECT id, time_limit_s, worker_id FROM jobs
    WHERE status IN ('running', 'cancelling', 'merging', 'uploading')
      AND time_limit_s IS NOT NULL
      AND now() > started_at + make_interval(secs => time_limit_s + :grace_s)
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
    """
)

_ORPHANS_SQL = text(
    """
    UPDATE jobs SET updated_at = now()
    WHERE id IN (
        SELECT id FROM jobs
        WHERE status = 'queued'
          AND (
            (celery_task_id IS NULL
             AND updated_at < now() - make_interval(secs => :unsent_after_s))
            OR updated_at < now() - make_interval(secs => :orphan_after_s)
          )
        ORDER BY updated_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id
    """
)


_RECORD_TASK_SQL = text(
    "UPDATE jobs SET celery_task_id = :task_id WHERE id = :job_id AND status = 'queued'"
)


def reap(
    session_factory: SessionFactory,
    enqueue: Callable[[str], str],
    *,
    stale_after_s: float,
    max_attempts: int,
    orphan_after_s: float,
    limit: int = 100,
) -> ReapReport:
    """Run one reaper pass; `enqueue(job_id)` sends a training task and returns its task id."""
    from api.db.models import Job
    from api.services.jobs import add_event, transition

    report = ReapReport()
    with session_factory() as session, session.begin():
        stale = (
            session.execute(_STALE_SQL, {"stale_after_s": float(stale_after_s), "limit": limit})
            .mappings()
            .all()
        )
        for row in stale:
            job = session.get(Job, row["id"])
            assert job is not None
            last_seen = row["heartbeat_at"].isoformat() if row["heartbeat_at"] else "never"
            lost = f"worker {row['worker_id']} stopped sending heartbeats (last at {last_seen})"
            if row["status"] == "cancelling":
                transition(session, job, "cancelled", event_data={"reason": lost})
                report.cancelled.append(job.id)
            elif row["over_time_limit"]:
                error = f"time limit of {job.time_limit_s} s exceeded; {lost}"
                transition(session, job, "failed", error=error)
                report.failed.append(job.id)
            elif row["attempt"] >= max_attempts:
                error = (
                    f"{lost}; giving up after {row['attempt']} attempts "
                    f"(max attempts: {max_attempts})"
                )
                transition(session, job, "failed", error=error)
                report.failed.append(job.id)
            else:
                resume = row["last_checkpoint_step"]
                transition(session, job, "queued", event_data={"reason": lost})
                # Null until the new message is sent, so a failed send is found and retried.
                job.celery_task_id = None
                job.updated_at = session.execute(text("SELECT now()")).scalar_one()
                add_event(
                    session,
                    job.id,
                    "requeued",
                    f"{lost}; requeued for attempt {row['attempt'] + 1}, which resumes from "
                    + (f"the checkpoint of step {resume}" if resume else "step 0"),
                    {"attempt": row["attempt"], "resume_step": resume or 0, "reason": "stale"},
                )
                report.requeued.append(job.id)

        overtime = (
            session.execute(_OVERTIME_SQL, {"grace_s": TIME_LIMIT_GRACE_S, "limit": limit})
            .mappings()
            .all()
        )
        for row in overtime:
            job = session.get(Job, row["id"])
            assert job is not None
            error = (
                f"time limit of {row['time_limit_s']} s exceeded; worker {row['worker_id']} "
                "did not stop the job, so the reaper failed it"
            )
            transition(session, job, "failed", error=error)
            report.failed.append(job.id)

        orphans = (
            session.execute(
                _ORPHANS_SQL,
                {
                    "unsent_after_s": float(stale_after_s),
                    "orphan_after_s": float(orphan_after_s),
                    "limit": limit,
                },
            )
            .scalars()
            .all()
        )
        report.resent.extend(orphans)

    for job_id in dict.fromkeys([*report.requeued, *report.resent]):
        try:
            task_id = enqueue(job_id)
        except Exception as error:  # noqa: BLE001 - the orphan pass sends it again later
            logger.warning(
                "could not enqueue job %s (%s: %s); a later pass sends it again",
                job_id,
                type(error).__name__,
                error,
            )
            continue
        try:
            with session_factory() as session, session.begin():
                session.execute(_RECORD_TASK_SQL, {"job_id": job_id, "task_id": task_id})
        except Exception as error:  # noqa: BLE001 - the message is sent; the id is informative
            logger.warning("could not record task %s of job %s: %s", task_id, job_id, error)
    if report:
        logger.info(
            "reaper: requeued %s, failed %s, cancelled %s, re-sent %s",
            report.requeued,
            report.failed,
            report.cancelled,
            report.resent,
        )
    return report


def reap_with_settings(settings: Any | None = None) -> ReapReport:
    """Run one reaper pass with the service settings and the real queue."""
    from api.settings import get_settings
    from worker.celery_app import enqueue_train_job
    from worker.services import session_factory

    settings = settings or get_settings()
    return reap(
        session_factory(),
        enqueue_train_job,
        stale_after_s=float(settings.heartbeat_stale_after_s),
        max_attempts=int(settings.job_max_attempts),
        orphan_after_s=orphan_delay_s(settings),
    )


def orphan_delay_s(settings: Any) -> float:
    """Seconds a queued job may wait before the reaper sends its message again.

    A queued job can wait behind long jobs legitimately, so the delay is the broker's visibility
    timeout: each waiting job gets at most one extra message per such period.
    """
    from worker.celery_app import VISIBILITY_MARGIN_S

    return float(settings.job_time_limit_s + VISIBILITY_MARGIN_S)


class ReaperThread:
    """Run `reap_with_settings` every `interval_s` seconds on a daemon thread (`--beat`)."""

    def __init__(self, interval_s: float, run_pass: Callable[[], Any] = reap_with_settings):
        self.interval_s = interval_s
        self._run_pass = run_pass
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sdft-reaper", daemon=True)

    def start(self) -> ReaperThread:
        logger.info("reaper started (every %.1f s)", self.interval_s)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)

    def _loop(self) -> None:
        failures = 0
        while not self._stop.wait(self.interval_s):
            try:
                self._run_pass()
                failures = 0
            except Exception as error:  # noqa: BLE001 - the next pass tries again
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    logger.warning(
                        "reaper pass failed (%d in a row): %s: %s",
                        failures,
                        type(error).__name__,
                        error,
                    )
