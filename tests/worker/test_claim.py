"""The claim: one UPDATE decides which delivery of a job runs it."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from api.db.session import get_sessionmaker
from tests.worker.conftest import job_events, job_row
from worker.jobstore import claim_job

STALE_AFTER_S = 30.0


def test_claim_queued_job(make_job: Callable[..., str]) -> None:
    job_id = make_job()

    claimed = claim_job(get_sessionmaker(), job_id, "w1/100", STALE_AFTER_S)

    assert claimed is not None
    assert claimed.attempt == 1
    assert claimed.previous_status == "queued"
    row = job_row(job_id)
    assert row.status == "running"
    assert row.worker_id == "w1/100"
    assert row.attempt == 1
    assert row.started_at is not None
    assert row.heartbeat_at is not None
    events = job_events(job_id)
    assert [(e[0], e[2]["from"], e[2]["to"]) for e in events] == [
        ("status_changed", "queued", "running")
    ]


def test_concurrent_claims_one_wins(make_job: Callable[..., str]) -> None:
    job_id = make_job()
    sessions = get_sessionmaker()
    workers = 6
    barrier = threading.Barrier(workers)
    results: dict[str, object] = {}

    def claim(name: str) -> None:
        barrier.wait()
        results[name] = claim_job(sessions, job_id, name, STALE_AFTER_S)

    threads = [threading.Thread(target=claim, args=(f"w{i}/1",)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [name for name, claimed in results.items() if claimed is not None]
    assert len(results) == workers
    assert len(winners) == 1
    row = job_row(job_id)
    assert row.worker_id == winners[0]
    assert row.attempt == 1


def test_claim_skips_live_running_job(make_job: Callable[..., str]) -> None:
    job_id = make_job(status="running", attempt=1, worker_id="w1/1", heartbeat_age_s=1)

    assert claim_job(get_sessionmaker(), job_id, "w2/2", STALE_AFTER_S) is None
    row = job_row(job_id)
    assert row.worker_id == "w1/1"
    assert row.attempt == 1


def test_claim_takes_over_stale_running_job(make_job: Callable[..., str]) -> None:
    job_id = make_job(
        status="running",
        attempt=1,
        worker_id="w1/1",
        heartbeat_age_s=STALE_AFTER_S + 5,
        started_age_s=100,
        last_checkpoint_step=2,
    )

    claimed = claim_job(get_sessionmaker(), job_id, "w2/2", STALE_AFTER_S)

    assert claimed is not None
    assert claimed.attempt == 2
    assert claimed.previous_status == "running"
    assert claimed.last_checkpoint_step == 2
    row = job_row(job_id)
    assert row.worker_id == "w2/2"
    assert row.status == "running"


@pytest.mark.parametrize(
    "status", ["succeeded", "failed", "cancelled", "cancelling", "merging", "uploading"]
)
def test_claim_skips_other_states(make_job: Callable[..., str], status: str) -> None:
    # Stale merging/uploading jobs go back to the queue through the reaper, not the claim.
    job_id = make_job(status=status, attempt=1, worker_id="w1/1", heartbeat_age_s=3600)

    assert claim_job(get_sessionmaker(), job_id, "w2/2", STALE_AFTER_S) is None
    assert job_row(job_id).status == status
