"""Liveness and readiness probes (no API key needed)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.db.session import get_engine
from api.schemas import HealthOut

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut)
def healthz() -> HealthOut:
    """The process is up; checks nothing else."""
    return HealthOut(status="ok")


def _check_all(request: Request) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["database"] = f"failed: {type(exc).__name__}"
        logger.warning("readiness: database check failed: %s", exc)
    try:
        request.app.state.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"failed: {type(exc).__name__}"
        logger.warning("readiness: Redis check failed: %s", exc)
    try:
        request.app.state.storage.check()
        checks["s3"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["s3"] = f"failed: {type(exc).__name__}"
        logger.warning("readiness: S3 check failed: %s", exc)
    return checks


@router.get("/readyz", response_model=HealthOut, responses={503: {"model": HealthOut}})
async def readyz(request: Request) -> JSONResponse:
    """Ready when the database, Redis and S3 all respond; 503 names each that failed."""
    checks = await run_in_threadpool(_check_all, request)
    failed = sorted(name for name, result in checks.items() if result != "ok")
    if failed:
        body = HealthOut(status="unavailable: " + ", ".join(failed) + " failed", checks=checks)
        return JSONResponse(body.model_dump(), status_code=503)
    return JSONResponse(HealthOut(status="ok", checks=checks).model_dump())
