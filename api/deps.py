"""FastAPI dependencies: settings, database session, clients, the caller, owned resources."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

import redis
from fastapi import Depends, Path, Request
from sqlalchemy import text
from sqlalchemy.orm import Session

from api.db.models import Dataset, Job
from api.db.session import get_sessionmaker
from api.errors import Unauthorized
from api.services import keys
from api.services.datasets import get_dataset
from api.services.job_requests import get_job
from api.services.ratelimit import check_rate_limit
from api.settings import Settings
from api.storage import Storage


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_session() -> Iterator[Session]:
    """Yield a session per request; services commit what they write, the rest is rolled back."""
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.close()


def get_storage(request: Request) -> Storage:
    return request.app.state.storage


def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]
StorageDep = Annotated[Storage, Depends(get_storage)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]


@dataclass(frozen=True)
class Principal:
    """The caller: its tenant and the API key it used."""

    tenant_id: str
    key_id: str


def authenticate(
    request: Request, session: SessionDep, redis_client: RedisDep, settings: SettingsDep
) -> Principal:
    """Check the Bearer key, count the request against the key's rate limit, and return the
    caller. The key value itself never appears in an error or a log line."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized(
            "missing API key: send the header 'Authorization: Bearer <key>' "
            "(create a key with `sdft keys create --tenant NAME`)"
        )
    record = keys.authenticate(session, key.strip())
    if record is None:
        raise Unauthorized("invalid or revoked API key; create a new one with `sdft keys create`")

    check_rate_limit(redis_client, record.id, settings.rate_limit_per_minute)

    _touch_key(session, record.id)
    request.state.key_id = record.id
    return Principal(tenant_id=record.tenant_id, key_id=record.id)


_LAST_USED_PERIOD_S = 60.0
_last_used_written: dict[str, float] = {}


def _touch_key(session: Session, key_id: str) -> None:
    """Update last_used_at at most once a minute per key and process, so that most requests
    write nothing. The WHERE clause keeps several processes from writing more often."""
    now = time.monotonic()
    if now - _last_used_written.get(key_id, float("-inf")) < _LAST_USED_PERIOD_S:
        return
    _last_used_written[key_id] = now
    session.execute(
        text(
            "UPDATE api_keys SET last_used_at = now() WHERE id = :id AND "
            "(last_used_at IS NULL OR last_used_at < now() - interval '60 seconds')"
        ),
        {"id": key_id},
    )
    session.commit()


PrincipalDep = Annotated[Principal, Depends(authenticate)]


def owned_job(
    principal: PrincipalDep,
    session: SessionDep,
    job_id: Annotated[str, Path(max_length=100)],
) -> Job:
    """Load the job in the path if it belongs to the caller's tenant, else raise NotFound."""
    return get_job(session, principal.tenant_id, job_id)


def owned_dataset(
    principal: PrincipalDep,
    session: SessionDep,
    dataset_id: Annotated[str, Path(max_length=100)],
) -> Dataset:
    """Load the dataset in the path if it belongs to the caller's tenant, else raise NotFound."""
    return get_dataset(session, principal.tenant_id, dataset_id)


OwnedJob = Annotated[Job, Depends(owned_job)]
OwnedDataset = Annotated[Dataset, Depends(owned_dataset)]
