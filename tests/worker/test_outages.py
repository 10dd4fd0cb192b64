"""Brief outages of PostgreSQL and S3 while a job trains: the job retries and succeeds.

The runner reaches the shared servers through a FaultProxy, which resets its connections and
refuses new ones for a while. Other tests keep using the servers directly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker

from api.db.session import get_sessionmaker
from api.settings import Settings
from api.storage import Storage
from tests.worker.conftest import job_events, job_row
from tests.worker.fault_proxy import FaultProxy
from tests.worker.test_runner import metric_steps
from worker.runner import JobRunner

OUTAGE_MIN_S = 3.0
OUTAGE_MAX_S = 45.0


def run_in_thread(runner: JobRunner) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["outcome"] = runner.run()
        except BaseException as error:  # noqa: BLE001 - reported by the test
            result["error"] = error

    thread = threading.Thread(target=target, name="runner", daemon=True)
    thread.start()
    return thread, result


def wait_for_step(job_id: str, step: int, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while job_row(job_id).current_step < step:
        assert time.monotonic() < deadline, f"job {job_id} did not reach step {step}"
        time.sleep(0.3)


def hold_outage(proxy: FaultProxy) -> None:
    """Keep the outage until the runner has hit it at least once, and for OUTAGE_MIN_S."""
    started = time.monotonic()
    with proxy.outage():
        while time.monotonic() - started < OUTAGE_MIN_S or proxy.refused == 0:
            assert time.monotonic() - started < OUTAGE_MAX_S, "the runner never hit the outage"
            time.sleep(0.2)


def test_runner_survives_database_outage(
    make_job: Callable[..., str],
    service_settings: Settings,
    tiny_model_name: str,
    dataset_key: str,
) -> None:
    job_id = make_job(model=tiny_model_name, dataset_key=dataset_key, config={"max_steps": 4})
    url = make_url(service_settings.database_url_value)

    with FaultProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        engine = create_engine(url.set(port=proxy.port), pool_pre_ping=True)
        runner = JobRunner(
            job_id,
            worker_id="test/1",
            settings=service_settings,
            session_factory=sessionmaker(bind=engine, expire_on_commit=False),
            storage=Storage.from_settings(service_settings),
        )
        thread, result = run_in_thread(runner)
        wait_for_step(job_id, 1)
        hold_outage(proxy)
        thread.join(timeout=300)
        engine.dispose()

    assert "error" not in result, result.get("error")
    assert result["outcome"].status == "succeeded"
    row = job_row(job_id)
    assert row.status == "succeeded"
    assert row.attempt == 1
    assert metric_steps(job_id) == [1, 2, 3, 4]


def test_runner_survives_s3_outage(
    make_job: Callable[..., str],
    service_settings: Settings,
    tiny_model_name: str,
    dataset_key: str,
) -> None:
    # A checkpoint after every step makes the runner write to S3 once a step.
    job_id = make_job(
        model=tiny_model_name,
        dataset_key=dataset_key,
        config={"max_steps": 4, "checkpoint_every": 1},
    )
    endpoint = urlsplit(service_settings.s3_endpoint_url)

    with FaultProxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80) as proxy:
        proxied = service_settings.model_copy(
            update={"s3_endpoint_url": f"http://127.0.0.1:{proxy.port}"}
        )
        runner = JobRunner(
            job_id,
            worker_id="test/1",
            settings=proxied,
            session_factory=get_sessionmaker(),
            storage=Storage.from_settings(proxied),
        )
        thread, result = run_in_thread(runner)
        wait_for_step(job_id, 1)
        hold_outage(proxy)
        thread.join(timeout=300)

    assert "error" not in result, result.get("error")
    assert result["outcome"].status == "succeeded"
    assert job_row(job_id).attempt == 1
    assert metric_steps(job_id) == [1, 2, 3, 4]
    checkpoints = [
        data["step"] for kind, _, data in job_events(job_id) if kind == "checkpoint_saved"
    ]
    assert checkpoints == [1, 2, 3, 4]
    assert Storage.from_settings(service_settings).read_manifest(job_id) is not None
