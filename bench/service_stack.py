"""A real service stack on loopback for the benchmarks: PostgreSQL database, Redis database
number, SeaweedFS and a uvicorn process of the API, all removed on exit."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from api.embedded.seaweedfs import SeaweedFS, free_port
from tests.fixtures.services import (
    claim_redis_db,
    create_database,
    drop_database,
    redis_host_url,
    release_redis_db,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Stack:
    base_url: str
    api_pid: int
    api_key: str
    env: dict[str, str]


@contextmanager
def service_stack(extra_env: dict[str, str] | None = None, api_workers: int = 1) -> Iterator[Stack]:
    """Start everything, create a tenant and key, yield, then tear it all down."""
    run_id = uuid.uuid4().hex[:12]
    database_url = create_database()
    redis_db = claim_redis_db(run_id)
    with tempfile.TemporaryDirectory(prefix="sdft-bench-") as tmp:
        root = Path(tmp)
        (root / "models").mkdir()
        (root / "cache").mkdir()
        weed = SeaweedFS(
            root / "seaweedfs",
            access_key="bench" + secrets.token_hex(6),
            secret_key=secrets.token_urlsafe(24),
        )
        api: subprocess.Popen[bytes] | None = None
        try:
            weed.start()
            env = {
                "SDFT_DATABASE_URL": database_url,
                "SDFT_REDIS_URL": f"{redis_host_url()}/{redis_db}",
                "SDFT_S3_ENDPOINT_URL": weed.endpoint_url,
                "SDFT_S3_BUCKET": f"sdft-bench-{run_id}",
                "SDFT_S3_ACCESS_KEY_ID": weed.access_key,
                "SDFT_S3_SECRET_ACCESS_KEY": weed.secret_key,
                "SDFT_MODELS_DIR": str(root / "models"),
                "SDFT_CACHE_DIR": str(root / "cache"),
                **(extra_env or {}),
            }
            os.environ.update(env)
            from api.db import migrate
            from api.db.session import session_scope
            from api.services.keys import create_key
            from api.settings import get_settings
            from api.storage import Storage

            get_settings.cache_clear()
            migrate.upgrade()
            Storage.from_settings(get_settings()).ensure_bucket()
            with session_scope() as session:
                key = create_key(session, "bench").key

            port = free_port()
            api = subprocess.Popen(
                [
                    sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
                    "--host", "127.0.0.1", "--port", str(port), "--workers", str(api_workers),
                    "--log-level", "warning", "--no-access-log",
                ],
                cwd=REPO_ROOT,
                env={**os.environ, **env},
            )  # fmt: skip
            base_url = f"http://127.0.0.1:{port}"
            _wait_healthy(base_url, api)
            yield Stack(base_url=base_url, api_pid=api.pid, api_key=key, env=env)
        finally:
            # Each step runs even if an earlier one fails, so no server outlives the benchmark.
            try:
                if api is not None:
                    _stop_process(api)
            finally:
                try:
                    weed.stop()
                finally:
                    from api.db.session import dispose_engines

                    dispose_engines()
                    drop_database(database_url)
                    release_redis_db(redis_db, run_id)


def _stop_process(process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    """Stop with SIGTERM, then SIGKILL if the process is still running after `timeout_s`."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _wait_healthy(base_url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn exited with code {process.returncode} during start")
        try:
            if httpx.get(base_url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"the API at {base_url} was not ready within {timeout_s:.0f} s")
