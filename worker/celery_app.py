"""The Celery application: broker and queue settings shared by the worker and the API.

The API only calls `celery_app.send_task("sdft.train_job", ...)`, so this module must not import
torch, transformers or the task code at module level.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from worker import joblog

logger = logging.getLogger(__name__)

TRAIN_QUEUE = "train"
MAINTENANCE_QUEUE = "maintenance"
TRAIN_TASK = "sdft.train_job"
REAP_TASK = "sdft.reap_jobs"

# Extra broker visibility time on top of the longest allowed job, so that Redis never hands a
# running job's message to a second worker while the first one may still be training.
VISIBILITY_MARGIN_S = 3600


def _celery_config() -> dict[str, Any]:
    """Build the Celery settings from the service settings (read when the app is first used)."""
    from api.settings import get_settings

    settings = get_settings()
    redis_url = settings.redis_url_value
    visibility_timeout = settings.job_time_limit_s + VISIBILITY_MARGIN_S
    return {
        "broker_url": redis_url,
        "result_backend": redis_url,
        "broker_transport_options": {"visibility_timeout": visibility_timeout},
        "result_backend_transport_options": {"visibility_timeout": visibility_timeout},
        "broker_connection_retry_on_startup": True,
        # Retry the broker forever: a worker that exits while Redis restarts loses nothing, but
        # one that keeps waiting needs no operator to bring it back.
        "broker_connection_max_retries": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        # Job state lives in PostgreSQL; results in Redis would only be a second, stale copy.
        "task_ignore_result": True,
        # A message is acknowledged only after the task returns, and requeued if the worker
        # process dies. This is safe because a redelivered job resumes from its last stored
        # checkpoint, and a duplicate of a job that a live worker owns fails the claim.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # A training job keeps running through a broker outage: its state is in PostgreSQL and
        # S3, and the claim drops any duplicate delivery after the broker comes back.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_default_queue": TRAIN_QUEUE,
        "task_routes": {
            TRAIN_TASK: {"queue": TRAIN_QUEUE},
            REAP_TASK: {"queue": MAINTENANCE_QUEUE},
        },
        # Used only when `celery beat` runs; `sdft worker --beat` runs the reaper as a thread.
        "beat_schedule": {
            "reap-stale-jobs": {"task": REAP_TASK, "schedule": float(settings.reaper_interval_s)},
        },
        "worker_hijack_root_logger": True,
        "worker_log_format": joblog.LOG_FORMAT,
        "worker_task_log_format": joblog.LOG_FORMAT,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
    }


celery_app = Celery("sdft", include=["worker.tasks"])
celery_app.add_defaults(_celery_config)


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _install_job_log_fields(logger: logging.Logger, **_: Any) -> None:
    joblog.install(logger)


def enqueue_train_job(job_id: str) -> str:
    """Send the training task of `job_id` and return its task id; call it only after the job
    row is committed."""
    result = celery_app.send_task(TRAIN_TASK, kwargs={"job_id": job_id}, queue=TRAIN_QUEUE)
    return str(result.id)
