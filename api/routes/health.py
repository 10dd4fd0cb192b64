"""Liveness and readiness probes (no API key needed)."""

from __future__ import annotations

import logging
from collections.abc import Callable

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
    """Return ok while the process serves requests; checks no dependency."""
    return HealthOut(status="ok")


def _ping_database() -> None:
    with get_engine().connect() as connection:
        connection.execute(text("SELECT 1"))


def _check_all(request: Request) -> dict[str, str]:
    probes: dict[str, Callable[[], object]] = {
        "database": _ping_database,
        "redis": request.app.state.redis.ping,
        "s3": request.app.state.storage.check,
    }
    checks: dict[str, str] = {}
    for name, probe in probes.items():
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            # Only the exception type goes out: messages can contain host names or URLs.
            checks[name] = f"failed: {type(exc).__name__}"
            logger.warning("readiness: %s check failed: %s", name, exc)
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
