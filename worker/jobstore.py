"""Database operations of one job attempt: claim, progress, fencing, metrics, checkpoints, status.

Every write that belongs to an attempt matches on `(id, worker_id, attempt)`, the attempt's
fencing token. When the reaper or a second worker takes a job over, the old attempt's writes
match no row, and the old attempt stops instead of overwriting the new one's state.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, text
from sqlalchemy.orm import Session

from worker.retry import call_with_retry

logger = logging.getLogger(__name__)


SessionFactory = Callable[[], Session]


class JobLost(Exception):
    """This attempt no longer owns the job: the reaper or another worker took it over."""


@dataclass(frozen=True)
class ClaimedJob:
    """The job row as the claim left it, plus the status it had before."""

    id: str
    attempt: int
    previous_status: str
    tenant_id: Any
    dataset_id: str
    model: str
    config: dict[str, Any]
    total_steps: int | None
    time_limit_s: int | None
    last_checkpoint_step: int | None
    last_checkpoint_key: str | None
    started_at: datetime


@dataclass(frozen=True)
class JobProgress:
    """Result of the per-step update: the row's status and whether the time limit passed."""

    status: str
    cancel_requested: bool
    over_time_limit: bool


_CLAIM_SQL = text(
    """
    WITH previous AS (
        SELECT id, status FROM jobs WHERE id = :job_id FOR UPDATE
    )
    UPDATE jobs AS j
    SET status = 'running',
        worker_id = :worker_id,
        attempt = j.attempt + 1,
        started_at = COALESCE(j.started_at, now()),
        heartbeat_at = now(),
        updated_at = now()
    FROM previous
    WHERE j.id = previous.id
      AND (
        j.status = 'queued'
        OR (
          j.status = 'running'
          AND (j.heartbeat_at IS NULL
               OR j.heartbeat_at < now() - make_interval(secs => :stale_after_s))
        )
      )
    RETURNING j.id, j.attempt, previous.status AS previous_status, j.tenant_id, j.dataset_id,
              j.model, j.config, j.total_steps, j.time_limit_s, j.last_checkpoint_step,
              j.last_checkpoint_key, j.started_at
    """
)

_PROGRESS_SQL = text(
    """
    UPDATE jobs
    SET heartbeat_at = now(),
        current_step = GREATEST(COALESCE(:step, current_step), 0),
        updated_at = now()
    WHERE id = :job_id AND worker_id = :worker_id AND attempt = :attempt
      AND status IN ('running', 'cancelling', 'merging', 'uploading')
    RETURNING status,
              cancel_requested_at IS NOT NULL AS cancel_requested,
              (time_limit_s IS NOT NULL
               AND now() > started_at + make_interval(secs => time_limit_s)) AS over_time_limit
    """
)

_HEARTBEAT_SQL = text(
    """
    UPDATE jobs SET heartbeat_at = now()
    WHERE id = :job_id AND worker_id = :worker_id AND attempt = :attempt
      AND status IN ('running', 'cancelling', 'merging', 'uploading')
    RETURNING status
    """
)

_UPSERT_METRICS_SQL = text(
    """
    INSERT INTO job_metrics (job_id, step, metrics, created_at)
    SELECT :job_id, step, metrics, now()
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(step int, metrics jsonb)
    ON CONFLICT (job_id, step) DO UPDATE
    SET metrics = EXCLUDED.metrics, created_at = EXCLUDED.created_at
    RETURNING step, metrics, created_at
    """
)


def claim_job(
    session_factory: SessionFactory, job_id: str, worker_id: str, stale_after_s: float
) -> ClaimedJob | None:
    """Claim `job_id` for this worker, or return None when it is not claimable.

    A job is claimable when queued, or when running with a heartbeat older than `stale_after_s`
    (its worker died). A stale job in `merging` or `uploading` goes back through `queued` by the
    reaper, because the state machine has no move from those states to `running`.
    One UPDATE under a row lock decides, so of two concurrent claims exactly one wins. The
    other one finds the winner's fresh heartbeat and returns None.
    """
    from api.services.jobs import add_event

    def attempt_claim() -> ClaimedJob | None:
        with session_factory() as session, session.begin():
            row = (
                session.execute(
                    _CLAIM_SQL,
                    {
                        "job_id": job_id,
                        "worker_id": worker_id,
                        "stale_after_s": float(stale_after_s),
                    },
                )
                .mappings()
                .one_or_none()
            )
            if row is None:
                return None
            claimed = ClaimedJob(**dict(row))
            add_event(
                session,
                job_id,
                "status_changed",
                f"{claimed.previous_status} -> running "
                f"(attempt {claimed.attempt}, worker {worker_id})",
                {
                    "from": claimed.previous_status,
                    "to": "running",
                    "attempt": claimed.attempt,
                    "worker_id": worker_id,
                },
            )
            return claimed

    return call_with_retry(f"claim job {job_id}", attempt_claim)


def read_job_status(session_factory: SessionFactory, job_id: str) -> str | None:
    with session_factory() as session:
        return session.execute(
            text("SELECT status FROM jobs WHERE id = :job_id"), {"job_id": job_id}
        ).scalar_one_or_none()


class AttemptStore:
    """The database side of one claimed attempt of a job."""

    def __init__(self, session_factory: SessionFactory, job: ClaimedJob, worker_id: str):
        self.session_factory = session_factory
        self.job = job
        self.worker_id = worker_id

    @property
    def _fence(self) -> dict[str, Any]:
        return {"job_id": self.job.id, "worker_id": self.worker_id, "attempt": self.job.attempt}

    @contextmanager
    def owned_session(self, *, lock: bool = True) -> Iterator[tuple[Session, Any]]:
        """Open a transaction with the job row locked; raise JobLost unless this attempt owns it."""
        from api.db.models import Job

        with self.session_factory() as session, session.begin():
            query = session.query(Job).filter(Job.id == self.job.id)
            job = (query.with_for_update() if lock else query).one_or_none()
            if job is None or job.worker_id != self.worker_id or job.attempt != self.job.attempt:
                raise JobLost(f"job {self.job.id} was taken over by another attempt")
            yield session, job

    def heartbeat(self) -> bool:
        """Refresh heartbeat_at; return False when this attempt no longer owns the job."""
        with self.session_factory() as session, session.begin():
            return session.execute(_HEARTBEAT_SQL, self._fence).first() is not None

    def record_progress(self, step: int | None) -> JobProgress:
        """Write the current step and a heartbeat, and read back what decides whether to stop.

        Raises JobLost when the row no longer belongs to this attempt.
        """
        with self.session_factory() as session, session.begin():
            row = session.execute(_PROGRESS_SQL, {**self._fence, "step": step}).first()
        if row is None:
            raise JobLost(f"job {self.job.id} no longer belongs to attempt {self.job.attempt}")
        return JobProgress(
            status=row.status,
            cancel_requested=bool(row.cancel_requested) or row.status == "cancelling",
            over_time_limit=bool(row.over_time_limit),
        )

    def set_total_steps(self, total_steps: int) -> None:
        def update() -> None:
            with self.owned_session() as (_, job):
                job.total_steps = total_steps

        call_with_retry(f"set total_steps of job {self.job.id}", update)

    def upsert_metrics(self, rows: Sequence[tuple[int, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Insert metric rows, replacing rows of the same step (a resumed attempt rewrites the
        steps the dead attempt ran after its last checkpoint). Returns the rows as stored."""
        if not rows:
            return []
        payload = json.dumps([{"step": step, "metrics": metrics} for step, metrics in rows])
        with self.owned_session(lock=False) as (session, _):
            stored = (
                session.execute(_UPSERT_METRICS_SQL, {"job_id": self.job.id, "rows": payload})
                .mappings()
                .all()
            )
        return [
            {"step": r["step"], "metrics": r["metrics"], "created_at": r["created_at"].isoformat()}
            for r in stored
        ]

    def delete_metrics_after(self, step: int) -> int:
        """Delete metric rows after `step`, written by a dead attempt past its last checkpoint."""

        def delete() -> int:
            with self.owned_session() as (session, _):
                result = session.execute(
                    text("DELETE FROM job_metrics WHERE job_id = :job_id AND step > :step"),
                    {"job_id": self.job.id, "step": step},
                )
                return int(result.rowcount or 0)

        return call_with_retry(f"delete metrics after step {step} of job {self.job.id}", delete)

    def add_event(self, type_: str, message: str, data: dict[str, Any] | None = None) -> None:
        from api.services.jobs import add_event

        def insert() -> None:
            with self.owned_session(lock=False) as (session, _):
                add_event(session, self.job.id, type_, message, data or {})

        call_with_retry(f"add {type_} event to job {self.job.id}", insert)

    def record_checkpoint(self, step: int, key: str) -> None:
        from api.services.jobs import add_event

        def update() -> None:
            with self.owned_session() as (session, job):
                job.last_checkpoint_step = step
                job.last_checkpoint_key = key
                add_event(
                    session,
                    self.job.id,
                    "checkpoint_saved",
                    f"checkpoint of step {step} stored at {key}",
                    {"step": step, "key": key},
                )

        call_with_retry(f"record checkpoint {step} of job {self.job.id}", update)

    def transition(self, new_status: str, *, error: str | None = None, data: Any = None) -> str:
        """Move the job to `new_status` unless a cancel request came first.

        Returns the status the job has afterwards: `new_status`, or "cancelling" when the API
        asked for a cancel (the caller then ends the job in `cancelled`).
        """
        from api.services.jobs import transition

        def change() -> str:
            with self.owned_session() as (session, job):
                cancel_wins = new_status not in ("cancelled", "failed") and (
                    job.status == "cancelling" or job.cancel_requested_at is not None
                )
                if cancel_wins:
                    return "cancelling"
                if job.status != new_status:
                    transition(session, job, new_status, error=error, event_data=data)
                return new_status

        return call_with_retry(f"move job {self.job.id} to {new_status}", change)

    def replace_artifacts(self, files: Sequence[tuple[str, int, str, str]]) -> None:
        """Store the artifact rows (path, size, sha256, s3_key) of the merged model and mark the
        job succeeded in one transaction, so the rows appear only with a complete artifact."""
        from api.db.models import Artifact
        from api.services.jobs import transition

        def store() -> None:
            with self.owned_session() as (session, job):
                if job.status == "cancelling" or job.cancel_requested_at is not None:
                    raise JobCancelledDuringUpload()
                session.execute(delete(Artifact).where(Artifact.job_id == self.job.id))
                session.add_all(
                    Artifact(job_id=self.job.id, path=path, size=size, sha256=sha256, s3_key=key)
                    for path, size, sha256, key in files
                )
                transition(session, job, "succeeded", event_data={"files": len(files)})

        call_with_retry(f"store artifacts of job {self.job.id}", store)


class JobCancelledDuringUpload(Exception):
    """The API asked for a cancel before the artifact rows were stored."""
