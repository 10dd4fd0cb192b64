"""Metrics (paged and SSE), events and artifacts of a job."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.dialects.postgresql import insert

from api.db.models import JobMetric
from api.db.session import session_scope
from api.errors import ValidationFailed
from api.services.job_requests import check_artifact_path
from api.services.jobs import add_event, get_job_for_update, transition
from api.settings import Settings
from api.storage import Storage, merged_prefix
from tests.fixtures.services import TenantKey


def _insert_metrics(job_id: str, steps: range) -> None:
    with session_scope() as session:
        for step in steps:
            session.execute(
                insert(JobMetric)
                .values(job_id=job_id, step=step, metrics={"loss": 1.0 / step, "teacher/kl": 0.1})
                .on_conflict_do_nothing()
            )


def _move(job_id: str, *statuses: str) -> None:
    for status in statuses:
        with session_scope() as session:
            transition(session, get_job_for_update(session, job_id), status)


def _parse_sse(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            fields[name] = value.lstrip(" ")
        if fields:
            events.append(fields)
    return events


@pytest.fixture
def job(tenant: TenantKey, submit_job: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return submit_job(tenant)


def test_metrics_pagination(api_client: TestClient, tenant: TenantKey, job: dict[str, Any]) -> None:
    _insert_metrics(job["id"], range(1, 8))

    first = api_client.get(
        f"/jobs/{job['id']}/metrics", headers=tenant.headers, params={"limit": 3}
    ).json()
    assert [r["step"] for r in first["data"]] == [1, 2, 3]
    assert first["has_more"] is True
    assert first["data"][0]["metrics"]["teacher/kl"] == 0.1

    rest = api_client.get(
        f"/jobs/{job['id']}/metrics",
        headers=tenant.headers,
        params={"after_step": first["next_cursor"], "limit": 10},
    ).json()
    assert [r["step"] for r in rest["data"]] == [4, 5, 6, 7]
    assert rest["has_more"] is False


def test_sse_matches_polling_and_resumes(
    api_client: TestClient, tenant: TenantKey, job: dict[str, Any]
) -> None:
    job_id = job["id"]
    _insert_metrics(job_id, range(1, 6))
    _move(job_id, "running", "merging", "uploading", "succeeded")

    stream = api_client.get(f"/jobs/{job_id}/metrics/stream", headers=tenant.headers)
    assert stream.status_code == 200
    events = _parse_sse(stream.text)
    metric_events = [e for e in events if e.get("event") == "metric"]
    polled = api_client.get(f"/jobs/{job_id}/metrics", headers=tenant.headers).json()["data"]
    assert [json.loads(e["data"]) for e in metric_events] == polled
    assert [e["id"] for e in metric_events] == ["1", "2", "3", "4", "5"]
    assert events[-1]["event"] == "end"
    assert json.loads(events[-1]["data"]) == {"status": "succeeded", "last_step": 5}

    resumed = api_client.get(
        f"/jobs/{job_id}/metrics/stream", headers={**tenant.headers, "Last-Event-ID": "3"}
    )
    resumed_ids = [e["id"] for e in _parse_sse(resumed.text) if e.get("event") == "metric"]
    assert resumed_ids == ["4", "5"]


def test_sse_follows_live_rows(
    api_client: TestClient,
    tenant: TenantKey,
    job: dict[str, Any],
    service_settings: Settings,
) -> None:
    """Rows written while the stream is open arrive, then the stream ends with the job."""
    import redis

    job_id = job["id"]
    _move(job_id, "running")
    _insert_metrics(job_id, range(1, 3))
    publisher = redis.Redis.from_url(service_settings.redis_url_value)

    def write_more() -> None:
        _insert_metrics(job_id, range(3, 5))
        publisher.publish(f"sdft:jobs:{job_id}:metrics", json.dumps({"step": 4}))
        _move(job_id, "failed")

    received: list[str] = []
    with api_client.stream(
        "GET", f"/jobs/{job_id}/metrics/stream", headers=tenant.headers
    ) as response:
        writer = threading.Timer(0.5, write_more)
        writer.start()
        for line in response.iter_lines():
            if line.startswith("id:"):
                received.append(line.split(":", 1)[1].strip())
            if line.startswith("event: end") or line.startswith("event:end"):
                break
        writer.join()

    assert received == ["1", "2", "3", "4"]


def test_events_pagination(api_client: TestClient, tenant: TenantKey, job: dict[str, Any]) -> None:
    job_id = job["id"]
    _move(job_id, "running")
    with session_scope() as session:
        add_event(session, job_id, "checkpoint_saved", "step 100", {"step": 100})
        add_event(session, job_id, "example_skipped", "too long", {"index": 3})

    first = api_client.get(
        f"/jobs/{job_id}/events", headers=tenant.headers, params={"limit": 2}
    ).json()
    assert [e["type"] for e in first["data"]] == ["status_changed", "status_changed"]
    assert first["data"][1]["data"] == {
        "from": "queued",
        "to": "running",
        "requested_by": None,
    } or (first["data"][1]["data"]["to"] == "running")
    assert first["has_more"] is True
    rest = api_client.get(
        f"/jobs/{job_id}/events",
        headers=tenant.headers,
        params={"after": first["next_cursor"]},
    ).json()
    assert [e["type"] for e in rest["data"]] == ["checkpoint_saved", "example_skipped"]
    assert rest["has_more"] is False


def test_artifacts_hidden_until_manifest(
    api_client: TestClient, tenant: TenantKey, job: dict[str, Any], service_settings: Settings
) -> None:
    job_id = job["id"]
    storage = Storage.from_settings(service_settings)
    files = {"model.safetensors": b"\x01" * 4096, "config.json": b'{"model_type": "llama"}'}
    for path, content in files.items():
        storage.client.put_object(
            Bucket=storage.bucket, Key=merged_prefix(job_id) + path, Body=content
        )

    before = api_client.get(f"/jobs/{job_id}/artifacts", headers=tenant.headers)
    assert before.status_code == 200
    assert before.json()["data"] == []
    hidden = api_client.get(
        f"/jobs/{job_id}/artifacts/model.safetensors",
        headers=tenant.headers,
        follow_redirects=False,
    )
    assert hidden.status_code == 404

    storage.write_manifest(
        job_id,
        [(p, len(c), hashlib.sha256(c).hexdigest()) for p, c in sorted(files.items())],
    )
    listed = api_client.get(f"/jobs/{job_id}/artifacts", headers=tenant.headers).json()["data"]
    assert [a["path"] for a in listed] == ["config.json", "model.safetensors"]
    for artifact in listed:
        downloaded = httpx.get(artifact["url"]).content
        assert hashlib.sha256(downloaded).hexdigest() == artifact["sha256"]
        assert len(downloaded) == artifact["size"]

    redirect = api_client.get(
        f"/jobs/{job_id}/artifacts/model.safetensors",
        headers=tenant.headers,
        follow_redirects=False,
    )
    assert redirect.status_code == 307
    assert httpx.get(redirect.headers["location"]).content == files["model.safetensors"]


def test_artifact_path_traversal(
    api_client: TestClient, tenant: TenantKey, job: dict[str, Any], service_settings: Settings
) -> None:
    job_id = job["id"]
    Storage.from_settings(service_settings).write_manifest(job_id, [("a.bin", 1, "0" * 64)])
    # Encoded so that the client sends them as written instead of normalising the URL.
    for path in ("..%2F..%2Fdatasets%2Fx", "a%2F..%2Fa.bin", ".%2Fa.bin", "%2E%2E", "%5Ca.bin"):
        response = api_client.get(
            f"/jobs/{job_id}/artifacts/{path}", headers=tenant.headers, follow_redirects=False
        )
        assert response.status_code == 422, path
    unlisted = api_client.get(
        f"/jobs/{job_id}/artifacts/b.bin", headers=tenant.headers, follow_redirects=False
    )
    assert unlisted.status_code == 404
    listed = api_client.get(
        f"/jobs/{job_id}/artifacts/a.bin", headers=tenant.headers, follow_redirects=False
    )
    assert listed.status_code == 307


@pytest.mark.parametrize(
    "path", ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a\\b", "a/.", "a\x00b"]
)
def test_check_artifact_path_rejects(path: str) -> None:
    with pytest.raises(ValidationFailed):
        check_artifact_path(path)
