"""Real processes for end-to-end tests: a uvicorn API and Celery workers, on the run's services.

Processes run `uvicorn api.app:create_app` and `python -m worker.cli --beat` (what `sdft api`
and `sdft worker --beat` start) from the repository root. They get the SDFT_* environment of the
test run plus short heartbeat and reaper intervals, so a killed worker is detected in seconds.
Their output goes to log files under the test's tmp dir, and a failing test reports the tail of
each.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.settings import Settings
from tests.fixtures.services import TenantKey

REPO_ROOT = Path(__file__).resolve().parents[2]
DRONE_TRACES = "../shared/data/traces/openai_chat/drone_tools_head.jsonl"
TINY_MODEL_NAME = "tiny-qwen3_5"

# Liveness settings of the e2e processes: a dead worker is requeued about 4 s after its last
# heartbeat, by the reaper pass of a live worker.
FAST_LIVENESS_ENV = {
    "SDFT_HEARTBEAT_INTERVAL_S": "1",
    "SDFT_HEARTBEAT_STALE_AFTER_S": "4",
    "SDFT_REAPER_INTERVAL_S": "1",
    "SDFT_METRICS_BATCH_SIZE": "1",
}

# Short prompts keep each CPU training step to a few seconds. The drone traces have 16 tool
# schemas per record and prompts of about 2,000 tokens, so only the HTTP test uses them.
SHORT_CONFIG: dict[str, Any] = {
    "max_seq_length": 1024,
    "max_teacher_prompt_tokens": 768,
    "max_rollout_tokens": 8,
    "lora_rank": 4,
    "lora_alpha": 8,
    "warmup_steps": 0,
    "learning_rate": 1e-3,
    "gradient_checkpointing": False,
    "device": "cpu",
    "dtype": "float32",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """One child process with its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.args,
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log_text():
                return
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not log {text!r} in {timeout_s} s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the process: no cleanup code of it runs."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 20.0) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def tail(self, lines: int = 40) -> str:
        text = self.log_text() if self.log_path.exists() else ""
        return f"--- {self.name} ({self.log_path}) ---\n" + "\n".join(text.splitlines()[-lines:])


class Processes:
    """Start API and worker processes for a test and stop every one at teardown."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.started: list[ServiceProcess] = []
        # Servers the API and workers depend on (a private Redis): stopped after them.
        self.infra: list[ServiceProcess] = []

    def api(self, port: int | None = None, env: dict[str, str] | None = None) -> ApiServer:
        port = port or free_port()
        server = ApiServer(
            f"api-{len(self.started)}",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "api.app:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            {**self.env, **(env or {})},
            self.log_dir / f"api-{len(self.started)}.log",
            port,
        )
        self.started.append(server)
        server.start()
        server.wait_ready()
        return server

    def worker(self, env: dict[str, str] | None = None) -> ServiceProcess:
        name = f"worker-{len(self.started)}"
        worker = ServiceProcess(
            name,
            [sys.executable, "-m", "worker.cli", "--beat", "--hostname", name],
            {**self.env, **(env or {})},
            self.log_dir / f"{name}.log",
        )
        self.started.append(worker)
        worker.start()
        worker.wait_for_log(" ready.", timeout_s=120)
        return worker

    def tails(self) -> str:
        return "\n".join(p.tail() for p in [*self.started, *self.infra])

    def stop_all(self) -> None:
        for process in [*reversed(self.started), *reversed(self.infra)]:
            process.stop()


class ApiServer(ServiceProcess):
    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path, port: int):
        super().__init__(name, args, env, log)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} did not answer /healthz in {timeout_s} s:\n{self.tail()}")


@pytest.fixture(scope="package", autouse=True)
def e2e_services(service_settings: Settings) -> Iterator[Settings]:
    """Give the e2e tests a database and a Redis database of their own.

    A worker process trains every job in its queue, and its reaper requeues any stale job of
    its database. Sharing the run's database and Redis with other test folders would make it
    train their leftover jobs (queued or left `running` on purpose), so the e2e processes get
    fresh ones. The S3 bucket and local folders stay shared: job keys never collide.
    """
    from api.db import migrate
    from api.db.session import dispose_engines
    from api.settings import get_settings
    from tests.fixtures.services import (
        REDIS_HOST_URL,
        claim_redis_db,
        create_database,
        drop_database,
        release_redis_db,
    )

    owner = f"e2e-{uuid.uuid4().hex[:12]}"
    database_url = create_database()
    redis_db = claim_redis_db(owner)
    patch = pytest.MonkeyPatch()
    try:
        patch.setenv("SDFT_DATABASE_URL", database_url)
        patch.setenv("SDFT_REDIS_URL", f"{REDIS_HOST_URL}/{redis_db}")
        get_settings.cache_clear()
        dispose_engines()
        migrate.upgrade()
        yield get_settings()
    finally:
        dispose_engines()
        drop_database(database_url)
        release_redis_db(redis_db, owner)
        patch.undo()
        get_settings.cache_clear()


@pytest.fixture(scope="package")
def e2e_env(e2e_services: Settings, tiny_qwen3_5_dir: Path) -> dict[str, str]:
    """Environment of the child processes: the SDFT_* settings of the e2e services and the tiny
    model in the models folder."""
    target = e2e_services.models_dir / TINY_MODEL_NAME
    if not target.exists():
        shutil.copytree(tiny_qwen3_5_dir, target)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    env.update(FAST_LIVENESS_ENV)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def processes(
    e2e_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Processes]:
    procs = Processes(e2e_env, tmp_path)
    try:
        yield procs
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            request.node.add_report_section("teardown", "process logs", procs.tails())
        procs.stop_all()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


# -- HTTP helpers ---------------------------------------------------------------------------


def client_for(api: ApiServer, tenant: TenantKey) -> httpx.Client:
    return httpx.Client(base_url=api.url, headers=tenant.headers, timeout=30)


def upload_dataset(client: httpx.Client, filename: str, body: bytes) -> dict[str, Any]:
    response = client.post("/datasets", files={"file": (filename, body, "application/jsonl")})
    assert response.status_code == 201, response.text
    return response.json()


def short_dataset_body(count: int = 4) -> bytes:
    records = [
        {
            "messages": [
                {"role": "system", "content": "You are a flight controller assistant."},
                {"role": "user", "content": f"Set the altitude to {100 + 10 * i} meters."},
                {"role": "assistant", "content": f"Altitude set to {100 + 10 * i} meters."},
            ]
        }
        for i in range(count)
    ]
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def create_job(client: httpx.Client, dataset_id: str, **config: Any) -> dict[str, Any]:
    body = {"dataset_id": dataset_id, "model": TINY_MODEL_NAME, "config": config}
    response = client.post("/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def wait_for_job(
    client: httpx.Client,
    job_id: str,
    until: Callable[[dict[str, Any]], bool],
    timeout_s: float,
    describe: str,
    tails: Callable[[], str] = lambda: "",
) -> dict[str, Any]:
    """Poll GET /jobs/{id} until `until(job)` holds; fail with the job and process logs."""
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            response = client.get(f"/jobs/{job_id}")
        except httpx.TransportError:
            time.sleep(0.5)
            continue
        if response.status_code == 200:
            job = response.json()
            if until(job):
                return job
            if job.get("status") in TERMINAL_STATUSES:
                pytest.fail(f"the job ended before {describe}; job: {job}\n{tails()}")
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout_s} s waiting for {describe}; job: {job}\n{tails()}")


TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")


def wait_for_first_step(
    client: httpx.Client, job_id: str, tails: Callable[[], str], timeout_s: float = 180
) -> dict[str, Any]:
    return wait_for_job(
        client,
        job_id,
        lambda j: j["status"] == "running" and j["current_step"] >= 1,
        timeout_s=timeout_s,
        describe="the first training step",
        tails=tails,
    )


def wait_for_end(
    client: httpx.Client, job_id: str, tails: Callable[[], str], timeout_s: float = 240
) -> dict[str, Any]:
    return wait_for_job(
        client,
        job_id,
        lambda j: j["status"] in TERMINAL_STATUSES,
        timeout_s=timeout_s,
        describe="the job to end",
        tails=tails,
    )


def all_metrics(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after = -1
    while True:
        page = client.get(f"/jobs/{job_id}/metrics", params={"after_step": after, "limit": 100})
        assert page.status_code == 200, page.text
        body = page.json()
        rows.extend(body["data"])
        if not body["has_more"]:
            return rows
        after = body["data"][-1]["step"]


def all_events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 500}
    while True:
        page = client.get(f"/jobs/{job_id}/events", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        events.extend(body["data"])
        if not body["has_more"]:
            return events
        params["after"] = body["next_cursor"]


def download_artifact(client: httpx.Client, job_id: str, target: Path) -> list[dict[str, Any]]:
    """Download every artifact file through its presigned URL into `target`, checking each
    file's size and sha256 against the listing; return the listing."""
    response = client.get(f"/jobs/{job_id}/artifacts")
    assert response.status_code == 200, response.text
    files = response.json()["data"]
    assert files, f"job {job_id} lists no artifact files"
    for entry in files:
        # A presigned URL carries its own credentials: no API key goes to the S3 server.
        download = httpx.get(entry["url"], timeout=60)
        assert download.status_code == 200, f"{entry['path']}: {download.status_code}"
        path = target / entry["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(download.content)
        assert len(download.content) == entry["size"], entry["path"]
        assert hashlib.sha256(download.content).hexdigest() == entry["sha256"], entry["path"]
    return files


def assert_steps_complete(rows: list[dict[str, Any]], max_steps: int) -> None:
    steps = [row["step"] for row in rows]
    assert len(steps) == len(set(steps)), f"duplicate metric steps: {steps}"
    assert steps == list(range(1, max_steps + 1)), f"metric steps have gaps: {steps}"
