"""Job routes: submit (JSON or one-call multipart), list, get, cancel."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from api.deps import OwnedJob, PrincipalDep, RedisDep, SessionDep, SettingsDep, StorageDep
from api.errors import ValidationFailed
from api.routes.common import error_responses, page_of, submission_context
from api.schemas import JobCreate, JobOut, JobStatus, Page
from api.services import submissions
from api.services.datasets import UploadRequest, check_format, sanitize_filename
from api.services.job_requests import (
    JobSubmission,
    cancel_job,
    list_jobs,
    validate_config,
    validate_model,
)

router = APIRouter(prefix="/jobs", tags=["jobs"])

_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["dataset", "model"],
    "properties": {
        "dataset": {"type": "string", "format": "binary", "description": "JSONL records"},
        "model": {"type": "string", "example": "Qwen3.5-9B"},
        "config": {"type": "string", "example": '{"max_steps": 600}'},
        "strict": {"type": "boolean", "default": True},
    },
}
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": JobCreate.model_json_schema()},
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    responses=error_responses(404, 409, 413, 422, 429, 503),
    openapi_extra=_REQUEST_BODY,
    summary="Submit a training job (JSON with dataset_id, or multipart with the dataset file)",
)
async def create_job(
    request: Request,
    principal: PrincipalDep,
    settings: SettingsDep,
    storage: StorageDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    ctx = submission_context(settings, storage, principal, idempotency_key)
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        return await _create_job_multipart(request, ctx, principal.tenant_id)

    body = await _read_json(request)
    try:
        payload = JobCreate.model_validate(body)
    except ValidationError as exc:
        raise _body_error(exc) from exc
    config = validate_config(payload.config)
    model = await run_in_threadpool(validate_model, payload.model, settings, storage)
    submission = JobSubmission(principal.tenant_id, payload.dataset_id, model, config)
    request_hash = submissions.job_request_hash(payload.dataset_id, payload.model, payload.config)
    result = await run_in_threadpool(
        submissions.create_job, ctx, submission, request_hash=request_hash
    )
    return JSONResponse(result.body, status_code=result.status_code)


async def _create_job_multipart(
    request: Request, ctx: submissions.Context, tenant_id: str
) -> JSONResponse:
    async with request.form(max_files=1, max_fields=10) as form:
        dataset = form.get("dataset")
        if not isinstance(dataset, UploadFile):
            raise ValidationFailed(
                "multipart job submission needs a file field 'dataset'",
                problems=["dataset: missing file"],
            )
        model_name = _text_field(form.get("model"), "model")
        config_raw = _parse_config_field(form.get("config"))
        strict = _bool_field(form.get("strict"), "strict", default=True)
        config = validate_config(config_raw)
        model = await run_in_threadpool(validate_model, model_name, ctx.settings, ctx.storage)
        upload_request = UploadRequest(
            tenant_id=tenant_id,
            filename=sanitize_filename(dataset.filename),
            format=check_format(_optional_text(form.get("format"))),
            strict=strict,
        )
        submission = JobSubmission(tenant_id, "", model, config)
        request_hash = submissions.job_request_hash(None, model_name, config_raw)
        result = await run_in_threadpool(
            lambda: submissions.create_job(
                ctx,
                submission,
                request_hash=request_hash,
                upload=(dataset.file, upload_request),
            )
        )
    return JSONResponse(result.body, status_code=result.status_code)


@router.get("", response_model=Page[JobOut], responses=error_responses(422))
def get_jobs(
    principal: PrincipalDep,
    session: SessionDep,
    after: Annotated[str | None, Query(description="Cursor: next_cursor of the last page")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status")] = None,
) -> Page[JobOut]:
    rows, has_more = list_jobs(
        session, principal.tenant_id, after=after, limit=limit, status=status
    )
    return page_of(rows, has_more, JobOut.of, lambda j: j.id)


@router.get("/{job_id}", response_model=JobOut, responses=error_responses(404))
def get_job(job: OwnedJob) -> JobOut:
    return JobOut.of(job)


@router.post("/{job_id}/cancel", response_model=JobOut, responses=error_responses(404, 409))
def cancel(
    job: OwnedJob, principal: PrincipalDep, session: SessionDep, redis_client: RedisDep
) -> JobOut:
    """Cancel a queued job at once; a running job moves to cancelling until the worker stops."""
    return JobOut.of(cancel_job(session, redis_client, principal.tenant_id, job.id))


async def _read_json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationFailed(
            f"request body is not valid JSON ({exc}); send a JSON object or multipart form",
            problems=["body: invalid JSON"],
        ) from exc


def _body_error(exc: ValidationError) -> ValidationFailed:
    problems = [
        f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}"
        for error in exc.errors()
    ]
    return ValidationFailed("invalid job request: " + "; ".join(problems), problems=problems)


def _optional_text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValidationFailed("form fields other than 'dataset' must be text")


def _text_field(value: object, name: str) -> str:
    text = _optional_text(value)
    if not text:
        raise ValidationFailed(f"form field {name!r} is missing", problems=[f"{name}: missing"])
    return text


def _bool_field(value: object, name: str, *, default: bool) -> bool:
    text = _optional_text(value)
    if text is None or text == "":
        return default
    if text.lower() in {"true", "1", "yes", "on"}:
        return True
    if text.lower() in {"false", "0", "no", "off"}:
        return False
    raise ValidationFailed(
        f"form field {name!r} must be true or false, got {text!r}",
        problems=[f"{name}={text!r}: expected a boolean"],
    )


def _parse_config_field(value: object) -> dict[str, Any]:
    text = _optional_text(value)
    if not text:
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationFailed(
            f"form field 'config' is not valid JSON: {exc}; send a JSON object of options",
            problems=["config: invalid JSON"],
        ) from exc
    if not isinstance(config, dict):
        raise ValidationFailed(
            "form field 'config' must be a JSON object of options",
            problems=[f"config: expected an object, got {type(config).__name__}"],
        )
    return config
