"""Idempotency keys: a retried POST with the same key and body returns the first response.

The stored response is written in the same transaction as the resource it describes, so a
retry either finds both or neither.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from api.db.models import IdempotencyKey
from api.errors import Conflict, ValidationFailed

MAX_KEY_CHARS = 255


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    body: dict[str, Any]


def check_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_CHARS or not key.isprintable():
        raise ValidationFailed(
            f"Idempotency-Key must be 1-{MAX_KEY_CHARS} printable characters "
            f"(got {len(key)} characters); send a UUID",
            problems=["Idempotency-Key: invalid"],
        )
    return key


def hash_json(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def find(
    session: Session, tenant_id: str, endpoint: str, key: str, request_hash: str
) -> StoredResponse | None:
    """Return the stored response for this key, or None when the key is new.

    Raises Conflict when the key was used with a different request body.
    """
    row = session.scalars(
        select(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant_id,
            IdempotencyKey.endpoint == endpoint,
            IdempotencyKey.key == key,
        )
    ).one_or_none()
    if row is None:
        return None
    if row.request_hash != request_hash:
        raise Conflict(
            f"Idempotency-Key {key!r} was already used for {endpoint} with a different request "
            "body; send a new key for a new request"
        )
    return StoredResponse(row.status_code, row.response)


def save(
    session: Session,
    tenant_id: str,
    endpoint: str,
    key: str,
    request_hash: str,
    response: StoredResponse,
) -> bool:
    """Store the response in the caller's transaction; return False when a concurrent request
    stored one first (the caller then rolls back and replays that one)."""
    statement = (
        insert(IdempotencyKey)
        .values(
            tenant_id=tenant_id,
            endpoint=endpoint,
            key=key,
            request_hash=request_hash,
            status_code=response.status_code,
            response=response.body,
        )
        .on_conflict_do_nothing()
        .returning(IdempotencyKey.key)
    )
    return session.execute(statement).first() is not None
