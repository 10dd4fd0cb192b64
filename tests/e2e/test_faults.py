"""Faults with real processes: a worker killed mid-training and a Redis outage. Each test runs
short jobs on short records to keep the CPU time low."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime
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
    download_artifact,
    free_port,
    short_dataset_body,
    upload_dataset,
    wait_for_end,
    wait_for_first_step,
    wait_for_job,
)
from tests.fixtures.services import TenantKey


def test_killed_worker_resumes_from_checkpoint(
    processes: Processes, tenant: TenantKey, tmp_path: Path
) -> None:
    # Enough steps that the job is still running when the test looks for a step past the first
    # checkpoint: on an idle machine a tiny-model step takes under a second.
    max_steps = 12
    api = processes.api()
    first = processes.worker()
    client = client_for(api, tenant)
    dataset = upload_dataset(client, "short.jsonl", short_dataset_body())
    # Checkpoints every 4 steps leave three steps after each one in which the kill can land;
    # with every 2 steps that window was one short step and polling could miss it.
    job = create_job(client, dataset["id"], max_steps=max_steps, checkpoint_every=4, **SHORT_CONFIG)

    # Kill once a checkpoint is stored and a later step has been recorded.
    wait_for_job(
        client,
        job["id"],
        lambda j: (
            j["status"] == "running"
            and (j["last_checkpoint_step"] or 0) >= 4
            and j["current_step"] > j["last_checkpoint_step"]
        ),
        timeout_s=240,
        describe="a step after the first stored checkpoint",
        tails=processes.tails,
    )
    first.kill()
    killed_at = datetime.now(UTC)
    at_kill = client.get(f"/jobs/{job['id']}").json()
    assert at_kill["status"] == "running"

    processes.worker()
    finished = wait_for_end(client, job["id"], processes.tails, timeout_s=300)

    assert finished["status"] == "succeeded", finished["error"]
    assert finished["attempt"] == 2
    events = all_events(client, job["id"])
    requeued = [e for e in events if e["type"] == "requeued"]
    assert len(requeued) == 1
    restarted = [e["data"] for e in events if e["type"] == "restarted"]
    assert len(restarted) == 1
    assert restarted[0]["attempt"] == 2
    resume_step = restarted[0]["resume_step"]
    # The newest complete checkpoint: the one recorded at the kill, or the next one if its
    # upload had finished but was not recorded yet.
    assert resume_step >= at_kill["last_checkpoint_step"] >= 4
    assert resume_step % 4 == 0
    assert resume_step < max_steps

    rows = all_metrics(client, job["id"])
    assert_steps_complete(rows, max_steps)
    for row in rows:
        created = datetime.fromisoformat(row["created_at"])
        if row["step"] <= resume_step:
            assert created < killed_at, f"step {row['step']} was rewritten after the resume"
        else:
            assert created > killed_at, f"step {row['step']} is a row of the killed attempt"

    files = download_artifact(client, job["id"], tmp_path / "merged")
    paths = {entry["path"] for entry in files}
    assert "config.json" in paths
    assert any(path.endswith(".safetensors") for path in paths)


def start_redis(port: int, data_dir: Path, log_dir: Path, name: str) -> ServiceProcess:
    """Start a private redis-server on loopback; its append-only file keeps the queue across a
    restart, as a production Redis with persistence does."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--save",
        "",
        "--protected-mode",
        "yes",
    ]
    server = ServiceProcess(name, args, {}, log_dir / f"{name}.log").start()
    server.wait_for_log("Ready to accept connections", timeout_s=30)
    return server


def test_redis_outage_mid_job(processes: Processes, tenant: TenantKey, tmp_path: Path) -> None:
    from api.db.models import Job
    from api.db.session import session_scope

    def current_step(job_id: str) -> int:
        with session_scope() as session:
            job = session.get(Job, job_id)
            assert job is not None
            return job.current_step

    # Steps must remain after the outage starts, so that training is seen to go on.
    max_steps = 10
    port = free_port()
    data_dir = tmp_path / "redis-data"
    data_dir.mkdir()
    redis_server = start_redis(port, data_dir, tmp_path, "redis-0")
    processes.infra.append(redis_server)
    env = {"SDFT_REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    api = processes.api(env=env)
    processes.worker(env=env)
    client = client_for(api, tenant)
    dataset = upload_dataset(client, "short.jsonl", short_dataset_body())
    job = create_job(client, dataset["id"], max_steps=max_steps, checkpoint_every=2, **SHORT_CONFIG)
    wait_for_first_step(client, job["id"], processes.tails)

    redis_server.stop()
    step_at_outage = current_step(job["id"])
    deadline = time.monotonic() + 60
    while current_step(job["id"]) == step_at_outage and time.monotonic() < deadline:
        time.sleep(0.5)
    # Training goes on without Redis: the job state is in PostgreSQL.
    assert current_step(job["id"]) > step_at_outage, processes.tails()
    time.sleep(2)
    processes.infra.append(start_redis(port, data_dir, tmp_path, "redis-1"))

    finished = wait_for_end(client, job["id"], processes.tails, timeout_s=240)
    assert finished["status"] == "succeeded", finished["error"]
    assert finished["attempt"] == 1
    assert_steps_complete(all_metrics(client, job["id"]), max_steps)
