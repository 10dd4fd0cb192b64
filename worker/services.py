"""Process-wide clients of the worker, built once from the service settings."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from api.settings import Settings
    from api.storage import Storage
    from worker.jobstore import SessionFactory


def settings() -> Settings:
    from api.settings import get_settings

    return get_settings()


@functools.cache
def session_factory() -> SessionFactory:
    from api.db.session import get_sessionmaker

    return get_sessionmaker()


@functools.cache
def storage() -> Storage:
    from api.storage import Storage

    return Storage.from_settings(settings())


@functools.cache
def redis_client() -> Any:
    import redis

    # Short timeouts: publishing metrics is best effort and must not stall a training step.
    return redis.Redis.from_url(
        settings().redis_url_value, socket_timeout=2.0, socket_connect_timeout=2.0
    )
