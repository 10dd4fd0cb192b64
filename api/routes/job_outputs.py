"""Job output routes: metrics (paged and live), events, and the merged model's files."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from sse_starlette import EventSourceResponse, ServerSentEvent

from api.db.models import TERMINAL_STATUSES, Job
from api.db.session import session_scope
from api.deps import OwnedJob, SessionDep, SettingsDep, StorageDep
from api.errors import NotFound, ValidationFailed
from api.logging_utils import job_logger
from api.routes.common import error_responses, page_of
from api.schemas import ArtifactOut, EventOut, MetricRow, Page
from api.services.job_requests import (
    artifact_key,
    check_artifact_path,
    list_events,
    list_metrics,
    read_manifest,
)
from api.services.queue import metrics_channel

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs/{job_id}", tags=["job outputs"])

STREAM_BATCH = 500
# Seconds between database re-reads when no Redis message arrives. This bounds the delay when
# a publish is lost, and how late the stream notices that the job has finished.
STREAM_POLL_S = 2.0


@router.get("/metrics", response_model=Page[MetricRow], responses=error_responses(404))
def get_metrics(
    job: OwnedJob,
    session: SessionDep,
    after_step: Annotated[int | None, Query(ge=-1, description="Return steps after this")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Page[MetricRow]:
    rows, has_more = list_metrics(session, job.id, after_step=after_step, limit=limit)
    return page_of(rows, has_more, MetricRow.of, lambda r: r.step)


@router.get(
    "/metrics/stream",
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Metric rows as SSE"},
        **error_responses(404),
    },
)
async def stream_metrics(
    request: Request,
    job: OwnedJob,
    session: SessionDep,
    settings: SettingsDep,
    after_step: Annotated[int | None, Query(ge=-1)] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    """Send metric rows as `metric` events (`id` = step) and end with an `end` event once the
    job is finished and every row is sent. Reconnect with Last-Event-ID to resume."""
    start = _resume_step(last_event_id, after_step)
    # Return the ownership check's connection now: the request session is closed only after the
    # stream ends, and each read below takes a connection of its own for a moment.
    session.close()
    rows = _follow_metrics(request, job.id, start, settings.redis_url_value)
    return EventSourceResponse(rows, ping=15, headers={"Cache-Control": "no-store"})


def _resume_step(last_event_id: str | None, after_step: int | None) -> int:
    if last_event_id:
        try:
            return int(last_event_id)
        except ValueError as exc:
            raise ValidationFailed(
                f"Last-Event-ID must be a step number, got {last_event_id!r}",
                problems=["Last-Event-ID: expected an integer"],
            ) from exc
    return after_step if after_step is not None else -1


def _read_batch(job_id: str, after_step: int) -> tuple[list[MetricRow], str | None]:
    """Return the next rows and the job status, read before the rows."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        status = job.status if job is not None else None
        rows, _ = list_metrics(session, job_id, after_step=after_step, limit=STREAM_BATCH)
        return [MetricRow.of(r) for r in rows], status


async def _follow_metrics(
    request: Request, job_id: str, after_step: int, redis_url: str
) -> AsyncIterator[ServerSentEvent]:
    log = job_logger(logger, job_id)
    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    subscribed = False
    try:
        # Subscribe before the first read: a row committed between the read and the
        # subscription would otherwise wait for the next poll.
        try:
            await pubsub.subscribe(metrics_channel(job_id))
            subscribed = True
        except Exception as exc:  # noqa: BLE001 - the stream works without Redis, only slower
            log.warning("metrics stream polls the database only: Redis failed: %s", exc)
        last = after_step
        while True:
            rows, status = await run_in_threadpool(_read_batch, job_id, last)
            for row in rows:
                last = row.step
                yield ServerSentEvent(data=row.model_dump_json(), event="metric", id=str(row.step))
            if len(rows) == STREAM_BATCH:
                continue
            if status is None or status in TERMINAL_STATUSES:
                # The worker commits its last rows before the final status, and the status was
                # read before the rows, so no row can follow.
                yield ServerSentEvent(
                    data=json.dumps({"status": status, "last_step": last}), event="end"
                )
                return
            if await request.is_disconnected():
                return
            await _wait_for_wakeup(pubsub if subscribed else None)
    finally:
        try:
            if subscribed:
                await pubsub.unsubscribe()
            await pubsub.aclose()
            await client.aclose()
        except Exception as exc:  # noqa: BLE001 - cleanup of a closed stream
            log.debug("closing the metrics subscription failed: %s", exc)


async def _wait_for_wakeup(pubsub: aioredis.client.PubSub | None) -> None:
    if pubsub is None:
        await asyncio.sleep(STREAM_POLL_S)
        return
    deadline = asyncio.get_running_loop().time() + STREAM_POLL_S
    while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
        if message is not None:
            return


@router.get("/events", response_model=Page[EventOut], responses=error_responses(404))
def get_events(
    job: OwnedJob,
    session: SessionDep,
    after: Annotated[int | None, Query(ge=0, description="Return events after this id")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Page[EventOut]:
    rows, has_more = list_events(session, job.id, after=after, limit=limit)
    return page_of(rows, has_more, EventOut.of, lambda e: e.id)


@router.get("/artifacts", response_model=Page[ArtifactOut], responses=error_responses(404))
def get_artifacts(job: OwnedJob, storage: StorageDep, settings: SettingsDep) -> Page[ArtifactOut]:
    """List the merged model's files once its manifest exists (an empty list before)."""
    entries = read_manifest(storage, job.id)
    data = [
        ArtifactOut(
            path=entry["path"],
            size=entry["size"],
            sha256=entry["sha256"],
            url=storage.presign_get(
                artifact_key(job.id, entry["path"]),
                settings.presign_expiry_s,
                filename=entry["path"].rsplit("/", 1)[-1],
            ),
        )
        for entry in entries
    ]
    return Page(data=data, has_more=False)


@router.get(
    "/artifacts/{path:path}",
    status_code=307,
    response_class=RedirectResponse,
    responses=error_responses(404, 422),
)
def download_artifact(
    job: OwnedJob, path: str, storage: StorageDep, settings: SettingsDep
) -> RedirectResponse:
    """Redirect to a presigned URL of one file listed in the manifest."""
    check_artifact_path(path)
    listed = {entry["path"] for entry in read_manifest(storage, job.id)}
    if path not in listed:
        raise NotFound(
            f"artifact {path!r} of job {job.id} not found; list files with "
            f"GET /jobs/{job.id}/artifacts (empty until the merged model is uploaded)"
        )
    url = storage.presign_get(
        artifact_key(job.id, path), settings.presign_expiry_s, filename=path.rsplit("/", 1)[-1]
    )
    return RedirectResponse(url, status_code=307)
