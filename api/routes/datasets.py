"""Dataset routes: upload, list, get."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.deps import OwnedDataset, PrincipalDep, SessionDep, SettingsDep, StorageDep
from api.routes.common import error_responses, submission_context
from api.schemas import DatasetOut, Page
from api.services import submissions
from api.services.datasets import UploadRequest, check_format, list_datasets, sanitize_filename

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    responses=error_responses(409, 413, 422, 429),
    summary="Upload a dataset (JSONL, optionally gzip-compressed)",
)
async def create_dataset(
    principal: PrincipalDep,
    settings: SettingsDep,
    storage: StorageDep,
    file: Annotated[UploadFile, File(description="JSONL records, one object per line; .gz ok")],
    format: Annotated[str, Form(description="Input format: auto or jsonl")] = "auto",
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
    return Page(
        data=[DatasetOut.of(d) for d in rows],
        has_more=has_more,
        next_cursor=rows[-1].id if has_more and rows else None,
    )


@router.get("/{dataset_id}", response_model=DatasetOut, responses=error_responses(404))
def get_dataset(dataset: OwnedDataset) -> DatasetOut:
    return DatasetOut.of(dataset)
