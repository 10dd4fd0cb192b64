"""Factories for worker tests: jobs in any state, on the real PostgreSQL of the test run."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from api.settings import Settings
from sdft.config import SDFTConfig
from tests.fixtures.services import TenantKey

# Three steps with a checkpoint after step 2: the least that shows a resume past a checkpoint.
TINY_CONFIG = {
    "max_steps": 3,
    "max_seq_length": 1024,
    "max_teacher_prompt_tokens": 768,
    "max_rollout_tokens": 8,
    "lora_rank": 4,
    "lora_alpha": 8,
    "warmup_steps": 0,
    "learning_rate": 1e-3,
    "checkpoint_every": 2,
    "gradient_checkpointing": False,
    "device": "cpu",
    "dtype": "float32",
}


TINY_MODEL_NAME = "tiny-qwen3_5"


@pytest.fixture(scope="session")
def tiny_model_name(tiny_qwen3_5_dir: Path, service_settings: Settings) -> str:
    """Copy the tiny qwen3_5 model into the models folder of the run; return its name."""
    target = service_settings.models_dir / TINY_MODEL_NAME
    if not target.exists():
        shutil.copytree(tiny_qwen3_5_dir, target)
    return TINY_MODEL_NAME


def short_records(count: int = 4) -> list[dict[str, Any]]:
    """Short chat records: a training step on them costs a fraction of one on the drone traces,
    whose 16 tool schemas make prompts of about 2,000 tokens."""
    return [
        {
            "messages": [
                {"role": "system", "content": "You are a flight controller assistant."},
                {"role": "user", "content": f"Set the altitude to {100 + 10 * i} meters."},
                {"role": "assistant", "content": f"Altitude set to {100 + 10 * i} meters."},
            ]
        }
        for i in range(count)
    ]


@pytest.fixture(scope="session")
def dataset_key(service_settings: Settings) -> str:
    """Upload short records to S3 as a dataset's records.jsonl; return the key."""
    from api.storage import Storage

    key = "datasets/ds_worker_tests/records.jsonl"
    body = "".join(json.dumps(record) + "\n" for record in short_records())
    Storage.from_settings(service_settings).upload_fileobj(key, io.BytesIO(body.encode()))
    return key


@pytest.fixture
def make_job(tenant: TenantKey) -> Callable[..., str]:
    """Factory: insert a dataset row and a job row of the test's tenant; return the job id.

    Keyword arguments set job columns (status, attempt, worker_id, heartbeat_age_s, ...);
    `heartbeat_age_s` and `started_age_s` place the timestamps that many seconds in the past.
    """
    from api.db.models import Dataset, Job
    from api.db.session import session_scope

    def factory(
        *,
        dataset_key: str = "datasets/none/records.jsonl",
        model: str = "tiny-qwen3_5",
        config: dict[str, Any] | None = None,
        heartbeat_age_s: float | None = None,
        started_age_s: float | None = None,
        **columns: Any,
    ) -> str:
        full_config = SDFTConfig.from_dict({**TINY_CONFIG, **(config or {})}).to_dict()
        now = datetime.now(UTC)
        with session_scope() as session:
            dataset = Dataset(
                tenant_id=tenant.tenant_id,
                filename="records.jsonl",
                format="openai_chat",
                records=8,
                bytes=1,
                sha256="0" * 64,
                s3_key=dataset_key,
            )
            session.add(dataset)
            session.flush()
            job = Job(
                tenant_id=tenant.tenant_id,
                dataset_id=dataset.id,
                model=model,
                config=full_config,
                total_steps=full_config["max_steps"],
                time_limit_s=columns.pop("time_limit_s", 3600),
                **columns,
            )
            if heartbeat_age_s is not None:
                job.heartbeat_at = now - timedelta(seconds=heartbeat_age_s)
            if started_age_s is not None:
                job.started_at = now - timedelta(seconds=started_age_s)
            session.add(job)
            session.flush()
            return job.id

    return factory


def job_row(job_id: str) -> Any:
    from api.db.models import Job
    from api.db.session import session_scope

    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def job_events(job_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    from sqlalchemy import select

    from api.db.models import JobEvent
    from api.db.session import session_scope

    with session_scope() as session:
        rows = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        ).all()
        return [(row.type, row.message, row.data) for row in rows]


def request_cancel(job_id: str) -> str:
    """Cancel the way the API does: queued jobs end at once, active ones go to cancelling."""
    from api.db.session import session_scope
    from api.services.jobs import get_job_for_update, transition

    with session_scope() as session:
        job = get_job_for_update(session, job_id)
        transition(session, job, "cancelled" if job.status == "queued" else "cancelling")
        return job.status
