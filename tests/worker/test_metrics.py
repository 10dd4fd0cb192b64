"""Metric rows: upserted per step, published to Redis, fenced to the owning attempt."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import redis
from sqlalchemy import select

from api.db.models import JobMetric
from api.db.session import get_sessionmaker, session_scope
from api.settings import Settings
from worker.jobstore import AttemptStore, JobLost, claim_job
from worker.metrics import MetricsWriter


def claimed_store(job_id: str, worker_id: str = "w1/1") -> AttemptStore:
    claimed = claim_job(get_sessionmaker(), job_id, worker_id, 30.0)
    assert claimed is not None
    return AttemptStore(get_sessionmaker(), claimed, worker_id)


def stored_metrics(job_id: str) -> list[tuple[int, dict]]:
    with session_scope() as session:
        rows = session.scalars(
            select(JobMetric).where(JobMetric.job_id == job_id).order_by(JobMetric.step)
        ).all()
        return [(row.step, row.metrics) for row in rows]


def test_upsert_replaces_same_step(make_job: Callable[..., str]) -> None:
    job_id = make_job()
    store = claimed_store(job_id)

    store.upsert_metrics([(1, {"loss": 1.0}), (2, {"loss": 2.0})])
    store.upsert_metrics([(2, {"loss": 0.5}), (3, {"loss": 3.0})])

    assert stored_metrics(job_id) == [(1, {"loss": 1.0}), (2, {"loss": 0.5}), (3, {"loss": 3.0})]


def test_delete_metrics_after_checkpoint(make_job: Callable[..., str]) -> None:
    job_id = make_job()
    store = claimed_store(job_id)
    store.upsert_metrics([(step, {"loss": float(step)}) for step in range(1, 6)])

    deleted = store.delete_metrics_after(2)

    assert deleted == 3
    assert [step for step, _ in stored_metrics(job_id)] == [1, 2]


def test_writer_batches_and_publishes(
    make_job: Callable[..., str], service_settings: Settings
) -> None:
    job_id = make_job()
    store = claimed_store(job_id)
    client = redis.Redis.from_url(service_settings.redis_url_value)
    channel = f"sdft:jobs:{job_id}:metrics"
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    writer = MetricsWriter(store, client, batch_size=3, channel=channel, max_delay_s=3600)

    writer.add(1, {"loss": 1.0, "kl/reverse": float("nan")})
    writer.add(2, {"loss": 2.0})
    assert stored_metrics(job_id) == []
    writer.add(3, {"loss": 3.0})

    assert [step for step, _ in stored_metrics(job_id)] == [1, 2, 3]
    # jsonb has no NaN: it is stored as null.
    assert stored_metrics(job_id)[0][1] == {"loss": 1.0, "kl/reverse": None}
    published = []
    deadline = time.monotonic() + 5
    while len(published) < 3 and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.5)
        if message and message["type"] == "message":
            published.append(json.loads(message["data"]))
    assert [row["step"] for row in published] == [1, 2, 3]
    assert published[1]["metrics"] == {"loss": 2.0}
    assert "created_at" in published[0]
    pubsub.close()


def test_writer_keeps_rows_when_redis_is_down(make_job: Callable[..., str]) -> None:
    job_id = make_job()
    store = claimed_store(job_id)
    # Nothing listens on port 1: every publish fails, and the rows must still be stored.
    unreachable = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    writer = MetricsWriter(store, unreachable, batch_size=1, channel="unused")

    writer.add(1, {"loss": 1.0})
    writer.add(2, {"loss": 2.0})

    assert [step for step, _ in stored_metrics(job_id)] == [1, 2]


def test_old_attempt_is_fenced_out(make_job: Callable[..., str]) -> None:
    job_id = make_job()
    old = claimed_store(job_id, "w1/1")
    with session_scope() as session:
        from api.db.models import Job

        job = session.get(Job, job_id)
        job.heartbeat_at = None  # make the first attempt look dead
    new = claimed_store(job_id, "w2/2")

    with pytest.raises(JobLost):
        old.upsert_metrics([(1, {"loss": 9.0})])
    with pytest.raises(JobLost):
        old.record_progress(1)
    assert old.heartbeat() is False
    new.upsert_metrics([(1, {"loss": 1.0})])
    assert new.heartbeat() is True
    assert stored_metrics(job_id) == [(1, {"loss": 1.0})]
