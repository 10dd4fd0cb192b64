"""Keys, tenant isolation, idempotency, limits, probes, and secrets kept out of logs."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.db.session import session_scope
from api.services.keys import revoke_key
from api.settings import Settings
from api.storage import Storage
from tests.fixtures.services import TenantKey


def _client(settings: Settings, **changes: Any) -> Iterator[TestClient]:
    with TestClient(create_app(settings.model_copy(update=changes))) as client:
        yield client


def test_missing_invalid_revoked_key(api_client: TestClient, tenant: TenantKey) -> None:
    missing = api_client.get("/jobs")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in missing.json()["error"]["message"]

    wrong = api_client.get("/jobs", headers={"Authorization": "Bearer sdft_not-a-key"})
    assert wrong.status_code == 401

    assert api_client.get("/jobs", headers=tenant.headers).status_code == 200
    with session_scope() as session:
        revoke_key(session, tenant.key_id)
    revoked = api_client.get("/jobs", headers=tenant.headers)
    assert revoked.status_code == 401
    assert "revoked" in revoked.json()["error"]["message"]


def test_other_tenant_gets_404(
    api_client: TestClient,
    make_tenant: Callable[[], TenantKey],
    submit_job: Callable[..., dict[str, Any]],
    model_name: str,
    service_settings: Settings,
) -> None:
    owner, other = make_tenant(), make_tenant()
    job = submit_job(owner)
    job_id, dataset_id = job["id"], job["dataset_id"]
    Storage.from_settings(service_settings).write_manifest(
        job_id, [("model.safetensors", 1, "0" * 64)]
    )
    assert api_client.post(f"/jobs/{job_id}/cancel", headers=other.headers).status_code == 404
    # Cancelled, so that the owner's metrics stream below ends at once.
    assert api_client.post(f"/jobs/{job_id}/cancel", headers=owner.headers).status_code == 200

    for method, path in [
        ("GET", f"/datasets/{dataset_id}"),
        ("GET", f"/jobs/{job_id}"),
        ("GET", f"/jobs/{job_id}/metrics"),
        ("GET", f"/jobs/{job_id}/metrics/stream"),
        ("GET", f"/jobs/{job_id}/events"),
        ("GET", f"/jobs/{job_id}/artifacts"),
        ("GET", f"/jobs/{job_id}/artifacts/model.safetensors"),
    ]:
        response = api_client.request(method, path, headers=other.headers, follow_redirects=False)
        assert response.status_code == 404, (method, path)
        owned = api_client.request(method, path, headers=owner.headers, follow_redirects=False)
        assert owned.status_code in {200, 307}, path

    stolen = api_client.post(
        "/jobs", headers=other.headers, json={"dataset_id": dataset_id, "model": model_name}
    )
    assert stolen.status_code == 404
    assert api_client.get("/jobs", headers=other.headers).json()["data"] == []
    assert api_client.get("/datasets", headers=other.headers).json()["data"] == []


def test_job_idempotency(
    api_client: TestClient,
    tenant: TenantKey,
    model_name: str,
    upload_dataset: Callable[[TenantKey], str],
) -> None:
    body = {"dataset_id": upload_dataset(tenant), "model": model_name, "config": {"max_steps": 4}}
    headers = {**tenant.headers, "Idempotency-Key": "job-key-1"}

    first = api_client.post("/jobs", headers=headers, json=body)
    retry = api_client.post("/jobs", headers=headers, json=body)
    assert first.status_code == 201
    assert retry.status_code == 201
    assert retry.json()["id"] == first.json()["id"]
    assert len(api_client.get("/jobs", headers=tenant.headers).json()["data"]) == 1

    changed = api_client.post("/jobs", headers=headers, json={**body, "config": {"max_steps": 5}})
    assert changed.status_code == 409
    assert "different request body" in changed.json()["error"]["message"]


def test_dataset_idempotency(
    api_client: TestClient, tenant: TenantKey, drone_bytes: bytes, service_settings: Settings
) -> None:
    headers = {**tenant.headers, "Idempotency-Key": "ds-key-1"}
    storage = Storage.from_settings(service_settings)

    first = api_client.post("/datasets", headers=headers, files={"file": ("d.jsonl", drone_bytes)})
    objects_after_first = {i.key for i in storage.list_prefix("datasets/")}
    retry = api_client.post("/datasets", headers=headers, files={"file": ("d.jsonl", drone_bytes)})
    assert first.status_code == 201
    assert retry.json()["id"] == first.json()["id"]
    assert {i.key for i in storage.list_prefix("datasets/")} == objects_after_first

    other_bytes = drone_bytes.splitlines(keepends=True)[0]
    changed = api_client.post(
        "/datasets", headers=headers, files={"file": ("d.jsonl", other_bytes)}
    )
    assert changed.status_code == 409
    assert {i.key for i in storage.list_prefix("datasets/")} == objects_after_first
    assert len(api_client.get("/datasets", headers=tenant.headers).json()["data"]) == 1


def test_upload_size_limit(
    service_settings: Settings, tenant: TenantKey, drone_bytes: bytes
) -> None:
    limit = len(drone_bytes) - 1
    for client in _client(service_settings, max_upload_bytes=limit):
        response = client.post(
            "/datasets", headers=tenant.headers, files={"file": ("d.jsonl", drone_bytes)}
        )
        assert response.status_code == 413
        assert f"{limit} bytes" in response.json()["error"]["message"]
        assert "SDFT_MAX_UPLOAD_BYTES" in response.json()["error"]["message"]

        # A small gzip that expands past the limit is caught on its decompressed size.
        bomb = gzip.compress(drone_bytes * 3)
        assert len(bomb) < limit
        expanded = client.post(
            "/datasets", headers=tenant.headers, files={"file": ("d.jsonl.gz", bomb)}
        )
        assert expanded.status_code == 413
        assert "decompressed" in expanded.json()["error"]["message"]

    for client in _client(service_settings, max_upload_bytes=1000):
        huge = client.post(
            "/datasets", headers=tenant.headers, files={"file": ("d.jsonl", b"x" * 3_000_000)}
        )
        assert huge.status_code == 413


def test_request_size_limit(service_settings: Settings, tenant: TenantKey) -> None:
    for client in _client(service_settings, max_request_bytes=2048):
        body = {"dataset_id": "ds_x", "model": "m", "config": {"teacher_instruction": "x" * 4096}}
        for path in ("/jobs", "/jobs/job_x/cancel"):
            response = client.post(
                path,
                headers={**tenant.headers, "Content-Type": "application/json"},
                content=json.dumps(body),
            )
            assert response.status_code == 413, path
            assert "SDFT_MAX_REQUEST_BYTES" in response.json()["error"]["message"]


def test_jobs_in_flight_limit(
    service_settings: Settings,
    tenant: TenantKey,
    model_name: str,
    upload_dataset: Callable[[TenantKey], str],
) -> None:
    dataset_id = upload_dataset(tenant)
    body = {"dataset_id": dataset_id, "model": model_name}
    for client in _client(service_settings, max_jobs_in_flight_per_tenant=2):
        ids = [client.post("/jobs", headers=tenant.headers, json=body).json()["id"] for _ in "ab"]
        third = client.post("/jobs", headers=tenant.headers, json=body)
        assert third.status_code == 429
        assert "at most 2 per tenant" in third.json()["error"]["message"]

        client.post(f"/jobs/{ids[0]}/cancel", headers=tenant.headers)
        assert client.post("/jobs", headers=tenant.headers, json=body).status_code == 201


def test_rate_limit(service_settings: Settings, tenant: TenantKey) -> None:
    for client in _client(service_settings, rate_limit_per_minute=3):
        statuses = [client.get("/jobs", headers=tenant.headers).status_code for _ in range(5)]
        # The first requests may straddle a minute boundary, which resets the count once.
        assert statuses.count(429) >= 1
        limited = client.get("/jobs", headers=tenant.headers)
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 61
        assert "3 requests per minute" in limited.json()["error"]["message"]


def test_health_probes(api_client: TestClient, service_settings: Settings) -> None:
    assert api_client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = api_client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "redis": "ok", "s3": "ok"}

    for client in _client(
        service_settings,
        redis_url=service_settings.redis_url.__class__("redis://127.0.0.1:1/0"),
        s3_bucket="no-such-bucket-here",
    ):
        down = client.get("/readyz")
        assert down.status_code == 503
        assert down.json()["checks"]["database"] == "ok"
        assert "redis" in down.json()["status"]
        assert "s3" in down.json()["status"]


def test_docs_public(api_client: TestClient) -> None:
    assert api_client.get("/docs").status_code == 200
    schema = api_client.get("/openapi.json").json()
    assert "/jobs/{job_id}/metrics/stream" in schema["paths"]
    body = schema["paths"]["/jobs"]["post"]["requestBody"]["content"]
    assert body["application/json"]["schema"]["examples"][0]["model"] == "Qwen3.5-9B"
    assert "dataset" in body["multipart/form-data"]["schema"]["properties"]


def test_no_secret_in_logs(
    api_client: TestClient,
    tenant: TenantKey,
    submit_job: Callable[..., dict[str, Any]],
    service_settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    job = submit_job(tenant)
    api_client.get(f"/jobs/{job['id']}/artifacts", headers=tenant.headers)
    api_client.get("/jobs", headers={"Authorization": f"Bearer {tenant.key}x"})
    api_client.get("/readyz")

    text = "\n".join(
        [r.getMessage() for r in caplog.records] + [str(r.__dict__) for r in caplog.records]
    )
    assert len(caplog.records) > 10
    assert tenant.key not in text
    assert service_settings.s3_secret_access_key.get_secret_value() not in text
    assert tenant.key not in repr(service_settings)
    assert service_settings.s3_secret_access_key.get_secret_value() not in repr(service_settings)


def test_chunked_upload_over_limit(service_settings: Settings, tenant: TenantKey) -> None:
    """A body sent without Content-Length is counted as it arrives."""

    def body() -> Iterator[bytes]:
        yield b"--b\r\nContent-Disposition: form-data; name=file; filename=d.jsonl\r\n\r\n"
        for _ in range(40):
            yield b"x" * 100_000

    for client in _client(service_settings, max_upload_bytes=1000):
        response = client.post(
            "/datasets",
            headers={**tenant.headers, "Content-Type": "multipart/form-data; boundary=b"},
            content=body(),
        )
        assert response.status_code == 413
        assert "SDFT_MAX_UPLOAD_BYTES" in response.json()["error"]["message"]
