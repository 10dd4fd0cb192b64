"""POST /datasets and POST /jobs end to end: upload, validation, idempotency, commit, enqueue.

These run in a worker thread (blocking S3 and database calls). The rule for both: objects go to
S3 first, then one transaction writes the rows and the idempotency record, and only after the
commit is the training task sent. Any failure before the commit deletes the uploaded objects.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy.orm import Session, sessionmaker

from api.errors import DomainError
from api.schemas import DatasetOut, JobOut
from api.services import idempotency
from api.services.datasets import (
    StoredUpload,
    UploadRequest,
    discard_upload,
    insert_dataset,
    store_upload,
)
from api.services.idempotency import StoredResponse
from api.services.job_requests import JobSubmission, enqueue, insert_job
from api.settings import Settings
from api.storage import Storage

logger = logging.getLogger(__name__)

DATASETS_ENDPOINT = "POST /datasets"
JOBS_ENDPOINT = "POST /jobs"


@dataclass(frozen=True)
class Context:
    """Submission context: the stores to write to and the caller's identity."""

    sessions: sessionmaker[Session]
    storage: Storage
    settings: Settings
    tenant_id: str
    idempotency_key: str | None


def _upload_hash(stored: StoredUpload, *fields: str) -> str:
    digest = hashlib.sha256(stored.outcome.input_sha256.encode())
    for value in fields:
        digest.update(b"\x00" + value.encode("utf-8"))
    return digest.hexdigest()


def create_dataset(ctx: Context, upload: IO[bytes], request: UploadRequest) -> StoredResponse:
    """Store a dataset and return the response to send (201, or the replayed original)."""
    stored = store_upload(ctx.storage, request, upload, ctx.settings.max_upload_bytes)
    request_hash = _upload_hash(stored, request.format, str(request.strict), request.filename)
    try:
        with ctx.sessions() as session:
            replay = _find_replay(session, ctx, DATASETS_ENDPOINT, request_hash)
            if replay is not None:
                discard_upload(ctx.storage, stored)
                return replay
            dataset = insert_dataset(session, request, stored)
            session.flush()
            response = StoredResponse(201, DatasetOut.of(dataset).model_dump(mode="json"))
            replay = _save_or_replay(session, ctx, DATASETS_ENDPOINT, request_hash, response)
            if replay is not None:
                discard_upload(ctx.storage, stored)
                return replay
            session.commit()
    except BaseException:
        discard_upload(ctx.storage, stored)
        raise
    logger.info(
        "stored dataset %s for tenant %s: %d records, %d bytes",
        dataset.id,
        ctx.tenant_id,
        dataset.records,
        dataset.bytes,
    )
    return response


def create_job(
    ctx: Context,
    submission: JobSubmission,
    *,
    request_hash: str,
    upload: tuple[IO[bytes], UploadRequest] | None = None,
) -> StoredResponse:
    """Insert and enqueue a job; with `upload`, store that dataset in the same transaction.

    The model and config must already be validated, so that a bad request uploads nothing.
    """
    if ctx.idempotency_key is not None and upload is None:
        with ctx.sessions() as session:
            replay = _find_replay(session, ctx, JOBS_ENDPOINT, request_hash)
            if replay is not None:
                return replay

    stored: StoredUpload | None = None
    if upload is not None:
        fileobj, upload_request = upload
        stored = store_upload(ctx.storage, upload_request, fileobj, ctx.settings.max_upload_bytes)
        request_hash = _upload_hash(stored, request_hash)

    committed = False
    try:
        with ctx.sessions() as session:
            replay = _find_replay(session, ctx, JOBS_ENDPOINT, request_hash)
            if replay is not None:
                if stored is not None:
                    discard_upload(ctx.storage, stored)
                return replay
            if stored is not None and upload is not None:
                dataset = insert_dataset(session, upload[1], stored)
                submission = JobSubmission(
                    submission.tenant_id, dataset.id, submission.model, submission.config
                )
            job = insert_job(session, submission, ctx.settings)
            session.flush()
            session.refresh(job)
            response = StoredResponse(201, JobOut.of(job).model_dump(mode="json"))
            replay = _save_or_replay(session, ctx, JOBS_ENDPOINT, request_hash, response)
            if replay is not None:
                if stored is not None:
                    discard_upload(ctx.storage, stored)
                return replay
            session.commit()
            committed = True
            enqueue(session, job)
            if job.status != "queued":
                session.refresh(job)
                response = StoredResponse(201, JobOut.of(job).model_dump(mode="json"))
    except BaseException:
        if stored is not None and not committed:
            discard_upload(ctx.storage, stored)
        raise
    logger.info("job_id=%s created for tenant %s", job.id, ctx.tenant_id, extra={"job_id": job.id})
    return response


def _find_replay(
    session: Session, ctx: Context, endpoint: str, request_hash: str
) -> StoredResponse | None:
    if ctx.idempotency_key is None:
        return None
    return idempotency.find(session, ctx.tenant_id, endpoint, ctx.idempotency_key, request_hash)


def _save_or_replay(
    session: Session,
    ctx: Context,
    endpoint: str,
    request_hash: str,
    response: StoredResponse,
) -> StoredResponse | None:
    """Save the response under the idempotency key; if a concurrent request saved first,
    roll back and return that request's response instead."""
    if ctx.idempotency_key is None:
        return None
    key = ctx.idempotency_key
    if idempotency.save(session, ctx.tenant_id, endpoint, key, request_hash, response):
        return None
    session.rollback()
    replay = idempotency.find(session, ctx.tenant_id, endpoint, key, request_hash)
    if replay is None:
        raise DomainError(f"Idempotency-Key {key!r} could not be stored; retry the request")
    return replay


def job_request_hash(dataset_id: str | None, model: str, config: dict[str, Any]) -> str:
    return idempotency.hash_json({"dataset_id": dataset_id, "model": model, "config": config})
