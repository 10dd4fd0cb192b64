"""Request and response bodies of the HTTP API (separate from the SQLAlchemy models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from api.db.models import Dataset, Job, JobEvent, JobMetric

T = TypeVar("T")

JobStatus = Literal[
    "queued", "running", "cancelling", "merging", "uploading", "succeeded", "failed", "cancelled"
]


class ErrorDetail(BaseModel):
    code: str = Field(examples=["not_found"])
    message: str = Field(examples=["job 'job_0192…' not found; list your jobs with GET /jobs"])
    problems: list[str] = Field(default_factory=list, examples=[["config.learning_rate=-1: …"]])


class ErrorResponse(BaseModel):
    error: ErrorDetail


class DatasetOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "ds_0193a1b2c3d4e5f60718293a4b5c",
                    "filename": "drone_tools_head.jsonl",
                    "format": "jsonl",
                    "records": 8,
                    "bytes": 61234,
                    "sha256": "9f2c…",
                    "created_at": "2026-12-04T21:50:00Z",
                    "report": {"input_lines": 8, "records": 8, "skipped": 0, "errors": []},
                }
            ]
        }
    )

    id: str
    filename: str
    format: str
    records: int
    bytes: int
    sha256: str
    created_at: datetime
    report: dict[str, Any]

    @classmethod
    def of(cls, dataset: Dataset) -> DatasetOut:
        return cls(
            id=dataset.id,
            filename=dataset.filename,
            format=dataset.format,
            records=dataset.records,
            bytes=dataset.bytes,
            sha256=dataset.sha256,
            created_at=dataset.created_at,
            report=dataset.report,
        )


class JobCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": "ds_0193a1b2c3d4e5f60718293a4b5c",
                    "model": "Qwen3.5-9B",
                    "config": {"max_steps": 600, "learning_rate": 1e-5, "lora_rank": 64},
                }
            ]
        },
    )

    dataset_id: str = Field(min_length=1, max_length=100)
    model: str = Field(
        min_length=1,
        max_length=500,
        description="A folder name under SDFT_MODELS_DIR, or an s3://bucket/prefix URI",
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="SDFTConfig options; omitted options take their defaults, echoed back",
    )


class JobOut(BaseModel):
    id: str
    status: JobStatus
    model: str
    dataset_id: str
    config: dict[str, Any]
    error: str | None
    current_step: int
    total_steps: int
    progress: float = Field(description="current_step / total_steps, from 0 to 1")
    attempt: int
    last_checkpoint_step: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None
    updated_at: datetime

    @classmethod
    def of(cls, job: Job) -> JobOut:
        total = max(job.total_steps, 1)
        return cls(
            id=job.id,
            status=job.status,  # type: ignore[arg-type]
            model=job.model,
            dataset_id=job.dataset_id,
            config=job.config,
            error=job.error,
            current_step=job.current_step,
            total_steps=job.total_steps,
            progress=min(1.0, job.current_step / total),
            attempt=job.attempt,
            last_checkpoint_step=job.last_checkpoint_step,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            cancel_requested_at=job.cancel_requested_at,
            updated_at=job.updated_at,
        )


class MetricRow(BaseModel):
    step: int
    metrics: dict[str, Any] = Field(
        examples=[{"loss": 0.41, "teacher/kl": 0.39, "rollout/len": 812}]
    )
    created_at: datetime

    @classmethod
    def of(cls, row: JobMetric) -> MetricRow:
        return cls(step=row.step, metrics=row.metrics, created_at=row.created_at)


class EventOut(BaseModel):
    id: int
    type: str
    message: str
    data: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, event: JobEvent) -> EventOut:
        return cls(
            id=event.id,
            type=event.type,
            message=event.message,
            data=event.data,
            created_at=event.created_at,
        )


class ArtifactOut(BaseModel):
    path: str = Field(examples=["model.safetensors"])
    size: int
    sha256: str
    url: str = Field(description="Presigned GET URL; expires after SDFT_PRESIGN_EXPIRY_S seconds")


class Page(BaseModel, Generic[T]):  # noqa: UP046 - Python 3.11 has no type parameter syntax
    data: list[T]
    has_more: bool
    next_cursor: str | None = None


class HealthOut(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
