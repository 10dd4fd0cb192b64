"""Job operations behind the routes: submit, list, cancel, read metrics, events and artifacts."""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass
from typing import Any

import redis
from botocore.exceptions import ClientError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.db.models import ACTIVE_STATUSES, Job, JobEvent, JobMetric, Tenant
from api.errors import Conflict, LimitExceeded, NotFound, ValidationFailed
from api.logging_utils import job_logger
from api.services import queue
from api.services.datasets import get_dataset
from api.services.jobs import add_event, get_job_for_update, transition
from api.services.models import resolve_model
from api.settings import Settings
from api.storage import Storage, merged_prefix
from sdft.config import ConfigError, SDFTConfig

logger = logging.getLogger(__name__)


def validate_config(raw: Any) -> SDFTConfig:
    """Build the full config from the request's options; every bad option is named."""
    if raw is None:
        raw = {}
    try:
        return SDFTConfig.from_dict(raw)
    except ConfigError as exc:
        raise ValidationFailed(
            "invalid config: " + "; ".join(exc.problems) + "; fix these options and resubmit",
            problems=[f"config.{p}" for p in exc.problems],
        ) from exc
    except TypeError as exc:
        raise ValidationFailed(f"invalid config: {exc}", problems=[f"config: {exc}"]) from exc


def validate_model(name: str, settings: Settings, storage: Storage) -> str:
    """Check that the model exists; return its canonical name."""
    ref = resolve_model(name, settings)
    if ref.kind == "s3":
        key = f"{ref.prefix}config.json"
        try:
            storage.client.head_object(Bucket=ref.bucket, Key=key)
        except ClientError as exc:
            raise ValidationFailed(
                f"model {name!r} is invalid: s3://{ref.bucket}/{key} is not readable "
                f"({exc.response.get('Error', {}).get('Code', 'error')}); upload the model "
                "folder there or use a folder name under SDFT_MODELS_DIR",
                problems=[f"model={name!r}: config.json not found"],
            ) from exc
    return ref.name


@dataclass(frozen=True)
class JobSubmission:
    tenant_id: str
    dataset_id: str
    model: str
    config: SDFTConfig


def insert_job(session: Session, submission: JobSubmission, settings: Settings) -> Job:
    """Insert a queued job after the per-tenant in-flight check; the caller commits."""
    # Lock the tenant row so that two concurrent submissions cannot both pass the count.
    session.scalars(select(Tenant).where(Tenant.id == submission.tenant_id).with_for_update()).one()
    get_dataset(session, submission.tenant_id, submission.dataset_id)
    in_flight = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.tenant_id == submission.tenant_id, Job.status.in_(ACTIVE_STATUSES))
    )
    limit = settings.max_jobs_in_flight_per_tenant
    if in_flight is not None and in_flight >= limit:
        raise LimitExceeded(
            f"too many jobs in flight: {in_flight} of at most {limit} per tenant "
            "(SDFT_MAX_JOBS_IN_FLIGHT_PER_TENANT); wait for one to finish or cancel one"
        )

    job = Job(
        tenant_id=submission.tenant_id,
        dataset_id=submission.dataset_id,
        model=submission.model,
        config=submission.config.to_dict(),
        status="queued",
        total_steps=submission.config.max_steps,
        time_limit_s=settings.job_time_limit_s,
    )
    session.add(job)
    session.flush()
    add_event(session, job.id, "status_changed", "created -> queued", {"to": "queued"})
    return job


def enqueue(session: Session, job: Job) -> None:
    """Send the committed job to the train queue and record the task id.

    If the broker cannot take the message, the job fails with a readable error, because no
    worker would ever receive it.
    """
    log = job_logger(logger, job.id)
    try:
        task_id = queue.enqueue_training(job.id)
    except Exception as exc:  # noqa: BLE001 - any broker failure has the same outcome
        log.error("failed to enqueue: %s", exc)
        locked = get_job_for_update(session, job.id)
        if locked.status == "queued":
            transition(
                session,
                locked,
                "failed",
                error="the job could not be queued because the message broker failed; resubmit it",
            )
        session.commit()
        return
    job.celery_task_id = task_id
    session.commit()
    log.info("queued as Celery task %s", task_id)


def get_job(session: Session, tenant_id: str, job_id: str) -> Job:
    job = session.scalars(
        select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id)
    ).one_or_none()
    if job is None:
        raise NotFound(f"job {job_id!r} not found; list your jobs with GET /jobs")
    return job


def list_jobs(
    session: Session, tenant_id: str, *, after: str | None, limit: int, status: str | None
) -> tuple[list[Job], bool]:
    """Return a page of the tenant's jobs, newest first, and whether more follow."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if status:
        query = query.where(Job.status == status)
    if after:
        query = query.where(Job.id < after)
    rows = list(session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def cancel_job(session: Session, redis_client: redis.Redis, tenant_id: str, job_id: str) -> Job:
    """Cancel a queued job at once, or ask the worker to stop a running one."""
    get_job(session, tenant_id, job_id)
    job = get_job_for_update(session, job_id)
    if job.is_terminal:
        raise Conflict(
            f"job {job_id} is already {job.status} and cannot be cancelled; "
            "submit a new job to train again"
        )
    if job.status == "cancelling":
        session.commit()
        return job
    if job.status == "queued":
        transition(session, job, "cancelled", event_data={"requested_by": "api"})
        session.commit()
        return job

    transition(session, job, "cancelling", event_data={"requested_by": "api"})
    session.commit()
    queue.publish_cancel(redis_client, job_id)
    return job


def list_metrics(
    session: Session, job_id: str, *, after_step: int | None, limit: int
) -> tuple[list[JobMetric], bool]:
    query = select(JobMetric).where(JobMetric.job_id == job_id)
    if after_step is not None:
        query = query.where(JobMetric.step > after_step)
    rows = list(session.scalars(query.order_by(JobMetric.step).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def list_events(
    session: Session, job_id: str, *, after: int | None, limit: int
) -> tuple[list[JobEvent], bool]:
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if after is not None:
        query = query.where(JobEvent.id > after)
    rows = list(session.scalars(query.order_by(JobEvent.id).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def check_artifact_path(path: str) -> str:
    """Reject paths that could leave the merged-model folder."""
    normalized = posixpath.normpath(path) if path else ""
    bad = (
        not path
        or "\\" in path
        or "\x00" in path
        or path.startswith("/")
        or any(part in {"", ".", ".."} for part in path.split("/"))
        or normalized != path
    )
    if bad:
        raise ValidationFailed(
            f"artifact path {path!r} is invalid: use a relative path without '.' or '..' "
            "segments, as listed by GET /jobs/{id}/artifacts",
            problems=[f"path={path!r}: invalid"],
        )
    return path


def read_manifest(storage: Storage, job_id: str) -> list[dict[str, Any]]:
    """Return the merged model's files; empty until the worker has written the manifest."""
    return storage.read_manifest(job_id) or []


def artifact_key(job_id: str, path: str) -> str:
    return merged_prefix(job_id) + path
