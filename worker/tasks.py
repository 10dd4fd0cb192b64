"""Celery tasks. They take a job id, re-read the job and act only after claiming it."""

from __future__ import annotations

import logging
import os
import socket

from celery import Task

from worker.celery_app import REAP_TASK, TRAIN_TASK, celery_app
from worker.retry import is_transient

logger = logging.getLogger(__name__)

# Seconds before a task whose claim failed on an unreachable database runs again.
CLAIM_RETRY_COUNTDOWN_S = 30


def worker_identity(hostname: str | None) -> str:
    """Name this worker process in `jobs.worker_id`: the Celery node name and the pid."""
    return f"{hostname or socket.gethostname()}/{os.getpid()}"


@celery_app.task(
    name=TRAIN_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    max_retries=None,
)
def train_job(self: Task, job_id: str) -> str:
    """Claim the job and run it to an end state. A delivery of a job that is finished or held by
    a live worker is dropped (the claim fails), so redelivery is safe."""
    from worker.runner import JobRunner
    from worker.services import redis_client, session_factory, settings, storage

    try:
        runner = JobRunner(
            job_id,
            worker_id=worker_identity(self.request.hostname),
            settings=settings(),
            session_factory=session_factory(),
            storage=storage(),
            redis_client=redis_client(),
        )
        outcome = runner.run()
    except Exception as error:
        if not is_transient(error):
            raise
        # The claim could not reach the database even after retries. Running the task again
        # later keeps the job from being stranded in `queued`.
        logger.warning(
            "job %s: claim failed (%s: %s); retrying the task in %d s",
            job_id,
            type(error).__name__,
            error,
            CLAIM_RETRY_COUNTDOWN_S,
        )
        raise self.retry(exc=error, countdown=CLAIM_RETRY_COUNTDOWN_S) from error
    return outcome.status


@celery_app.task(name=REAP_TASK, ignore_result=True)
def reap_jobs() -> dict[str, list[str]]:
    """Run one reaper pass, for deployments that schedule it with `celery beat`."""
    from worker.reaper import reap_with_settings

    report = reap_with_settings()
    return {
        "requeued": report.requeued,
        "failed": report.failed,
        "cancelled": report.cancelled,
        "resent": report.resent,
    }
