"""Messages from the API to workers: the training task and cancel requests."""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any

import redis

from api.settings import get_settings

logger = logging.getLogger(__name__)

TRAIN_TASK = "sdft.train_job"
TRAIN_QUEUE = "train"
CANCEL_KEY_TTL_S = 7 * 24 * 3600


def control_channel(job_id: str) -> str:
    return f"sdft:jobs:{job_id}:control"


def metrics_channel(job_id: str) -> str:
    return f"sdft:jobs:{job_id}:metrics"


def cancel_key(job_id: str) -> str:
    return f"sdft:jobs:{job_id}:cancel"


@lru_cache(maxsize=1)
def _celery_app() -> Any:
    try:
        from worker.celery_app import celery_app
    except ImportError:
        # The API can run without the worker package: a send-only app needs just the broker.
        from celery import Celery

        url = get_settings().redis_url_value
        celery_app = Celery("sdft-api", broker=url)
        celery_app.conf.broker_connection_retry_on_startup = True
    return celery_app


def enqueue_training(job_id: str) -> str:
    """Send the training task for a committed job; return the Celery task id."""
    result = _celery_app().send_task(TRAIN_TASK, kwargs={"job_id": job_id}, queue=TRAIN_QUEUE)
    return str(result.id)


def publish_cancel(client: redis.Redis, job_id: str) -> None:
    """Tell the worker to stop. The job row is the record that counts, so a Redis failure is
    logged and the worker still reads the cancel on its next row check."""
    message = json.dumps({"action": "cancel", "job_id": job_id})
    try:
        client.set(cancel_key(job_id), "1", ex=CANCEL_KEY_TTL_S)
        client.publish(control_channel(job_id), message)
    except redis.RedisError as exc:
        logger.warning(
            "job_id=%s cancel not published to Redis: %s; the worker reads it from the database",
            job_id,
            exc,
            extra={"job_id": job_id},
        )
