"""Pieces shared by the routers: error responses for the docs and the submission context."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from api.db.session import get_sessionmaker
from api.deps import Principal
from api.schemas import ErrorResponse, Page
from api.services.idempotency import check_key
from api.services.submissions import Context
from api.settings import Settings
from api.storage import Storage

RowT = TypeVar("RowT")
OutT = TypeVar("OutT")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        401: "Missing, invalid or revoked API key",
        404: "Not found, or owned by another tenant",
        409: "Conflict with the current state",
        413: "Body over the size limit",
        422: "Invalid request; `problems` lists each issue",
        429: "Rate limit or in-flight job limit reached",
        503: "A backing service is unavailable",
    }
    return {
        code: {"model": ErrorResponse, "description": descriptions[code]} for code in (401, *codes)
    }


def page_of(
    items: Sequence[RowT],
    has_more: bool,
    to_out: Callable[[RowT], OutT],
    cursor: Callable[[RowT], object],
) -> Page[OutT]:
    """Shape one page of rows; next_cursor is set only when more rows follow."""
    return Page(
        data=[to_out(item) for item in items],
        has_more=has_more,
        next_cursor=str(cursor(items[-1])) if has_more and items else None,
    )


def submission_context(
    settings: Settings, storage: Storage, principal: Principal, idempotency_key: str | None
) -> Context:
    return Context(
        sessions=get_sessionmaker(),
        storage=storage,
        settings=settings,
        tenant_id=principal.tenant_id,
        idempotency_key=check_key(idempotency_key),
    )
