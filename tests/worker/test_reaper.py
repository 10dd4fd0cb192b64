"""The reaper requeues, fails or cancels jobs whose worker stopped, and enforces time limits."""

from __future__ import annotations

from collections.abc import Callable

from api.db.session import get_sessionmaker
from tests.worker.conftest import job_events, job_row
from worker.reaper import reap

STALE_AFTER_S = 30.0
MAX_ATTEMPTS = 3
ORPHAN_AFTER_S = 600.0


def run_reaper() -> tuple[object, list[str]]:
    sent: list[str] = []

    def enqueue(job_id: str) -> str:
        sent.append(job_id)
        return f"task-of-{job_id}"

    report = reap(
        get_sessionmaker(),
        enqueue,
        stale_after_s=STALE_AFTER_S,
        max_attempts=MAX_ATTEMPTS,
        orphan_after_s=ORPHAN_AFTER_S,
    )
    return report, sent


def test_reaper_requeues_stale_job(make_job: Callable[..., str]) -> None:
    job_id = make_job(
        status="running",
        attempt=1,
        worker_id="dead/1",
        heartbeat_age_s=STALE_AFTER_S + 10,
        started_age_s=120,
        last_checkpoint_step=4,
    )

    report, sent = run_reaper()

    assert job_id in report.requeued
    assert sent.count(job_id) == 1
    row = job_row(job_id)
    assert row.status == "queued"
    assert row.worker_id is None
    assert row.heartbeat_at is None
    assert row.celery_task_id == f"task-of-{job_id}"
    requeued = [e for e in job_events(job_id) if e[0] == "requeued"]
    assert len(requeued) == 1
    assert requeued[0][2]["resume_step"] == 4
    assert "dead/1" in requeued[0][1]


def test_reaper_requeues_stale_uploading_job(make_job: Callable[..., str]) -> None:
    job_id = make_job(
        status="uploading", attempt=1, worker_id="dead/1", heartbeat_age_s=STALE_AFTER_S + 10
    )

    report, sent = run_reaper()

    assert job_id in report.requeued
    assert job_id in sent
    assert job_row(job_id).status == "queued"


def test_reaper_fails_after_max_attempts(make_job: Callable[..., str]) -> None:
    job_id = make_job(
        status="running",
        attempt=MAX_ATTEMPTS,
        worker_id="dead/3",
        heartbeat_age_s=STALE_AFTER_S + 10,
        started_age_s=120,
    )

    report, sent = run_reaper()

    assert job_id in report.failed
    assert job_id not in sent
    row = job_row(job_id)
    assert row.status == "failed"
    assert row.finished_at is not None
    assert f"giving up after {MAX_ATTEMPTS} attempts" in row.error


def test_reaper_fails_job_over_time_limit(make_job: Callable[..., str]) -> None:
    # The heartbeat is fresh: the worker is alive but stuck past the limit and its grace time.
    job_id = make_job(
        status="running",
        attempt=1,
        worker_id="stuck/1",
        heartbeat_age_s=1,
        started_age_s=1000,
        time_limit_s=100,
    )

    report, _ = run_reaper()

    assert job_id in report.failed
    row = job_row(job_id)
    assert row.status == "failed"
    assert "time limit of 100 s exceeded" in row.error


def test_reaper_fails_stale_job_over_time_limit(make_job: Callable[..., str]) -> None:
    job_id = make_job(
        status="running",
        attempt=1,
        worker_id="dead/1",
        heartbeat_age_s=STALE_AFTER_S + 10,
        started_age_s=150,
        time_limit_s=100,
    )

    report, sent = run_reaper()

    assert job_id in report.failed
    assert job_id not in sent
    assert "time limit of 100 s exceeded" in job_row(job_id).error


def test_reaper_cancels_stale_cancelling_job(make_job: Callable[..., str]) -> None:
    job_id = make_job(
        status="cancelling", attempt=1, worker_id="dead/1", heartbeat_age_s=STALE_AFTER_S + 10
    )

    report, sent = run_reaper()

    assert job_id in report.cancelled
    assert job_id not in sent
    assert job_row(job_id).status == "cancelled"


def test_reaper_leaves_live_jobs(make_job: Callable[..., str]) -> None:
    running = make_job(
        status="running", attempt=1, worker_id="live/1", heartbeat_age_s=1, started_age_s=10
    )
    queued = make_job()

    report, sent = run_reaper()

    assert running not in report.requeued + report.failed + report.cancelled
    assert queued not in report.resent
    assert running not in sent
    assert queued not in sent
    assert job_row(running).status == "running"
    assert job_row(running).worker_id == "live/1"


def age_job(job_id: str, seconds: float) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from api.db.models import Job
    from api.db.session import session_scope

    with session_scope() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(updated_at=datetime.now(UTC) - timedelta(seconds=seconds))
        )


def test_reaper_sends_unsent_queued_job(make_job: Callable[..., str]) -> None:
    # A requeue whose send failed leaves the job queued without a task id.
    unsent = make_job()
    sent_before = make_job(celery_task_id="task-from-api")
    age_job(unsent, STALE_AFTER_S + 5)
    age_job(sent_before, STALE_AFTER_S + 5)

    report, sent = run_reaper()

    assert unsent in report.resent
    assert sent.count(unsent) == 1
    assert sent_before not in sent
    assert job_row(unsent).celery_task_id == f"task-of-{unsent}"
    assert job_row(sent_before).celery_task_id == "task-from-api"


def test_reaper_resends_long_queued_job(make_job: Callable[..., str]) -> None:
    # The broker may have lost the message (a Redis restart without persistence).
    job_id = make_job(celery_task_id="task-from-api")
    age_job(job_id, ORPHAN_AFTER_S + 60)

    report, sent = run_reaper()
    second_report, second_sent = run_reaper()

    assert job_id in report.resent
    assert sent.count(job_id) == 1
    # The first pass touched updated_at, so the next pass waits a full delay again.
    assert job_id not in second_report.resent
    assert job_id not in second_sent
