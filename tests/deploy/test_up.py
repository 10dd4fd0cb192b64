"""`sdft up` without --demo: the embedded services, migrations, API and worker start from an
empty data folder, serve an authenticated request, and all stop again."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.embedded.process import free_loopback_port, port_is_open
from api.up import Stack, create_api_key, running_stack, start_backing_services

SERVICE_ENV = (
    "SDFT_DATABASE_URL",
    "SDFT_REDIS_URL",
    "SDFT_S3_ENDPOINT_URL",
    "SDFT_S3_BUCKET",
    "SDFT_S3_ACCESS_KEY_ID",
    "SDFT_S3_SECRET_ACCESS_KEY",
    "SDFT_MODELS_DIR",
    "SDFT_CACHE_DIR",
)


@pytest.fixture
def bare_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Unset the service settings, as on a fresh machine, and restore everything afterwards."""
    from api.db.session import dispose_engines
    from api.settings import get_settings

    saved = dict(os.environ)
    for name in SERVICE_ENV:
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    dispose_engines()
    os.environ.clear()
    os.environ.update(saved)
    get_settings.cache_clear()


def test_up_serves_and_stops(bare_environment: None, service_dir: Path) -> None:
    with running_stack(service_dir, port=free_loopback_port()) as stack:
        key = create_api_key("deploy-test")
        ready = httpx.get(f"{stack.api_url}/readyz", timeout=10)
        jobs = httpx.get(
            f"{stack.api_url}/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=10
        )
        anonymous = httpx.get(f"{stack.api_url}/jobs", timeout=10)
        children = dict(stack.children)
        ports = [int(url.rsplit(":", 1)[1].split("/")[0]) for url in _embedded_urls(stack)]

        assert stack.failed_child() is None
        assert set(children) == {"API", "worker"}
        assert len(ports) == 3

    assert ready.status_code == 200
    assert jobs.status_code == 200
    assert jobs.json()["data"] == []
    assert anonymous.status_code == 401
    for name, (process, _) in children.items():
        assert process.returncode is not None, f"the {name} still runs"
    for port in ports:
        assert not port_is_open(port), f"port {port} still open after the stack stopped"
    assert (service_dir / "ports.json").is_file()
    assert (service_dir / "logs" / "api.log").is_file()


def _embedded_urls(stack: Stack) -> list[str]:
    # Each entry reads "<service>  <url>"; the URL's port follows the last colon.
    return [entry.split()[-1] for entry in stack.embedded]


def test_configured_services_not_embedded(
    bare_environment: None, service_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SDFT_DATABASE_URL", "postgresql+psycopg://sdft@db.invalid:5432/sdft")
    monkeypatch.setenv("SDFT_REDIS_URL", "redis://redis.invalid:6379/0")
    monkeypatch.setenv("SDFT_S3_ENDPOINT_URL", "http://s3.invalid:8333")
    stack = Stack(data_dir=service_dir)

    try:
        env = start_backing_services(stack)
    finally:
        stack.close()

    assert env == {}
    assert stack.embedded == []
    assert not (service_dir / "postgres").exists()
