"""Dataset routes: upload, list, get."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.deps import OwnedDataset, PrincipalDep, SessionDep, SettingsDep, StorageDep
from api.routes.common import error_responses, page_of, submission_context
from api.schemas import DatasetOut, Page
from api.services import submissions
from api.services.datasets import UploadRequest, check_format, list_datasets, sanitize_filename

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    responses=error_responses(409, 413, 422, 429),
    summary="Upload a dataset of traces or records, optionally gzip-compressed",
)
async def create_dataset(
    principal: PrincipalDep,
    settings: SettingsDep,
    storage: StorageDep,
    file: Annotated[
        UploadFile,
        File(description="Traces or records (JSONL, JSON array or one JSON object); gzip ok"),
    ],
    format: Annotated[
        str, Form(description="Input format, or auto to detect it from the content")
    ] = "auto",
    strict: Annotated[bool, Form(description="Reject the upload on any invalid line")] = True,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    ctx = submission_context(settings, storage, principal, idempotency_key)
    request = UploadRequest(
        tenant_id=principal.tenant_id,
        filename=sanitize_filename(file.filename),
        format=check_format(format),
        strict=strict,
    )
    try:
        result = await run_in_threadpool(submissions.create_dataset, ctx, file.file, request)
    finally:
        await file.close()
    return JSONResponse(result.body, status_code=result.status_code)


@router.get("", response_model=Page[DatasetOut], responses=error_responses())
def get_datasets(
    principal: PrincipalDep,
    session: SessionDep,
    after: Annotated[str | None, Query(description="Cursor: next_cursor of the last page")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Page[DatasetOut]:
    rows, has_more = list_datasets(session, principal.tenant_id, after=after, limit=limit)
    return page_of(rows, has_more, DatasetOut.of, lambda d: d.id)


@router.get("/{dataset_id}", response_model=DatasetOut, responses=error_responses(404))
def get_dataset(dataset: OwnedDataset) -> DatasetOut:
    return DatasetOut.of(dataset)
