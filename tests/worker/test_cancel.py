"""Cancel in every state ends the job in `cancelled` and returns the runner to its caller.

The cancel is the API's own transition, issued at a chosen moment from inside the run: after
the first step (running), when the merge starts (merging) and when the first merged file is
about to upload (uploading).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from sqlalchemy import func, select

from api.db.models import Artifact, JobMetric
from api.db.session import get_sessionmaker, session_scope
from api.settings import Settings
from api.storage import Storage
from tests.worker.conftest import job_events, job_row, request_cancel
from worker.runner import JobRunner


def build(runner_class: type[JobRunner], job_id: str, settings: Settings, **kwargs: Any):
    return runner_class(
        job_id,
        worker_id="test/1",
        settings=settings,
        session_factory=get_sessionmaker(),
        storage=kwargs.pop("storage", Storage.from_settings(settings)),
        **kwargs,
    )


def count_rows(model: type, job_id: str) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(model).where(model.job_id == job_id))


def assert_cancelled_without_artifact(job_id: str, settings: Settings) -> None:
    row = job_row(job_id)
    assert row.status == "cancelled"
    assert row.finished_at is not None
    assert row.error is None
    assert count_rows(Artifact, job_id) == 0
    storage = Storage.from_settings(settings)
    assert storage.read_manifest(job_id) is None
    assert list(storage.list_prefix(f"jobs/{job_id}/merged/")) == []


def test_cancel_queued_job(make_job: Callable[..., str], service_settings: Settings) -> None:
    job_id = make_job()

    assert request_cancel(job_id) == "cancelled"
    outcome = build(JobRunner, job_id, service_settings).run()

    assert outcome.status == "skipped"
    assert job_row(job_id).status == "cancelled"
    assert job_row(job_id).attempt == 0


class CancelAfterFirstStep(JobRunner):
    def _on_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        super()._on_metrics(step, metrics)
        if step == 1:
            request_cancel(self.job_id)


def test_cancel_running_job_within_one_step(
    make_job: Callable[..., str],
    service_settings: Settings,
    tiny_model_name: str,
    dataset_key: str,
) -> None:
    job_id = make_job(model=tiny_model_name, dataset_key=dataset_key)

    outcome = build(CancelAfterFirstStep, job_id, service_settings).run()

    assert outcome.status == "cancelled"
    assert_cancelled_without_artifact(job_id, service_settings)
    assert job_row(job_id).current_step == 1
    assert count_rows(JobMetric, job_id) == 1
    statuses = [data["to"] for kind, _, data in job_events(job_id) if kind == "status_changed"]
    assert statuses == ["running", "cancelling", "cancelled"]


class CancelWhenMerging(JobRunner):
    def _train(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        result = super()._train(*args, **kwargs)
        run = result["run"]
        save_merged = run.save_merged

        def cancel_then_merge(out_dir: Path) -> Path:
            assert job_row(self.job_id).status == "merging"
            request_cancel(self.job_id)
            return save_merged(out_dir)

        run.save_merged = cancel_then_merge
        return result


def test_cancel_merging_job(
    make_job: Callable[..., str],
    service_settings: Settings,
    tiny_model_name: str,
    dataset_key: str,
) -> None:
    job_id = make_job(model=tiny_model_name, dataset_key=dataset_key, config={"max_steps": 1})

    outcome = build(CancelWhenMerging, job_id, service_settings).run()

    assert outcome.status == "cancelled"
    assert_cancelled_without_artifact(job_id, service_settings)
    statuses = [data["to"] for kind, _, data in job_events(job_id) if kind == "status_changed"]
    assert statuses == ["running", "merging", "cancelling", "cancelled"]


class CancelOnFirstUpload(Storage):
    """The real storage, except that the API cancels the job as the first merged file starts."""

    job_id = ""

    def upload_fileobj(self, key: str, fileobj: IO[bytes]) -> tuple[int, str]:
        if "/merged/" in key and job_row(self.job_id).status == "uploading":
            request_cancel(self.job_id)
        return super().upload_fileobj(key, fileobj)


def test_cancel_uploading_job(
    make_job: Callable[..., str],
    service_settings: Settings,
    tiny_model_name: str,
    dataset_key: str,
) -> None:
    job_id = make_job(model=tiny_model_name, dataset_key=dataset_key, config={"max_steps": 1})
    real = Storage.from_settings(service_settings)
    storage = CancelOnFirstUpload(real.client, real.bucket)
    storage.job_id = job_id

    outcome = build(JobRunner, job_id, service_settings, storage=storage).run()

    assert outcome.status == "cancelled"
    assert_cancelled_without_artifact(job_id, service_settings)
    statuses = [data["to"] for kind, _, data in job_events(job_id) if kind == "status_changed"]
    assert statuses == ["running", "merging", "uploading", "cancelling", "cancelled"]
    # The cancel came before the second file: only the first one was uploaded, then deleted.
    assert [kind for kind, _, _ in job_events(job_id)].count("artifact_uploaded") == 1
