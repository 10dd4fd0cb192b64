"""The job runner end to end in one process: real training, S3 checkpoints, artifact, resume."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from api.db.models import Artifact, Job, JobMetric
from api.db.session import get_sessionmaker, session_scope
from api.settings import Settings
from api.storage import Storage
from tests.worker.conftest import job_events, job_row
from worker.runner import JobRunner


def make_runner(job_id: str, settings: Settings, worker_id: str = "test/1", **kwargs: Any):
    return JobRunner(
        job_id,
        worker_id=worker_id,
        settings=settings,
        session_factory=get_sessionmaker(),
        storage=Storage.from_settings(settings),
        **kwargs,
    )


def metric_steps(job_id: str) -> list[int]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(JobMetric.step).where(JobMetric.job_id == job_id).order_by(JobMetric.step)
            )
        )


def stored_keys(storage: Storage, prefix: str) -> list[str]:
    return sorted(info.key for info in storage.list_prefix(prefix))


def test_runner_trains_and_uploads_artifact(
    make_job: Callable[..., str],
    service_settings: Settings,
    tiny_model_name: str,
    dataset_key: str,
    tmp_path: Path,
) -> None:
    job_id = make_job(model=tiny_model_name, dataset_key=dataset_key)
    storage = Storage.from_settings(service_settings)

    outcome = make_runner(job_id, service_settings).run()

    assert outcome.status == "succeeded"
    row = job_row(job_id)
    assert row.status == "succeeded"
    assert row.current_step == 3
    assert row.last_checkpoint_step == 3
    assert row.error is None
    assert metric_steps(job_id) == [1, 2, 3]

    kinds = [kind for kind, _, _ in job_events(job_id)]
    assert kinds.count("checkpoint_saved") == 2
    assert "teacher_check" in kinds
    statuses = [data["to"] for kind, _, data in job_events(job_id) if kind == "status_changed"]
    assert statuses == ["running", "merging", "uploading", "succeeded"]

    manifest = storage.read_manifest(job_id)
    assert manifest is not None
    with session_scope() as session:
        artifacts = session.scalars(select(Artifact).where(Artifact.job_id == job_id)).all()
        rows = {a.path: (a.size, a.sha256, a.s3_key) for a in artifacts}
    assert {entry["path"] for entry in manifest} == set(rows)
    assert "config.json" in rows
    assert any(path.endswith(".safetensors") for path in rows)
    for entry in manifest:
        size, sha256, key = rows[entry["path"]]
        local = tmp_path / entry["path"]
        storage.download_file(key, local)
        assert local.stat().st_size == size == entry["size"]
        assert hashlib.sha256(local.read_bytes()).hexdigest() == sha256 == entry["sha256"]
    # Checkpoints are only needed to resume; a finished job keeps none.
    assert stored_keys(storage, f"jobs/{job_id}/checkpoints/") == []


class CrashAfterStep(JobRunner):
    """A runner whose process 'dies' after `crash_step`: no status change, no cleanup in the
    database, exactly what the next attempt finds after a SIGKILL."""

    crash_step = 3

    def _on_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        super()._on_metrics(step, metrics)
        if step == self.crash_step:
            self.metrics.flush()  # the dead attempt's row of step 3 reaches the database
            raise KeyboardInterrupt("simulated worker death")


def test_runner_resumes_from_stored_checkpoint(
    make_job: Callable[..., str],
    service_settings: Settings,
    tiny_model_name: str,
    dataset_key: str,
) -> None:
    job_id = make_job(model=tiny_model_name, dataset_key=dataset_key)
    crashed = CrashAfterStep(
        job_id,
        worker_id="dead/1",
        settings=service_settings,
        session_factory=get_sessionmaker(),
        storage=Storage.from_settings(service_settings),
    )
    try:
        crashed.run()
    except KeyboardInterrupt:
        pass
    row = job_row(job_id)
    assert row.status == "running"
    assert row.last_checkpoint_step == 2
    assert metric_steps(job_id) == [1, 2, 3]
    with session_scope() as session:
        session.get(Job, job_id).heartbeat_at = None  # the dead worker's heartbeat went stale
        step3_before = session.scalars(
            select(JobMetric.created_at).where(JobMetric.job_id == job_id, JobMetric.step == 3)
        ).one()

    outcome = make_runner(job_id, service_settings, worker_id="live/2").run()

    assert outcome.status == "succeeded"
    row = job_row(job_id)
    assert row.attempt == 2
    assert row.worker_id == "live/2"
    assert metric_steps(job_id) == [1, 2, 3]
    with session_scope() as session:
        step3_after = session.scalars(
            select(JobMetric.created_at).where(JobMetric.job_id == job_id, JobMetric.step == 3)
        ).one()
    assert step3_after > step3_before
    events = job_events(job_id)
    restarted = [data for kind, _, data in events if kind == "restarted"]
    assert len(restarted) == 1
    assert restarted[0]["attempt"] == 2
    assert restarted[0]["resume_step"] == 2
    assert restarted[0]["deleted_metric_rows"] == 1
    resumed = [data for kind, _, data in events if kind == "resumed"]
    assert [data["step"] for data in resumed] == [2]
    # The resumed attempt skips the teacher check that the first attempt already ran.
    assert [kind for kind, _, _ in events].count("teacher_check") == 1


def test_runner_fails_on_missing_dataset(
    make_job: Callable[..., str], service_settings: Settings, tiny_model_name: str
) -> None:
    job_id = make_job(model=tiny_model_name, dataset_key="datasets/missing/records.jsonl")

    outcome = make_runner(job_id, service_settings).run()

    assert outcome.status == "failed"
    row = job_row(job_id)
    assert row.status == "failed"
    assert row.error.startswith("ClientError: ")
    assert "404" in row.error
    assert service_settings.s3_secret_access_key.get_secret_value() not in row.error
    errors = [data for kind, _, data in job_events(job_id) if kind == "error"]
    assert errors == [{"type": "ClientError"}]


def test_runner_fails_past_time_limit(
    make_job: Callable[..., str],
    service_settings: Settings,
    tiny_model_name: str,
    dataset_key: str,
) -> None:
    job_id = make_job(
        model=tiny_model_name,
        dataset_key=dataset_key,
        time_limit_s=5,
        started_age_s=60,
    )

    outcome = make_runner(job_id, service_settings).run()

    assert outcome.status == "failed"
    row = job_row(job_id)
    assert "time limit of 5 s exceeded at step 0" in row.error
    assert metric_steps(job_id) == []


def test_runner_skips_job_held_by_live_worker(
    make_job: Callable[..., str], service_settings: Settings
) -> None:
    job_id = make_job(status="running", attempt=1, worker_id="live/1", heartbeat_age_s=0)

    outcome = make_runner(job_id, service_settings, worker_id="other/2").run()

    assert outcome.status == "skipped"
    assert job_row(job_id).worker_id == "live/1"
