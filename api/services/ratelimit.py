"""Per-key request rate limit in Redis, with fixed one-minute windows."""

from __future__ import annotations

import logging
import time

import redis

from api.errors import LimitExceeded

logger = logging.getLogger(__name__)

WINDOW_S = 60


def check_rate_limit(client: redis.Redis, key_id: str, limit_per_minute: int) -> None:
    """Count one request for `key_id`; raise LimitExceeded with Retry-After once over the limit.

    If Redis is unreachable the request is allowed and a warning logged: the limit protects
    the service from floods, and refusing all traffic while Redis restarts would be worse.
    """
    now = time.time()
    window = int(now // WINDOW_S)
    counter_key = f"sdft:ratelimit:{key_id}:{window}"
    try:
        pipe = client.pipeline()
        pipe.incr(counter_key)
        pipe.expire(counter_key, WINDOW_S * 2)
        count = int(pipe.execute()[0])
    except redis.RedisError as exc:
        logger.warning("rate limit not checked for key %s: Redis failed: %s", key_id, exc)
        return
    if count > limit_per_minute:
        retry_after = int((window + 1) * WINDOW_S - now) + 1
        raise LimitExceeded(
            f"rate limit exceeded: {limit_per_minute} requests per minute per API key "
            f"(SDFT_RATE_LIMIT_PER_MINUTE); retry after {retry_after} s",
            retry_after_s=retry_after,
        )
