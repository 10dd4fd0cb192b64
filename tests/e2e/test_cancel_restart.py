"""Cancel and API restart with real processes. One worker process serves both tests, which
also shows that a cancelled job leaves its worker free for the next job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    SHORT_CONFIG,
    Processes,
    ServiceProcess,
    all_events,
    all_metrics,
    assert_steps_complete,
    client_for,
    create_job,
    short_dataset_body,
    upload_dataset,
    wait_for_end,
    wait_for_first_step,
)
from tests.fixtures.services import TenantKey


@pytest.fixture(scope="module")
def shared_worker(
    e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    procs = Processes(e2e_env, Path(tmp_path_factory.mktemp("shared-worker")))
    try:
        yield procs.worker()
    finally:
        procs.stop_all()


def test_cancel_running_job_frees_worker(
    processes: Processes, shared_worker: ServiceProcess, tenant: TenantKey
) -> None:
    def tails() -> str:
        return processes.tails() + "\n" + shared_worker.tail()

    api = processes.api()
    client = client_for(api, tenant)
    dataset = upload_dataset(client, "short.jsonl", short_dataset_body())
    job = create_job(client, dataset["id"], max_steps=50, checkpoint_every=100, **SHORT_CONFIG)
    wait_for_first_step(client, job["id"], tails)

    response = client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelling"
    cancelled = wait_for_end(client, job["id"], tails, timeout_s=60)

    assert cancelled["status"] == "cancelled"
    assert cancelled["current_step"] < 50
    assert client.get(f"/jobs/{job['id']}/artifacts").json()["data"] == []
    # The only worker is free again: the next job runs to the end.
    follow_up = create_job(client, dataset["id"], max_steps=1, **SHORT_CONFIG)
    done = wait_for_end(client, follow_up["id"], tails, timeout_s=180)
    assert done["status"] == "succeeded", done["error"]
    assert shared_worker.alive()


def test_api_restart_does_not_touch_job(
    processes: Processes, shared_worker: ServiceProcess, tenant: TenantKey
) -> None:
    def tails() -> str:
        return processes.tails() + "\n" + shared_worker.tail()

    # Steps must remain while the API restarts, on an idle machine too.
    max_steps = 6
    api = processes.api()
    client = client_for(api, tenant)
    dataset = upload_dataset(client, "short.jsonl", short_dataset_body())
    job = create_job(client, dataset["id"], max_steps=max_steps, **SHORT_CONFIG)
    wait_for_first_step(client, job["id"], tails)

    api.stop()
    restarted_api = processes.api(port=api.port)
    client = client_for(restarted_api, tenant)
    finished = wait_for_end(client, job["id"], tails, timeout_s=240)

    assert finished["status"] == "succeeded", finished["error"]
    assert finished["attempt"] == 1
    assert_steps_complete(all_metrics(client, job["id"]), max_steps)
    kinds = [event["type"] for event in all_events(client, job["id"])]
    assert "restarted" not in kinds
    assert "requeued" not in kinds
