"""Job state machine and model resolution."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from api.db.models import Dataset, Job, JobEvent
from api.db.session import session_scope
from api.errors import InvalidTransition, ValidationFailed
from api.services.jobs import add_event, get_job_for_update, transition
from api.services.models import resolve_model
from api.settings import Settings
from tests.fixtures.services import TenantKey


def _insert_job(tenant_id: str) -> str:
    with session_scope() as session:
        dataset = Dataset(
            tenant_id=tenant_id,
            filename="d.jsonl",
            format="jsonl",
            records=1,
            bytes=1,
            sha256="0" * 64,
            s3_key="datasets/x/records.jsonl",
        )
        session.add(dataset)
        session.flush()
        job = Job(
            tenant_id=tenant_id,
            dataset_id=dataset.id,
            model="tiny",
            config={},
            total_steps=3,
            time_limit_s=60,
        )
        session.add(job)
        session.flush()
        return job.id


def test_transition_path_and_events(make_tenant: Callable[[], TenantKey]) -> None:
    job_id = _insert_job(make_tenant().tenant_id)
    for status in ("running", "merging", "uploading", "succeeded"):
        with session_scope() as session:
            transition(session, get_job_for_update(session, job_id), status)

    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert job.status == "succeeded"
        assert job.started_at is not None
        assert job.finished_at is not None
        events = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id)).all()
        assert [e.data["to"] for e in events] == ["running", "merging", "uploading", "succeeded"]


def test_transition_rejects_invalid_move(make_tenant: Callable[[], TenantKey]) -> None:
    job_id = _insert_job(make_tenant().tenant_id)
    with session_scope() as session:
        job = get_job_for_update(session, job_id)
        with pytest.raises(InvalidTransition, match="'queued' to 'succeeded'"):
            transition(session, job, "succeeded")
        assert job.status == "queued"


def test_failed_carries_error(make_tenant: Callable[[], TenantKey]) -> None:
    job_id = _insert_job(make_tenant().tenant_id)
    with session_scope() as session:
        job = get_job_for_update(session, job_id)
        transition(session, job, "failed", error="CUDA out of memory at step 3")
        add_event(session, job_id, "error", "boom", {"step": 3})
    with session_scope() as session:
        assert session.get(Job, job_id).error == "CUDA out of memory at step 3"  # type: ignore[union-attr]


def test_add_event_rejects_unknown_type(make_tenant: Callable[[], TenantKey]) -> None:
    job_id = _insert_job(make_tenant().tenant_id)
    with session_scope() as session, pytest.raises(ValueError, match="unknown job event type"):
        add_event(session, job_id, "exploded")


@pytest.fixture
def model_folder(service_settings: Settings) -> str:
    folder = service_settings.models_dir / "tiny-services"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text("{}")
    return folder.name


def test_resolve_local_model(service_settings: Settings, model_folder: str) -> None:
    ref = resolve_model(model_folder, service_settings)
    assert ref.kind == "local"
    assert ref.local_path == (service_settings.models_dir / model_folder).resolve()


@pytest.mark.parametrize(
    "name",
    ["../etc", "a/b", "..", ".", "/etc", "..\\x", "missing-model", ".hidden", ""],
)
def test_resolve_rejects_bad_names(service_settings: Settings, name: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        resolve_model(name, service_settings)
    if name:
        assert "SDFT_MODELS_DIR" in info.value.message


def test_resolve_rejects_symlink_out(service_settings: Settings, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    link = service_settings.models_dir / "escape"
    if not link.exists():
        os.symlink(outside, link)
    with pytest.raises(ValidationFailed, match="outside the models directory"):
        resolve_model("escape", service_settings)


def test_resolve_s3_uri(service_settings: Settings) -> None:
    ref = resolve_model("s3://models-bucket/org/tiny/", service_settings)
    assert ref.kind == "s3"
    assert ref.bucket == "models-bucket"
    assert ref.prefix == "org/tiny/"
    assert ref.cache_path is not None
    assert ref.cache_path.is_relative_to(service_settings.cache_dir.resolve())
    for bad in ("s3://models-bucket/../x", "s3://Bad_Bucket/x", "s3://models-bucket/"):
        with pytest.raises(ValidationFailed):
            resolve_model(bad, service_settings)


def test_s3_model_outside_allowed_prefixes(service_settings: Settings) -> None:
    with pytest.raises(ValidationFailed, match="outside the allowed prefixes"):
        resolve_model("s3://other-bucket/org/tiny", service_settings)


def test_s3_model_into_tenant_data(service_settings: Settings) -> None:
    bucket = service_settings.s3_bucket
    for name in (f"s3://{bucket}/jobs/job_x/merged", f"s3://{bucket}/datasets/ds_x"):
        with pytest.raises(ValidationFailed, match="cannot be models"):
            resolve_model(name, service_settings)


def test_s3_models_off_by_default(service_settings: Settings) -> None:
    settings = service_settings.model_copy(update={"s3_model_prefixes": []})

    with pytest.raises(ValidationFailed, match="SDFT_S3_MODEL_PREFIXES"):
        resolve_model("s3://models-bucket/org/tiny", settings)
