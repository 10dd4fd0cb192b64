"""Job state machine and job events, shared by the API and the worker.

Callers lock the job row with `get_job_for_update` before `transition`, so two processes never
move the same job at once. The status change and its `status_changed` event are written in the
caller's transaction.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db.models import EVENT_TYPES, TERMINAL_STATUSES, Job, JobEvent
from api.errors import InvalidTransition, NotFound
from api.logging_utils import job_logger

logger = logging.getLogger(__name__)

# Every allowed move. A worker that dies mid-run sends the job back to queued (requeue);
# cancelling can still fail when the worker crashes while stopping.
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "failed"}),
    "running": frozenset({"merging", "cancelling", "failed", "queued"}),
    "cancelling": frozenset({"cancelled", "failed"}),
    "merging": frozenset({"uploading", "cancelling", "failed", "queued"}),
    "uploading": frozenset({"succeeded", "cancelling", "failed", "queued"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}


def get_job_for_update(session: Session, job_id: str) -> Job:
    """Load a job with a row lock held until the transaction ends."""
    job = session.scalars(select(Job).where(Job.id == job_id).with_for_update()).one_or_none()
    if job is None:
        raise NotFound(f"job {job_id!r} not found")
    return job


def transition(
    session: Session,
    job: Job,
    new_status: str,
    *,
    error: str | None = None,
    event_data: dict[str, Any] | None = None,
) -> Job:
    """Move `job` to `new_status`, set the matching timestamps and record a status_changed event.

    Raises InvalidTransition when the move is not in ALLOWED_TRANSITIONS; the job is unchanged.
    """
    old_status = job.status
    if new_status not in ALLOWED_TRANSITIONS.get(old_status, frozenset()):
        allowed = ", ".join(sorted(ALLOWED_TRANSITIONS.get(old_status, ()))) or "none"
        raise InvalidTransition(
            f"job {job.id} cannot move from {old_status!r} to {new_status!r} "
            f"(allowed from {old_status!r}: {allowed})"
        )

    now = datetime.now(UTC)
    job.status = new_status
    if new_status == "running" and job.started_at is None:
        job.started_at = now
    if new_status == "cancelling":
        job.cancel_requested_at = now
    if new_status == "failed":
        job.error = error or job.error or "failed without an error message"
    elif error is not None:
        job.error = error
    if new_status in TERMINAL_STATUSES:
        job.finished_at = now
    if new_status == "queued":
        job.worker_id = None
        job.heartbeat_at = None

    data = {"from": old_status, "to": new_status, **(event_data or {})}
    message = f"{old_status} -> {new_status}"
    if new_status == "failed":
        message += f": {job.error}"
    add_event(session, job.id, "status_changed", message, data)
    session.flush()
    job_logger(logger, job.id).info("%s", message)
    return job


def add_event(
    session: Session,
    job_id: str,
    type: str,
    message: str = "",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """Append an event to the job's history in the caller's transaction."""
    if type not in EVENT_TYPES:
        known = ", ".join(EVENT_TYPES)
        raise ValueError(f"unknown job event type {type!r}; expected one of {known}")
    event = JobEvent(job_id=job_id, type=type, message=message, data=data or {})
    session.add(event)
    return event
