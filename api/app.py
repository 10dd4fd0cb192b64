"""The FastAPI application: routers, error handlers, body limits and shared clients."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import Scope

from api.errors import DomainError
from api.limits import BodySizeLimit, ConcurrencyLimit
from api.routes import datasets, health, job_outputs, jobs
from api.settings import Settings, get_settings
from api.storage import Storage

logger = logging.getLogger(__name__)

UPLOAD_ROUTES = {("POST", "/datasets"), ("POST", "/jobs")}
# Probes must respond while the API is saturated, so they skip the request slots.
PROBE_PATHS = {"/healthz", "/readyz"}
# Multipart framing and text fields around the file.
UPLOAD_OVERHEAD_BYTES = 1024 * 1024


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.storage = Storage.from_settings(settings)
        app.state.redis = redis.Redis.from_url(
            settings.redis_url_value, socket_timeout=5, socket_connect_timeout=5
        )
        logger.info("API started (bucket %s)", settings.s3_bucket)
        try:
            yield
        finally:
            app.state.redis.close()
            logger.info("API stopped")

    app = FastAPI(
        title="SDFT service",
        version="0.1.0",
        summary="Fine-tune LLMs with Self-Distillation Fine-Tuning (SDFT)",
        description=(
            "Upload a dataset, submit a job, follow its metrics, download the merged model. "
            "Every route except the health probes and these docs needs "
            "`Authorization: Bearer <key>`."
        ),
        lifespan=lifespan,
    )
    app.include_router(health.router)
    app.include_router(datasets.router)
    app.include_router(jobs.router)
    app.include_router(job_outputs.router)

    @app.exception_handler(DomainError)
    async def domain_error(request: Request, exc: DomainError) -> JSONResponse:
        if exc.status_code >= 500:
            logger.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        body = {"error": {"code": exc.code, "message": exc.message, "problems": exc.problems}}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        ]
        message = "invalid request: " + "; ".join(problems)
        body = {"error": {"code": "validation_failed", "message": message, "problems": problems}}
        return JSONResponse(body, status_code=422)

    def body_limit(scope: Scope) -> tuple[int, str]:
        if _is_upload(scope):
            return settings.max_upload_bytes + UPLOAD_OVERHEAD_BYTES, "SDFT_MAX_UPLOAD_BYTES"
        return settings.max_request_bytes, "SDFT_MAX_REQUEST_BYTES"

    def is_exempt(scope: Scope) -> bool:
        path = scope.get("path", "")
        return _is_upload(scope) or path.endswith("/metrics/stream") or path in PROBE_PATHS

    app.add_middleware(BodySizeLimit, limit_for=body_limit)
    # Added last, so it is the outermost middleware: a request that waits for a slot has not
    # read its body yet.
    app.add_middleware(
        ConcurrencyLimit,
        max_concurrent=settings.db_pool_size + settings.db_max_overflow,
        timeout_s=settings.request_queue_timeout_s,
        exempt=is_exempt,
    )
    return app


def _is_upload(scope: Scope) -> bool:
    """Tell multipart uploads to the upload routes from other requests.

    A JSON body of POST /jobs gets the small request limit, since it is read into memory.
    """
    route = (scope.get("method"), scope.get("path", "").rstrip("/"))
    if route not in UPLOAD_ROUTES:
        return False
    headers = dict(scope.get("headers", []))
    return headers.get(b"content-type", b"").startswith(b"multipart/form-data")
